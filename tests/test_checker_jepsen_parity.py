"""Parity with Jepsen's Kafka checker: the cases of jepsen/test/jepsen/tests/kafka_test.clj, same facts.

Each test below is one deftest (or `testing` block) of Jepsen's kafka_test.clj (jepsen-io/jepsen, the queue
checker jepsen.tests.kafka): the same history and the same facts -- which anomalies the history must show,
on which ops, and which it must not. The histories are written in Jepsen's own op shorthand, one op a line:
`name process type f value`, with the value in EDN (as Jepsen's `(o index process type f value)`), and read
through checkers/edn.py as an EDN history is; an op's index and time are its position in the history.

Records are compared field by field where both checkers have the field. Ours carry offsets where Jepsen's
carry `:delta` and `:index` in its dense version order (offsets without holes); the skip deltas agree, and
are asserted, because both count the known records between two reads.

Not ported, having no counterpart here: op->max-offsets-test's helper is asserted through `perf.offsets`,
which is what it feeds; log->last-index->values-test and log->value->first-index-test test helpers of
Jepsen's lost-write-cases on sets of values per offset (their purpose, lost writes among conflicting and
duplicated offsets, is lost-write-test's "inconsistent" case below); realtime-lag-test (acked computes no
realtime lag) and gen-poll-unseen-test (a generator, not the checker: workloads/ has its own).
"""
from __future__ import annotations

import copy

import edn_format

from checkers import check
from checkers.edn import from_edn_event


def ops(text):
    """Named ops, one a line: `name process type f value`, the value in EDN."""
    named = {}
    for line in filter(str.strip, text.splitlines()):
        name, p, t, f, value = line.split(None, 4)
        named[name] = from_edn_event(edn_format.loads(f"{{:process {p} :type {t} :f {f} :value {value}}}"))
    return named


class Run:
    """The named ops in this order, checked; `at(name)` is an op's index in the history."""

    def __init__(self, named, names, **opts):
        self.names = list(names)
        events = []
        for i, n in enumerate(self.names):
            ev = copy.deepcopy(named[n])
            ev["index"] = ev["time"] = i
            events.append(ev)
        self.events = events
        self.res = check(events, **opts)

    def at(self, *names):
        return [self.names.index(n) for n in names]

    def of(self, kind):
        return self.res["anomalies"].get(kind, [])

    @property
    def types(self):
        return set(self.res["anomaly-types"])


def reassigns(assign_y):
    """Process 0's subscribes and assigns that keep x (sub-xy, assign-xy) or drop it (sub-y, and assign-y
    completing `assign_y`), shared by poll-skip-, nonmonotonic-poll- and nonmonotonic-send-test."""
    return f"""
    sub-xy      0 :invoke :subscribe [:x :y]
    sub-xy'     0 :ok     :subscribe [:x :y]
    assign-xy   0 :invoke :assign [:x :y]
    assign-xy'  0 :ok     :assign [:x :y]
    sub-y       0 :invoke :subscribe [:y]
    sub-y'      0 :ok     :subscribe [:y]
    assign-y    0 :invoke :assign [:y]
    assign-y'   0 {assign_y} :assign [:y]
"""


def test_the_highest_offsets_an_op_reached_are_the_polled_and_sent_maxima():
    """op->max-offsets-test: a txn polling x at 2, 5, 4 and sending y at 2, 3 reached x 5 and y 3."""
    named = ops("""
        t   0 :invoke :txn [[:poll] [:send :y nil] [:send :y nil]]
        t'  0 :ok     :txn [[:poll {:x [[2 nil] [5 nil] [4 nil]]}] [:send :y [2 nil]] [:send :y [3 nil]]]
    """)
    offsets = Run(named, ["t", "t'"]).res["perf"]["offsets"]
    assert offsets["x"][-1][1:] == [None, 5]   # [time, max acknowledged, max read]
    assert offsets["y"][-1][1:] == [3, None]


# -- version-orders-test, inconsistent-offsets-test ----------------------------------------------------------

