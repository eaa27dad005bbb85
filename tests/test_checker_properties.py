"""Properties: histories of a correct log model are valid; each injected fault is caught, and nothing else.

Every fault test draws only histories where the fault can be injected (hypothesis `assume`), asserts the
anomaly it must cause, and that no other type makes the history invalid: a checker that flagged everything
would fail them.
"""
from __future__ import annotations

import copy

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from checkers import check
from checkers.synth import generate

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

models = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1),
    "n_ops": st.integers(10, 300),
    "threads": st.integers(1, 5),
    "active_keys": st.integers(1, 5),
    "rotate_every": st.sampled_from([0, 25, 100]),
    "max_poll": st.integers(1, 20),
    "p_fail": st.sampled_from([0.0, 0.05, 0.2]),
    "p_info": st.sampled_from([0.0, 0.05, 0.2]),
    "p_crash": st.sampled_from([0.0, 0.02]),
    "batch": st.integers(1, 3),
})


def history(params):
    return generate(params["seed"], **{k: v for k, v in params.items() if k != "seed"})


def ok_polls(events):
    return [e for e in events if e["f"] == "poll" and e["type"] == "ok"]


def acked_values(events):
    """(key, offset, value) of every ok send."""
    out = []
    for e in events:
        if e["f"] == "send" and e["type"] == "ok":
            for _, k, (o, v) in e["value"]:
                out.append((k, o, v))
    return out


def append_op(events, process, f, inv_value, value, t="ok", **extra):
    time = events[-1]["time"] + 1000
    events.append({"index": len(events), "time": time, "process": process, "type": "invoke", "f": f,
                   "value": inv_value, **extra})
    events.append({"index": len(events), "time": time + 500, "process": process, "type": t, "f": f,
                   "value": value, **extra})


@SETTINGS
@given(models)
def test_correct_model_is_valid(params):
    res = check(history(params))
    assert res["valid"] in (True, "unknown"), res["anomalies"]
    assert res["anomaly-types"] == [], res["anomalies"]
    assert res["history-problem-count"] == 0
    assert res["stats"]["acknowledged-but-never-read"] == 0  # the final drain read everything
    if res["stats"]["acknowledged"]:
        assert res["valid"] is True


@SETTINGS
@given(models, st.booleans())
def test_transactional_checking_finds_nothing_in_a_correct_model(params, ww_deps):
    """--txn: every op in the dependency graph (with or without ww edges); a correct log has no cycle."""
    res = check(history(params), txn=True, ww_deps=ww_deps)
    assert res["anomaly-types"] == [], res["anomalies"]


def bad_types(res) -> set:
    return set(res["bad-anomaly-types"])


@SETTINGS
@given(models, st.data())
def test_dropped_acknowledged_value_is_lost(params, data):
    events = history(params)
    acked = acked_values(events)
    # a value below the key's last record, so a later read passes over it
    last = {}
    for k, o, v in acked:
        last[k] = max(last.get(k, -1), o)
    cands = [a for a in acked if a[1] < last[a[0]]]
    assume(cands)
    k, o, v = data.draw(st.sampled_from(cands))
    for e in ok_polls(events):
        pairs = e["value"][0][1].get(k)
        if pairs:
            pairs[:] = [p for p in pairs if p[1] != v]
    res = check(events)
    assert "lost-write" in res["bad-anomaly-types"]
    # the reads that passed over it skip a known offset; nothing else is wrong
    assert bad_types(res) <= {"lost-write", "unseen", "int-poll-skip", "poll-skip"}
    assert any(r["key"] == k and r["value"] == v for r in res["anomalies"]["lost-write"])
    assert "unseen" in res["anomaly-types"]


@SETTINGS
@given(models, st.data())
def test_value_at_two_offsets_is_duplicate(params, data):
    events = history(params)
    acked = acked_values(events)
    assume(acked)
    k, o, v = data.draw(st.sampled_from(acked))
    top = max(oo for kk, oo, _ in acked if kk == k)
    # A fresh consumer reads the value again past the end of the log.
    append_op(events, 10_000, "poll", [["poll"]], [["poll", {k: [[top + 1 + len(events), v]]}]])
    res = check(events)
    assert bad_types(res) == {"duplicate"}
    assert check(events, delivery="at-least-once")["bad-anomaly-types"] == []


