"""Each anomaly type on a small hand-written history, and near misses that must pass."""
from __future__ import annotations

import pytest

from checkers import check
from checkers.history import RUN_INVOKE, run_completion


class H:
    """Builds a history: every op is an invocation followed by its completion."""

    def __init__(self):
        self.events = []

    def _op(self, p, f, inv_value, t, value, **extra):
        self.events.append({"index": len(self.events), "time": len(self.events) * 1000, "process": p,
                            "type": "invoke", "f": f, "value": inv_value})
        ev = {"index": len(self.events), "time": len(self.events) * 1000, "process": p, "type": t, "f": f,
              "value": value}
        ev.update(extra)
        self.events.append(ev)
        return ev["index"]

    def send(self, p, k, v, offset, t="ok"):
        done = [["send", k, [offset, v]]] if t != "fail" else [["send", k, v]]
        return self._op(p, "send", [["send", k, v]], t, done)

    def sends(self, p, k, pairs, t="ok"):
        return self._op(p, "send", [["send", k, v] for _, v in pairs], t,
                        [["send", k, [o, v]] for o, v in pairs])

    def poll(self, p, reads, t="ok", **extra):
        return self._op(p, "poll", [["poll"]], t,
                        [["poll", {k: [list(x) for x in prs] for k, prs in reads.items()}]], **extra)

    def assign(self, p, keys, **extra):
        return self._op(p, "assign", keys, "ok", keys, **extra)

    def subscribe(self, p, keys):
        return self._op(p, "subscribe", keys, "ok", keys)

    def txn(self, p, mops_inv, mops_done, t="ok"):
        return self._op(p, "txn", mops_inv, t, mops_done)

    def run_start(self):
        """acked's run op: invoked first in every history acked's runner writes (checkers.history.RUN_INVOKE)."""
        self.events.append({"index": len(self.events), "time": len(self.events) * 1000, **RUN_INVOKE})
        return self

    def run_done(self, stopped="read-everything"):
        """The run op's ok completion: the final drain ran to its end."""
        self.events.append({"index": len(self.events), "time": len(self.events) * 1000,
                            **run_completion(stopped, 1)})
        return self

    def check(self, **opts):
        return check(self.events, **opts)


def base3():
    """Key x: 1, 2, 3 at offsets 0, 1, 2, all acknowledged."""
    h = H()
    h.send(0, "x", 1, 0)
    h.send(0, "x", 2, 1)
    h.send(0, "x", 3, 2)
    return h


def types(res):
    return set(res["anomaly-types"])


def assert_explained(res, kind):
    recs = res["anomalies"][kind]
    assert recs, kind
    for r in recs:
        assert r["ops"] and all(isinstance(i, int) for i in r["ops"])
        assert isinstance(r["explanation"], str) and len(r["explanation"]) > 30


def test_valid_history():
    h = base3()
    h.poll(1, {"x": [(0, 1), (1, 2), (2, 3)]})
    res = h.check()
    assert res["valid"] is True and res["anomaly-types"] == []
    assert res["stats"]["acknowledged"] == 3 and res["stats"]["acknowledged-but-never-read"] == 0


def test_no_ok_read_is_unknown():
    h = base3()
    h.poll(1, {}, t="ok")
    res = h.check()
    # unseen is bad, so this is invalid, not unknown ...
    assert res["valid"] is False and "unseen" in types(res)
    # ... but with nothing acknowledged and nothing read there is nothing to decide.
    h2 = H()
    h2.send(0, "x", 1, None, t="info")
    h2.poll(1, {})
    assert h2.check()["valid"] == "unknown"


def test_lost_write_explained():
    h = base3()
    read = h.poll(1, {"x": [(0, 1), (2, 3)]})
    res = h.check()
    assert "lost-write" in types(res) and res["valid"] is False
    lw = res["anomalies"]["lost-write"][0]
    assert lw["value"] == 2 and lw["offset"] == 1 and lw["key"] == "x"
    assert lw["ops"][0] == 3 and read in lw["ops"]
    assert "value 2 was acknowledged at offset 1 of key x (op 3)" in lw["explanation"]
    assert f"op {read} read offsets 0 to 2 of key x without it" in lw["explanation"]
    assert "no read ever returned it" in lw["explanation"]
    assert "int-poll-skip" in types(res)


