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
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

INITIAL_EPOCH = 0
FINAL_EPOCH = -1
FETCH_SESSION_ID_NOT_FOUND = 70
INVALID_FETCH_SESSION_EPOCH = 71
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


@dataclass
class FetchSession:
    id: int
    replica_id: int
    epoch: int                   # the epoch the next incremental request must carry
    partitions: dict[Key, FetchParams] = field(default_factory=dict)
    #: (high watermark, log start) last sent per partition; absent: never sent, so the next response carries it
    sent: dict[Key, tuple[int, int]] = field(default_factory=dict)
    last_used_ms: float = 0.0


class FetchContext:
    """How one Fetch request is answered: which partitions to look at, which to include."""

    def __init__(self, session: FetchSession | None, partitions: dict[Key, FetchParams],
                 incremental: bool, error: int = 0, named: dict[Key, FetchParams] | None = None):
        self.session = session
        self.partitions = partitions     # what to read: the request's (full) or the session's (incremental)
        self.incremental = incremental
        self.error = error
        self.named = partitions if named is None else named   # what the request itself named

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

    def context(self, session_id: int, epoch: int, requested: dict[Key, FetchParams],
                forgotten: Iterable[Key], replica_id: int) -> FetchContext:
        now = self.clock()
        if epoch in (INITIAL_EPOCH, FINAL_EPOCH):
            if session_id:
                self.sessions.pop(session_id, None)
            session = self._open(replica_id, requested, now) if epoch == INITIAL_EPOCH else None
            return FetchContext(session, requested, incremental=False)
        session = self.sessions.get(session_id)
        if session is None or session_id == 0:
            return FetchContext(None, {}, False, FETCH_SESSION_ID_NOT_FOUND)
        if session.epoch != epoch:
            return FetchContext(None, {}, False, INVALID_FETCH_SESSION_EPOCH)
        for key in forgotten:
            session.partitions.pop(key, None)
            session.sent.pop(key, None)
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
        return session

    def _evict_one(self, for_follower: bool, now: float) -> bool:
        lru = min(self.sessions.values(), key=lambda s: s.last_used_ms)
        if now - lru.last_used_ms >= EVICTION_MS:
            del self.sessions[lru.id]
            return True
        if for_follower:
            consumers = [s for s in self.sessions.values() if s.replica_id < 0]
            if consumers:
                del self.sessions[min(consumers, key=lambda s: s.last_used_ms).id]
                return True
        return False


class FetchSessionBuilder:
    """The fetcher's side: what the next request says, and what a response means.

    `request(wanted)` returns (session_id, epoch, partitions to name, keys to forget); after a
    response arrives, `on_response(error_code, session_id)` moves the session on or resets it."""

    def __init__(self):
        self.session_id = 0
        self.epoch = INITIAL_EPOCH
        self._sent: dict[Key, FetchParams] = {}      # the leader's view of our partitions
        self._pending: dict[Key, FetchParams] | None = None

    def reset(self) -> None:
        """Start over with a full fetch (new connection, or the leader lost the session)."""
        self.session_id, self.epoch, self._sent, self._pending = 0, INITIAL_EPOCH, {}, None

    def request(self, wanted: dict[Key, FetchParams]) -> tuple[int, int, dict[Key, FetchParams], list[Key]]:
        """`wanted` (built afresh by the caller for each request) becomes the leader's view once answered."""
        self._pending = wanted
        if self.session_id == 0:
            return 0, INITIAL_EPOCH, wanted, []
        changed = {k: p for k, p in wanted.items() if self._sent.get(k) != p}
        forgotten = [k for k in self._sent if k not in wanted]
        return self.session_id, self.epoch, changed, forgotten

    def on_response(self, error_code: int, session_id: int) -> None:
        if error_code in (FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH):
            self.reset()
            return
        if error_code:
            return   # the request was not applied (e.g. an unknown error): ask again from the same state
        if self.session_id == 0:
            if session_id:
                self.session_id, self.epoch = session_id, 1
        else:
            self.epoch = self.epoch + 1 if self.epoch < 2**31 - 1 else 1
        self._sent = self._pending or {}
        self._pending = None
