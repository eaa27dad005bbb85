"""`acked check` and `acked export` (registered by harness/cli.py).

Exit statuses of `acked check`: 0 valid, 1 invalid, 2 unknown, 3 the history
could not be read (missing file, not a history), 4 bad arguments or output.

`Parser` is the argument parser of every acked command line (harness/cli.py
uses it too): it lives here, in the lowest room with a command line, so that
checkers import nothing of the harness (ARCHITECTURE.md).
"""
from __future__ import annotations

import argparse
import os
import sys

from checkers.history import client_ops, client_ops_text

EXIT_VALID, EXIT_INVALID, EXIT_UNKNOWN, EXIT_BAD_HISTORY, EXIT_ERROR = 0, 1, 2, 3, 4
EXIT_BAD_USAGE = 4


class Parser(argparse.ArgumentParser):
    """An argument error is one line and exit 4, as a bad test description is (docs/running.md, "Exit
    statuses"); the usage block only on --help. Subcommands' parsers are of this class too (argparse makes
    them with the parent's class)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_USAGE, f"acked: error: {message} (see {self.prog} --help)\n")

    def parse_command_line(self, argv: list[str] | None, subcommands: tuple[str, ...] = ("command",)):
        """parse_args, but an unrecognized argument names the (sub)command whose --help lists what it takes:
        `subcommands` are the dests of the nested subparsers, outermost first."""
        args, extra = self.parse_known_args(argv)
        if extra:
            cmd = " ".join([self.prog] + [c for c in (getattr(args, d, None) for d in subcommands) if c])
            self.exit(EXIT_BAD_USAGE, f"acked: error: unrecognized arguments: {' '.join(extra)} "
                                      f"(see {cmd} --help)\n")
        return args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check", help="check a history for lost, reordered or duplicated writes",
        description="Check a queue history (history.jsonl, or Jepsen's history.edn with --format edn) "
                    "and report anomalies in Jepsen's vocabulary. Exit 0 valid, 1 invalid, 2 unknown, "
                    "3 the history could not be read, 4 bad arguments or -o cannot be written (one line "
                    "on stderr).")
    p.add_argument("history", help="path to history.jsonl (or a run directory containing one)")
    p.add_argument("--json", action="store_true", help="print results.json on stdout instead of a summary")
    p.add_argument("--format", choices=("jsonl", "edn"), default=None,
                   help="history format (default: edn for *.edn files, else jsonl)")
    p.add_argument("--sub-via", choices=("assign", "subscribe"), default="assign",
                   help="how consumers got their partitions; subscribe allows poll-skip and "
                        "nonmonotonic-poll (rebalances move positions)")
    p.add_argument("--txn", action="store_true",
                   help="transactional run: build the dependency graph of all ops and look for G0/G1c cycles")
    p.add_argument("--ww-deps", action="store_true",
                   help="also infer write-write dependencies from the offset order (allows G1c, as in Jepsen)")
    p.add_argument("--delivery", choices=("exactly-once", "at-least-once"), default="exactly-once",
                   help="declared delivery guarantee; at-least-once allows duplicate")
    p.add_argument("--replicas", metavar="FILE",
                   help="also compare the brokers' logs collected after the run (replicas.json) and report "
                        "replica-divergence (default: the replicas.json beside the history, when there is one)")
    p.add_argument("-o", "--output", help="also write results.json to this file")
    p.set_defaults(func=cmd_check)

    e = subparsers.add_parser(
        "export", help="convert a history between JSON Lines and Jepsen's EDN",
        description="Convert a history: --edn writes Jepsen's history.edn (one map per line, "
                    "keywords for type, f and micro-op names, integer keys where possible) so Jepsen's "
                    "own Kafka checker can cross-check it; --jsonl converts an EDN history back.")
    e.add_argument("history", help="input history (jsonl, or edn with --jsonl)")
    fmt = e.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--edn", action="store_true", help="write Jepsen EDN")
    fmt.add_argument("--jsonl", action="store_true", help="write acked JSON Lines")
    e.add_argument("-o", "--output", help="output file (default: stdout)")
    e.set_defaults(func=cmd_export)


def _resolve(path: str) -> str:
    if os.path.isdir(path):
        for name in ("history.jsonl", "history.edn"):
            cand = os.path.join(path, name)
            if os.path.exists(cand):
                return cand
    return path


def _replicas_of(args, history_path: str) -> str | None:
    """--replicas, else the run directory's replicas.json beside the history if it exists."""
    if getattr(args, "replicas", None):
        return args.replicas
    beside = os.path.join(os.path.dirname(history_path), "replicas.json")
    return beside if os.path.isfile(beside) else None


def _err(msg: str, code: int) -> int:
    print(f"acked: {msg}", file=sys.stderr)
    return code