def test_a_crashed_txn_proven_committed_by_a_read_places_its_sends_in_the_version_order():
    """version-orders-test: the info txn's c at offset 1 conflicts with the b a poll read there; it counts
    because the poll read its b, so the txn committed. Its b at 3 makes b sit at two offsets."""
    named = ops("""
        r   0 :invoke :txn [[:poll]]
        r'  0 :ok     :txn [[:poll {:x [[0 :a] [1 :b]]}]]
        w   1 :invoke :txn [[:send :x :c] [:send :x :b] [:send :x :d]]
        w'  1 :info   :txn [[:send :x [1 :c]] [:send :x [3 :b]] [:send :x [4 :d]]]
    """)
    run = Run(named, ["r", "r'", "w", "w'"])
    [io] = run.of("inconsistent-offsets")
    assert (io["key"], io["offset"], set(io["values"])) == ("x", 1, {"b", "c"})
    assert [(d["value"], d["offsets"]) for d in run.of("duplicate")] == [("b", [1, 3])]


def test_two_acknowledged_sends_at_one_offset_are_inconsistent_offsets():
    """version-orders-test, "a real-world example"."""
    named = ops("""
        a   379 :invoke :send [[:send 11 641]]
        a'  379 :ok     :send [[:send 11 [537 641]]]
        b   363 :invoke :send [[:send 11 645]]
        b'  363 :ok     :send [[:send 11 [537 645]]]
    """)
    [io] = Run(named, ["a", "a'", "b", "b'"]).of("inconsistent-offsets")
    assert (io["key"], io["offset"], set(io["values"])) == ("11", 537, {641, 645})


INFO_CONFLICT = ops("""
    send-1   0 :invoke :send [[:send :x 1] [:send :y 1]]
    send-1'  0 :info   :send [[:send :x [0 1]] [:send :y 1]]
    send-2   1 :invoke :send [[:send :x 2]]
    send-2'  1 :ok     :send [[:send :x [0 2]]]
    poll-1   2 :invoke :poll [[:poll]]
    poll-1'  2 :ok     :poll [[:poll {:y [[5 1]]}]]
""")


def test_a_crashed_send_conflicts_only_once_a_read_proves_it_committed():
    """inconsistent-offsets-test, "info conflicts": without the poll the info send may not have happened;
    with a read of its y it did, and its x at offset 0 conflicts with send-2's."""
    run = Run(INFO_CONFLICT, ["send-1", "send-1'", "send-2", "send-2'"])
    assert "inconsistent-offsets" not in run.types
    run = Run(INFO_CONFLICT, ["send-1", "send-1'", "send-2", "send-2'", "poll-1", "poll-1'"])
    [io] = run.of("inconsistent-offsets")
    assert (io["key"], io["offset"], set(io["values"])) == ("x", 0, {1, 2})


# -- g1a-test ----------------------------------------------------------------------------------------------------

def test_reading_a_failed_send_is_g1a():
    """g1a-test: only x's 2 was read; y's 3 was not."""
    named = ops("""
        send   0 :invoke :send [[:send :x 2] [:send :y 3]]
        send'  0 :fail   :send [[:send :x 2] [:send :y 3]]
        poll   1 :invoke :poll [[:poll]]
        poll'  1 :ok     :poll [[:poll {:x [[0 2]]}]]
    """)
    run = Run(named, ["send", "send'", "poll", "poll'"])
    assert [(g["key"], g["value"], g["ops"]) for g in run.of("G1a")] == [("x", 2, run.at("send'", "poll'"))]


# -- lost-write-test ---------------------------------------------------------------------------------------------

def lost(run):
    """(key, value, writer, the read that reached past it) of every lost write."""
    return sorted((r["key"], r["value"], r["ops"][0], r["ops"][-1]) for r in run.of("lost-write"))


def test_values_below_what_a_read_reached_and_never_read_are_lost():
    """lost-write-test, "consistent": a read of c at offset 2 means a (0) and b (1) should have been read."""
    named = ops("""
        send-a    0 :invoke :send [[:send :x :a]]
        send-a'   0 :ok     :send [[:send :x [0 :a]]]
        send-bd   0 :invoke :send [[:send :x :b] [:send :x :d]]
        send-bd'  0 :ok     :send [[:send :x [1 :b]] [:send :x [3 :d]]]
        send-c    1 :invoke :send [[:send :x :c]]
        send-c'   1 :info   :send [[:send :x :c]]
        poll      0 :invoke :poll [[:poll]]
        poll'     0 :ok     :poll [[:poll {:x [[2 :c]]}]]
    """)
    run = Run(named, ["send-a", "send-a'", "send-bd", "send-bd'", "send-c", "send-c'", "poll", "poll'"])
    send_a, send_bd, poll = run.at("send-a'", "send-bd'", "poll'")
    assert lost(run) == [("x", "a", send_a, poll), ("x", "b", send_bd, poll)]


