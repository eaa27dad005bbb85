"""`acked run`, `acked nemeses`, `acked profiles` and `acked report` (registered by harness/cli.py): a test
description from flags and a TOML file, the run with its live status line, Ctrl-C handling and verdict lines."""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import threading
import time

from harness.config import BACKENDS, PROFILES, ConfigError, TestDescription, from_dict, load_toml, parse_list, parse_setting

EXIT_HARNESS_FAILED = 3
EXIT_BAD_USAGE = 4
#: TestDescription's default name; `acked run` names an unnamed test <workload>-<profile> (queue-safe)
DEFAULT_NAME = TestDescription.name


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="run a test: cluster, workload under faults, history, verdict",
        description="Run one test: start a cluster, drive real Kafka clients under faults, record the history in "
                    "results/<name>/<timestamp>/, check it. Exit 0 valid, 1 invalid, 2 unknown (the checker "
                    "could not decide), 3 the harness failed or the run was interrupted, 4 bad arguments or test "
                    "description (one line on stderr, before anything starts). The defaults shown apply where "
                    "neither a flag nor the test file sets a field.")
    p.add_argument("test_file", nargs="?", help="a TOML test description; flags override its settings")
    p.add_argument("--name", help="test name (the run directory is results/<name>/<timestamp>)")
    p.add_argument("--profile", choices=sorted(PROFILES), help="reliability profile (see `acked profiles`)")
    p.add_argument("--backend", choices=BACKENDS, help="where the cluster runs")
    p.add_argument("--nodes", type=int, help="number of nodes (brokers)")
    p.add_argument("--time-limit", type=float, help="seconds of workload under faults")
    p.add_argument("--rate", type=float, help="target ops/s over all processes (0: unlimited)")
    p.add_argument("--concurrency", help="client processes: a number (6) or a multiple of the nodes (2n)")
    from workloads import WORKLOADS
    p.add_argument("--workload", choices=sorted(WORKLOADS), help="what the clients do and how the history is "
                   "checked (docs/workloads.md)")
    from nemesis.packages import PACKAGES
    p.add_argument("--nemesis", metavar="FAULTS",
                   help=f"comma-separated fault packages, each optionally pinned to a choice (kill:controller, "
                        f"partition:leader-from-followers): {', '.join(PACKAGES)}; 'none' for none. "
                        f"`acked nemeses` lists them with their choices")
    p.add_argument("--nemesis-interval", type=float, help="seconds between fault starts, and about how long each lasts")
    p.add_argument("--nemesis-schedule", choices=["mix", "alternate"],
                   help="mix: faults of different packages may overlap; alternate: one at a time")
    p.add_argument("--replay", metavar="RUN_DIR", help="run the test of RUN_DIR again with the same fault ops at the "
                   "same times (its nemesis.json); role targets are resolved afresh")
    p.add_argument("--kill-target", choices=["leader", "random"], help="which broker the kill fault kills")
    examples = {"producer": "linger.ms=5", "consumer": "fetch.wait.max.ms=100", "topic": "min.insync.replicas=2",
                "broker": "replica.lag.time.max.ms=10000"}
    for kind in ("producer", "consumer", "topic", "broker"):
        p.add_argument(f"--{kind}", action="append", default=[], metavar="NAME=VALUE",
                       help=f"a {kind} setting with Kafka's name, e.g. {examples[kind]} (repeatable; merged over "
                            f"the profile's, checked before the cluster starts)")
    p.add_argument("--sub-via", choices=["assign", "subscribe"], help="how consumers get partitions")
    p.add_argument("--delivery", choices=["exactly-once", "at-least-once"], help="guarantee the checker judges by")
    p.add_argument("--client", choices=["confluent-kafka", "kafka-python"], help="Kafka client library")
    p.add_argument("--seed", type=int, help="random seed (recorded in test.json)")
    p.add_argument("--results-dir", help="run store root")
    p.add_argument("--final-time-limit", type=float, help="seconds the final drain may take")
    p.add_argument("--key-count", type=int, help="keys written at once")
    p.add_argument("--max-writes-per-key", type=int, help="upper bound of the Zipf write count per key")
    p.add_argument("--max-sends-per-op", type=int, help="sends per send op (1..N, one key, several requests in "
                   "flight)")
    p.add_argument("--op-timeout", type=float, help="seconds before a send or poll is recorded as info")
    p.add_argument("--crash-client-interval", type=float, metavar="SECONDS",
                   help="roughly how long a single client runs before it is crashed (0: never)")
    from harness.config import COMMIT_MODES
    p.add_argument("--commit-mode", choices=COMMIT_MODES, help="the pipeline workload: how its consumers commit "
                   "(docs/workloads.md)")
    p.add_argument("--process-ms", type=float, help="the pipeline workload: milliseconds to process one record")
    p.add_argument("--commit-every", type=int, help="the pipeline workload's commit-every-n: records per commit")
    p.add_argument("--plain", action="store_true", help="plain progress lines even on a terminal")
    _show_defaults(p)
    p.set_defaults(func=cmd_run)

    n = subparsers.add_parser("nemeses", help="list the fault packages: choices, capabilities, backends, claims",
                              description="List the nemesis packages of nemesis/packages.py: what each fault does "
                                          "on the node, the choices it can be pinned to (--nemesis NAME:CHOICE), "
                                          "the capabilities and backends it needs, and the claim it tests.")
    n.add_argument("--json", action="store_true", help="print as JSON")
    n.set_defaults(func=cmd_nemeses)

    q = subparsers.add_parser("profiles", help="list the reliability profiles and their settings",
                              description="List the reliability profiles (docs/running.md, \"Profiles\") with "
                                          "their Kafka settings.")
    q.add_argument("--json", action="store_true", help="print as JSON")
    q.set_defaults(func=cmd_profiles)

    r = subparsers.add_parser(
        "report", help="write the HTML report of a run directory, or the index of a results directory",
        description="Write RUN_DIR/index.html (verdict, test, totals, anomalies, plots, links to logs; "
                    "self-contained) and the results directory's index.html of all runs. Given a results "
                    "directory, re-render the runs whose report is missing or stale, then its index. Exit 0 "
                    "written, 4 bad arguments or a path that is not a run or results directory (one line on "
                    "stderr).")
    r.add_argument("path", metavar="RUN_DIR|RESULTS_DIR", help="a run directory (results/<name>/<timestamp>) "
                   "or a results directory (default layout: results/)")
    r.set_defaults(func=cmd_report)


