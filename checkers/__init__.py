"""Checkers: pure functions from a history to results (ARCHITECTURE.md).

`check(history, ...)` takes a `History` (from `read_history`), a list of event
dicts, or a path to a history.jsonl, and returns the results.json structure:
valid, anomaly-types, bad-anomaly-types, anomalies, stats, perf (documented in
docs/history-format.md and docs/anomalies.md).
"""
from __future__ import annotations

import os

from .history import History, HistoryError, HistoryWriter, Problem, iter_jsonl, read_history
from .queue import QueueChecker

__all__ = ["check", "check_path", "History", "HistoryError", "HistoryWriter", "Problem", "read_history"]


def check(history, *, sub_via="assign", txn=False, ww_deps=False, delivery="exactly-once") -> dict:
    """Check a history; the options say which guarantees the run declared."""
    if isinstance(history, (str, os.PathLike)):
        return check_path(history, sub_via=sub_via, txn=txn, ww_deps=ww_deps, delivery=delivery)
    chk = QueueChecker(sub_via=sub_via, txn=txn, ww_deps=ww_deps, delivery=delivery)
    if isinstance(history, History):
        chk.problems.extend((p.line, p.message) for p in history.problems)
        events = history.events
    else:
        events = list(history)
    chk.feed((i + 1, ev) for i, ev in enumerate(events))
    return chk.finish()


def check_path(path, *, format="jsonl", sub_via="assign", txn=False, ww_deps=False,
               delivery="exactly-once", parallel=False) -> dict:
    """Check a history file, streaming it: events are folded as they are parsed.

    parallel=True splits the work over two processes with fork() (see
    checkers/parallel.py); only for callers without threads, like `acked check`.
    """
    if parallel and format == "jsonl" and hasattr(os, "fork"):
        from .parallel import check_path_parallel
        opts = {"sub_via": sub_via, "txn": txn, "ww_deps": ww_deps, "delivery": delivery}
        return check_path_parallel(path, opts, _open_history)
    chk = QueueChecker(sub_via=sub_via, txn=txn, ww_deps=ww_deps, delivery=delivery)
    problems: list[Problem] = []
    if format == "jsonl":
        with _open_history(path) as fh:
            chk.feed_file(fh)
    else:
        h = read_history(path, format=format)
        problems = h.problems
        chk.feed((i + 1, ev) for i, ev in enumerate(h.events))
    chk.problems[:0] = [(p.line, p.message) for p in problems]
    return chk.finish()


def _open_history(path):
    """Open a history.jsonl, raising HistoryError unless its first line is an event."""
    problems: list[Problem] = []
    for _ in iter_jsonl(path, problems):  # validates the first line (or the file is empty)
        break
    return open(path, "rb")
