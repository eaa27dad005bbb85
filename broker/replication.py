"""Replication decisions as sans-IO state machines: no sockets, no ZooKeeper, the clock is a parameter.

What lives here, following Kafka's design (ZooKeeper era, with KIP-101/KIP-279 truncation):

- `LeaderEpochCache`: leader epoch -> start offset, persisted as a small text file,
  answering OffsetForLeaderEpoch.
- `truncation_point`: where a replica that became follower cuts its log, from the
  leader's OffsetForLeaderEpoch answer (never blindly at its high watermark).
- `FollowerState` / `LeaderPartition`: the leader's view of its followers; high watermark
  (minimum log end offset over the ISR, never decreasing), ISR shrink and expand
  proposals, acks=all completion and the `min.insync.replicas` checks.
- `choose_leader`: which replica leads after an election.

The I/O layers (broker/partition.py, broker/controller.py) feed events in and carry
the returned decisions out: an ISR change is only *proposed* here; it takes effect
(`LeaderPartition.isr_committed`) once the version-checked ZooKeeper write succeeded.
"""
from __future__ import annotations

import dataclasses
import enum
import os
from bisect import bisect_right
from pathlib import Path
from typing import Iterable, Sequence

from .errors import NONE, NOT_ENOUGH_REPLICAS, NOT_ENOUGH_REPLICAS_AFTER_APPEND, NOT_LEADER_OR_FOLLOWER, REQUEST_TIMED_OUT

UNDEFINED_EPOCH = -1
UNDEFINED_OFFSET = -1


class ReplicationError(ValueError):
    """Inconsistent input to a replication decision (a bug in the caller, or a corrupt file)."""


# --------------------------------------------------------------------------------------------
# Leader epoch cache (KIP-101, KIP-279)
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, order=True)
class EpochEntry:
    epoch: int
    start_offset: int