def test_a_value_overwritten_at_its_offset_is_still_lost():
    """lost-write-test, "inconsistent": a at 0 is overwritten by b; reading b and c still loses a."""
    named = ops("""
        send-a    0 :invoke :send [[:send :x :a]]
        send-a'   0 :ok     :send [[:send :x [0 :a]]]
        send-bc   0 :invoke :send [[:send :x :b] [:send :x :c]]
        send-bc'  0 :ok     :send [[:send :x [0 :b]] [:send :x [2 :c]]]
        read-bc   0 :invoke :poll [[:poll]]
        read-bc'  0 :ok     :poll [[:poll {:x [[0 :b] [2 :c]]}]]
    """)
    run = Run(named, ["send-a", "send-a'", "send-bc", "send-bc'", "read-bc", "read-bc'"])
    assert lost(run) == [("x", "a", *run.at("send-a'", "read-bc'"))]


ATOMIC = ops("""
    send-ab   0 :invoke :send [[:send :x :a] [:send :y :b]]
    send-ab'  0 :info   :send [[:send :x :a] [:send :y [0 :b]]]
    send-c    1 :invoke :send [[:send :y :c]]
    send-c'   1 :info   :send [[:send :y :c]]
    poll-a    2 :invoke :poll [[:poll]]
    poll-a'   2 :ok     :poll [[:poll {:x [[0 :a]]}]]
    poll-c    3 :invoke :poll [[:poll]]
    poll-c'   3 :ok     :poll [[:poll {:y [[1 :c]]}]]
""")


def test_a_crashed_send_is_lost_only_once_a_read_of_another_of_its_values_proves_it_committed():
    """lost-write-test, "atomic": a read of a commits the whole crashed op, so its b at 0 is lost."""
    assert lost(Run(ATOMIC, ["send-ab", "send-ab'", "send-c", "send-c'", "poll-c", "poll-c'"])) == []
    run = Run(ATOMIC, ["send-ab", "send-ab'", "send-c", "send-c'", "poll-a", "poll-a'", "poll-c", "poll-c'"])
    assert lost(run) == [("y", "b", *run.at("send-ab'", "poll-c'"))]


# -- poll-skip-test ----------------------------------------------------------------------------------------------

POLL_SKIP = ops("""
    poll-1-2    0 :invoke :poll [[:poll]]
    poll-1-2'   0 :ok     :poll [[:poll {:x [[1 :a] [2 :b]]}]]
    poll-3      1 :invoke :poll [[:poll]]
    poll-3'     1 :ok     :poll [[:poll {:x [[3 :c]]}]]
    poll-4      0 :invoke :poll [[:poll]]
    poll-4'     0 :ok     :poll [[:poll {:x [[4 :d]]}]]
    write-6     2 :invoke :send [[:send :x :f]]
    write-6'    2 :ok     :send [[:send :x [6 :f]]]
    poll-7      0 :invoke :poll [[:poll]]
    poll-7'     0 :ok     :poll [[:poll {:x [[7 :g]]}]]
    write-*     3 :invoke :send [[:send :x :a] [:send :x :b] [:send :x :c] [:send :x :d] [:send :x :g]]
    write-*'    3 :info   :send [[:send :x :a] [:send :x :b] [:send :x :c] [:send :x :d] [:send :x :g]]
""" + reassigns(":info"))


def skips(run):
    return [(r["key"], r["ops"], r["delta"], r["skipped-values"]) for r in run.of("poll-skip")]


def poll_skip_history(between_3_and_4=(), between_4_and_6=()):
    return ["poll-1-2", "poll-1-2'", "poll-3", "poll-3'", *between_3_and_4, "poll-4", "poll-4'",
            *between_4_and_6, "write-6", "write-6'", "poll-7", "poll-7'", "write-*", "write-*'"]


