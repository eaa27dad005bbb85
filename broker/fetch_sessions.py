"""Incremental fetch sessions (KIP-227), both ends, without sockets.

A full Fetch names every partition and is answered for every partition: a
follower of a few hundred partitions pays for all of them on every round trip,
although one append touches one.  With a session the leader remembers the
partitions and what it last told the fetcher about each; later (incremental)
requests name only what changed on the fetcher's side (a new fetch offset,
partitions added, `forgotten_topics_data` for those dropped), and responses
carry only partitions with records, an error, or a changed high watermark or
log start offset.

Request kinds, by (session_id, session_epoch):
  (0, -1)  sessionless full fetch                       response session_id 0
  (0,  0)  full fetch that opens a session               response session_id = new id (0 if no slot)
  (S,  0)  full fetch: close S, open a new session
  (S, -1)  close S; answered as a sessionless full fetch
  (S,  n)  incremental fetch n of session S              FETCH_SESSION_ID_NOT_FOUND / INVALID_FETCH_SESSION_EPOCH

`FetchSessionCache` is the leader's side (`broker.handlers.fetch` drives it);
`FetchSessionBuilder` is the fetcher's (`broker.replica_manager.ReplicaFetcher`).

Both ends cost in proportion to what changed, not to the session's size (a
follower's session holds every partition it follows from that leader, a few
hundred once keys have rotated): the leader is told which partitions changed
(`FetchSessionCache.touch`, fed by the partitions' listeners) and examines only
those, the ones the request names and the ones it must keep watching (an error
to repeat, a follower not in step); the fetcher is told which partitions it
changed and diffs only those against what the leader knows.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .errors import FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH

INITIAL_EPOCH = 0
FINAL_EPOCH = -1
#: Kafka's MIN_INCREMENTAL_FETCH_SESSION_EVICTION_MS: an idle session can be evicted after this long
EVICTION_MS = 120_000

Key = tuple  # (topic, partition)


@dataclass(slots=True)
class FetchParams:
    """What the fetcher asked for one partition."""
    fetch_offset: int
    log_start_offset: int = -1
    max_bytes: int = 1 << 20
    current_leader_epoch: int = -1


@dataclass(eq=False)
class FetchSession:
    id: int
    replica_id: int
    epoch: int                   # the epoch the next incremental request must carry
    partitions: dict[Key, FetchParams] = field(default_factory=dict)
    #: (high watermark, log start) last sent per partition; absent: never sent, so the next response carries it
    sent: dict[Key, tuple[int, int]] = field(default_factory=dict)
    last_used_ms: float = 0.0
    #: partitions touched since the last request examined them
    dirty: set = field(default_factory=set)
    #: partitions examined on every request until they settle: errors to repeat, followers not in step
    watch: set = field(default_factory=set)
    #: called once when a partition of the session is touched while a fetch of it long-polls
    waiter: Callable[[], None] | None = None


class FetchContext:
    """How one Fetch request is answered: which partitions to look at, which to include."""

    def __init__(self, session: FetchSession | None, partitions: dict[Key, FetchParams],
                 incremental: bool, error: int = 0, named: dict[Key, FetchParams] | None = None):
        self.session = session
        self.partitions = partitions     # what to read: the request's (full) or the session's (incremental)
        self.incremental = incremental
        self.error = error
        self.named = partitions if named is None else named   # what the request itself named
        #: incremental: the session partitions this request looks at, grown by touches while it long-polls
        self.examined: set | None = None
        if session is not None:
            if incremental:
                self.examined = set(self.named)
                self.examined |= session.watch
            else:
                session.dirty.clear()    # a full fetch looks at everything
            session.watch = set()

    def to_examine(self, first: bool = True):
        """The partitions to look at in this evaluation: all of them for a full fetch; for an incremental
        one, those named, watched, or touched since the session's last look (the last grows the set
        across the long poll's evaluations, so that what one evaluation found is never forgotten).

        A follower's fetch reports its position to the leader only in the request's first evaluation;
        a partition touched while it long-polls (`first` False) is looked at again by the next request,
        so that the leader still sees an in-step follower after the change (an ISR shrink it may now
        rejoin from, say)."""
        if self.examined is None:
            return self.partitions
        session = self.session
        dirty = session.dirty
        if dirty:
            touched = dirty.intersection(self.partitions)
            self.examined |= touched
            dirty.clear()
            if not first and session.replica_id >= 0:
                session.watch |= touched
        return self.examined

    def watch(self, key: Key) -> None:
        """Look at this partition again on the next request, named or touched or not."""
        if self.session is not None:
            self.session.watch.add(key)

    @property
    def session_id(self) -> int:
        return self.session.id if self.session is not None else 0

    def must_include(self, key: Key, records: int, high_watermark: int, log_start: int) -> bool:
        """Full responses carry every partition; incremental ones only records or what the fetcher
        has not been told (errors are always carried, by the caller)."""
        return (not self.incremental or records > 0
                or self.session.sent.get(key) != (high_watermark, log_start))

    def sent(self, included: Iterable[tuple[Key, int, int]]) -> None:
        """Remember (key, high watermark, log start) of the partitions in the response actually sent."""
        if self.session is None:
            return
        parts, sent = self.session.partitions, self.session.sent
        for key, hw, start in included:
            if key in parts:
                sent[key] = (hw, start)


class FetchSessionCache:
    """The leader's sessions: at most `max_slots` (`max.incremental.fetch.session.cache.slots`).

    When full, a session idle for EVICTION_MS makes room; failing that a follower may take the
    slot of the least recently used consumer session (replication matters more), otherwise the
    request is answered without a session (session_id 0), as Kafka does."""

    def __init__(self, max_slots: int = 1000, clock: Callable[[], float] | None = None,
                 rng: random.Random | None = None):
        self.max_slots = max_slots
        self.clock = clock or (lambda: time.monotonic() * 1000)
        self.rng = rng or random.Random()
        self.sessions: dict[int, FetchSession] = {}
        #: partition -> the sessions holding it, for `touch`
        self._holders: dict[Key, set[FetchSession]] = {}

    def touch(self, key: Key, committed: bool = True) -> None:
        """The partition changed (an append, its high watermark, its leadership, its ISR): the sessions
        holding it look at it on their next evaluation, and a long-polling fetch of theirs wakes --
        a consumer's (reading below the high watermark) only if what is committed changed."""
        for session in self._holders.get(key, ()):
            session.dirty.add(key)
            if session.waiter is not None and (committed or session.replica_id >= 0):
                wake, session.waiter = session.waiter, None
                wake()

    def follower_positions(self, key: Key):
        """(replica id, fetch offset, time of its last request) of each follower session holding
        the partition: every request of a session fetches all of its partitions, named or not."""
        for session in self._holders.get(key, ()):
            if session.replica_id >= 0:
                yield session.replica_id, session.partitions[key].fetch_offset, session.last_used_ms

    def _hold(self, session: FetchSession, keys: Iterable[Key]) -> None:
        holders = self._holders
        for key in keys:
            held = holders.get(key)
            if held is None:
                holders[key] = {session}
            else:
                held.add(session)

    def _release(self, session: FetchSession, keys: Iterable[Key]) -> None:
        holders = self._holders
        for key in keys:
            held = holders.get(key)
            if held is not None:
                held.discard(session)
                if not held:
                    del holders[key]

    def _close(self, session_id: int) -> None:
        session = self.sessions.pop(session_id, None)
        if session is not None:
            self._release(session, session.partitions)

    def context(self, session_id: int, epoch: int, requested: dict[Key, FetchParams],
                forgotten: Iterable[Key], replica_id: int) -> FetchContext:
        now = self.clock()
        if epoch in (INITIAL_EPOCH, FINAL_EPOCH):
            if session_id:
                self._close(session_id)
            session = self._open(replica_id, requested, now) if epoch == INITIAL_EPOCH else None
            return FetchContext(session, requested, incremental=False)
        session = self.sessions.get(session_id)
        if session is None or session_id == 0:
            return FetchContext(None, {}, False, FETCH_SESSION_ID_NOT_FOUND)
        if session.epoch != epoch:
            return FetchContext(None, {}, False, INVALID_FETCH_SESSION_EPOCH)
        gone = [key for key in forgotten if session.partitions.pop(key, None) is not None]
        for key in gone:
            session.sent.pop(key, None)
            session.watch.discard(key)
        self._release(session, gone)
        self._hold(session, [key for key in requested if key not in session.partitions])
        session.partitions.update(requested)
        session.epoch = epoch + 1 if epoch < 2**31 - 1 else 1
        session.last_used_ms = now
        return FetchContext(session, session.partitions, incremental=True, named=requested)

    def _open(self, replica_id: int, requested: dict[Key, FetchParams], now: float) -> FetchSession | None:
        if self.max_slots <= 0:
            return None
        if len(self.sessions) >= self.max_slots and not self._evict_one(replica_id >= 0, now):
            return None
        sid = 0
        while sid == 0 or sid in self.sessions:
            sid = self.rng.randint(1, 2**31 - 1)
        session = FetchSession(sid, replica_id, 1, dict(requested), last_used_ms=now)
        self.sessions[sid] = session
        self._hold(session, session.partitions)
        return session

    def _evict_one(self, for_follower: bool, now: float) -> bool:
        lru = min(self.sessions.values(), key=lambda s: s.last_used_ms)
        if now - lru.last_used_ms >= EVICTION_MS:
            self._close(lru.id)
            return True
        if for_follower:
            consumers = [s for s in self.sessions.values() if s.replica_id < 0]
            if consumers:
                self._close(min(consumers, key=lambda s: s.last_used_ms).id)
                return True
        return False