def test_not_lost_when_above_highest_read():
    h = base3()
    h.poll(1, {"x": [(0, 1), (1, 2)]})
    res = h.check()
    assert "lost-write" not in types(res)
    assert types(res) == {"unseen"}
    u = res["anomalies"]["unseen"][0]
    assert u["key"] == "x" and u["count"] == 1 and u["values"] == [3]


def test_info_send_never_committed_is_not_lost():
    h = H()
    h.send(0, "x", 1, 0)
    h.send(0, "x", 2, None, t="info")  # maybe written, never seen: fine
    h.send(2, "x", 3, 1)
    h.poll(1, {"x": [(0, 1), (1, 3)]})
    assert h.check()["valid"] is True


def test_info_send_proven_committed_can_be_lost():
    h = H()
    h.sends(0, "x", [(0, 1), (1, 2)], t="info")  # offsets known, outcome not
    h.send(2, "x", 3, 2)
    h.poll(1, {"x": [(0, 1), (2, 3)]})  # 1 read: so op 1 committed, 2 too
    res = h.check()
    assert "lost-write" in types(res)
    assert res["anomalies"]["lost-write"][0]["value"] == 2


def test_gap_from_aborted_write_is_not_a_skip():
    h = H()
    h.send(0, "x", 1, 0)
    h.send(0, "x", 2, 1, t="fail")   # aborted: took an offset nobody can read
    h.send(0, "x", 3, 2)
    h.assign(1, ["x"])
    h.poll(1, {"x": [(0, 1)]})
    h.poll(1, {"x": [(2, 3)]})
    h.poll(2, {"x": [(0, 1), (2, 3)]})
    assert h.check()["valid"] is True


def test_inconsistent_offsets():
    h = H()
    a = h.send(0, "x", 1, 0)
    b = h.send(1, "x", 2, 0)
    h.poll(2, {"x": [(0, 1)]})
    res = h.check()
    assert "inconsistent-offsets" in types(res)
    r = res["anomalies"]["inconsistent-offsets"][0]
    assert r["offset"] == 0 and sorted(r["values"]) == [1, 2] and {a, b} <= set(r["ops"])
    assert_explained(res, "inconsistent-offsets")


def test_failed_send_offset_does_not_conflict():
    h = H()
    h.send(0, "x", 1, 0)
    h.send(1, "x", 2, 0, t="fail")
    h.poll(2, {"x": [(0, 1)]})
    assert h.check()["valid"] is True


def test_duplicate_and_at_least_once():
    h = H()
    w = h.send(0, "x", 1, 0)
    h.send(0, "x", 2, 2)
    h.poll(1, {"x": [(0, 1), (1, 1), (2, 2)]})
    res = h.check()
    assert "duplicate" in types(res) and res["valid"] is False
    d = res["anomalies"]["duplicate"][0]
    assert d["value"] == 1 and d["offsets"] == [0, 1] and w in d["ops"]
    res2 = h.check(delivery="at-least-once")
    assert "duplicate" in res2["anomaly-types"] and res2["valid"] is True
    assert "duplicate" not in res2["bad-anomaly-types"]
    # allowed, and still listed with the setting that allows it
    assert res2["allowed-anomalies"] == {"duplicate": "delivery=at-least-once was declared for this run"}
    assert res["allowed-anomalies"] == {}


def test_g1a():
    h = H()
    f = h.send(0, "x", 1, None, t="fail")
    h.send(0, "x", 2, 0)
    r = h.poll(1, {"x": [(0, 2), (1, 1)]})
    res = h.check()
    assert "G1a" in types(res)
    g = res["anomalies"]["G1a"][0]
    assert g["value"] == 1 and g["ops"] == [f, r]
    assert_explained(res, "G1a")


