"""The pipeline checker: acknowledged values against the final contents of the pipeline's store.

A pure function of a pipeline workload's history (docs/history-format.md) and its store's dump
(pipeline-store.json: every row the consumer processes stored, with the process that stored it). It finds:

- `lost-in-pipeline`: a value whose send was acknowledged (ok, with an offset) that is not in the store
  after the final phase read through the group to the logs' ends. Its record names the send's completion
  and, when there is one, the first stored record after it on its key (proof that the group went past it).
- `duplicate-delivery`: a record (key and offset) stored more than once: its rows, the processes that
  stored them and the ops that reported them.
- `unexpected-value`: a stored value no send ever invoked.

The verdict follows the commit mode's promise (docs/workloads.md): auto-commit promises nothing (its
findings are listed and allowed); commit-each, commit-every-n and at-least-once promise no loss
(duplicates are counted and allowed); exactly-once-store promises neither loss nor duplicates. It imports
nothing of the harness or the workloads.
"""
from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from typing import Any, Iterable

from .history import HARNESS, RUN_F, Problem, iter_jsonl

#: what each commit mode promises: the anomaly types that make its run invalid
PROMISES: dict[str, frozenset[str]] = {
    "auto-commit": frozenset(),
    "commit-each": frozenset({"lost-in-pipeline"}),
    "commit-every-n": frozenset({"lost-in-pipeline"}),
    "at-least-once": frozenset({"lost-in-pipeline"}),
    "exactly-once-store": frozenset({"lost-in-pipeline", "duplicate-delivery"}),
}
#: never allowed, whatever the mode: the store holds what nobody sent
ALWAYS_BAD = frozenset({"unexpected-value"})
MAX_EXAMPLES = 100


def check_path(history, store, *, commit_mode: str) -> dict[str, Any]:
    """Check a history.jsonl and a pipeline-store.json (a path, its loaded data, or None when it is missing)."""
    problems: list[Problem] = []
    events = [ev for _, ev in iter_jsonl(history, problems)]
    if isinstance(store, (str, os.PathLike)):
        with open(store) as f:
            store = json.load(f)
    res = check(events, store, commit_mode=commit_mode)
    res["history-problems"] = [p.to_json() for p in problems[:100]]
    res["history-problem-count"] = len(problems)
    return res