def test_a_consumer_that_passes_over_known_offsets_is_a_poll_skip():
    """poll-skip-test: process 0 reads 1-2, 4, 7; 3 (c) and 6 (f) are known, 5 may be a gap."""
    run = Run(POLL_SKIP, poll_skip_history())
    assert skips(run) == [("x", run.at("poll-1-2'", "poll-4'"), 2, ["c"]),
                          ("x", run.at("poll-4'", "poll-7'"), 2, ["f"])]


def test_a_subscribe_or_assign_that_drops_the_key_resets_the_position():
    """poll-skip-test, "with intermediate subscribe": sub-y, then a crashed assign-y, drop x each time."""
    assert skips(Run(POLL_SKIP, poll_skip_history(["sub-y", "sub-y'"], ["assign-y", "assign-y'"]))) == []


def test_a_subscribe_or_assign_that_keeps_the_key_keeps_the_position():
    """poll-skip-test, "with intermediate subscribe": subscribes and assigns still covering x."""
    run = Run(POLL_SKIP, poll_skip_history(["sub-xy", "sub-xy'"], ["assign-xy", "assign-xy'"]))
    assert skips(run) == [("x", run.at("poll-1-2'", "poll-4'"), 2, ["c"]),
                          ("x", run.at("poll-4'", "poll-7'"), 2, ["f"])]


TXN_ABORT = ops("""
    send      0 :invoke :send [[:send :x 0] [:send :x 1] [:send :x 2] [:send :x 3] [:send :x 4] [:send :x 5]]
    send'     0 :ok     :send [[:send :x [0 0]] [:send :x [1 1]] [:send :x [2 2]] [:send :x [3 3]] [:send :x [4 4]] [:send :x [5 5]]]
    send3     0 :invoke :send [[:send :x 0] [:send :x 1] [:send :x 2]]
    send3'    0 :ok     :send [[:send :x [0 0]] [:send :x [1 1]] [:send :x [2 2]]]
    p0        1 :invoke :txn [[:poll]]
    p0'       1 :ok     :txn [[:poll {:x [[0 0]]}]]
    p12       1 :invoke :txn [[:poll]]
    p12-fail  1 :fail   :txn [[:poll {:x [[1 1] [2 2]]}]]
    p12-info  1 :info   :txn [[:poll {:x [[1 1] [2 2]]}]]
    p12-ok    1 :ok     :txn [[:poll {:x [[1 1] [2 2]]}]]
    p34       1 :invoke :txn [[:poll]]
    p34-fail  1 :fail   :txn [[:poll {:x [[3 3] [4 4]]}]]
    p34-info  1 :info   :txn [[:poll {:x [[3 3] [4 4]]}]]
    p5        1 :invoke :txn [[:poll]]
    p5'       1 :ok     :txn [[:poll {:x [[5 5]]}]]
""")


def test_failed_and_crashed_polls_leave_the_position_where_the_last_ok_poll_left_it():
    """poll-skip-test, "txn abort", "good": after an aborted and a crashed poll of 1, 2, an ok poll of 1, 2
    is right: the consumer rewound. Jepsen asserts no error at all."""
    run = Run(TXN_ABORT, ["send3", "send3'", "p0", "p0'", "p12", "p12-fail", "p12", "p12-info", "p12", "p12-ok"])
    assert run.res["anomaly-types"] == [] and run.res["valid"] is True


def test_an_aborted_poll_must_still_continue_from_the_last_ok_poll():
    """poll-skip-test, "txn abort", "abort doesn't roll back": after ok 0 and an aborted 1, 2, an aborted
    3, 4 skipped 1 and 2, and an ok 5 skipped 1 to 4."""
    run = Run(TXN_ABORT, ["send", "send'", "p0", "p0'", "p12", "p12-fail", "p34", "p34-fail", "p5", "p5'"])
    assert skips(run) == [("x", run.at("p0'", "p34-fail"), 3, [1, 2]),
                          ("x", run.at("p0'", "p5'"), 5, [1, 2, 3, 4])]


def test_a_crashed_poll_can_be_a_poll_skip():
    """poll-skip-test, "txn abort", "info can be a poll-skip"."""
    run = Run(TXN_ABORT, ["send", "send'", "p0", "p0'", "p12", "p12-fail", "p34", "p34-info"])
    assert skips(run) == [("x", run.at("p0'", "p34-info"), 3, [1, 2])]


# -- nonmonotonic-poll-test --------------------------------------------------------------------------------------

