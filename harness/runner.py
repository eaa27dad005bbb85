"""The runner: one test description -> cluster, workload under faults, history, verdict, run directory.

Jepsen's counterpart is jepsen.core/run!: it drives a test's workload (client,
generator, final generator, checker; workloads/base.py) and its nemesis on a
cluster, and knows nothing of what the workload's clients talk (the queue
workload's Kafka lives in workloads/).

Phases: setup, main (workload and nemesis together), heal, recover, drain (the
workload's final phase), replicas (what the workload keeps of the cluster's
state, e.g. every broker's log into replicas.json), teardown, check, report.
Whatever happens in a phase -- an exception, Ctrl-C -- the run still heals
every fault, still closes the history (it is flushed per event anyway), still
tears the cluster down, and still writes results.json.

Concurrency: each worker slot is a thread running one logical process at a
time with its own client. Client libraries that do their network I/O on their
own threads release the GIL while an op waits for its answer, so a thread per
slot keeps many ops in flight for little CPU.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import datetime as dt
import importlib
import logging
import os
import platform
import random
import subprocess
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import orjson

from harness.config import TestDescription

PHASES = ("setup", "main", "heal", "recover", "drain", "replicas", "teardown", "check", "report")
EXIT_VALID, EXIT_INVALID, EXIT_UNKNOWN, EXIT_HARNESS_FAILED = 0, 1, 2, 3


@dataclasses.dataclass
class RunStats:
    """What the live display shows; updated by the runner's threads (plain ints: races only blur a display)."""

    phase: str = "setup"
    started: float = dataclasses.field(default_factory=time.monotonic)
    main_started: float | None = None
    ok: int = 0
    fail: int = 0
    info: int = 0
    faults: list[str] = dataclasses.field(default_factory=list)
    messages: list[str] = dataclasses.field(default_factory=list)

    @property
    def completed(self) -> int:
        return self.ok + self.fail + self.info


@dataclasses.dataclass
class RunResult:
    run_dir: Path
    valid: Any  # True | False | "unknown" | None (no verdict)
    exit_status: int
    results: dict[str, Any]
    error: str | None = None
    #: the run's index.html, None when no report could be written
    report: Path | None = None

    @property
    def anomaly_types(self) -> list[str]:
        return list(self.results.get("anomaly-types", []))


def verdict_exit_status(valid: Any, error: str | None) -> int:
    if valid is False:
        return EXIT_INVALID  # an anomaly is a finding even if the harness later failed
    if error:
        return EXIT_HARNESS_FAILED
    if valid is True:
        return EXIT_VALID
    return EXIT_UNKNOWN


def make_run_dir(results_dir: str | Path, name: str, now: dt.datetime | None = None) -> Path:
    """results/<name>/<timestamp>/ and the results/latest symlink pointing at it."""
    root = Path(results_dir)
    stamp = (now or dt.datetime.now()).strftime("%Y%m%dT%H%M%S.%f")[:-3]
    run_dir = root / name / stamp
    run_dir.mkdir(parents=True, exist_ok=False)
    (run_dir / "logs").mkdir()
    latest = root / "latest"
    tmp = root / f".latest.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(Path(name) / stamp)
    os.replace(tmp, latest)  # atomic: a reader never sees latest missing
    return run_dir


def versions(libraries: dict[str, str] | None = None) -> dict[str, Any]:
    """test.json's versions: Python, acked, the workload's client `libraries` (Workload.versions), the git commit."""
    out: dict[str, Any] = {"python": platform.python_version()}
    try:
        from importlib.metadata import version
        out["acked"] = version("acked")
    except Exception:
        pass
    out.update(libraries or {})
    try:
        here = Path(__file__).resolve().parent.parent
        out["git"] = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                                    text=True, timeout=5).stdout.strip() or None
    except Exception:
        pass
    return out


def _write_json(path: Path, data: Any) -> None:
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=_jsonable))


def _jsonable(x: Any) -> Any:
    if isinstance(x, (set, frozenset, tuple)):
        return sorted(x, key=str) if isinstance(x, (set, frozenset)) else list(x)
    if isinstance(x, Path):
        return str(x)
    return str(x)