def test_failed_read_of_failed_send_is_not_g1a():
    h = H()
    h.send(0, "x", 1, None, t="fail")
    h.send(0, "x", 2, 0)
    h.poll(1, {"x": [(0, 2)]})
    h.poll(2, {"x": [(1, 1)]}, t="info")  # not an ok poll
    assert "G1a" not in types(h.check())


def test_unexpected_value():
    h = base3()
    h.poll(1, {"x": [(0, 1), (1, 2), (2, 3), (3, 99)]})
    res = h.check()
    assert types(res) == {"unexpected-value"}
    assert res["anomalies"]["unexpected-value"][0]["value"] == 99


def test_a_value_sent_by_a_crashed_or_failed_send_is_not_unexpected():
    """Near miss of unexpected-value: the reads are of values some op did send, though never acknowledged
    (the failed one's read is G1a instead)."""
    h = base3()
    h.send(2, "x", 4, None, t="info")
    h.send(3, "x", 5, None, t="fail")
    h.poll(1, {"x": [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]})
    assert types(h.check()) == {"G1a"}


def test_poll_skip_and_assign_drop():
    h = base3()
    h.assign(1, ["x"])
    a = h.poll(1, {"x": [(0, 1)]})
    b = h.poll(1, {"x": [(2, 3)]})
    h.poll(2, {"x": [(0, 1), (1, 2), (2, 3)]})
    res = h.check()
    assert types(res) == {"poll-skip"}
    ps = res["anomalies"]["poll-skip"][0]
    assert ps["ops"] == [a, b] and ps["skipped-values"] == [2]
    assert_explained(res, "poll-skip")
    # allowed when consumers subscribe
    assert h.check(sub_via="subscribe")["valid"] is True
    # an assign that dropped the key in between: not a skip
    h2 = base3()
    h2.assign(1, ["x"])
    h2.poll(1, {"x": [(0, 1)]})
    h2.assign(1, ["y"])
    h2.assign(1, ["x"])
    h2.poll(1, {"x": [(2, 3)]})
    h2.poll(2, {"x": [(0, 1), (1, 2), (2, 3)]})
    assert h2.check()["valid"] is True


def test_nonmonotonic_poll():
    h = base3()
    h.poll(1, {"x": [(0, 1), (1, 2)]})
    h.poll(1, {"x": [(1, 2), (2, 3)]})
    res = h.check()
    assert types(res) == {"nonmonotonic-poll"}
    assert h.check(sub_via="subscribe")["valid"] is True
    # seek-to-beginning on assign resets positions: reading again is fine
    h2 = base3()
    h2.poll(1, {"x": [(0, 1), (1, 2), (2, 3)]})
    h2.assign(1, ["x"], **{"seek-to-beginning": True})
    h2.poll(1, {"x": [(0, 1), (1, 2), (2, 3)]})
    assert h2.check()["valid"] is True


def test_int_poll_skip_and_nonmonotonic():
    h = base3()
    h.poll(1, {"x": [(0, 1), (2, 3)]})
    h.poll(2, {"x": [(0, 1), (1, 2), (2, 3)]})
    assert types(h.check()) == {"int-poll-skip"}
    h2 = base3()
    h2.poll(1, {"x": [(1, 2), (0, 1), (2, 3)]})
    assert "int-nonmonotonic-poll" in types(h2.check())
    # a rebalance during the poll excuses it
    h3 = base3()
    h3.poll(1, {"x": [(0, 1), (2, 3)]}, **{"rebalance-log": [{"keys": ["x"]}]})
    h3.poll(2, {"x": [(0, 1), (1, 2), (2, 3)]})
    assert h3.check()["valid"] is True


def test_one_ops_polls_that_continue_each_other_are_not_int_nonmonotonic():
    """Near miss of int-nonmonotonic-poll: two poll micro-ops of one op, the second starting right after the
    first, and another key's lower offsets in between."""
    h = base3()
    h.send(0, "y", 7, 0)
    h._op(1, "poll", [["poll"], ["poll"]], "ok",
          [["poll", {"x": [[0, 1], [1, 2]], "y": [[0, 7]]}], ["poll", {"x": [[2, 3]]}]])
    res = h.check()
    assert res["anomaly-types"] == [] and res["valid"] is True