NONMONOTONIC_POLL = ops("""
    send*       0 :invoke :send [[:send :x :a] [:send :x :b] [:send :x :c] [:send :x :d]]
    send*'      0 :ok     :send [[:send :x :a] [:send :x :b] [:send :x :c] [:send :x :d]]
    poll-123    0 :invoke :poll [[:poll]]
    poll-123'   0 :ok     :poll [[:poll {:x [[1 :a] [2 :b] [3 :c]]}]]
    poll-234    0 :invoke :poll [[:poll]]
    poll-234'   0 :ok     :poll [[:poll {:x [[2 :b] [3 :c] [4 :d]]}]]
""" + reassigns(":ok"))


def nonmonotonic_polls(*between):
    run = Run(NONMONOTONIC_POLL, ["send*", "send*'", "poll-123", "poll-123'", *between, "poll-234", "poll-234'"])
    return run, [(r["key"], r["ops"], r["offsets"]) for r in run.of("nonmonotonic-poll")]


def test_a_poll_that_starts_before_where_the_last_one_ended_is_a_nonmonotonic_poll():
    """nonmonotonic-poll-test, "together": 1 2 3, then 2 again (Jepsen: values [c b], delta -1)."""
    run, found = nonmonotonic_polls()
    assert found == [("x", run.at("poll-123'", "poll-234'"), [3, 2])]


def test_a_nonmonotonic_poll_after_a_subscribe_or_assign_that_dropped_the_key_is_none():
    """nonmonotonic-poll-test, "with intermediate subscribe": dropping x; keeping it changes nothing."""
    assert nonmonotonic_polls("sub-y", "sub-y'")[1] == []
    assert nonmonotonic_polls("assign-y", "assign-y'")[1] == []
    for kept in (("sub-xy", "sub-xy'"), ("assign-xy", "assign-xy'")):
        run, found = nonmonotonic_polls(*kept)
        assert found == [("x", run.at("poll-123'", "poll-234'"), [3, 2])]


# -- nonmonotonic-send-test --------------------------------------------------------------------------------------

NONMONOTONIC_SEND = ops("""
    send-34     0 :invoke :send [[:send :x :c] [:send :x :d]]
    send-34'    0 :ok     :send [[:send :x [3 :c]] [:send :x [4 :d]]]
    send-12     0 :invoke :send [[:send :x 1] [:send :x 2]]
    send-12'    0 :ok     :send [[:send :x [1 :a]] [:send :x [2 :b]]]
""" + reassigns(":info"))


def nonmonotonic_sends(*between):
    run = Run(NONMONOTONIC_SEND, ["send-34", "send-34'", *between, "send-12", "send-12'"])
    return run, [(r["key"], r["values"], r["ops"]) for r in run.of("nonmonotonic-send")]


def test_a_process_whose_later_send_lands_before_its_earlier_one_is_a_nonmonotonic_send():
    """nonmonotonic-send-test: 3, 4 then 1, 2 (Jepsen: values [d a], delta -3)."""
    run, found = nonmonotonic_sends()
    assert found == [("x", ["d", "a"], run.at("send-34'", "send-12'"))]


def test_a_nonmonotonic_send_after_a_subscribe_or_assign_that_dropped_the_key_is_none():
    """nonmonotonic-send-test, "with intermediate subscribe"."""
    assert nonmonotonic_sends("sub-y", "sub-y'")[1] == []
    assert nonmonotonic_sends("assign-y", "assign-y'")[1] == []
    for kept in (("sub-xy", "sub-xy'"), ("assign-xy", "assign-xy'")):
        run, found = nonmonotonic_sends(*kept)
        assert found == [("x", ["d", "a"], run.at("send-34'", "send-12'"))]


# -- int-poll-skip-test, int-send-skip-test, int-nonmonotonic-poll-test, int-nonmonotonic-send-test ----------