class LeaderEpochCache:
    """Leader epoch -> offset of the first record written in that epoch, for one replica's log.

    Entries are strictly increasing in both epoch and start offset. The file format is
    Kafka's `leader-epoch-checkpoint`: a version line (0), a count line, then one
    `epoch start_offset` line per entry.
    """

    FILE_VERSION = 0

    def __init__(self, entries: Iterable[EpochEntry | tuple[int, int]] = ()):
        self._entries: list[EpochEntry] = []
        for e in entries:
            e = e if isinstance(e, EpochEntry) else EpochEntry(*e)
            self.assign(e.epoch, e.start_offset)

    # -- reading ------------------------------------------------------------------------------
    @property
    def entries(self) -> list[EpochEntry]:
        return list(self._entries)

    def latest_epoch(self) -> int:
        return self._entries[-1].epoch if self._entries else UNDEFINED_EPOCH

    def earliest_epoch(self) -> int:
        return self._entries[0].epoch if self._entries else UNDEFINED_EPOCH

    def start_offset_of(self, epoch: int) -> int | None:
        for e in self._entries:
            if e.epoch == epoch:
                return e.start_offset
        return None

    def epoch_for_offset(self, offset: int) -> int:
        """The epoch in which `offset` was written (UNDEFINED_EPOCH before the first entry)."""
        starts = [e.start_offset for e in self._entries]
        i = bisect_right(starts, offset) - 1
        return self._entries[i].epoch if i >= 0 else UNDEFINED_EPOCH

    def end_offset_for(self, requested_epoch: int, log_end_offset: int) -> tuple[int, int]:
        """The OffsetForLeaderEpoch answer: (largest epoch <= requested, end offset of that epoch).

        The end offset of an epoch is the start offset of the next larger epoch, or the log
        end offset for the latest epoch. (UNDEFINED_EPOCH, UNDEFINED_OFFSET) when the
        requested epoch is undefined or larger than any epoch this log knows. When the
        requested epoch is older than every entry, the answer is (requested, start of the
        earliest entry): nothing this log has overlaps it beyond that point.
        """
        if requested_epoch == UNDEFINED_EPOCH or not self._entries:
            return UNDEFINED_EPOCH, UNDEFINED_OFFSET
        if requested_epoch == self.latest_epoch():
            return requested_epoch, log_end_offset
        epochs = [e.epoch for e in self._entries]
        i = bisect_right(epochs, requested_epoch)  # index of the first entry with a larger epoch
        if i == len(self._entries):
            return UNDEFINED_EPOCH, UNDEFINED_OFFSET
        higher = self._entries[i]
        if i == 0:
            return requested_epoch, higher.start_offset
        return self._entries[i - 1].epoch, higher.start_offset

    # -- writing ------------------------------------------------------------------------------
    def assign(self, epoch: int, start_offset: int) -> bool:
        """Record that `epoch` starts at `start_offset` (leader on election, follower on append).

        An entry that conflicts (an epoch >= `epoch` or a start offset >= `start_offset`) is
        dropped first, so the cache stays monotonic even after an unclean election. Returns
        whether the cache changed.
        """
        if epoch < 0 or start_offset < 0:
            raise ReplicationError(f"leader epoch {epoch} and start offset {start_offset} must be >= 0")
        if self._entries:
            last = self._entries[-1]
            if last.epoch == epoch and last.start_offset <= start_offset:
                return False  # same epoch continues; its start does not move forward
        self._entries = [e for e in self._entries if e.epoch < epoch and e.start_offset < start_offset]
        self._entries.append(EpochEntry(epoch, start_offset))
        return True

    def agree_with_batch(self, base_offset: int, epoch: int) -> bool:
        """The log holds a batch at `base_offset` written in `epoch`. Where the cache names another epoch for
        it, the batch is the truth: a power loss can undo a truncation (and the appends after it) while the
        cache, written durably, still records the epochs that followed (safe x mixed in make test: a restarted
        follower kept an epoch-0 record at an offset its cache gave to epoch 1, asked the leader for epoch 1's
        end, truncated nothing and diverged below the high watermark). Entries from that offset on, or of a
        later epoch, are dropped and the batch's epoch starts there. Returns whether the cache changed."""
        if epoch < 0 or self.epoch_for_offset(base_offset) == epoch:
            return False
        keep = [e for e in self._entries if e.start_offset < base_offset and e.epoch <= epoch]
        if not keep or keep[-1].epoch != epoch:
            keep.append(EpochEntry(epoch, base_offset))
        self._entries = keep
        return True

    def truncate_from_end(self, end_offset: int) -> None:
        """The log was truncated to `end_offset` (exclusive): forget epochs that start at or past it."""
        self._entries = [e for e in self._entries if e.start_offset < end_offset]

    def truncate_from_start(self, start_offset: int) -> None:
        """The log start moved to `start_offset`: drop epochs wholly before it, clamp the first one."""
        keep = [e for e in self._entries if e.start_offset >= start_offset]
        before = [e for e in self._entries if e.start_offset < start_offset]
        if before and (not keep or keep[0].start_offset > start_offset):
            keep.insert(0, EpochEntry(before[-1].epoch, start_offset))
        self._entries = keep

    # -- persistence --------------------------------------------------------------------------
    def serialize(self) -> str:
        lines = [str(self.FILE_VERSION), str(len(self._entries))]
        lines += [f"{e.epoch} {e.start_offset}" for e in self._entries]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str, source: str = "leader-epoch-checkpoint") -> "LeaderEpochCache":
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        try:
            version, count = int(lines[0]), int(lines[1])
        except (IndexError, ValueError):
            raise ReplicationError(f"{source}: expected a version line and a count line; delete the file to rebuild it") from None
        if version != cls.FILE_VERSION:
            raise ReplicationError(f"{source}: unknown version {version} (this broker writes {cls.FILE_VERSION})")
        if len(lines) - 2 != count:
            raise ReplicationError(f"{source}: says {count} entries but has {len(lines) - 2}; delete the file to rebuild it")
        entries = []
        for ln in lines[2:]:
            parts = ln.split()
            if len(parts) != 2:
                raise ReplicationError(f"{source}: line {ln!r} is not 'epoch start_offset'")
            entries.append(EpochEntry(int(parts[0]), int(parts[1])))
        if entries != sorted(set(entries)) or len({e.epoch for e in entries}) != len(entries) \
                or any(a.start_offset >= b.start_offset for a, b in zip(entries, entries[1:])):
            raise ReplicationError(f"{source}: entries are not strictly increasing in epoch and offset")
        return cls(entries)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a crash leaves either the old or the new file, never a torn one."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(self.serialize())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LeaderEpochCache":
        path = Path(path)
        if not path.exists():
            return cls()
        return cls.parse(path.read_text(), source=str(path))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LeaderEpochCache) and self._entries == other._entries

    def __repr__(self) -> str:
        return f"LeaderEpochCache({[(e.epoch, e.start_offset) for e in self._entries]})"


