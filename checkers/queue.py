"""The queue safety checker: one pass folds the history, small analyses find the anomalies, settings decide.

Semantics follow Jepsen's Kafka checker (jepsen.tests.kafka `checker` and `analysis`); docs/anomalies.md
explains every anomaly type. The pass (checkers/fold.py) builds per-key and per-process indexes in one sweep
over the events, so a million events fold in seconds; each anomaly type is then a small function of that
fold (checkers/cases.py, checkers/txn.py), as in Jepsen. This module runs them, keeps a bounded number of
records per type, and turns the declared settings into the verdict (Jepsen's allowed-error-types).
"""
from __future__ import annotations

from .cases import KEY_CASES, PROCESS_CASES, lost_write_cases
from .fold import Fold, HistoryPass, no_gc

# Allowed anomaly types (they never make a run invalid), as in Jepsen.
ALWAYS_ALLOWED = {"int-send-skip", "G0", "G0-process", "G0-realtime"}

MAX_EXAMPLES = 1000  # anomalies kept per type; anomaly-counts has the totals
#: Why `unseen` does not make a cut history invalid (docs/anomalies.md, "Cut histories").
CUT_REASON = ("the history ends before the final drain completed (acked's run op never completed ok), "
              "so an unseen value may only not have been read yet")


class QueueChecker(HistoryPass):
    """Feed it a history (feed, feed_lines, feed_file), then `finish()` returns results.json."""

    def __init__(self, *, sub_via="assign", txn=False, ww_deps=False, delivery="exactly-once",
                 max_examples=MAX_EXAMPLES):
        if sub_via not in ("assign", "subscribe"):
            raise ValueError(f"sub_via must be assign or subscribe, not {sub_via!r}")
        if delivery not in ("exactly-once", "at-least-once"):
            raise ValueError(f"delivery must be exactly-once or at-least-once, not {delivery!r}")
        self.opts = {"sub-via": sub_via, "txn": bool(txn), "ww-deps": bool(ww_deps), "delivery": delivery}
        super().__init__(Fold(self.opts), collect_txn=bool(txn))
        self.max_examples = max_examples
        self.problems = self.fold.problems
        self.anoms: dict[str, list] = {}
        self.counts: dict[str, int] = {}

    def add(self, cases):
        """Count every (type, record) of an analysis; keep the first max_examples records per type."""
        counts, anoms, cap = self.counts, self.anoms, self.max_examples
        for kind, rec in cases:
            counts[kind] = counts.get(kind, 0) + 1
            lst = anoms.setdefault(kind, [])
            if len(lst) < cap:
                lst.append(rec)

    def finish(self) -> dict:
        with no_gc():
            fold = self.close()
            for analysis in KEY_CASES + PROCESS_CASES + (lost_write_cases,):
                self.add(analysis(fold))
            return self._results()

    def allowed_types(self) -> set:
        return set(self.allowed_reasons())

    def allowed_reasons(self) -> dict[str, str]:
        """Anomaly types that do not make the run invalid, each with the setting that allows it. They are
        still counted and listed: a finding the user declared acceptable is shown, never dropped."""
        why = dict.fromkeys(ALWAYS_ALLOWED, "not an anomaly of Kafka's model (Jepsen reports it for reference)")
        if self.opts["sub-via"] == "subscribe":
            why.update(dict.fromkeys(("poll-skip", "nonmonotonic-poll"),
                                     "sub-via=subscribe: a rebalance may move a consumer's position"))
        if self.opts["ww-deps"]:
            why.update(dict.fromkeys(("G1c", "G1c-process", "G1c-realtime"), "ww-deps: write-write edges are inferred"))
        if self.opts["delivery"] == "at-least-once":
            why["duplicate"] = "delivery=at-least-once was declared for this run"
        if self.fold.history_cut():
            why["unseen"] = CUT_REASON
        return why

    def _results(self, counted=None) -> dict:
        """results.json; counted: the totals, when they were counted already."""
        counted = totals(self.fold) if counted is None else counted
        types = sorted(self.counts)
        reasons = self.allowed_reasons()
        bad = [t for t in types if t not in reasons]
        unknown_reason = None
        if bad:
            valid = False
        elif not self.fold.any_ok_read:
            valid = "unknown"
            unknown_reason = "no poll completed ok with any record, so nothing could be verified"
        elif "unseen" in self.counts and self.fold.history_cut():
            valid = "unknown"
            n = counted["acknowledged-but-never-read"]
            unknown_reason = (f"the history ends before the final drain completed, so the {n} unseen value(s) "
                              "may only not have been read yet (every other anomaly type was checked: none makes the "
                              "history invalid)")
        else:
            valid = True
        stats = self.fold.stats.summary()
        stats["events"] = self.fold.n_events
        stats.update(counted)
        res = {
            "valid": valid,
            "anomaly-types": types,
            "bad-anomaly-types": bad,
            "allowed-anomalies": {t: r for t, r in reasons.items() if t in self.counts},
            "anomaly-counts": dict(sorted(self.counts.items())),
            "anomalies": {t: self.anoms[t] for t in types},
            "options": dict(self.opts),
            "history-problems": [{"line": ln, "message": m} for ln, m in self.problems[:100]],
            "history-problem-count": len(self.problems),
            "stats": stats,
            "perf": self.fold.stats.series(),
        }
        if self.fold.history_cut():
            res["history-cut"] = True
        if unknown_reason is not None:
            res["unknown-reason"] = unknown_reason
        return res


def totals(fold) -> dict:
    """Kafka system-test style totals: acknowledged, read, acknowledged-but-never-read."""
    acked = read_acked = 0
    for ks in fold.keys.values():
        acked += len(ks.acked)
        read_acked += len(ks.acked) - len(ks.unseen)
    return {
        "keys": len(fold.keys),
        "acknowledged": acked,
        "read": sum(len(ks.read) for ks in fold.keys.values()),
        "acknowledged-and-read": read_acked,
        "acknowledged-but-never-read": acked - read_acked,
        "unseen-by-key": {k: len(ks.unseen) for k, ks in sorted(fold.keys.items()) if ks.unseen},
    }