def test_one_op_reading_past_a_known_offset_is_an_int_poll_skip():
    """int-poll-skip-test: inside one poll, and across two polls of one op; b at 2 is known from another."""
    named = ops("""
        send*       1 :invoke :send [[:send :x :a] [:send :x :b] [:send :x :d]]
        send*'      1 :info   :send [[:send :x :a] [:send :x :b] [:send :x :d]]
        poll-1-4a   0 :invoke :poll [[:poll]]
        poll-1-4a'  0 :ok     :poll [[:poll {:x [[1 :a] [4 :d]]}]]
        poll-1-4b   0 :invoke :poll [[:poll] [:poll]]
        poll-1-4b'  0 :ok     :poll [[:poll {:x [[1 :a]]}] [:poll {:x [[4 :d]]}]]
        poll-2      0 :invoke :poll [[:poll]]
        poll-2'     0 :ok     :poll [[:poll {:x [[2 :b]]}]]
    """)
    run = Run(named, ["send*", "send*'", "poll-1-4a", "poll-1-4a'", "poll-1-4b", "poll-1-4b'", "poll-2", "poll-2'"])
    assert [(r["key"], r["ops"], r["delta"], r["skipped-values"]) for r in run.of("int-poll-skip")] == [
        ("x", run.at("poll-1-4a'"), 2, ["b"]), ("x", run.at("poll-1-4b'"), 2, ["b"])]


def test_a_send_without_an_offset_is_placed_where_a_read_found_it_for_int_send_skip():
    """int-send-skip-test: c's send reported no offset; the poll shows it at 3, with b between a and c."""
    named = ops("""
        send-13   0 :invoke :send [[:send :x :a] [:send :x :c]]
        send-13'  0 :ok     :send [[:send :x [1 :a]] [:send :x :c]]
        send-b    1 :invoke :send [[:send :x :b]]
        send-b'   1 :info   :send [[:send :x :b]]
        poll-23   2 :invoke :poll [[:poll]]
        poll-23'  2 :ok     :poll [[:poll {:x [[2 :b] [3 :c]]}]]
    """)
    run = Run(named, ["send-13", "send-13'", "send-b", "send-b'", "poll-23", "poll-23'"])
    [r] = run.of("int-send-skip")
    assert (r["key"], r["values"], r["delta"], r["skipped-values"], r["ops"]) == (
        "x", ["a", "c"], 2, ["b"], run.at("send-13'"))
    assert r["offsets"] == [1, 3] and "'c' is at offset 3 in the version order" in r["explanation"]


def test_one_op_reading_backwards_or_twice_is_an_int_nonmonotonic_poll():
    """int-nonmonotonic-poll-test: c then a in one poll; c twice across one op's two polls."""
    named = ops("""
        send*      0 :invoke :send [[:send :x :a] [:send :x :b] [:send :x :c]]
        send*'     0 :info   :send [[:send :x :a] [:send :x :b] [:send :x :c]]
        poll-31a   0 :invoke :poll [[:poll]]
        poll-31a'  0 :ok     :poll [[:poll {:x [[3 :c] [1 :a]]}]]
        poll-33b   0 :invoke :poll [[:poll]]
        poll-33b'  0 :ok     :poll [[:poll {:x [[2 :b] [3 :c]]}] [:poll {:x [[3 :c]]}]]
    """)
    run = Run(named, ["send*", "send*'", "poll-31a", "poll-31a'", "poll-33b", "poll-33b'"])
    assert [(r["key"], r["values"], r["ops"]) for r in run.of("int-nonmonotonic-poll")] == [
        ("x", ["c", "a"], run.at("poll-31a'")), ("x", ["c", "c"], run.at("poll-33b'"))]


def test_one_op_sending_against_the_log_order_is_an_int_nonmonotonic_send():
    """int-nonmonotonic-send-test: offsets out of order in the completion (x), or inferred from a poll for a
    crashed op that reported none (y: d at 4, b at 2)."""
    named = ops("""
        send-31a   0 :invoke :send [[:send :x 3] [:send :x 1]]
        send-31a'  0 :ok     :send [[:send :x [3 :c]] [:send :x [1 :a]]]
        send-42b   0 :invoke :send [[:send :y :d] [:send :y :b]]
        send-42b'  0 :info   :send [[:send :y :d] [:send :y :b]]
        send-3c    1 :invoke :send [[:send :y :c]]
        send-3c'   1 :info   :send [[:send :y :c]]
        poll-42b   0 :invoke :poll [[:poll]]
        poll-42b'  0 :ok     :poll [[:poll {:y [[2 :b] [3 :c] [4 :d]]}]]
    """)
    run = Run(named, ["send-31a", "send-31a'", "send-42b", "send-42b'", "send-3c", "send-3c'", "poll-42b",
                      "poll-42b'"])
    assert [(r["key"], r["values"], r["ops"]) for r in run.of("int-nonmonotonic-send")] == [
        ("x", ["c", "a"], run.at("send-31a'")), ("y", ["d", "b"], run.at("send-42b'"))]