#: defaults shown in `acked run --help` that are not a TestDescription field's plain value
_DEFAULT_TEXT = {"nemesis": "none: no faults unless you name some", "sub_via": "the profile's",
                 "delivery": "the profile's", "seed": "random", "name": "<workload>-<profile> unless the test file names it",
                 "concurrency": "2n"}


def _show_defaults(p: argparse.ArgumentParser) -> None:
    """Append each flag's default (TestDescription's, which a TOML file may change) to its help. The flags
    themselves default to None so that only what is given overrides the file."""
    import dataclasses
    defaults = {f.name: f.default for f in dataclasses.fields(TestDescription)
                if f.default is not dataclasses.MISSING}
    for action in p._actions:
        if not action.help or "default" in action.help or action.dest in ("help", "test_file", "replay", "plain"):
            continue
        if action.dest in _DEFAULT_TEXT:
            text = _DEFAULT_TEXT[action.dest]
        elif defaults.get(action.dest) is not None:
            text = f"{defaults[action.dest]:g}" if isinstance(defaults[action.dest], float) else defaults[action.dest]
        else:
            continue
        action.help += f" (default: {text})"


def description_from_args(args: argparse.Namespace) -> TestDescription:
    desc = load_toml(args.test_file) if args.test_file else TestDescription()
    if getattr(args, "replay", None):
        desc = replayed_description(args.replay)
    overrides = {}
    for field in ("name", "profile", "backend", "nodes", "time_limit", "rate", "concurrency", "workload",
                  "nemesis_interval",
                  "nemesis_schedule",
                  "kill_target", "sub_via", "delivery", "client", "seed", "results_dir", "final_time_limit",
                  "key_count", "max_writes_per_key", "max_sends_per_op", "op_timeout", "crash_client_interval",
                  "commit_mode", "process_ms", "commit_every"):
        v = getattr(args, field, None)
        if v is not None:
            overrides[field] = v
    if args.nemesis is not None:
        overrides["nemeses"] = [] if args.nemesis.strip() in ("", "none") else parse_list(args.nemesis)
    for kind in ("producer", "consumer", "topic", "broker"):
        pairs = getattr(args, kind)
        if pairs:
            overrides[kind] = dict(parse_setting(s) for s in pairs)
    desc = from_dict(overrides, desc, where="command line")
    if args.name is None and desc.name == DEFAULT_NAME:
        # named by its profile whether the profile was given or is the default: `acked run` and `acked run
        # --profile safe` are the same test and share results/queue-safe/
        desc.name = f"{desc.workload}-{desc.profile}"
    return desc   # validated once, by the Runner (the Kafka settings check builds clients: not twice)


