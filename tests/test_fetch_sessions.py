"""Incremental fetch sessions (KIP-227): the state machines without sockets, then a live broker
answering raw Fetch v12 requests, the way a follower (or kafka-python) uses them."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from broker.fetch_sessions import (FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH, FetchParams,
                                   FetchSessionBuilder, FetchSessionCache)
from broker.records import build_batch
from broker_fixtures import RawClient, broker, broker_factory, fetch_request, fetched, produce_req  # noqa: F401
from test_broker_api import make_topic

A, B, C = ("t", 0), ("t", 1), ("u", 0)


class Clock:
    def __init__(self):
        self.ms = 0.0

    def __call__(self):
        return self.ms


# ------------------------------------------------------------------------- the leader's cache

def test_initial_epoch_opens_a_session_and_final_epoch_is_sessionless():
    cache = FetchSessionCache()
    full = cache.context(0, 0, {A: FetchParams(0), B: FetchParams(0)}, [], replica_id=2)
    assert full.session_id != 0 and not full.incremental and set(full.partitions) == {A, B}
    none = cache.context(0, -1, {A: FetchParams(0)}, [], replica_id=2)
    assert none.session_id == 0 and not none.incremental and len(cache.sessions) == 1
    # closing a session with epoch -1 removes it and answers sessionless
    closed = cache.context(full.session_id, -1, {A: FetchParams(0)}, [], replica_id=2)
    assert closed.session_id == 0 and cache.sessions == {}


def test_incremental_requests_read_the_whole_session_and_include_only_news():
    cache = FetchSessionCache()
    full = cache.context(0, 0, {A: FetchParams(0), B: FetchParams(0)}, [], replica_id=2)
    full.sent([(A, 5, 0), (B, 0, 0)])
    sid = full.session_id
    inc = cache.context(sid, 1, {A: FetchParams(5)}, [], replica_id=2)
    assert inc.incremental and inc.partitions == {A: FetchParams(5), B: FetchParams(0)}
    assert not inc.must_include(A, 0, 5, 0)              # nothing new for A
    assert inc.must_include(A, 0, 6, 0)                  # high watermark moved
    assert inc.must_include(B, 0, 0, 1)                  # log start moved
    assert inc.must_include(B, 120, 0, 0)                # records
    inc.sent([(A, 6, 0)])
    nxt = cache.context(sid, 2, {}, [B], replica_id=2)   # B forgotten, nothing else changed
    assert nxt.partitions == {A: FetchParams(5)}
    assert not nxt.must_include(A, 0, 6, 0)


def test_wrong_epoch_and_unknown_session_are_errors():
    cache = FetchSessionCache()
    sid = cache.context(0, 0, {A: FetchParams(0)}, [], replica_id=-1).session_id
    assert cache.context(sid, 2, {}, [], replica_id=-1).error == INVALID_FETCH_SESSION_EPOCH
    assert cache.context(sid + 1, 1, {}, [], replica_id=-1).error == FETCH_SESSION_ID_NOT_FOUND
    assert cache.context(0, 3, {}, [], replica_id=-1).error == FETCH_SESSION_ID_NOT_FOUND
    assert cache.context(sid, 1, {}, [], replica_id=-1).error == 0   # the right epoch still works


def test_a_full_cache_evicts_idle_sessions_then_consumers_for_followers_else_goes_sessionless():
    clock = Clock()
    cache = FetchSessionCache(max_slots=2, clock=clock)
    consumer = cache.context(0, 0, {A: FetchParams(0)}, [], replica_id=-1).session_id
    clock.ms = 10
    follower = cache.context(0, 0, {B: FetchParams(0)}, [], replica_id=2).session_id
    assert consumer and follower
    # full, nobody idle long enough: another consumer gets no session
    assert cache.context(0, 0, {C: FetchParams(0)}, [], replica_id=-1).session_id == 0
    # a follower takes the consumer's slot
    f2 = cache.context(0, 0, {C: FetchParams(0)}, [], replica_id=3).session_id
    assert f2 and consumer not in cache.sessions and follower in cache.sessions
    # after the eviction time the least recently used session makes room for anyone
    clock.ms = 10 + 120_000
    c2 = cache.context(0, 0, {C: FetchParams(0)}, [], replica_id=-1).session_id
    assert c2 and follower not in cache.sessions
    assert FetchSessionCache(max_slots=0).context(0, 0, {A: FetchParams(0)}, [], 2).session_id == 0


def test_incremental_requests_examine_only_named_touched_and_watched_partitions():
    cache = FetchSessionCache()
    keys = {("t", i): FetchParams(0) for i in range(100)}
    full = cache.context(0, 0, dict(keys), [], replica_id=2)
    assert set(full.to_examine()) == set(keys)              # a full fetch looks at everything
    full.watch(("t", 7))                                     # e.g. an error, repeated until acted on
    sid = full.session_id
    cache.touch(("t", 3))
    cache.touch(("x", 0))                                    # not in any session: nothing happens
    inc = cache.context(sid, 1, {("t", 50): FetchParams(4)}, [], replica_id=2)
    assert inc.to_examine() == {("t", 3), ("t", 7), ("t", 50)}
    cache.touch(("t", 9))                                    # while the fetch long-polls
    assert inc.to_examine() == {("t", 3), ("t", 7), ("t", 9), ("t", 50)}
    # nothing watched this time, nothing touched since: the next request looks at what it names only
    assert cache.context(sid, 2, {}, [], replica_id=2).to_examine() == set()


def test_a_partition_touched_while_a_followers_fetch_long_polls_is_looked_at_by_its_next_request():
    """Only a request's first evaluation reports the follower's position to the leader; a change seen
    by a later one (an ISR shrink the follower may rejoin from) is examined again next time."""
    cache = FetchSessionCache()
    follower = cache.context(0, 0, {A: FetchParams(0), B: FetchParams(0)}, [], replica_id=2)
    consumer = cache.context(0, 0, {A: FetchParams(0), B: FetchParams(0)}, [], replica_id=-1)
    for full in (follower, consumer):
        full.to_examine()
    waiting = {ctx: cache.context(ctx.session_id, 1, {}, [], replica_id=rid)
               for ctx, rid in ((follower, 2), (consumer, -1))}
    for inc in waiting.values():
        assert inc.to_examine(first=True) == set()
    cache.touch(A)
    for inc in waiting.values():
        assert inc.to_examine(first=False) == {A}
    assert cache.context(follower.session_id, 2, {}, [], replica_id=2).to_examine() == {A}
    assert cache.context(consumer.session_id, 2, {}, [], replica_id=-1).to_examine() == set()


def test_follower_positions_are_each_follower_sessions_offset_and_last_request_time():
    clock = Clock()
    cache = FetchSessionCache(clock=clock)
    f2 = cache.context(0, 0, {A: FetchParams(4), B: FetchParams(1)}, [], replica_id=2)
    cache.context(0, 0, {A: FetchParams(0)}, [], replica_id=-1)          # consumers have no position
    clock.ms = 250.0
    cache.context(0, 0, {A: FetchParams(6)}, [], replica_id=3)
    clock.ms = 900.0
    cache.context(f2.session_id, 1, {}, [], replica_id=2)                 # names nothing: still a fetch
    assert sorted(cache.follower_positions(A)) == [(2, 4, 900.0), (3, 6, 250.0)]
    assert list(cache.follower_positions(C)) == []


def test_touch_wakes_a_followers_session_on_any_change_and_a_consumers_only_on_committed_ones():
    cache = FetchSessionCache()
    follower = cache.sessions[cache.context(0, 0, {A: FetchParams(0)}, [], replica_id=2).session_id]
    consumer = cache.sessions[cache.context(0, 0, {A: FetchParams(0)}, [], replica_id=-1).session_id]
    woken = []
    follower.waiter = lambda: woken.append("follower")
    consumer.waiter = lambda: woken.append("consumer")
    cache.touch(A, committed=False)                          # an append below the high watermark
    assert woken == ["follower"] and follower.waiter is None and consumer.waiter is not None
    cache.touch(A, committed=True)
    assert woken == ["follower", "consumer"] and consumer.waiter is None
    assert follower.dirty == {A} and consumer.dirty == {A}


def test_the_partition_index_follows_forgets_closes_and_evictions():
    clock = Clock()
    cache = FetchSessionCache(max_slots=1, clock=clock)
    sid = cache.context(0, 0, {A: FetchParams(0), B: FetchParams(0)}, [], replica_id=2).session_id
    cache.context(sid, 1, {C: FetchParams(0)}, [A], replica_id=2)
    assert set(cache._holders) == {B, C}
    clock.ms = 200_000                                       # idle past the eviction time
    other = cache.context(0, 0, {A: FetchParams(0)}, [], replica_id=3).session_id
    assert set(cache._holders) == {A} and list(cache.sessions) == [other]
    cache.context(other, -1, {}, [], replica_id=3)           # closed
    assert cache._holders == {} and cache.sessions == {}


# ------------------------------------------------------------------------- the fetcher's side

def everything(b: FetchSessionBuilder, wanted: dict) -> set:
    """`changed` for a request that compares every key with the leader's view."""
    return set(wanted) | set(b.view)