def test_nonmonotonic_send():
    h = H()
    a = h.send(0, "x", 1, 1)
    b = h.send(0, "x", 2, 0)
    h.poll(1, {"x": [(0, 2), (1, 1)]})
    res = h.check()
    assert "nonmonotonic-send" in types(res)
    assert res["anomalies"]["nonmonotonic-send"][0]["ops"] == [a, b]
    # different processes may interleave freely ... unless realtime says otherwise
    assert "offset-order-realtime" in types(res)


def test_offset_order_realtime_only_for_non_overlapping_sends():
    h = H()
    # Two concurrent sends: overlapping in time, any order is fine.
    h.events += [
        {"process": 0, "type": "invoke", "f": "send", "value": [["send", "x", 1]]},
        {"process": 1, "type": "invoke", "f": "send", "value": [["send", "x", 2]]},
        {"process": 0, "type": "ok", "f": "send", "value": [["send", "x", [1, 1]]]},
        {"process": 1, "type": "ok", "f": "send", "value": [["send", "x", [0, 2]]]},
        {"process": 2, "type": "invoke", "f": "poll", "value": [["poll"]]},
        {"process": 2, "type": "ok", "f": "poll", "value": [["poll", {"x": [[0, 2], [1, 1]]}]]},
    ]
    assert h.check()["valid"] is True
    h2 = H()
    h2.send(0, "x", 1, 1)
    h2.send(1, "x", 2, 0)
    h2.poll(2, {"x": [(0, 2), (1, 1)]})
    res = h2.check()
    assert types(res) == {"offset-order-realtime"}
    assert_explained(res, "offset-order-realtime")


def test_int_send_skip_allowed_and_int_nonmonotonic_send():
    h = H()
    # Process 1's send overlaps process 0's two-record send and lands between its records.
    h.events += [
        {"process": 0, "type": "invoke", "f": "send", "value": [["send", "x", 1], ["send", "x", 3]]},
        {"process": 1, "type": "invoke", "f": "send", "value": [["send", "x", 2]]},
        {"process": 0, "type": "ok", "f": "send", "value": [["send", "x", [0, 1]], ["send", "x", [2, 3]]]},
        {"process": 1, "type": "ok", "f": "send", "value": [["send", "x", [1, 2]]]},
    ]
    h.poll(2, {"x": [(0, 1), (1, 2), (2, 3)]})
    res = h.check()
    assert types(res) == {"int-send-skip"} and res["valid"] is True
    h2 = H()
    h2.sends(0, "x", [(1, 1), (0, 2)])
    h2.poll(2, {"x": [(0, 2), (1, 1)]})
    assert "int-nonmonotonic-send" in types(h2.check())


def test_one_ops_sends_to_different_keys_are_not_int_nonmonotonic():
    """Near miss of int-nonmonotonic-send: one op's sends to x land high and to y low, each key in order;
    x's gap at 6 is known to nobody, so it is not an int-send-skip either."""
    h = H()
    h._op(0, "send", [["send", "x", 1], ["send", "y", 2], ["send", "x", 3]], "ok",
          [["send", "x", [5, 1]], ["send", "y", [0, 2]], ["send", "x", [7, 3]]])
    h.poll(1, {"x": [(5, 1), (7, 3)], "y": [(0, 2)]})
    res = h.check()
    assert res["anomaly-types"] == [] and res["valid"] is True


def test_precommitted_read():
    h = H()
    t = h.txn(0, [["send", "x", 1], ["poll"]], [["send", "x", [0, 1]], ["poll", {"x": [[0, 1]]}]])
    res = h.check(txn=True)
    assert "precommitted-read" in types(res)
    assert res["anomalies"]["precommitted-read"][0]["ops"] == [t]


def test_a_failed_txn_that_polled_its_own_send_is_still_a_precommitted_read():
    """Jepsen counts every outcome: the poll saw the record before any commit, whatever came after."""
    h = H()
    t = h.txn(0, [["send", "x", 1], ["poll"]], [["send", "x", [0, 1]], ["poll", {"x": [[0, 1]]}]], t="fail")
    res = h.check()
    assert [r["ops"] for r in res["anomalies"]["precommitted-read"]] == [[t]]