def user_names(message: str) -> str:
    """A description error in the names the docs and a TOML file use (time-limit, nemesis), not
    TestDescription's Python fields (time_limit, nemeses), which the pytest plugin's keyword arguments keep.
    `acked nemeses`, the command, stays as it is."""
    return _FIELD_NAME.sub(lambda m: "nemesis" if m.group(0) == "nemeses" else m.group(0).replace("_", "-"), message)


_FIELD_NAME = re.compile(r"(?<!acked )\b(?:nemeses|" + "|".join(
    sorted((f.name for f in dataclasses.fields(TestDescription) if "_" in f.name), key=len, reverse=True))
    + r")\b")


def replayed_description(run_dir: str) -> TestDescription:
    """The test of a recorded run (its test.json, seed included), set to replay its fault schedule."""
    import json
    from pathlib import Path
    path = Path(run_dir) / "test.json"
    try:
        test = dict(json.loads(path.read_text())["test"])
    except (OSError, ValueError, KeyError):
        raise ConfigError(f"--replay {run_dir}: no readable test.json there; give a run directory "
                          f"(results/<name>/<timestamp>)") from None
    for derived in ("effective", "replay"):
        test.pop(derived, None)
    desc = from_dict(test, where=str(path))
    desc.replay = str(run_dir)
    return desc


