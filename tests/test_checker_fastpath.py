"""The fast path of `check_path` (msgspec-decoded blocks, checkers.fold._feed_events)
must decide exactly what the general path decides.

Every hand-written history of test_checker_anomalies and test_checker_jepsen_parity
and every generated one of test_checker_properties is checked again: written as
history.jsonl and folded by the fast path, once in big blocks and once in blocks of
a few lines (so invocations and completions land in different blocks); each result
must equal the general path's, field for field.
"""
from __future__ import annotations

import inspect
import io
import os
import random
import tempfile

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import checkers
from checkers import fold
from checkers.history import Event, iter_event_batches
from checkers.queue import QueueChecker
from checkers.synth import generate_read_heavy

import test_checker_anomalies as anomalies  # noqa: E402  (tests/ is on sys.path under pytest)
import test_checker_jepsen_parity as parity  # noqa: E402
import test_checker_properties as properties  # noqa: E402

_real_check = checkers.check


def _jsonl(events) -> bytes:
    return b"".join(orjson.dumps(ev, option=orjson.OPT_NON_STR_KEYS) + b"\n" for ev in events)


def _fast(blob: bytes, batch_bytes: int, **opts) -> dict:
    chk = QueueChecker(**opts)
    chk.feed_file(io.BytesIO(blob), batch_bytes=batch_bytes)
    return chk.finish()


def check_all_paths(events, **opts):
    """checkers.check, plus the same history through check_path's fast path."""
    events = list(events)
    general = _real_check(events, **opts)
    blob = _jsonl(events)
    for batch in (1 << 22, 97):
        assert _fast(blob, batch, **opts) == general, f"fast path (blocks of {batch} bytes) disagrees"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "history.jsonl")
        with open(path, "wb") as f:
            f.write(blob)
        assert checkers.check_path(path, **opts) == general
    return general


def _plain_tests(module):
    return [fn for name, fn in sorted(vars(module).items())
            if name.startswith("test_") and inspect.isfunction(fn) and not inspect.signature(fn).parameters]


@pytest.mark.parametrize("test", _plain_tests(anomalies), ids=lambda fn: fn.__name__)
def test_hand_written_histories_agree(test, monkeypatch):
    monkeypatch.setattr(anomalies, "check", check_all_paths)
    test()


@pytest.mark.parametrize("test", _plain_tests(parity), ids=lambda fn: fn.__name__)
def test_jepsens_histories_agree(test, monkeypatch):
    monkeypatch.setattr(parity, "check", check_all_paths)
    test()


@pytest.mark.parametrize("test", [fn for name, fn in sorted(vars(properties).items())
                                  if name.startswith("test_") and hasattr(fn, "hypothesis")],
                         ids=lambda fn: fn.__name__)
def test_generated_histories_agree(test, monkeypatch):
    monkeypatch.setattr(properties, "check", check_all_paths)
    test()