def render_report(run_dir: Path) -> Path | None:
    """The report hook: harness.report.render(run_dir) when the report module exists; None otherwise."""
    try:
        report = importlib.import_module("harness.report")
    except ModuleNotFoundError as e:
        if e.name != "harness.report":
            raise  # the report module exists but is broken: say so
        return None
    return report.render(run_dir)


class TimedOut(Exception):
    """Raised into the harness's main thread when a test runs past its limit (the pytest plugin's per-test
    timeout): the run stops where it is, heals its faults, skips the final drain, collects its logs and
    tears its cluster down, and its verdict says it was cut."""


class Runner:
    """One run: setup, main (workload and nemesis), heal, recover, drain, teardown, check, report.

    `cluster`: a started cluster to run on (pytest's shared `acked_cluster`); the run reuses it (Cluster.reuse:
    its broker settings, a wiped slate) and leaves it running. Without it the run starts its own through
    `cluster_factory` (clusters.create_cluster) and removes it at the end.

    `workload`: the workload object to drive (workloads/base.py); without it, the description's
    (`workloads.WORKLOADS[desc.workload]`)."""

    def __init__(self, desc: TestDescription, cluster_factory: Callable | None = None,
                 log: Callable[[str], None] | None = None, cluster=None, workload=None):
        self.desc = desc.validate()
        if self.desc.seed is None:
            self.desc.seed = random.SystemRandom().randrange(2**31)
        self.cluster_factory = cluster_factory
        self.stats = RunStats()
        self.log = log or (lambda msg: None)
        self.run_dir: Path | None = None
        self.history = None
        self.cluster = cluster
        self.borrowed = cluster is not None
        self.timed_out = False
        if workload is None:
            from workloads import WORKLOADS
            workload = WORKLOADS[self.desc.workload](self.desc, log=self.log)
        self.workload = workload
        self.client_logger = None
        self._log_handler = None
        self.nemesis = None
        self._stop_main = threading.Event()
        self._next_due = 0.0
        self._workers: list[threading.Thread] = []
        self.errors: list[str] = []
        self.interrupted = False
        #: skip the recovery wait and the final drain (set by acked run's second Ctrl-C)
        self.skip_drain = False
        self.main_ops = 0
        self.main_seconds = 0.0

    # ---- bookkeeping -----------------------------------------------------------

    def _phase(self, name: str) -> None:
        self.stats.phase = name
        self.log(f"phase {name}")

    def _append(self, event: dict) -> int:
        return self.history.append(event)

    # ---- phases ----------------------------------------------------------------

    def _setup(self) -> None:
        from checkers.history import RUN_INVOKE, HistoryWriter
        import clusters
        from clusters.base import ClusterSpec
        d = self.desc
        self.client_logger = logging.getLogger(f"acked.clients.{self.run_dir.name}")
        self.client_logger.propagate = False
        self._log_handler = logging.FileHandler(self.run_dir / "logs" / "clients.log")
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.client_logger.addHandler(self._log_handler)
        self.history = HistoryWriter(self.run_dir / "history.jsonl")
        self.history.__enter__()
        self._append(RUN_INVOKE)  # says "acked's history": it ends with the run op's ok once the final drain is done
        spec = ClusterSpec(backend=d.backend, nodes=d.nodes, broker_config=d.broker_config(),
                           work_dir=Path(d.results_dir) / ".clusters" / self.run_dir.name,
                           run_id=f"{d.name}-{self.run_dir.name}", capabilities=d.capabilities())
        if self.borrowed:
            self.cluster.reuse(spec)
        else:
            factory = self.cluster_factory or clusters.create_cluster
            self.cluster = factory(spec)
            self.cluster.start()
        self.workload.setup(self.cluster, self.run_dir, self.client_logger)
        self.nemesis = self._make_nemesis()

    def _make_nemesis(self):
        from nemesis.core import Context, NoRoles
        from nemesis.schedule import NemesisRunner, plan, replay_plan
        d = self.desc
        chosen = d.packages()
        if d.replay:
            ops = replay_plan(Path(d.replay) / "nemesis.json")
        else:
            ops = plan(chosen, d.seed, d.nemesis_interval, d.time_limit, d.nemesis_schedule)
        roles = self.workload.roles() or NoRoles()
        ctx = Context(self.cluster, random.Random(d.seed + 1), roles, log=self.log)

        def on_change(active):
            self.stats.faults = active
        runner = NemesisRunner(chosen, ctx, ops, self._append, on_change)
        try:
            runner.setup()
        except BaseException:
            # a nemesis that cannot work here fails the run at setup; undo what the others prepared
            with contextlib.suppress(Exception):
                runner.nemesis.teardown(ctx)
            raise
        return runner

    def _worker(self, slot: int) -> None:
        workload = self.workload
        gen = workload.generator
        client = None
        try:
            while not self._stop_main.is_set():
                with workload.lock:
                    op = gen.next_op(slot, time.monotonic() - self.stats.main_started)
                    now = time.monotonic()
                    # pace invocations globally; never build up more than a second of backlog
                    self._next_due = max(self._next_due, now - 1.0) + gen.next_delay()
                    due = self._next_due
                if due > now and self._stop_main.wait(due - now):
                    break
                process = op["process"]
                if client is None:
                    client = workload.client(process)
                workload.prepare(op)
                self._append({"process": process, "type": "invoke", "f": op["f"], "value": op["value"]})
                completion = client.invoke(op)
                self._append({"process": process, "f": op["f"], **completion})
                workload.on_completion(op, completion)
                setattr(self.stats, completion["type"], getattr(self.stats, completion["type"]) + 1)
                with workload.lock:
                    next_process = gen.complete(slot, op, completion["type"])
                if next_process != process:
                    client.close()
                    client = None
        except Exception as e:  # noqa: BLE001 -- a dead worker must not hang the run; the error is reported
            self.errors.append(f"worker {slot}: {type(e).__name__}: {e}")
            self.log(f"worker {slot} failed: {e}")
        finally:
            if client is not None:
                client.close()

    def _main(self) -> None:
        # Every op allocates a few dozen short-lived containers: young-generation collections ran
        # every few ops and walked the harness's long-lived objects. Fewer, over what setup left frozen.
        thresholds = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(20_000, thresholds[1], thresholds[2])
        try:
            self.stats.main_started = time.monotonic()
            self._next_due = time.monotonic()
            for slot in range(self.desc.concurrency_count()):
                t = threading.Thread(target=self._worker, args=(slot,), name=f"worker-{slot}", daemon=True)
                t.start()
                self._workers.append(t)
            self.nemesis.start()
            self._stop_main.wait(self.desc.time_limit)
            self._stop_workers()
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()

    def _stop_workers(self) -> None:
        self._stop_main.set()
        if self.nemesis:
            self.nemesis.stop()
        for t in self._workers:
            t.join(self.desc.op_timeout + 15)
        if self.stats.main_started is not None and not self.main_seconds:
            self.main_seconds = time.monotonic() - self.stats.main_started
            self.main_ops = self.stats.completed
        alive = [t.name for t in self._workers if t.is_alive()]
        if alive:
            self.errors.append(f"workers still running after the main phase: {', '.join(alive)}")

    def _heal(self) -> None:
        if self.nemesis:
            try:
                self.nemesis.heal()
            finally:
                self.stats.faults = []
                self.nemesis.write(self.run_dir / "nemesis.json", self.desc.seed, self.desc.nemesis_interval,
                                   self.desc.replay)

    def _recover(self) -> None:
        self.workload.recover(self.desc.recovery_time)

    def _drain(self) -> None:
        """The workload's final phase, then the run op's ok completion: the history says the drain ran to its end
        (docs/history-format.md). Not written when the drain failed or was interrupted."""
        from checkers.history import run_completion
        stopped, keys = self.workload.final(self._append)
        self._append(run_completion(stopped, keys))

    def _replicas(self) -> None:
        """What the workload keeps of the cluster's state for its check (the queue workload: every broker's log
        of its topics, replicas.json); what cannot be collected is a harness error line, never a failed run."""
        if self.cluster is None:
            return
        try:
            lines = self.workload.collect(self.cluster, self.run_dir)
        except Exception as e:  # noqa: BLE001 -- a finding-less phase must not cost the run its verdict
            lines = [f"collecting the cluster's state for the {self.workload.name} workload: {type(e).__name__}: {e}"]
            self.log(lines[0])
        self.errors.extend(lines)

    def _teardown(self) -> None:
        try:
            self.workload.teardown()
        finally:
            if self.cluster is not None:
                try:
                    self.cluster.collect_logs(self.run_dir / "logs")
                except Exception as e:  # noqa: BLE001
                    self.errors.append(f"collecting logs: {e}")
                finally:
                    if not self.borrowed:
                        self.cluster.teardown()

    def _check(self) -> dict[str, Any]:
        return self.workload.check(self.run_dir / "history.jsonl", self.run_dir, self.desc)

    # ---- the whole run ---------------------------------------------------------

    def run(self) -> RunResult:
        d = self.desc
        self.run_dir = make_run_dir(d.results_dir, d.name)
        _write_json(self.run_dir / "test.json", {"test": d.to_dict(), "versions": versions(self.workload.versions()),
                                                  "seed": d.seed, "started": dt.datetime.now().isoformat()})
        error: str | None = None

        def guarded(phase: str, fn: Callable[[], Any]) -> Any:
            nonlocal error
            self._phase(phase)
            try:
                return fn()
            except KeyboardInterrupt:
                self.interrupted = True
                error = error or f"interrupted during {phase}"
                self.log(error)
            except TimedOut as e:
                self.interrupted = self.timed_out = self.skip_drain = True
                error = error or f"timed out during {phase}: {e}"
                self.log(error)
            except Exception as e:  # noqa: BLE001 -- every later phase still runs
                msg = f"{phase} failed: {type(e).__name__}: {e}"
                error = error or msg
                self.errors.append(msg)
                self.log(msg)
                (self.run_dir / "harness-error.txt").open("a").write(f"{msg}\n{traceback.format_exc()}\n")
            return None

        guarded("setup", self._setup)
        if error is None:
            guarded("main", self._main)
        if self._workers and not self._stop_main.is_set():
            guarded("main", self._stop_workers)  # interrupted mid-main: stop the workers before healing
        guarded("heal", self._heal)
        if self.workload.generator is not None and not self.skip_drain:
            # also after Ctrl-C or an error in main: without the drain every unread write would be "unseen";
            # another Ctrl-C skips ahead to teardown
            interrupted = self.interrupted
            if not self.skip_drain:
                guarded("recover", self._recover)
            if not self.skip_drain:
                guarded("drain", self._drain)
            if self.interrupted == interrupted:
                guarded("replicas", self._replicas)
        guarded("teardown", self._teardown)
        if self.history is not None:
            self.history.__exit__(None, None, None)
        if self._log_handler is not None:
            self.client_logger.removeHandler(self._log_handler)
            self._log_handler.close()
        results: dict[str, Any] = {}
        if self.history is not None:
            results = guarded("check", self._check) or {}
        valid = results.get("valid") if results else None
        if not results:
            results = {"valid": "unknown", "anomaly-types": [], "bad-anomaly-types": [], "anomalies": {}}
        results.setdefault("harness", {})
        results["harness"] = {"errors": self.errors, "error": error, "interrupted": self.interrupted,
                              "nemesis-errors": self.nemesis.errors if self.nemesis else [],
                              "main-phase": {"seconds": round(self.main_seconds, 3), "ops": self.main_ops,
                                             "ops-per-second": round(self.main_ops / self.main_seconds, 1)
                                             if self.main_seconds else 0.0}}
        if results.get("stats"):
            from checkers.history import client_ops   # the run's totals, as the terminal and the report show them
            results["client-ops"] = client_ops(results["stats"].get("by-f") or {})
        if results.get("valid") not in (True, False):
            from harness.report import send_failures   # an UNKNOWN run says why: the error most sends failed with
            if failed := send_failures(self.run_dir / "history.jsonl"):
                results["send-failures"] = failed
        _write_json(self.run_dir / "results.json", results)
        report = guarded("report", lambda: render_report(self.run_dir))
        self._phase("done")
        return RunResult(self.run_dir, valid, verdict_exit_status(valid, error), results, error,
                         Path(report) if report else None)


def run_test(desc: TestDescription, **kw) -> RunResult:
    return Runner(desc, **kw).run()