def cmd_nemeses(args: argparse.Namespace) -> int:
    from nemesis.packages import PACKAGES
    if args.json:
        import json
        print(json.dumps({p.name: {"summary": p.summary, "ops": list(p.fs), "choices": list(p.choices),
                                   "defaults": sorted(set(p.defaults)), "capabilities": sorted(p.capabilities),
                                   "backends": sorted(p.backends), "claim": p.claim, "label": p.label,
                                   "color": p.color} for p in PACKAGES.values()}, indent=2))
        return 0
    for p in PACKAGES.values():
        print(f"{p.name}: {p.summary}")
        print(f"  ops: {' / '.join(p.fs)}   choices: {', '.join(p.choices)}")
        print(f"  needs: {', '.join(sorted(p.capabilities)) or 'nothing'}   backends: {', '.join(sorted(p.backends))}")
        print(f"  tests: {p.claim}")
        print()
    print("Combine with commas (--nemesis kill,pause,partition); pin a choice with a colon (--nemesis "
          "partition:leader-from-followers). docs/nemesis.md explains each.")
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    if args.json:
        import dataclasses
        import json
        print(json.dumps({n: dataclasses.asdict(p) for n, p in PROFILES.items()}, indent=2))
        return 0
    for p in PROFILES.values():
        print(f"{p.name}: {p.summary}")
        print(f"  checker: delivery={p.delivery} sub_via={p.sub_via}")
        for kind in ("producer", "consumer", "topic", "broker"):
            settings = " ".join(f"{k}={v}" for k, v in getattr(p, kind).items())
            print(f"  {kind}: {settings}")
        print()
    from harness.config import HARNESS_BROKER
    print("every profile also sets broker: " + " ".join(f"{k}={v}" for k, v in HARNESS_BROKER.items())
          + " (so a killed broker's partitions move within seconds)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from harness.runner import Runner
    live = sys.stdout.isatty() and not args.plain
    lines: list[str] = []
    try:
        # the Runner validates the description (once): nothing has started when it refuses it
        runner = Runner(description_from_args(args), log=lines.append if live else _plain_log)
    except ConfigError as e:
        print(f"acked run: {user_names(str(e))}", file=sys.stderr)
        return EXIT_BAD_USAGE
    desc = runner.desc
    print(_header(desc), flush=True)
    from harness.report import expectation
    expected = expectation(desc.profile, desc.nemeses)
    if expected:   # an unsafe profile: say before the verdict that INVALID is the talk's prediction
        print(f"  {expected}", flush=True)
    done = threading.Event()
    display = threading.Thread(target=_rich_display if live else _plain_display, args=(runner, done), daemon=True)
    display.start()
    # Ctrl-C, and SIGTERM (a CI job's timeout, `kill`) alike: say at once what happens, then heal, drain, tear down
    import signal
    interrupts = Interrupts(runner)
    previous = {s: signal.signal(s, interrupts) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = runner.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        interrupts.close()
        done.set()
        display.join(5)
    for line in lines:
        # the live display showed the phases, the interrupt notice what an interrupt did; keep what else was said
        if not line.startswith(("phase ", "interrupted during ")):
            print(line)
    for line in _summary(runner, result, interrupts):
        print(line)
    if result.error and not (interrupts.count and result.error.startswith("interrupted during ")):
        print(f"harness error: {result.error}", file=sys.stderr)
    if interrupts.count and result.valid is not False:
        return EXIT_HARNESS_FAILED   # interrupted: no verdict on the test, though the history may check valid
    return result.exit_status


def _plain_log(message: str) -> None:
    if not message.startswith("interrupted during "):   # the interrupt notice said it, and what happens next
        _emit(message)


def _emit(line: str) -> None:
    """One line on stdout in one write: the runner's threads, the display and the interrupt notice print
    concurrently, and print()'s separate write of the newline let another line in between."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Interrupts:
    """Ctrl-C and SIGTERM during `acked run`: the user sees at once what acked is doing, and it does it.

    The first one stops the workload (setup or main: a KeyboardInterrupt the runner's phase guard catches, so
    no worker invokes another op) and says "interrupted: healing faults, draining, tearing down (Ctrl-C again
    to skip the drain)"; the runner then heals, drains and tears down. The next one, or a first one after the
    main phase's end, skips the recovery wait and the final drain (Runner.skip_drain; one under way is
    interrupted). A check or report under way is skipped (acked check / acked report do it later); heal and
    teardown are never interrupted. A KeyboardInterrupt is raised only inside a phase's own function, where the
    guard catches it -- never between phases, where it would escape the runner and leave the cluster behind: a
    signal that lands there is delivered again 50 ms later."""

    REDELIVER = 0.05

    def __init__(self, runner):
        from harness import runner as runner_module
        self.runner = runner
        self.count = 0
        #: the phase the first interrupt came in
        self.phase: str | None = None
        self._redelivered = False
        self._timer: threading.Timer | None = None
        cls = type(runner)
        self._functions = {getattr(cls, name).__code__: name.strip("_")
                           for name in ("_setup", "_main", "_stop_workers", "_heal", "_recover", "_drain",
                                        "_teardown", "_check") if hasattr(getattr(cls, name, None), "__code__")}
        self._functions[runner_module.render_report.__code__] = "report"

    def _where(self, frame) -> str | None:
        """The innermost phase function the main thread is in when the signal came."""
        while frame is not None:
            name = self._functions.get(frame.f_code)
            if name:
                return name
            frame = frame.f_back
        return None

    def __call__(self, signum, frame) -> None:
        redelivered, self._redelivered = self._redelivered, False
        if not redelivered:
            self.count += 1
        r = self.runner
        phase, where = r.stats.phase, self._where(frame)
        if self.phase is None:
            self.phase = phase
        draining = phase in ("main", "heal", "recover", "drain")  # the final drain is still to come, or under way
        if self.count == 1 and phase in ("setup", "main") and where != "stop_workers":
            notice, stop = (("interrupted during setup: tearing down", "setup") if phase == "setup" else
                            ("interrupted: healing faults, draining, tearing down (Ctrl-C again to skip the "
                             "drain)", "main"))
        elif self.count == 1 and draining:
            notice, stop = ("interrupted: " + ("healing faults, " if phase in ("main", "heal") else "")
                            + "draining, tearing down (Ctrl-C again to skip the drain)"), None
        elif draining:
            r.skip_drain = True
            notice, stop = ("skipping the final drain: " + ("healing faults, " if phase in ("main", "heal") else "")
                            + "tearing down (acknowledged writes not yet read are not counted as lost)",
                            where if where in ("recover", "drain") else None)
        elif phase in ("check", "report"):
            notice, stop = (f"interrupted: skipping the {phase} (acked {phase} {r.run_dir} does it later)", phase)
        elif phase == "teardown":
            notice, stop = "interrupted: tearing down the cluster (acked ends when it is gone)", None
        else:
            notice, stop = f"interrupted during {phase}: finishing it, then tearing down the cluster", None
        r.interrupted = True
        if not redelivered:
            _say(notice)
        if stop is None:
            return
        if where == stop:
            raise KeyboardInterrupt
        self._redelivered = True   # between a phase's start and its guard: again once inside it
        self._timer = threading.Timer(self.REDELIVER, os.kill, (os.getpid(), signum))
        self._timer.daemon = True
        self._timer.start()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _say(line: str) -> None:
    """A line on stdout from a signal handler: as any other, unless the handler interrupted a write of the main
    thread (a reentrant write raises), then straight to the file descriptor."""
    try:
        _emit(line)
    except RuntimeError:
        os.write(sys.stdout.fileno(), (line + "\n").encode())


def _header(desc: TestDescription) -> str:
    nemeses = ",".join(desc.nemeses) or "none"
    return (f"acked run {desc.name}: profile {desc.profile}, {desc.nodes} {desc.backend} nodes, "
            f"{desc.concurrency_count()} client processes at "
            f"{f'{desc.rate:g} ops/s' if desc.rate else 'unlimited rate'}, nemesis {nemeses}, "
            f"{desc.time_limit:g} s, seed {desc.seed if desc.seed is not None else 'random'}")


def _summary(runner, result, interrupts=None) -> list[str]:
    """The verdict, what happened, the first explanation of each bad anomaly, and where to look. An interrupted
    run's verdict line says so, and the next line what the history holds and how to check it again."""
    verdict = {True: "VALID", False: "INVALID"}.get(result.valid, "UNKNOWN")
    res = result.results
    bad = res.get("bad-anomaly-types") or []
    anomalies = res.get("anomalies") or {}
    n = res.get("anomaly-counts") or {}
    counts = ", ".join(f"{a} x{n.get(a, len(anomalies.get(a) or []))}" for a in bad)
    faults = _fault_counts(runner)
    interrupted = bool(interrupts and interrupts.count) or bool((res.get("harness") or {}).get("interrupted"))
    phase = (interrupts.phase if interrupts and interrupts.phase else
             (result.error or "").removeprefix("interrupted during ") or "the run")
    out = [f"{verdict}" + (f" ({counts})" if counts else "") + (f", interrupted during {phase}" if interrupted else "")
           + f": {totals(res)}" + (f"; faults: {faults}" if faults else "")]
    from harness.report import expectation
    expected = expectation(runner.desc.profile, runner.desc.nemeses, result.valid, bad)
    if expected:
        out.append(f"  {expected}")
    if interrupted:
        out.append("  " + _interrupted_history(res, result, phase))
    # findings the run's settings allow are listed, never dropped: a VALID run can still carry them
    if verdict == "UNKNOWN":
        out += _unknown_reasons(res, result)
    from checkers.queue import ALWAYS_ALLOWED   # Jepsen's reference-only types stay in results.json
    allowed = {a: why for a, why in (res.get("allowed-anomalies") or {}).items() if a not in ALWAYS_ALLOWED}
    for a, why in allowed.items():
        out.append(f"  allowed: {a} x{(res.get('anomaly-counts') or {}).get(a, len(anomalies.get(a) or []))} ({why})")
    for a in bad:
        first = (anomalies.get(a) or [{}])[0]
        if isinstance(first, dict) and first.get("explanation"):
            out.append(f"  {a}: {first['explanation']}")
    seed = runner.desc.seed
    out.append(f"run directory: {result.run_dir}   (re-run with --seed {seed})")
    if result.report:
        out.append(f"report: {result.report}")
    return out