class FetchSessionBuilder:
    """The fetcher's side: what the next request says, and what a response means.

    `request(wanted, changed)` returns (session_id, epoch, partitions to name, keys to forget);
    `changed` holds the keys whose entry in `wanted` may differ from what the leader was last told,
    so an incremental request costs in proportion to the changes.  After a
    response, `on_response(error_code, session_id)` moves the session on or resets it; a request
    that was not applied leaves its changes to be sent again."""

    def __init__(self):
        self.session_id = 0
        self.epoch = INITIAL_EPOCH
        #: the leader's view of our partitions, as of the last answered request
        self.view: dict[Key, FetchParams] = {}
        self._changed: set[Key] = set()         # keys whose wanted params may differ from `view`
        self._inflight: tuple | None = None     # (full, named, forgotten, changed) of the request in flight

    def reset(self) -> None:
        """Start over with a full fetch (new connection, or the leader lost the session)."""
        self.session_id, self.epoch, self.view, self._inflight = 0, INITIAL_EPOCH, {}, None
        self._changed = set()

    def note(self, changed: Iterable[Key]) -> None:
        """Keys changed without a request being made now: the next request considers them."""
        self._changed.update(changed)

    def request(self, wanted: dict[Key, FetchParams], changed: Iterable[Key]
                ) -> tuple[int, int, dict[Key, FetchParams], list[Key]]:
        self._changed.update(changed)
        changed_now, self._changed = self._changed, set()
        if self.session_id == 0:
            named = dict(wanted)
            self._inflight = (True, named, [], changed_now)
            return 0, INITIAL_EPOCH, named, []
        view = self.view
        named, forgotten = {}, []
        for key in changed_now:
            params = wanted.get(key)
            if params is None:
                if key in view:
                    forgotten.append(key)
            elif view.get(key) != params:
                named[key] = params
        self._inflight = (False, named, forgotten, changed_now)
        return self.session_id, self.epoch, named, forgotten

    def on_response(self, error_code: int, session_id: int) -> None:
        inflight, self._inflight = self._inflight, None
        if error_code in (FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH):
            self.reset()
            return
        if inflight is None:
            return
        full, named, forgotten, changed = inflight
        if error_code:
            self._changed |= changed   # the request was not applied (e.g. an unknown error): ask again
            return
        if full:
            self.view = named
            if session_id:
                self.session_id, self.epoch = session_id, 1
            return
        self.epoch = self.epoch + 1 if self.epoch < 2**31 - 1 else 1
        self.view.update(named)
        for key in forgotten:
            del self.view[key]