def test_a_precommitted_read_needs_the_txns_own_value():
    """Near miss: the txn polled the value at the same offset of another, committed send."""
    h = H()
    h.send(1, "x", 2, 0)
    h.txn(0, [["send", "x", 1], ["poll"]], [["send", "x", [1, 1]], ["poll", {"x": [[0, 2]]}]])
    assert "precommitted-read" not in types(h.check(txn=True))


def test_g1c_cycle_step_by_step():
    h = H()
    # T1 writes x=1 and reads y=2; T2 writes y=2 and reads x=1: each read the other's write.
    t1 = h.txn(0, [["send", "x", 1], ["poll"]], [["send", "x", [0, 1]], ["poll", {"y": [[0, 2]]}]])
    t2 = h.txn(1, [["send", "y", 2], ["poll"]], [["send", "y", [0, 2]], ["poll", {"x": [[0, 1]]}]])
    res = h.check(txn=True)
    assert "G1c" in types(res) and res["valid"] is False
    c = res["anomalies"]["G1c"][0]
    assert set(c["cycle"]) == {t1, t2} and c["cycle"][0] == c["cycle"][-1]
    assert [s["type"] for s in c["steps"]] == ["wr", "wr"]
    assert "which op" in c["steps"][0]["explanation"]
    assert h.check(txn=True, ww_deps=True)["valid"] is True  # G1c allowed with ww-deps, as in Jepsen


def test_g0_with_ww_deps_is_allowed():
    h = H()
    # T1 wrote x=1 before T2's x=2, but T2's y=3 came before T1's y=4.
    h.events += [
        {"process": 0, "type": "invoke", "f": "txn", "value": [["send", "x", 1], ["send", "y", 4]]},
        {"process": 1, "type": "invoke", "f": "txn", "value": [["send", "x", 2], ["send", "y", 3]]},
        {"process": 0, "type": "ok", "f": "txn", "value": [["send", "x", [0, 1]], ["send", "y", [1, 4]]]},
        {"process": 1, "type": "ok", "f": "txn", "value": [["send", "x", [1, 2]], ["send", "y", [0, 3]]]},
    ]
    h.poll(2, {"x": [(0, 1), (1, 2)], "y": [(0, 3), (1, 4)]})
    res = h.check(txn=True, ww_deps=True)
    assert "G0" in types(res) and res["valid"] is True
    assert [s["type"] for s in res["anomalies"]["G0"][0]["steps"]] == ["ww", "ww"]
    assert "G0" not in types(h.check(txn=True))  # no ww edges without ww-deps


def test_g0_runs_through_the_value_of_an_op_outside_the_graph():
    """Without --txn a single send is no vertex; its value between two multi-key sends' on x still orders
    them (a before c before b), and y orders them the other way."""
    h = H()
    h.events += [
        {"process": 0, "type": "invoke", "f": "send", "value": [["send", "x", "a"], ["send", "y", "a"]]},
        {"process": 1, "type": "invoke", "f": "send", "value": [["send", "x", "b"], ["send", "y", "b"]]},
        {"process": 0, "type": "ok", "f": "send", "value": [["send", "x", [0, "a"]], ["send", "y", [1, "a"]]]},
        {"process": 1, "type": "ok", "f": "send", "value": [["send", "x", [2, "b"]], ["send", "y", [0, "b"]]]},
    ]
    h.send(2, "x", "c", 1)
    res = h.check(ww_deps=True)
    [g0] = res["anomalies"]["G0"]
    assert set(g0["cycle"]) == {2, 3}
    [via_x] = [s for s in g0["steps"] if s["key"] == "x"]
    assert (via_x["value"], via_x["value'"], via_x["between"]) == ("a", "b", 1)
    assert "1 value(s) of other ops between" in via_x["explanation"]