def _interrupted_history(res: dict, result, phase: str) -> str:
    """What an interrupted run's history holds, and the command that checks it again."""
    if phase == "setup" and not sum((res.get("client-ops") or {}).values()):
        return "interrupted before the workload started: no op ran"
    still_running = any("workers still running" in e for e in (res.get("harness") or {}).get("errors") or [])
    held = ("the history holds every op up to the interrupt, except the last ops of workers that were still "
            "running" if still_running else "the history is complete up to the interrupt")
    drained = (", but the final drain was skipped: acknowledged writes it did not read are not counted as lost"
               if res.get("history-cut") else ", and the final drain read back what was written")
    options = res.get("options") or {}
    flags = "".join(f" --{flag} {options[key]}" for key, flag, default in
                    (("sub-via", "sub-via", "assign"), ("delivery", "delivery", "exactly-once"))
                    if options.get(key, default) != default)
    return f"{held}{drained}; check it again with: acked check {result.run_dir}{flags}"


def totals(res: dict) -> str:
    """The run's totals as the report and the runs index show them (harness.report.client_ops): the checker's
    counts, not the live status line's."""
    from checkers.history import client_ops, client_ops_text
    ops = res.get("client-ops")
    if ops is None and (res.get("stats") or {}).get("by-f") is not None:
        ops = client_ops(res["stats"]["by-f"])
    return f"{client_ops_text(ops)} client ops completed" if ops else "the history was not checked"


