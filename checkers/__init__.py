"""Checkers: pure functions from a history to results (ARCHITECTURE.md).

`check(history, ...)` takes a `History` (from `read_history`), a list of event
dicts, or a path to a history.jsonl, and returns the results.json structure:
valid, anomaly-types, bad-anomaly-types, anomalies, stats, perf (documented in
docs/history-format.md and docs/anomalies.md).

`replicas=` (both functions) also compares the brokers' logs collected after the run (replicas.json,
checkers/divergence.py): a `replica-divergence` found there makes the results invalid too.
"""
from __future__ import annotations

import os

import orjson

from .history import History, HistoryError, HistoryWriter, Problem, iter_jsonl, read_history
from .queue import QueueChecker

__all__ = ["check", "check_path", "with_replicas", "History", "HistoryError", "HistoryWriter", "Problem", "read_history"]


def check(history, *, sub_via="assign", txn=False, ww_deps=False, delivery="exactly-once", replicas=None) -> dict:
    """Check a history; the options say which guarantees the run declared. `replicas`: replicas.json (a path
    or its loaded data) to compare as well, or None."""
    if isinstance(history, (str, os.PathLike)):
        return check_path(history, sub_via=sub_via, txn=txn, ww_deps=ww_deps, delivery=delivery, replicas=replicas)
    chk = QueueChecker(sub_via=sub_via, txn=txn, ww_deps=ww_deps, delivery=delivery)
    if isinstance(history, History):
        chk.problems.extend((p.line, p.message) for p in history.problems)
        events = history.events
    else:
        events = list(history)
    chk.feed((i + 1, ev) for i, ev in enumerate(events))
    return with_replicas(chk.finish(), replicas)


def check_path(path, *, format="jsonl", sub_via="assign", txn=False, ww_deps=False,
               delivery="exactly-once", replicas=None) -> dict:
    """Check a history file, streaming it: events are folded as they are parsed."""
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
    return with_replicas(chk.finish(), replicas)


def with_replicas(results: dict, replicas) -> dict:
    """results with the replica-divergence check of replicas.json merged in (checkers/divergence.py).
    `replicas`: a path, the loaded data, or None (history only: results unchanged). A file that cannot be
    read is reported under results["replicas"]["errors"]; the history's verdict stands."""
    if replicas is None:
        return results
    from . import divergence
    if isinstance(replicas, (str, os.PathLike)):
        try:
            with open(replicas, "rb") as f:
                replicas = orjson.loads(f.read())
            if not isinstance(replicas, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            results["replicas"] = {"errors": [f"{os.fspath(replicas)} cannot be read: {e}"]}
            return results
    return divergence.merge(results, replicas)


def _open_history(path):
    """Open a history.jsonl, raising HistoryError unless its first line is an event."""
    problems: list[Problem] = []
    for _ in iter_jsonl(path, problems):  # validates the first line (or the file is empty)
        break
    return open(path, "rb")