def test_builder_names_only_changes_and_starts_over_on_session_errors():
    b = FetchSessionBuilder()
    wanted = {A: FetchParams(0), B: FetchParams(0)}
    assert b.request(wanted, everything(b, wanted)) == (0, 0, wanted, [])
    b.on_response(0, 77)
    assert b.request(wanted, everything(b, wanted)) == (77, 1, {}, [])
    a3 = {A: FetchParams(3)}
    b.on_response(0, 77)
    assert b.request(a3, everything(b, a3)) == (77, 2, a3, [B])
    b.on_response(INVALID_FETCH_SESSION_EPOCH, 0)
    assert b.request(a3, everything(b, a3)) == (0, 0, a3, [])
    b.on_response(0, 0)      # the leader had no slot: keep asking in full
    assert b.request(a3, everything(b, a3)) == (0, 0, a3, [])


# ------------------------------------------------------------------------- a live broker

def _fetch(session_id, epoch, parts, forgotten=(), wait_ms=0):
    return fetch_request(parts, session_id=session_id, session_epoch=epoch, forgotten=forgotten, wait_ms=wait_ms)


def test_live_broker_answers_incremental_fetches_with_only_what_changed(broker):
    make_topic(broker, "s", partitions=3)
    c = RawClient(broker.port)
    try:
        keys = {("s", i): 0 for i in range(3)}
        full = c.request(_fetch(0, 0, keys))
        sid = full.session_id
        assert sid != 0 and full.error_code.value == 0 and set(fetched(full)) == set(keys)
        idle = c.request(_fetch(sid, 1, {}, wait_ms=50))
        assert idle.session_id == sid and fetched(idle) == {}

        c.request(produce_req("s", build_batch([b"x", b"y"]), partition=1))
        news = fetched(c.request(_fetch(sid, 2, {})))
        assert set(news) == {("s", 1)} and b"y" in bytes(news[("s", 1)].records)
        assert news[("s", 1)].high_watermark == 2
        # the fetcher moves its offset for partition 1 and forgets partition 2
        quiet = c.request(_fetch(sid, 3, {("s", 1): 2}, forgotten=[("s", 2)], wait_ms=50))
        assert fetched(quiet) == {}
        c.request(produce_req("s", build_batch([b"z"]), partition=2))
        assert fetched(c.request(_fetch(sid, 4, {}, wait_ms=50))) == {}   # partition 2 is no longer asked

        # an error is carried on every round, named or not, until the fetcher does something about it
        bad = fetched(c.request(_fetch(sid, 5, {("s", 0): 99})))
        assert set(bad) == {("s", 0)} and bad[("s", 0)].error_code.value == 1   # OFFSET_OUT_OF_RANGE
        again = fetched(c.request(_fetch(sid, 6, {})))
        assert set(again) == {("s", 0)} and again[("s", 0)].error_code.value == 1

        assert c.request(_fetch(sid, 9, {})).error_code.value == INVALID_FETCH_SESSION_EPOCH
        closed = c.request(_fetch(sid, -1, {("s", 2): 0}))
        assert closed.session_id == 0 and b"z" in bytes(fetched(closed)[("s", 2)].records)
        assert c.request(_fetch(sid, 7, {})).error_code.value == FETCH_SESSION_ID_NOT_FOUND
    finally:
        c.close()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["set", "drop", "answer", "error", "reset"]),
                          st.integers(0, 5), st.integers(0, 3)), max_size=40))
def test_builder_told_what_changed_asks_what_a_full_comparison_asks(steps):
    """The fetcher names the changes it made; the requests must be those of comparing everything."""
    told, compared = FetchSessionBuilder(), FetchSessionBuilder()
    wanted: dict = {}
    changed: set = set()
    for op, k, offset in steps:
        key = ("t", k)
        if op == "set":
            wanted[key] = FetchParams(offset)
            changed.add(key)
        elif op == "drop":
            wanted.pop(key, None)
            changed.add(key)
        else:
            request, expected = told.request(wanted, changed), compared.request(wanted, everything(compared, wanted))
            assert request[:3] == expected[:3] and sorted(request[3]) == sorted(expected[3])
            changed = set()
            code = {"answer": 0, "error": 1, "reset": INVALID_FETCH_SESSION_EPOCH}[op]
            for b in (told, compared):
                b.on_response(code, 55)
            assert told.view == compared.view