def send_failures_text(failed: dict) -> str:
    return f"{failed['failed']} of {failed['sends']} sends failed: {failed['error']}"


def _unknown_reasons(res: dict, result) -> list[str]:
    """Why no verdict: the checker's reason, and the client error most sends failed with, if one did."""
    out = []
    if res.get("unknown-reason"):
        out.append(f"  why: {res['unknown-reason']}")
    elif result.error:
        out.append(f"  why: the harness failed ({result.error})")
    failed = res.get("send-failures")   # the runner's, from the history (Runner.run)
    if failed:
        out.append(f"  {send_failures_text(failed)}")
    return out


def _fault_counts(runner) -> str:
    started = runner.nemesis.started if runner.nemesis else {}
    return ", ".join(f"{f} x{n}" for f, n in sorted(started.items()))


class _Progress:
    """The live status line: phase, time, ops/s over the last few seconds (not since the start, so a
    stall under a fault shows at once), completion counts, active faults."""

    WINDOW = 5.0
    WIDTH = 80

    def __init__(self, runner):
        self.runner = runner
        self.samples: list[tuple[float, int]] = []

    def line(self) -> str:
        """At most WIDTH characters; the main phase's clock stops at the time limit (the workers' last ops
        may complete after it)."""
        s, d = self.runner.stats, self.runner.desc
        now = time.monotonic()
        self.samples.append((now, s.completed))
        while len(self.samples) > 2 and self.samples[1][0] < now - self.WINDOW:
            self.samples.pop(0)
        t0, c0 = self.samples[0]
        rate = (s.completed - c0) / (now - t0) if now > t0 else 0.0
        if s.phase == "main" and s.main_started:
            clock = f"{min(now - s.main_started, d.time_limit):5.1f}/{d.time_limit:g} s"
        else:
            clock = f"{now - s.started:5.1f} s"
        phase = f"{s.phase}, interrupted" if getattr(self.runner, "interrupted", False) else s.phase
        head = f"[{phase}] {clock}  {rate:5.0f} ops/s  ok {s.ok} fail {s.fail} info {s.info}  faults: "
        return (head + _fit(list(s.faults), self.WIDTH - len(head)))[:self.WIDTH]


def _fit(items: list[str], room: int) -> str:
    """items joined by commas in about room characters: the first ones and how many more ("kill,pause +3"), the
    first one cut short if need be."""
    if not items:
        return "none"
    for shown in range(len(items), 0, -1):
        text = ",".join(items[:shown]) + (f" +{len(items) - shown}" if shown < len(items) else "")
        if len(text) <= room:
            return text
    more = f" +{len(items) - 1}" if len(items) > 1 else ""
    return items[0][:max(room - len(more) - 1, 1)] + "…" + more


def _plain_display(runner, done: threading.Event) -> None:
    progress = _Progress(runner)
    progress.line()
    while not done.wait(5.0):
        _emit(progress.line())


def _rich_display(runner, done: threading.Event) -> None:
    from rich.live import Live
    from rich.text import Text  # plain text: "[main]" is not rich markup
    progress = _Progress(runner)
    with Live(Text(progress.line()), refresh_per_second=4, transient=True) as live:
        while not done.wait(0.25):
            live.update(Text(progress.line()))


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path
    from harness import report
    path = Path(args.path)
    if not path.is_dir():
        print(f"acked report: {path} is not a directory; give a run directory or a results directory",
              file=sys.stderr)
        return EXIT_BAD_USAGE
    if report.is_run_dir(path):
        print(report.render(path))
        return 0
    if not report.find_runs(path):
        print(f"acked report: {path} holds no runs (no <name>/<timestamp>/ with history.jsonl, results.json "
              "or test.json)", file=sys.stderr)
        return EXIT_BAD_USAGE
    print(report.render_index(path, stale_runs=True))
    return 0
