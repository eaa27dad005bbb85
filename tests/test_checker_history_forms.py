"""One history in other forms gets the verdict of its canonical form (issue 16).

The canonical form is what acked's HistoryWriter writes: every line with `index` and `time`, the fields in the
writer's order. Other tools write histories too (Jepsen's EDN, exports, hand-made files), and a crashed run cuts
its last line. Each form below is checked from a file by `checkers.check_path`, as `acked check` does, whose
fast path takes only canonical lines and sends every other block through the general path: both must reach
the canonical verdict, anomaly for anomaly.
"""
from __future__ import annotations

import copy
import random

import orjson
import pytest

from checkers import check, check_path
from checkers.edn import write_edn
from checkers.synth import generate

FIELD_ORDER = ("process", "type", "f", "value", "index", "time")  # HistoryWriter's (checkers.history.Event)


def canonical():
    """A generated history with an injected fault of each half: a lost write, a skipping consumer, a G1a."""
    events = generate(3, n_ops=600, threads=4, active_keys=3, rotate_every=200, p_fail=0.05, p_info=0.05, batch=2)
    acked = [(m[1], m[2][1]) for e in events if e["f"] == "send" and e["type"] == "ok" for m in e["value"]]
    k, v = acked[len(acked) // 2]
    for e in events:
        if e["f"] == "poll" and e["type"] == "ok" and e["value"][0][1].get(k):
            e["value"][0][1][k] = [p for p in e["value"][0][1][k] if p[1] != v]
    fk, fv = next((m[1], m[2]) for e in events if e["f"] == "send" and e["type"] == "fail" for m in e["value"])
    t = events[-1]["time"]
    for i, (typ, value) in enumerate((("invoke", [["poll"]]), ("ok", [["poll", {fk: [[10**6, fv]]}]]))):
        events.append({"process": 99, "type": typ, "f": "poll", "value": value, "index": len(events),
                       "time": t + i + 1})
    return [{f: e[f] for f in FIELD_ORDER if f in e} | e for e in events]


EVENTS = canonical()


def verdict(res):
    return {f: res[f] for f in ("valid", "anomaly-types", "bad-anomaly-types", "anomaly-counts", "anomalies")}


def jsonl(events):
    return b"".join(orjson.dumps(e) + b"\n" for e in events)


def reordered(events):
    """Each line's fields in another order (value first, index last, ...)."""
    rng = random.Random(1)
    out = []
    for e in events:
        keys = list(e)
        rng.shuffle(keys)
        out.append({k: e[k] for k in keys})
    return jsonl(out)


def without_index(events):
    return jsonl([{k: v for k, v in e.items() if k != "index"} for e in events])


def with_extra_fields(events):
    """Fields acked's reader does not know (another tool's, or a later acked's) on every line."""
    return jsonl([{"wall-clock": "2026-12-05T07:00:00Z", **e, "node": "n1", "trace": {"span": i, "tags": ["a"]}}
                  for i, e in enumerate(events)])


def without_time(events):
    """No clock at all (a hand-made or converted history): no latency series, the same verdict."""
    return jsonl([{k: v for k, v in e.items() if k != "time"} for e in events])


FORMS = {"fields in another order": reordered, "no index": without_index, "extra fields": with_extra_fields,
         "no time": without_time}


def test_the_canonical_file_gets_the_verdict_of_the_events():
    expected = check(copy.deepcopy(EVENTS))
    assert {"lost-write", "G1a", "int-poll-skip"} <= set(expected["bad-anomaly-types"])
    assert expected["history-problem-count"] == 0


@pytest.mark.parametrize("form", FORMS, ids=str)
def test_a_history_in_another_form_gets_the_canonical_verdict(form, tmp_path):
    expected = verdict(check(copy.deepcopy(EVENTS)))
    path = tmp_path / "history.jsonl"
    path.write_bytes(FORMS[form](copy.deepcopy(EVENTS)))
    res = check_path(path)
    assert verdict(res) == expected
    assert res["history-problem-count"] == 0


def test_jepsens_edn_form_gets_the_canonical_verdict(tmp_path):
    expected = verdict(check(copy.deepcopy(EVENTS)))
    path = tmp_path / "history.edn"
    with open(path, "w") as f:
        write_edn(copy.deepcopy(EVENTS), f)
    res = check_path(path, format="edn")
    assert verdict(res) == expected and res["history-problem-count"] == 0


@pytest.mark.parametrize("form", [None, *FORMS], ids=lambda f: f or "canonical")
def test_a_history_cut_inside_its_last_line_gets_the_verdict_of_the_lines_before(form, tmp_path):
    """A crashed run's last line is half written: it is one problem, and the rest is checked as if the
    history ended before it."""
    blob = (FORMS[form] if form else jsonl)(copy.deepcopy(EVENTS))
    path = tmp_path / "history.jsonl"
    path.write_bytes(blob[:-25])
    res = check_path(path)
    assert verdict(res) == verdict(check(copy.deepcopy(EVENTS[:-1])))
    assert res["history-problem-count"] == 1 and "truncated last line" in res["history-problems"][0]["message"]