@SETTINGS
@given(models, st.data())
def test_two_values_at_one_offset_is_inconsistent(params, data):
    events = history(params)
    sends = [e for e in events if e["f"] == "send" and e["type"] == "ok"]
    assume(len(sends) >= 2)
    e = data.draw(st.sampled_from(sends))
    k, (o, v) = e["value"][0][1], e["value"][0][2]
    others = [(oo, vv) for kk, oo, vv in acked_values(events) if kk == k and oo != o]
    assume(others)
    o2, _ = data.draw(st.sampled_from(others))
    e["value"][0][2][0] = o2  # the broker claims v sits where another value already is
    res = check(events)
    assert "inconsistent-offsets" in res["bad-anomaly-types"]
    # v is read at o and acknowledged at o2 (duplicate); o2 may also put the send out of its process's or its
    # op's order, or below an offset acknowledged before it began
    assert bad_types(res) <= {"inconsistent-offsets", "duplicate", "nonmonotonic-send", "int-nonmonotonic-send",
                              "offset-order-realtime"}
    assert any(r["key"] == k and r["offset"] == o2 for r in res["anomalies"]["inconsistent-offsets"])


@SETTINGS
@given(models, st.data(), st.booleans())
def test_consumer_backwards_or_skipping(params, data, backwards):
    events = history(params)
    by_key = {}  # the log as the reads saw it (includes info sends that committed)
    for e in ok_polls(events):
        for k, pairs in e["value"][0][1].items():
            by_key.setdefault(k, set()).update((o, v) for o, v in pairs)
    keys = [k for k, pairs in by_key.items() if len(pairs) >= (3 if backwards else 4)]
    assume(keys)
    k = data.draw(st.sampled_from(sorted(keys)))
    log = sorted(by_key[k])
    p = 20_000
    append_op(events, p, "assign", [k], [k])
    append_op(events, p, "poll", [["poll"]], [["poll", {k: [list(log[0]), list(log[1])]}]])
    if backwards:
        append_op(events, p, "poll", [["poll"]], [["poll", {k: [list(log[1]), list(log[2])]}]])
        expect = "nonmonotonic-poll"
    else:  # over log[2]
        append_op(events, p, "poll", [["poll"]], [["poll", {k: [list(x) for x in log[3:]]}]])
        expect = "poll-skip"
    res = check(events)
    assert bad_types(res) == {expect}
    assert check(events, sub_via="subscribe")["bad-anomaly-types"] == []


@SETTINGS
@given(models, st.data())
def test_read_of_failed_send_is_g1a(params, data):
    params = dict(params, p_fail=0.3)
    events = history(params)
    failed = [(m[1], m[2]) for e in events if e["f"] == "send" and e["type"] == "fail" for m in e["value"]]
    assume(failed)
    k, v = data.draw(st.sampled_from(failed))
    append_op(events, 30_000, "poll", [["poll"]], [["poll", {k: [[10_000_000, v]]}]])
    res = check(events)
    assert bad_types(res) == {"G1a"}
    assert any(r["key"] == k and r["value"] == v for r in res["anomalies"]["G1a"])


def test_generated_histories_are_not_trivial():
    events = generate(7, n_ops=2000, threads=5, active_keys=5, rotate_every=300, p_fail=0.05, p_info=0.05,
                      p_crash=0.01)
    res = check(copy.deepcopy(events))
    st_ = res["stats"]
    assert res["valid"] is True
    assert st_["acknowledged"] > 200 and st_["completions"]["info"] > 10 and st_["completions"]["fail"] > 10
    assert st_["keys"] > 5  # rotation
    assert res["perf"]["latency"] and res["perf"]["unseen"] and res["perf"]["offsets"]