# --------------------------------------------------------------------------------------------
# Follower truncation (KIP-279)
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Truncation:
    """Where the follower truncates its log, and whether it must ask the leader again first.

    `complete` False means: truncate to `offset`, then send OffsetForLeaderEpoch again with
    the (now smaller) latest epoch of the follower's cache (KIP-279's loop).
    """
    offset: int
    complete: bool


def truncation_point(follower_cache: LeaderEpochCache, follower_log_end_offset: int,
                     follower_high_watermark: int, leader_epoch: int, leader_end_offset: int) -> Truncation:
    """The follower's truncation offset from the leader's answer (leader_epoch, leader_end_offset)
    to OffsetForLeaderEpoch(follower_cache.latest_epoch()).

    Both logs agree up to the end of the largest epoch they share; the follower keeps
    min(leader's end of it, own end of it, own log end).
    """
    if leader_end_offset == UNDEFINED_OFFSET:
        # Nothing to compare against (follower has no epochs, or the leader does not know
        # them): the high watermark is the only offset known to be committed.
        return Truncation(min(follower_high_watermark, follower_log_end_offset), True)
    follower_epoch, follower_end = follower_cache.end_offset_for(leader_epoch, follower_log_end_offset)
    if follower_end == UNDEFINED_OFFSET:
        return Truncation(min(leader_end_offset, follower_log_end_offset), True)
    if follower_epoch != leader_epoch:
        # The follower never had the leader's epoch: cut back to the end of its own largest
        # epoch below it and ask again with that epoch.
        return Truncation(min(follower_end, follower_log_end_offset), False)
    return Truncation(min(leader_end_offset, follower_end, follower_log_end_offset), True)


# --------------------------------------------------------------------------------------------
# Leader: follower tracking, high watermark, ISR, acks=all
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class FollowerState:
    """What the leader knows about one follower, updated on each of its fetches.

    Kafka's lastCaughtUpTime rule: a fetch at offset >= the leader's current LEO caught up
    at the fetch time; a fetch at offset >= the leader's LEO as of the previous fetch had
    caught up at the previous fetch time.
    """
    broker_id: int
    log_end_offset: int = UNDEFINED_OFFSET
    last_fetch_time_ms: int | None = None
    last_fetch_leader_log_end_offset: int = UNDEFINED_OFFSET
    last_caught_up_time_ms: int = 0

    def on_fetch(self, fetch_offset: int, leader_log_end_offset: int, now_ms: int) -> None:
        if fetch_offset >= leader_log_end_offset:
            self.last_caught_up_time_ms = max(self.last_caught_up_time_ms, now_ms)
        elif self.last_fetch_time_ms is not None and fetch_offset >= self.last_fetch_leader_log_end_offset:
            self.last_caught_up_time_ms = max(self.last_caught_up_time_ms, self.last_fetch_time_ms)
        self.log_end_offset = fetch_offset
        self.last_fetch_leader_log_end_offset = leader_log_end_offset
        self.last_fetch_time_ms = now_ms

    def is_caught_up(self, leader_log_end_offset: int, now_ms: int, lag_max_ms: int) -> bool:
        return self.log_end_offset == leader_log_end_offset or now_ms - self.last_caught_up_time_ms <= lag_max_ms