def cmd_check(args) -> int:
    # The stats use numpy for one sort; OpenBLAS would start a thread per
    # core at import, which costs more CPU than the whole sort.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import orjson

    from . import check_path
    from .history import HistoryError

    path = _resolve(args.history)
    fmt = args.format or ("edn" if path.endswith(".edn") else "jsonl")
    store = os.path.join(os.path.dirname(path), "pipeline-store.json")
    try:
        if fmt == "jsonl" and os.path.isfile(store):
            # a pipeline run (docs/workloads.md): its store's dump names the commit mode the run is judged by
            from . import pipeline
            with open(store, "rb") as f:
                mode = orjson.loads(f.read()).get("commit-mode", "at-least-once")
            res = pipeline.check_path(path, store, commit_mode=mode)
        else:
            res = check_path(path, format=fmt, sub_via=args.sub_via, txn=args.txn, ww_deps=args.ww_deps,
                             delivery=args.delivery, replicas=_replicas_of(args, path))
    except HistoryError as e:
        return _err(str(e), EXIT_BAD_HISTORY)
    blob = orjson.dumps(res, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n"
    if args.output:
        try:
            with open(args.output, "wb") as f:
                f.write(blob)
        except OSError as e:
            return _err(f"cannot write {args.output}: {e.strerror}", EXIT_ERROR)
    if args.json:
        sys.stdout.buffer.write(blob)
        sys.stdout.flush()
    else:
        print(summary(res, path))
    v = res["valid"]
    return EXIT_VALID if v is True else EXIT_INVALID if v is False else EXIT_UNKNOWN


def summary(res: dict, path: str) -> str:
    st = res["stats"]
    if (res.get("options") or {}).get("workload") == "pipeline":
        lines = [f"{path}: pipeline, commit-mode {res['options']['commit-mode']}: {st['events']} events, "
                 f"{st['acknowledged']} acknowledged, {st['acknowledged-and-stored']} of them stored, "
                 f"{st['stored-rows']} rows in the store"]
    else:
        lines = [f"{path}: {st['events']} events, {st['keys']} keys, "
                 f"{st['acknowledged']} acknowledged, {st['acknowledged-and-read']} of them read, "
                 f"{st['acknowledged-but-never-read']} never read"]
    # the run's totals as `acked run` and the report write them: client ops, not the faults' ops
    lines.append(f"client ops completed: {client_ops_text(client_ops(st.get('by-f') or {}))}")
    if res.get("history-problem-count"):
        first = res["history-problems"][0]
        lines.append(f"history problems: {res['history-problem-count']} "
                     f"(first: line {first['line']}: {first['message']})")
    allowed = res.get("allowed-anomalies") or dict.fromkeys(set(res["anomaly-types"]) - set(res["bad-anomaly-types"]),
                                                            "the declared settings")
    for t in res["anomaly-types"]:
        n = res["anomaly-counts"][t]
        tag = f" (allowed: {allowed[t]})" if t in allowed else ""
        lines.append(f"  {t}: {n}{tag}")
        ex = res["anomalies"][t][0]
        lines.append(f"    e.g. {ex['explanation']}")
    reps = res.get("replicas")
    if reps is not None:
        lines.append(replicas_line(reps))
    v = res["valid"]
    verdict = {True: "VALID", False: "INVALID"}.get(v, "UNKNOWN")
    if v == "unknown":
        verdict += f" ({res.get('unknown-reason', '')})"
    elif v is False:
        verdict += f": {', '.join(res['bad-anomaly-types'])}"
    lines.append(verdict)
    return "\n".join(lines)


def replicas_line(reps: dict) -> str:
    """One line on the replica comparison (results.json's `replicas`)."""
    if "partitions" not in reps:
        return f"replicas: not compared ({'; '.join(reps.get('errors') or ['no data'])})"
    line = (f"replicas: {reps['partitions']} partitions, {reps['replicas']} replicas on "
            f"{len(reps['nodes'])} nodes compared; {reps['divergent-pairs']} divergent pair(s)")
    if reps.get("errors"):
        line += f"; {len(reps['errors'])} could not be read (first: {reps['errors'][0]})"
    return line


def cmd_export(args) -> int:
    from .edn import write_edn, write_jsonl
    from .history import HistoryError, read_history

    path = _resolve(args.history)
    try:
        if args.edn:
            h = read_history(path, format="edn" if path.endswith(".edn") else "jsonl")
        else:
            h = read_history(path, format="edn")
    except HistoryError as e:
        return _err(str(e), EXIT_BAD_HISTORY)
    out = open(args.output, "w") if args.output else sys.stdout
    try:
        (write_edn if args.edn else write_jsonl)(h.events, out)
        out.flush()
    except BrokenPipeError:  # `acked export ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        return _err(f"cannot write {args.output}: {e.strerror}", EXIT_ERROR)
    finally:
        if args.output:
            out.close()
    for p in h.problems[:5]:
        print(f"acked: warning: {path}: {p}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    """`python -m checkers.cli check|export ...`: the same commands without the rest of acked."""
    parser = Parser(prog="acked", description="acked check and acked export, without the rest of acked. "
                                              "Exit 4 on bad arguments (one line on stderr).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    register(sub)
    args = parser.parse_command_line(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_USAGE
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