# -- duplicate-test ----------------------------------------------------------------------------------------------

def dups(run):
    return [(r["key"], r["value"], r["count"], r["offsets"]) for r in run.of("duplicate")]


def test_a_value_sent_at_one_offset_and_read_at_another_is_a_duplicate():
    """duplicate-test, "basic"."""
    named = ops("""
        send-a1   0 :invoke :send [[:send :x :a]]
        send-a1'  0 :ok     :send [[:send :x [1 :a]]]
        send-b2   1 :invoke :send [[:send :x :b]]
        send-b2'  1 :info   :send [[:send :x :b]]
        poll-a3   2 :invoke :poll [[:poll]]
        poll-a3'  2 :ok     :poll [[:poll {:x [[2 :b] [3 :a]]}]]
    """)
    assert dups(Run(named, ["send-a1", "send-a1'", "send-b2", "send-b2'", "poll-a3", "poll-a3'"])) == [
        ("x", "a", 2, [1, 3])]


def test_every_value_at_two_contested_offsets_is_a_duplicate_whatever_the_hash_order():
    """duplicate-test, "hash-insensitive": ten values each sent at 0 and read at 1; all are duplicates, and
    both offsets hold all ten (inconsistent-offsets)."""
    text = []
    for v in range(10):
        text += [f"s{v} 0 :invoke :send [[:send :x {v}]]", f"s{v}' 0 :ok :send [[:send :x [0 {v}]]]",
                 f"p{v} 1 :invoke :poll [[:poll]]", f"p{v}' 1 :ok :poll [[:poll {{:x [[1 {v}]]}}]]"]
    named = ops("\n".join(text))
    run = Run(named, [n for v in range(10) for n in (f"s{v}", f"s{v}'", f"p{v}", f"p{v}'")])
    assert sorted(r["value"] for r in run.of("duplicate")) == list(range(10))
    assert [(r["key"], r["offset"], sorted(r["values"])) for r in run.of("inconsistent-offsets")] == [
        ("x", 0, list(range(10))), ("x", 1, list(range(10)))]


def test_an_aborted_poll_that_rereads_a_committed_value_is_a_duplicate_but_a_failed_send_is_not():
    """duplicate-test, "aborted txns": the failed poll's 0 at 11 duplicates the ok send's 0 at 1; the failed
    send's 1 at 2 never happened, so 1 at 12 is no duplicate."""
    named = ops("""
        s0   0 :invoke :send [[:send :x 0]]
        s0'  0 :ok     :send [[:send :x [1 0]]]
        s1   0 :invoke :send [[:send :x 1]]
        s1'  0 :fail   :send [[:send :x [2 1]]]
        p    1 :invoke :poll [[:poll]]
        p'   1 :fail   :poll [[:poll {:x [[11 0] [12 1]]}]]
    """)
    assert dups(Run(named, ["s0", "s0'", "s1", "s1'", "p", "p'"])) == [("x", 0, 2, [1, 11])]


# -- empty-history-test, unseen-test -----------------------------------------------------------------------------

def test_a_history_with_nothing_read_is_not_valid():
    """empty-history-test: Jepsen says invalid (an empty transaction graph); ours says unknown, why, and
    never valid."""
    named = ops("""
        a   0 :invoke :assign [:x]
        a'  0 :ok     :assign [:x]
    """)
    res = Run(named, ["a", "a'"]).res
    assert res["valid"] == "unknown" and "nothing could be verified" in res["unknown-reason"]