@dataclasses.dataclass(frozen=True)
class IsrChange:
    """A proposed ISR, to be written with a version-checked set; apply with `isr_committed`."""
    new_isr: tuple[int, ...]
    reason: str


@dataclasses.dataclass
class _PendingAck:
    token: object
    required_offset: int
    deadline_ms: int


class LeaderPartition:
    """The leader's replication state for one partition, in one leader epoch.

    Feed: leader appends (`on_leader_append`), follower fetches (`on_follower_fetch`),
    the clock (`maybe_shrink_isr`, `poll_acks`), ISR writes that succeeded or failed.
    While an ISR change is in flight, the high watermark is computed over the *maximal*
    ISR (the committed ISR plus a follower being added; a follower being removed still
    counts), so it never passes a replica that could be elected (KIP-497's reasoning).
    """

    def __init__(self, broker_id: int, replicas: Sequence[int], isr: Sequence[int], leader_epoch: int,
                 log_end_offset: int, high_watermark: int, now_ms: int, *,
                 replica_lag_time_max_ms: int = 30000, min_insync_replicas: int = 1,
                 epoch_start_offset: int | None = None):
        if broker_id not in isr:
            raise ReplicationError(f"leader {broker_id} is not in its ISR {list(isr)}")
        self.broker_id = broker_id
        self.replicas = tuple(replicas)
        self.isr: tuple[int, ...] = tuple(isr)
        self.pending_isr: IsrChange | None = None
        self.leader_epoch = leader_epoch
        self.log_end_offset = log_end_offset
        # A new leader keeps the HW it had as follower; it may be below what the old leader
        # announced, and rises as followers report (it never goes down from here).
        self.high_watermark = min(high_watermark, log_end_offset)
        self.epoch_start_offset = log_end_offset if epoch_start_offset is None else epoch_start_offset
        self.replica_lag_time_max_ms = replica_lag_time_max_ms
        self.min_insync_replicas = min_insync_replicas
        # Every follower starts "caught up now", as Kafka does on becoming leader, so that a
        # new leader does not shrink the ISR before followers had a chance to fetch.
        self.followers = {r: FollowerState(r, last_caught_up_time_ms=now_ms if r in isr else 0)
                          for r in self.replicas if r != broker_id}
        self._pending_acks: list[_PendingAck] = []
        # Kafka's maybeIncrementLeaderHW on becoming leader: an ISR whose LEOs are already known
        # (the leader alone) commits up to them now, not on the next append that may never come.
        self._maybe_advance_hw()

    # -- ISR views ----------------------------------------------------------------------------
    @property
    def maximal_isr(self) -> tuple[int, ...]:
        if self.pending_isr is None:
            return self.isr
        return self.isr + tuple(r for r in self.pending_isr.new_isr if r not in self.isr)

    def _leo_of(self, replica: int) -> int:
        return self.log_end_offset if replica == self.broker_id else self.followers[replica].log_end_offset

    # -- high watermark -----------------------------------------------------------------------
    def _maybe_advance_hw(self) -> bool:
        candidate = min(self._leo_of(r) for r in self.maximal_isr)
        if candidate > self.high_watermark:
            self.high_watermark = candidate
            return True
        return False

    # -- produce path -------------------------------------------------------------------------
    def check_produce(self, acks: int) -> int:
        """Error code before appending: NOT_ENOUGH_REPLICAS for acks=all below min.insync.replicas."""
        if acks == -1 and len(self.isr) < self.min_insync_replicas:
            return NOT_ENOUGH_REPLICAS
        return NONE

    def on_leader_append(self, new_log_end_offset: int) -> bool:
        """The leader appended up to `new_log_end_offset`; returns whether the HW moved."""
        if new_log_end_offset < self.log_end_offset:
            raise ReplicationError(f"leader log end offset went back from {self.log_end_offset} to {new_log_end_offset}")
        self.log_end_offset = new_log_end_offset
        return self._maybe_advance_hw()

    def ack_status(self, required_offset: int) -> int | None:
        """acks=all for a batch ending before `required_offset`: None while waiting, else an error code."""
        if self.high_watermark >= required_offset:
            if len(self.isr) < self.min_insync_replicas:
                return NOT_ENOUGH_REPLICAS_AFTER_APPEND
            return NONE
        return None

    def wait_for_ack(self, token: object, required_offset: int, deadline_ms: int) -> None:
        """Register an acks=all produce; `poll_acks` reports it when done or timed out."""
        self._pending_acks.append(_PendingAck(token, required_offset, deadline_ms))

    def poll_acks(self, now_ms: int) -> list[tuple[object, int]]:
        """Completed acks=all produces: (token, error code). Kafka answers a produce whose ISR fell
        below min.insync.replicas while waiting with NOT_ENOUGH_REPLICAS_AFTER_APPEND once
        the (smaller) ISR has the batch; REQUEST_TIMED_OUT at the deadline."""
        done, waiting = [], []
        for p in self._pending_acks:
            status = self.ack_status(p.required_offset)
            if status is not None:
                done.append((p.token, status))
            elif now_ms >= p.deadline_ms:
                done.append((p.token, REQUEST_TIMED_OUT))
            else:
                waiting.append(p)
        self._pending_acks = waiting
        return done

    def abandon_acks(self) -> list[tuple[object, int]]:
        """Leadership lost: every waiting produce fails with NOT_LEADER_OR_FOLLOWER."""
        done = [(p.token, NOT_LEADER_OR_FOLLOWER) for p in self._pending_acks]
        self._pending_acks = []
        return done

    def next_ack_deadline(self) -> int | None:
        return min((p.deadline_ms for p in self._pending_acks), default=None)

    # -- follower fetches ---------------------------------------------------------------------
    def note_fetches(self, positions) -> None:
        """Follower requests that fetched at the log end without naming this partition (an incremental
        fetch session's unchanged partitions are not reported one by one): (replica id, fetch offset,
        time of the request).  Call before an append moves the log end, so that an in-step follower's
        lastCaughtUpTime is its latest request and not the last one that named the partition (else an
        append to a partition idle for replica.lag.time.max.ms would find its followers lagging)."""
        leo = self.log_end_offset
        for replica_id, fetch_offset, at_ms in positions:
            f = self.followers.get(replica_id)
            if (f is not None and fetch_offset == leo == f.log_end_offset
                    and (f.last_fetch_time_ms is None or at_ms > f.last_fetch_time_ms)):
                f.on_fetch(fetch_offset, leo, int(at_ms))

    def on_follower_fetch(self, replica_id: int, fetch_offset: int, now_ms: int) -> tuple[bool, IsrChange | None]:
        """A follower fetched at `fetch_offset` (its log end offset). Returns (HW moved, ISR expansion to write)."""
        if replica_id not in self.followers:
            raise ReplicationError(f"broker {replica_id} is not a replica of this partition {list(self.replicas)}")
        if fetch_offset > self.log_end_offset:
            raise ReplicationError(f"follower {replica_id} fetch offset {fetch_offset} is past the leader's log end {self.log_end_offset}")
        self.followers[replica_id].on_fetch(fetch_offset, self.log_end_offset, now_ms)
        moved = self._maybe_advance_hw()
        return moved, self.maybe_expand_isr(replica_id)

    def maybe_expand_isr(self, replica_id: int) -> IsrChange | None:
        """Kafka's rule: a follower rejoins once its LEO is at or past the HW and past the start
        of the current leader epoch (so it holds everything this leader committed)."""
        if self.pending_isr is not None or replica_id in self.isr:
            return None
        leo = self.followers[replica_id].log_end_offset
        if leo >= self.high_watermark and leo >= self.epoch_start_offset:
            self.pending_isr = IsrChange(self.isr + (replica_id,), f"broker {replica_id} caught up to {leo}")
            return self.pending_isr
        return None

    def maybe_shrink_isr(self, now_ms: int) -> IsrChange | None:
        """Drop ISR followers that have not caught up within replica.lag.time.max.ms."""
        if self.pending_isr is not None:
            return None
        lagging = [r for r in self.isr if r != self.broker_id
                   and not self.followers[r].is_caught_up(self.log_end_offset, now_ms, self.replica_lag_time_max_ms)]
        if not lagging:
            return None
        new_isr = tuple(r for r in self.isr if r not in lagging)
        self.pending_isr = IsrChange(new_isr, f"brokers {lagging} lagged more than {self.replica_lag_time_max_ms} ms")
        return self.pending_isr

    def isr_committed(self, new_isr: Sequence[int]) -> bool:
        """The ISR written to ZooKeeper (by this leader, or by the controller): adopt it. Returns whether the HW moved."""
        new_isr = tuple(new_isr)
        if self.broker_id not in new_isr:
            raise ReplicationError(f"leader {self.broker_id} missing from committed ISR {list(new_isr)}")
        unknown = [r for r in new_isr if r != self.broker_id and r not in self.followers]
        if unknown:
            raise ReplicationError(f"ISR {list(new_isr)} names non-replicas {unknown}")
        self.isr = new_isr
        self.pending_isr = None
        return self._maybe_advance_hw()

    def isr_write_failed(self) -> None:
        """The version-checked write lost (someone else changed the state): forget the proposal;
        the caller re-reads the state and either adopts it or steps down."""
        self.pending_isr = None