def test_single_micro_op_sends_and_polls_build_no_graph_without_txn():
    """Near miss of G1c-realtime: the same future read with a send and a poll of one micro-op each is only
    looked for with --txn (docs/anomalies.md, "Differences from Jepsen")."""
    h = H()
    h.poll(1, {"x": [(0, 1)]})
    h.send(0, "x", 1, 0)
    assert not {"G1c", "G1c-realtime"} & types(h.check())
    assert "G1c-realtime" in types(h.check(txn=True))


def test_a_crashed_txn_precedes_nothing_in_real_time():
    """Near miss of G1c-realtime: T2 read T1's write and T1 began after T2 crashed: T2 may have run on past
    its info completion (Elle's realtime graph), so no cycle."""
    h = H()
    h.events += [
        {"process": 1, "type": "invoke", "f": "txn", "value": [["poll"]]},
        {"process": 1, "type": "info", "f": "txn", "value": [["poll", {"x": [[0, 1]]}]]},
        {"process": 0, "type": "invoke", "f": "txn", "value": [["send", "x", 1]]},
        {"process": 0, "type": "ok", "f": "txn", "value": [["send", "x", [0, 1]]]},
        {"process": 2, "type": "invoke", "f": "poll", "value": [["poll"]]},
        {"process": 2, "type": "ok", "f": "poll", "value": [["poll", {"x": [[0, 1]]}]]},
    ]
    assert not {"G1c-realtime", "G1c"} & types(h.check(txn=True))
    h.events[1]["type"] = "ok"  # completed: a read of a write that began later
    assert "G1c-realtime" in types(h.check(txn=True))


def ww_triangle(t2_invoked_after_t1=True, t2_process=0, t2_offset=0):
    """T1 sends x at 1; T3, running the whole time on process 1, sends x at 0 and y at 1; T2, after T1 (or
    overlapping it), sends y at t2_offset. With T2 at y 0: T2 -ww-> T3 -ww-> T1, closed by T1 -> T2."""
    t1_send = [{"process": 0, "type": "invoke", "f": "txn", "value": [["send", "x", 1]]},
               {"process": 0, "type": "ok", "f": "txn", "value": [["send", "x", [1, 1]]]}]
    t2_send = [{"process": t2_process, "type": "invoke", "f": "txn", "value": [["send", "y", 2]]},
               {"process": t2_process, "type": "ok", "f": "txn", "value": [["send", "y", [t2_offset, 2]]]}]
    ops = t1_send + t2_send if t2_invoked_after_t1 else [t1_send[0], t2_send[0], t1_send[1], t2_send[1]]
    h = H()
    h.events += [{"process": 1, "type": "invoke", "f": "txn", "value": [["send", "x", 3], ["send", "y", 3]]},
                 *ops,
                 {"process": 1, "type": "ok", "f": "txn",
                  "value": [["send", "x", [0, 3]], ["send", "y", [1 - t2_offset, 3]]]}]
    y = [(0, 2), (1, 3)] if t2_offset == 0 else [(0, 3), (1, 2)]
    h.poll(2, {"x": [(0, 3), (1, 1)], "y": y})
    return h


def cycle_of(res, kind):
    c = res["anomalies"][kind][0]
    return set(c["cycle"]), {s["type"] for s in c["steps"]}


def test_a_ww_cycle_closed_by_one_processs_order_is_g0_process():
    """T1 and T2 on process 0: T1 -process-> T2 -ww-> T3 -ww-> T1. One process's ops never overlap, so it
    is the realtime order too: G0-realtime is reported with it. Both allowed, as in Jepsen."""
    res = ww_triangle().check(ww_deps=True)
    assert cycle_of(res, "G0-process") == ({2, 4, 5}, {"ww", "process"})
    assert cycle_of(res, "G0-realtime")[1] == {"ww", "realtime"}
    assert "G0" not in types(res) and res["valid"] is True


def test_a_ww_cycle_closed_by_real_time_across_processes_is_g0_realtime():
    """T2 on process 3, invoked after T1 completed: no process edge, a realtime one."""
    res = ww_triangle(t2_process=3).check(ww_deps=True)
    assert types(res) == {"G0-realtime"}
    assert cycle_of(res, "G0-realtime") == ({2, 4, 5}, {"ww", "realtime"})