def test_unseen_counts_after_each_op_what_was_acknowledged_and_not_yet_read():
    """unseen-test: after the ops at 1, 3, 5, 7 s: nothing, 2, 1 and 0 unseen of x; no unseen at the end."""
    named = ops("""
        p0   0 :invoke :poll [[:poll]]
        p0'  0 :ok     :poll [[:poll {}]]
        s    0 :invoke :send [[:send :x :a] [:send :x :b]]
        s'   0 :ok     :send [[:send :x [0 :a]] [:send :x [1 :b]]]
        p1   0 :invoke :poll [[:poll]]
        p1'  0 :ok     :poll [[:poll {:x [[0 :a]]}]]
        p2   0 :invoke :poll [[:poll]]
        p2'  0 :ok     :poll [[:poll {:x [[1 :b]]}]]
    """)
    run = Run(named, ["p0", "p0'", "s", "s'", "p1", "p1'", "p2", "p2'"])
    events = copy.deepcopy(run.events)
    for ev in events:
        ev["time"] *= 1_000_000_000  # one second per event: every completion is sampled
    series = check(events)["perf"]["unseen"]
    assert [(u["time"], u["by-key"].get("x", 0)) for u in series] == [(1, 0), (3, 2), (5, 1), (7, 0)]
    assert "unseen" not in run.types


# -- g0-test, g1c-pure-wr-test, g1c-ww-wr-test, precommitted-read-test -----------------------------------------

def cycle(run, kind):
    [c] = run.of(kind)
    return set(c["cycle"]), [(s["type"], s["key"], s["value"], s.get("value'")) for s in c["steps"]]


def test_two_multi_key_sends_in_opposite_offset_orders_are_g0_with_ww_deps():
    """g0-test: a before b on x, b before a on y. Send ops, no --txn: an op of several micro-ops is in the
    dependency graph."""
    named = ops("""
        wa   0 :invoke :send [[:send :x :a] [:send :y :a]]
        wb   1 :invoke :send [[:send :x :b] [:send :y :b]]
        wa'  0 :ok     :send [[:send :x [0 :a]] [:send :y [1 :a]]]
        wb'  1 :ok     :send [[:send :x [1 :b]] [:send :y [0 :b]]]
    """)
    run = Run(named, ["wa", "wb", "wa'", "wb'"], ww_deps=True)
    ops_, steps = cycle(run, "G0")
    assert ops_ == set(run.at("wa'", "wb'"))
    assert sorted(steps) == [("ww", "x", "a", "b"), ("ww", "y", "b", "a")]
    assert "G0" in run.res["allowed-anomalies"]


def test_two_txns_that_each_read_the_others_write_are_g1c():
    """g1c-pure-wr-test."""
    named = ops("""
        t1   0 :invoke :txn [[:send :x :a] [:poll]]
        t2   1 :invoke :txn [[:send :y :b] [:poll]]
        t1'  0 :ok     :txn [[:send :x [0 :a]] [:poll {:y [[0 :b]]}]]
        t2'  1 :ok     :txn [[:send :y [0 :b]] [:poll {:x [[0 :a]]}]]
    """)
    run = Run(named, ["t1", "t2", "t1'", "t2'"])
    ops_, steps = cycle(run, "G1c")
    assert ops_ == set(run.at("t1'", "t2'"))
    assert sorted(steps) == [("wr", "x", "a", None), ("wr", "y", "b", None)]


def test_a_read_of_a_txn_whose_write_follows_the_readers_is_g1c_with_ww_deps():
    """g1c-ww-wr-test: t2 read t1's a, and t2's b precedes t1's c on y."""
    named = ops("""
        t1   0 :invoke :txn [[:send :x :a] [:send :y :c]]
        t2   1 :invoke :txn [[:poll] [:send :y :b]]
        t1'  0 :ok     :txn [[:send :x [0 :a]] [:send :y [2 :c]]]
        t2'  1 :ok     :txn [[:poll {:x [[0 :a]]}] [:send :y [1 :b]]]
    """)
    run = Run(named, ["t1", "t2", "t1'", "t2'"], ww_deps=True)
    ops_, steps = cycle(run, "G1c")
    assert ops_ == set(run.at("t1'", "t2'"))
    assert sorted(steps) == [("wr", "x", "a", None), ("ww", "y", "b", "c")]


def test_a_txn_that_polls_its_own_uncommitted_send_is_a_precommitted_read():
    """precommitted-read-test."""
    named = ops("""
        t1   0 :invoke :txn [[:send :x :a] [:poll]]
        t1'  0 :ok     :txn [[:send :x [0 :a]] [:poll {:x [[0 :a]]}]]
    """)
    run = Run(named, ["t1", "t1'"])
    assert [(r["ops"], r["key"], r["value"]) for r in run.of("precommitted-read")] == [(run.at("t1'"), "x", "a")]