@st.composite
def read_heavy_histories(draw):
    """(events, fault): writers append runs of records to a few keys; readers, each assigned every key, poll
    up to max_poll records at a time until every reader has read every value. With a fault, some polls are
    bent: a record dropped (drop), its last record repeated (repeat), the next poll starting one record back
    (back) or one further on (gap)."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    keys = [str(k) for k in range(draw(st.integers(1, 4)))]
    writers = draw(st.integers(1, 3))
    readers = [100 + r for r in range(draw(st.integers(1, 5)))]
    per_key = draw(st.integers(1, 400))
    batch = draw(st.integers(1, 50))
    max_poll = draw(st.integers(10, 1000))
    fault = draw(st.sampled_from([None, "drop", "repeat", "back", "gap"]))
    logs = {k: [] for k in keys}
    left = dict.fromkeys(keys, per_key)
    pos = {(r, k): 0 for r in readers for k in keys}
    events = []

    def op(p, f, inv, value):
        for t, v in (("invoke", inv), ("ok", value)):
            events.append({"process": p, "type": t, "f": f, "value": v, "index": len(events),
                           "time": len(events) * 1000})

    for r in readers:
        op(r, "assign", keys, keys)
    value = 0
    while any(left.values()) or any(pos[r, k] < len(logs[k]) for r in readers for k in keys):
        behind = [r for r in readers if any(pos[r, k] < len(logs[k]) for k in keys)]
        if any(left.values()) and (not behind or rng.random() < 0.4):
            k = rng.choice([k for k in keys if left[k]])
            n = min(left[k], rng.randint(1, batch))
            vals = list(range(value, value + n))
            value += n
            base = len(logs[k])
            logs[k].extend(vals)
            left[k] -= n
            op(rng.randrange(writers), "send", [["send", k, v] for v in vals],
               [["send", k, [base + i, v]] for i, v in enumerate(vals)])
            continue
        r = rng.choice(behind)
        budget = rng.randint(1, max_poll)
        polled = {}
        for k in rng.sample(keys, len(keys)):
            start = pos[r, k]
            end = min(len(logs[k]), start + budget)
            budget -= end - start
            if end > start or rng.random() < 0.2:
                polled[k] = [[o, logs[k][o]] for o in range(start, end)]
            pos[r, k] = end
            if fault and end > start and rng.random() < 0.05:
                if fault == "drop" and end - start > 2:
                    del polled[k][1]
                elif fault == "repeat":
                    polled[k].append(polled[k][-1])
                elif fault == "back":
                    pos[r, k] -= 1
                elif fault == "gap" and end < len(logs[k]):
                    pos[r, k] += 1
        op(r, "poll", [["poll"]], [["poll", polled]])
    return events, fault, len(readers) * len(keys) * per_key


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(read_heavy_histories())
def test_read_heavy_histories_agree(history):
    """Many records per poll, every reader reading every value: the fast path and the general path decide the
    same, and a history with no fault is valid with every value read by every reader."""
    events, fault, reads = history
    res = check_all_paths(events)
    assert res["history-problem-count"] == 0
    if fault is None:
        assert res["valid"] is True and res["anomaly-types"] == []
        records = sum(len(pairs) for e in events if e["f"] == "poll" and e["type"] == "ok"
                      for pairs in e["value"][0][1].values())
        assert records == reads and res["stats"]["acknowledged-but-never-read"] == 0


def test_bad_lines_between_fast_blocks(tmp_path):
    """A garbled line sends its block through the general path; ops that span
    a fast and a slow block still pair, and the problem keeps its line number."""
    h = anomalies.base3()
    h.poll(1, {"x": [(0, 1), (1, 2)]})
    h.poll(1, {"x": [(2, 3)]})
    lines = _jsonl(h.events).splitlines(keepends=True)
    lines.insert(5, b'{"type": "ok", "f": \n')
    blob = b"".join(lines) + b'{"type": "invoke", "f": "poll", "process": 9, "val'
    path = tmp_path / "history.jsonl"
    path.write_bytes(blob)
    general = QueueChecker()
    general.feed_lines(io.BytesIO(blob))
    expected = general.finish()
    assert expected["history-problem-count"] == 2
    assert [p["line"] for p in expected["history-problems"]] == [6, len(lines) + 1]
    assert expected["valid"] is True
    for batch in (1 << 22, 50, 200):
        assert _fast(blob, batch) == expected
    assert checkers.check_path(path) == expected


def test_event_batches_keep_line_numbers():
    blob = b'{"type":"invoke","f":"poll","process":0,"time":5,"index":0,"value":[["poll"]]}\n\n' \
           b'{"type":"ok","f":"poll","process":0,"time":9,"index":1,"value":[["poll",{}]]}\n'
    batches = list(iter_event_batches(io.BytesIO(blob)))
    # a blank line would shift line numbers: that block goes the general way
    assert [(n, ev) for n, ev, _ in batches] == [(3, None)]
    batches = list(iter_event_batches(io.BytesIO(blob.replace(b"\n\n", b"\n"))))
    assert len(batches) == 1 and batches[0][0] == 2
    evs = batches[0][1]
    assert [type(e) for e in evs] == [Event, Event]
    assert evs[1].get("value") == [["poll", {}]] and evs[1].get("seek-to-beginning") is None


def test_lines_without_time_or_index_take_the_general_path():
    """The fast path's Event requires an integer time and index (the harness
    always writes both); a block with a line lacking one is folded by the
    general path, which fills the index in, and decides the same."""
    h = anomalies.base3()
    h.poll(1, {"x": [(0, 1), (1, 2), (2, 3)]})
    h.send(0, "x", 4, 1)  # inconsistent offset: something to find
    for drop in ("time", "index"):
        events = [dict(ev) for ev in h.events]
        del events[3][drop]
        if drop == "time":
            events[5]["time"] = None
        blob = _jsonl(events)
        assert [ev for _, ev, _ in iter_event_batches(io.BytesIO(blob))] == [None]
        expected = _real_check(events)
        assert "inconsistent-offsets" in expected["anomaly-types"]
        for batch in (1 << 22, 97):
            assert _fast(blob, batch) == expected


def test_empty_and_odd_ok_polls_agree():
    """An ok poll that returned nothing is skipped without decoding; spelled
    with spaces, or with a non-integer offset, it is decoded by the general
    path: all decide as the general path does."""
    h = anomalies.base3()
    h.poll(1, {})
    h.poll(1, {"x": [(0, 1)]})
    h.poll(2, {"x": [(None, 2)]})
    events = h.events
    blob = _jsonl(events).replace(b'[["poll",{}]]', b'[["poll", {}]]', 1)
    expected = _real_check(events)
    for batch in (1 << 22, 97):
        assert _fast(blob, batch) == expected
        assert _fast(_jsonl(events), batch) == expected


@st.composite
def synth_read_heavy(draw):
    """(events, fault, detectable) from checkers.synth.generate_read_heavy (writers, readers that each read every
    value, polls of up to records_per_poll records, failed, indeterminate and crashed ops, rotating keys, the final
    drain), with one poll bent by a fault or none: a record's value changed (changed), a record dropped (drop), a
    record repeated (repeat), a key's records starting one further on (gap) or one back (back). detectable: the
    fault touches an offset an ok send acknowledged (an indeterminate send's record that nobody else read leaves
    no trace when dropped)."""
    events = generate_read_heavy(
        draw(st.integers(0, 2**32 - 1)), n_ops=draw(st.integers(20, 400)), writers=draw(st.integers(1, 3)),
        readers=draw(st.integers(1, 6)), records_per_poll=draw(st.integers(1, 30)), keys=draw(st.integers(1, 4)),
        rotate_every=draw(st.sampled_from([0, 15])), p_fail=draw(st.sampled_from([0.0, 0.1])),
        p_info=draw(st.sampled_from([0.0, 0.1])), p_crash=draw(st.sampled_from([0.0, 0.05])),
        batch=draw(st.integers(1, 3)))
    fault = draw(st.sampled_from([None, "changed", "drop", "repeat", "gap", "back"]))
    polls = [(e, k) for e in events if e["f"] == "poll" and e["type"] == "ok"
             for k, pairs in e["value"][0][1].items() if len(pairs) > 2]
    if fault is None or not polls:
        return events, None, False
    e, k = polls[draw(st.integers(0, len(polls) - 1))]
    pairs = e["value"][0][1][k]
    i = draw(st.integers(1, len(pairs) - 2))
    acked = {(m[1], m[2][0]) for ev in events if ev["f"] == "send" and ev["type"] == "ok" for m in ev["value"]}
    detectable = (k, pairs[1 if fault == "gap" else i][0]) in acked
    if fault == "changed":
        pairs[i] = [pairs[i][0], -1 - pairs[i][1]]
    elif fault == "drop":
        del pairs[i]
    elif fault == "repeat":
        pairs.insert(i, list(pairs[i]))
    elif fault == "gap":
        e["value"][0][1][k] = [[o + 1, v] for o, v in pairs]
    else:
        e["value"][0][1][k] = [[o - 1, v] for o, v in pairs] if pairs[0][0] > 0 else pairs[1:]
    return events, fault, detectable


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(synth_read_heavy(), st.sampled_from([0, fold.REREAD_FACTOR]))
def test_synth_read_heavy_histories_agree(history, factor):
    """checkers.synth's read-heavy histories, correct or with one poll bent: the fast path (re-reads recognised
    byte for byte against each key's canonical records, from the first re-read on with factor 0, as late as the
    checker extends them otherwise), and the general path decide the same; a correct one is valid."""
    events, fault, detectable = history
    old = fold.REREAD_FACTOR
    fold.REREAD_FACTOR = factor
    try:
        res = check_all_paths(events)
    finally:
        fold.REREAD_FACTOR = old
    assert res["history-problem-count"] == 0
    if fault is None:
        assert res["valid"] is True, res["anomaly-types"]
    elif fault in ("changed", "drop", "gap") and detectable:
        assert res["valid"] is False


def test_a_poll_recognised_in_part_and_then_malformed_agrees(monkeypatch):
    """A re-read recognised byte for byte and folded at once, then a key of the same poll msgspec rejects (a
    non-integer offset): the whole op takes the general path, which must find the consumer's position as it was."""
    monkeypatch.setattr(fold, "REREAD_FACTOR", 0)
    events = []

    def op(p, f, inv, value):
        for t, v in (("invoke", inv), ("ok", value)):
            events.append({"process": p, "type": t, "f": f, "value": v, "index": len(events),
                           "time": len(events) * 1000})

    for o in range(4):
        op(0, "send", [["send", "x", 10 + o]], [["send", "x", [o, 10 + o]]])
    op(0, "send", [["send", "y", 20]], [["send", "y", [0, 20]]])
    for r in (1, 2):
        op(r, "assign", ["x", "y"], ["x", "y"])
        op(r, "poll", [["poll"]], [["poll", {"x": [[0, 10], [1, 11]]}]])
    op(2, "poll", [["poll"]], [["poll", {"x": [[2, 12], [3, 13]], "y": [[0.5, 20]]}]])
    op(2, "poll", [["poll"]], [["poll", {"x": [[4, 14]]}]])
    res = check_all_paths(events)
    assert res["history-problem-count"] == 1 and "malformed poll value" in res["history-problems"][0]["message"]
    assert "nonmonotonic-poll" not in res["anomaly-types"]