def test_ww_orders_that_agree_with_the_process_and_real_time_are_no_g0():
    """Near misses: T2's y after T3's (no ww edge back), or T2 overlapping T1 on another process (no order
    between them): no cycle of any kind."""
    assert ww_triangle(t2_offset=1).check(ww_deps=True, txn=True)["anomaly-types"] == []
    assert ww_triangle(t2_invoked_after_t1=False, t2_process=3).check(ww_deps=True)["anomaly-types"] == []


def test_a_txn_reading_what_its_own_process_sends_later_is_g1c_process():
    """T1 on process 0 read x's 2, which T2, the same process's next op, sent: T2 -wr-> T1 -process-> T2."""
    h = H()
    t1 = h.txn(0, [["poll"]], [["poll", {"x": [[0, 2]]}]])
    t2 = h.txn(0, [["send", "x", 2]], [["send", "x", [0, 2]]])
    res = h.check()
    assert cycle_of(res, "G1c-process") == ({t1, t2}, {"wr", "process"})
    assert {"G1c-process", "G1c-realtime"} <= set(res["bad-anomaly-types"])


def test_a_txn_reading_what_its_own_process_sent_before_is_no_g1c():
    """Near miss of G1c-process: the same two txns the other way round."""
    h = H()
    h.txn(0, [["send", "x", 2]], [["send", "x", [0, 2]]])
    h.txn(0, [["poll"]], [["poll", {"x": [[0, 2]]}]])
    assert h.check(txn=True)["anomaly-types"] == []


def test_a_read_of_a_write_running_at_the_same_time_is_no_g1c_realtime():
    """Near miss of G1c-realtime: the writer was invoked before the reader completed."""
    h = H()
    h.events += [
        {"process": 1, "type": "invoke", "f": "txn", "value": [["poll"]]},
        {"process": 0, "type": "invoke", "f": "txn", "value": [["send", "x", 1]]},
        {"process": 1, "type": "ok", "f": "txn", "value": [["poll", {"x": [[0, 1]]}]]},
        {"process": 0, "type": "ok", "f": "txn", "value": [["send", "x", [0, 1]]]},
    ]
    assert h.check(txn=True)["anomaly-types"] == []


def test_g1c_realtime():
    h = H()
    # T2 reads T1's write, but T2 completed before T1 was even invoked.
    h.events += [
        {"process": 1, "type": "invoke", "f": "txn", "value": [["poll"]]},
        {"process": 1, "type": "ok", "f": "txn", "value": [["poll", {"x": [[0, 1]]}]]},
        {"process": 0, "type": "invoke", "f": "txn", "value": [["send", "x", 1]]},
        {"process": 0, "type": "ok", "f": "txn", "value": [["send", "x", [0, 1]]]},
    ]
    res = h.check(txn=True)
    assert "G1c-realtime" in types(res)
    steps = res["anomalies"]["G1c-realtime"][0]["steps"]
    assert {s["type"] for s in steps} == {"wr", "realtime"}


def test_malformed_value_is_a_problem_not_a_crash():
    h = base3()
    h.poll(1, {"x": [(0, 1), (1, 2), (2, 3)]})
    h.events.append({"index": 99, "process": 5, "type": "invoke", "f": "poll", "value": [["poll"]]})
    h.events.append({"index": 100, "process": 5, "type": "ok", "f": "poll", "value": [["poll", {"x": [[1]]}]]})
    res = h.check()
    assert res["history-problem-count"] == 1 and "malformed poll value" in res["history-problems"][0]["message"]
    assert res["valid"] is True


@pytest.mark.parametrize("kind", ["lost-write", "G1a", "duplicate", "inconsistent-offsets"])
def test_results_are_json(kind, tmp_path):
    import json
    h = H()
    h.send(0, "x", 1, 0)
    h.send(0, "x", 2, 1)
    h.send(0, "x", 5, None, t="fail")
    h.send(1, "x", 4, 1)
    h.poll(1, {"x": [(0, 1), (2, 1), (3, 5)]})
    res = h.check()
    assert kind in res["anomaly-types"]
    json.loads(json.dumps(res))
    for k in ("valid", "anomaly-types", "bad-anomaly-types", "anomalies", "stats", "perf"):
        assert k in res