def check(events: Iterable[dict], store: dict | None, *, commit_mode: str) -> dict[str, Any]:
    if commit_mode not in PROMISES:
        raise ValueError(f"commit_mode must be one of {', '.join(PROMISES)}, not {commit_mode!r}")
    events = list(events)
    for i, ev in enumerate(events):
        ev.setdefault("index", i)
    by_f: dict[str, Counter] = defaultdict(Counter)
    invoked: set = set()               # every value a send invoked
    acked: dict[Any, tuple] = {}        # value -> (key, offset, completion index)
    maybe: set = set()                  # values whose send ended info
    reported: dict[tuple, list[int]] = defaultdict(list)   # (process, key, offset) -> indexes of ops reporting it
    polled: dict[tuple, list[int]] = defaultdict(list)     # (process, key, offset) -> ops whose polls returned it
    crashed: dict[Any, int] = {}                            # process -> index of its crash's completion
    run_ok = run_invoked = False
    for ev in events:
        f, t, p = ev.get("f"), ev.get("type"), ev.get("process")
        if p == HARNESS and f == RUN_F:
            run_invoked |= t == "invoke"
            run_ok |= t == "ok"
            continue
        if t != "invoke":
            by_f[f][t] += 1
        value = ev.get("value")
        if f == "send" and isinstance(value, list):
            for mop in value:
                if t == "invoke":
                    invoked.add(_hashable(mop[2]))
                elif t == "ok" and isinstance(mop[2], list) and mop[2][0] is not None:
                    acked[_hashable(mop[2][1])] = (mop[1], mop[2][0], ev["index"])
                elif t == "info" and isinstance(mop[2], list):
                    maybe.add(_hashable(mop[2][1]))
        elif f in ("process", "crash", "stop") and t != "invoke" and isinstance(value, list):
            if f == "crash":
                crashed[p] = ev["index"]
            for mop in value:
                if len(mop) > 1 and isinstance(mop[1], dict):
                    into = polled if mop[0] == "poll" else reported
                    for key, recs in mop[1].items():
                        for off, _ in recs:
                            into[(p, key, off)].append(ev["index"])

    anomalies: dict[str, list] = {}
    counts: Counter = Counter()

    def add(kind: str, rec: dict) -> None:
        counts[kind] += 1
        lst = anomalies.setdefault(kind, [])
        if len(lst) < MAX_EXAMPLES:
            lst.append(rec)

    cut = run_invoked and not run_ok
    if store is None:
        return _results(commit_mode, "unknown", anomalies, counts, by_f, {},
                        "the store's contents (pipeline-store.json) are missing, so nothing could be checked", cut)
    cols = store.get("columns") or ["id", "key", "offset", "value", "process"]
    rows = [dict(zip(cols, r)) for r in store.get("rows", [])]
    stored_values = Counter(_hashable(r["value"]) for r in rows)
    by_record: dict[tuple, list[dict]] = defaultdict(list)
    by_key: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        by_record[(r["key"], r["offset"])].append(r)
        by_key[r["key"]].append(r["offset"])
    for offs in by_key.values():
        offs.sort()

    for value, (key, offset, index) in sorted(acked.items(), key=lambda kv: (kv[1][0], kv[1][1])):
        if value in stored_values:
            continue
        after = next((o for o in by_key.get(key, []) if o > offset), None)
        rec = {"value": value, "key": key, "offset": offset, "ops": [index],
               "explanation": f"value {value} was acknowledged at offset {offset} of key {key} (op {index}) and is "
                              f"not in the store after the final phase read through the group"}
        if after is not None:
            later = by_record[(key, after)][0]
            ops = reported.get((later["process"], key, after), [])
            rec["stored-after"] = {"offset": after, "process": later["process"], "ops": ops}
            rec["ops"] += ops[:1]
            rec["explanation"] += f"; process {later['process']} stored offset {after} of that key"
        pollers = sorted((i[0], proc) for (proc, k, o), i in polled.items() if k == key and o == offset)
        if pollers:
            rec["polled-by"] = [{"process": proc, "op": i, **({"crashed-op": crashed[proc]} if proc in crashed else {})}
                                for i, proc in pollers]
            first_i, proc = pollers[0]
            rec["ops"] += [first_i] + ([crashed[proc]] if proc in crashed else [])
            rec["explanation"] += (f"; process {proc}'s poll returned it (op {first_i})" +
                                   (f" and the process was killed (op {crashed[proc]}) before storing it"
                                    if proc in crashed else ""))
        add("lost-in-pipeline", rec)

    for (key, offset), recs in sorted(by_record.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        if len(recs) < 2:
            continue
        ops = sorted({i for r in recs for i in reported.get((r["process"], key, offset), [])})
        add("duplicate-delivery", {
            "key": key, "offset": offset, "value": recs[0]["value"], "count": len(recs),
            "processes": [r["process"] for r in recs], "rows": [r["id"] for r in recs], "ops": ops,
            "explanation": f"offset {offset} of key {key} (value {recs[0]['value']}) was stored {len(recs)} times, "
                           f"by processes {', '.join(str(r['process']) for r in recs)}"})

    for r in rows:
        if _hashable(r["value"]) not in invoked:
            add("unexpected-value", {"key": r["key"], "offset": r["offset"], "value": r["value"],
                                     "process": r["process"], "row": r["id"],
                                     "ops": reported.get((r["process"], r["key"], r["offset"]), [])[:1],
                                     "explanation": f"value {r['value']} is in the store but no send invoked it"})

    dup_records = [len(v) for v in by_record.values() if len(v) > 1]
    stats = {"by-f": {f: dict(c) for f, c in sorted(by_f.items())}, "events": len(events),
             "keys": len({r["key"] for r in rows} | {k for k, _, _ in acked.values()}),
             "acknowledged": len(acked), "indeterminate": len(maybe - set(acked)),
             "stored-rows": len(rows), "stored-records": len(by_record),
             "acknowledged-and-stored": sum(1 for v in acked if v in stored_values),
             "lost-in-pipeline": counts["lost-in-pipeline"],
             "duplicate-records": len(dup_records), "duplicate-extra-rows": sum(n - 1 for n in dup_records),
             "history-reported-records": len(reported)}
    unknown = None
    if counts["lost-in-pipeline"] and cut:
        unknown = ("the history ends before the final phase completed (acked's run op never completed ok), so a "
                   "value missing from the store may only not have been processed yet")
    elif not rows and not acked:
        unknown = "nothing was acknowledged or stored, so nothing could be verified"
    return _results(commit_mode, None, anomalies, counts, by_f, stats, unknown, cut)


def _results(mode, valid, anomalies, counts, by_f, stats, unknown, cut) -> dict[str, Any]:
    types = sorted(counts)
    promised = PROMISES[mode] | ALWAYS_BAD
    bad = [t for t in types if t in promised]
    allowed = {t: (f"commit-mode {mode} promises nothing" if mode == "auto-commit" else
                   f"commit-mode {mode} promises no loss, not no duplicates") for t in types if t not in promised}
    if valid is None:
        if bad and not (unknown and bad == ["lost-in-pipeline"]):
            valid = False
        elif unknown:
            valid = "unknown"
        else:
            valid = True
    res = {"valid": valid, "anomaly-types": types, "bad-anomaly-types": bad if valid is False else [],
           "allowed-anomalies": allowed, "anomaly-counts": dict(sorted(counts.items())),
           "anomalies": {t: anomalies[t] for t in types},
           "options": {"workload": "pipeline", "commit-mode": mode, "promises": sorted(PROMISES[mode])},
           "stats": stats or {"by-f": {f: dict(c) for f, c in sorted(by_f.items())}}}
    if cut:
        res["history-cut"] = True
    if valid == "unknown" and unknown:
        res["unknown-reason"] = unknown
    return res


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v