# --------------------------------------------------------------------------------------------
# Follower: high-watermark bookkeeping
# --------------------------------------------------------------------------------------------

def follower_high_watermark(current_hw: int, leader_hw: int, log_end_offset: int) -> int:
    """A follower's HW after a fetch response: the leader's, capped by its own log end, never down
    (except by truncation, which the caller applies with min(hw, truncation offset))."""
    return max(current_hw, min(leader_hw, log_end_offset))


# --------------------------------------------------------------------------------------------
# Leader election
# --------------------------------------------------------------------------------------------

class ElectionKind(enum.Enum):
    CLEAN = "clean"        # from the live ISR
    UNCLEAN = "unclean"    # a live replica outside the ISR: committed data may be lost
    OFFLINE = "offline"    # nobody eligible: leader -1 until an ISR member returns


@dataclasses.dataclass(frozen=True)
class Election:
    leader: int            # -1 when offline
    isr: tuple[int, ...]
    kind: ElectionKind


def choose_leader(assignment: Sequence[int], isr: Sequence[int], live: Iterable[int],
                  unclean_allowed: bool, exclude: Iterable[int] = ()) -> Election:
    """Kafka's OfflinePartitionLeaderElection: the first live ISR member in assignment order;
    if none and unclean election is allowed, the first live replica (its ISR is then itself);
    otherwise offline, keeping the ISR so that one of its members can lead when it returns.
    `exclude`: brokers that must not lead (shutting down)."""
    live = set(live) - set(exclude)
    live_isr = [r for r in assignment if r in isr and r in live]
    if live_isr:
        return Election(live_isr[0], tuple(r for r in isr if r in live), ElectionKind.CLEAN)
    if unclean_allowed:
        live_replicas = [r for r in assignment if r in live]
        if live_replicas:
            return Election(live_replicas[0], (live_replicas[0],), ElectionKind.UNCLEAN)
    return Election(-1, tuple(isr), ElectionKind.OFFLINE)