# -- cut histories (docs/anomalies.md, "Cut histories") ----------------------------------------------------------


def unseen_tail():
    """Key x fully read; key y's value 9 acknowledged after the last poll: only unseen."""
    h = H().run_start()
    h.send(0, "x", 1, 0)
    h.send(0, "x", 2, 1)
    h.poll(1, {"x": [(0, 1), (1, 2)]})
    h.send(0, "y", 9, 0)
    return h


def test_cut_history_with_only_unseen_is_unknown():
    res = unseen_tail().check()
    assert res["valid"] == "unknown", res
    assert "final drain" in res["unknown-reason"] and "1 unseen" in res["unknown-reason"]
    assert res["anomaly-types"] == ["unseen"] and res["bad-anomaly-types"] == []
    assert "final drain" in res["allowed-anomalies"]["unseen"]
    assert res["history-cut"] is True
    # the harness's run op is not a client op: no stats of its own
    assert "run" not in res["stats"]["by-f"]


def test_cut_during_the_drain_is_unknown_too():
    h = unseen_tail()
    h.assign(2, ["x", "y"])
    h.poll(2, {"x": [(0, 1), (1, 2)]})  # the drain had not reached y yet
    res = h.check()
    assert res["valid"] == "unknown" and "final drain" in res["unknown-reason"]


def test_completed_drain_makes_unseen_invalid():
    h = unseen_tail().run_done()
    res = h.check()
    assert res["valid"] is False and res["bad-anomaly-types"] == ["unseen"]
    assert "history-cut" not in res and "unseen" not in res["allowed-anomalies"]


def test_a_drain_that_found_the_logs_ended_short_completed():
    res = unseen_tail().run_done("log-end").check()
    assert res["valid"] is False and res["bad-anomaly-types"] == ["unseen"]


def test_a_drain_that_ran_out_of_time_did_not_complete_so_unseen_values_are_unknown():
    """The drain gave up with keys short of their ends while the logs went on: what it did not read may be
    there (a nightly run's drain could not read a partition left without a leader)."""
    res = unseen_tail().run_done("time-limit").check()
    assert res["valid"] == "unknown" and res["history-cut"] is True and res["bad-anomaly-types"] == []


def test_cut_history_with_a_lost_write_is_invalid():
    h = H().run_start()
    h.send(0, "x", 1, 0)
    h.send(0, "x", 2, 1)
    h.send(0, "x", 3, 2)
    h.poll(1, {"x": [(0, 1), (2, 3)]})  # 2 was skipped: lost, drain or not
    h.send(0, "y", 9, 0)  # and y's 9 only unseen
    res = h.check()
    assert res["valid"] is False and "lost-write" in res["bad-anomaly-types"]
    assert "unseen" not in res["bad-anomaly-types"] and "unseen" in res["anomaly-types"]
    assert "unknown-reason" not in res


def test_cut_history_without_unseen_is_valid():
    h = H().run_start()
    h.send(0, "x", 1, 0)
    h.poll(1, {"x": [(0, 1)]})
    res = h.check()
    assert res["valid"] is True and res["history-cut"] is True


def test_history_without_the_run_op_keeps_unseen_invalid():
    """Foreign histories (Jepsen's EDN, converted ones, acked's before the run op): unseen stays bad."""
    h = unseen_tail()
    h.events = [e for e in h.events if e["process"] != "harness"]
    res = h.check()
    assert res["valid"] is False and res["bad-anomaly-types"] == ["unseen"] and "history-cut" not in res


def test_run_op_completed_otherwise_than_ok_is_cut():
    h = unseen_tail()
    h.events.append({"index": len(h.events), "time": len(h.events) * 1000, "process": "harness", "type": "info",
                     "f": "run", "value": None})
    res = h.check()
    assert res["valid"] == "unknown" and res["history-cut"] is True
