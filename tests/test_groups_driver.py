"""A test driver for broker.groups: a fake clock and an in-memory __consumer_offsets log.

Not a mock of the coordinator: it plays the socket layer and the partition
(append, high watermark), so tests drive the real state machine without IO.
"""
from __future__ import annotations

import itertools

from broker.group_messages import (
    CommitPartition,
    HeartbeatRequest,
    JoinGroupRequest,
    LeaveGroupRequest,
    LeavingMember,
    OffsetCommitRequest,
    OffsetFetchRequest,
    SyncGroupRequest,
)
from broker.groups import CoordinatorConfig, Effects, GroupCoordinator


class Driver:
    """Owns every offsets partition; appends land in `log`; `auto_commit` moves the high watermark at once."""

    def __init__(self, config: CoordinatorConfig | None = None, auto_commit: bool = True, load: bool = True):
        self.config = config or CoordinatorConfig(offsets_topic_num_partitions=4)
        ids = itertools.count(1)
        self.new_member_id = lambda cid: f"{cid}-{next(ids)}"  # unique across coordinators of one test
        self.coord = GroupCoordinator(self.config, member_id_factory=self.new_member_id)
        self.now = 0
        self.replies: dict = {}
        self.log: dict[int, list] = {p: [] for p in range(self.config.offsets_topic_num_partitions)}
        self.hw: dict[int, int] = {p: 0 for p in self.log}
        self.auto_commit = auto_commit
        self.appends = []
        self._tokens = itertools.count(1)
        if load:
            for p in self.log:
                self.coord.load_partition(p, [], self.now)

    # --- plumbing --------------------------------------------------------------------------
    def apply(self, fx: Effects) -> Effects:
        for token, response in fx.replies:
            assert token not in self.replies, f"token {token} answered twice"
            self.replies[token] = response
        for a in fx.appends:
            self.appends.append(a)
            log = self.log[a.partition]
            log.extend(a.records)
            self.coord.appended(a.append_id, len(log) - 1)
        if fx.appends and self.auto_commit:
            for p in sorted({a.partition for a in fx.appends}):
                self.commit_partition(p)
        return fx

    def commit_partition(self, partition: int, upto: int | None = None) -> Effects:
        """Advance the high watermark of an offsets partition (to the log end by default)."""
        self.hw[partition] = len(self.log[partition]) if upto is None else upto
        return self.apply(self.coord.high_watermark(partition, self.hw[partition], self.now))

    def committed_records(self, partition: int):
        return self.log[partition][:self.hw[partition]]

    def token(self):
        return next(self._tokens)

    def advance(self, ms: float) -> Effects:
        self.now += ms
        return self.apply(self.coord.tick(self.now))

    def reply(self, token):
        return self.replies.get(token)

    # --- requests ----------------------------------------------------------------------------
    def join(self, group="g", member_id="", client_id="c", protocols=(("range", b"sub"),),
             session=10000, rebalance=30000, version=5, protocol_type="consumer"):
        t = self.token()
        self.apply(self.coord.join_group(t, JoinGroupRequest(
            group, member_id, protocol_type, list(protocols), session, rebalance,
            client_id=client_id, client_host="/127.0.0.1", api_version=version), self.now))
        return t

    def join_new(self, group="g", client_id="c", **kw):
        """The KIP-394 two-step join: returns (member_id, token of the second join)."""
        t = self.join(group, "", client_id, **kw)
        r = self.reply(t)
        assert r.error_code == 79, r
        return r.member_id, self.join(group, r.member_id, client_id, **kw)

    def sync(self, member_id, generation, assignments=None, group="g"):
        t = self.token()
        self.apply(self.coord.sync_group(t, SyncGroupRequest(group, generation, member_id, assignments or {}), self.now))
        return t

    def heartbeat(self, member_id, generation, group="g"):
        t = self.token()
        self.apply(self.coord.heartbeat(t, HeartbeatRequest(group, generation, member_id), self.now))
        return self.reply(t).error_code

    def leave(self, *member_ids, group="g"):
        t = self.token()
        self.apply(self.coord.leave_group(t, LeaveGroupRequest(group, [LeavingMember(m) for m in member_ids]), self.now))
        return self.reply(t)

    def commit(self, offsets: dict, member_id="", generation=-1, group="g", metadata=""):
        t = self.token()
        parts = [CommitPartition(tp, p, off, metadata=metadata) for (tp, p), off in offsets.items()]
        fx = self.coord.offset_commit(t, OffsetCommitRequest(group, parts, generation, member_id), self.now)
        # the append that carries this commit (timer effects may add others before it)
        answered = any(tok == t for tok, _ in fx.replies)
        self.last_commit_append = fx.appends[-1].append_id if fx.appends and not answered else None
        self.apply(fx)
        return t

    def fetch(self, partitions=None, group="g", require_stable=False):
        t = self.token()
        self.apply(self.coord.offset_fetch(t, OffsetFetchRequest(group, partitions, require_stable), self.now))
        return self.reply(t)

    def form_group(self, n, group="g", assignments=None):
        """n members join and sync; returns (generation, leader, [member ids])."""
        joins = [self.join_new(group, client_id=f"c{i}") for i in range(n)]
        # joins during group.initial.rebalance.delay.ms extend the delay once more
        for _ in range(10):
            if all(self.reply(t) is not None for _, t in joins):
                break
            self.advance(max(self.config.group_initial_rebalance_delay_ms, 1))
        responses = [self.reply(t) for _, t in joins]
        assert all(r is not None and r.error_code == 0 for r in responses), responses
        gen, leader = responses[0].generation_id, responses[0].leader
        members = [m for m, _ in joins]
        assignments = assignments or {m: f"assign-{m}".encode() for m in members}
        ts = [self.sync(m, gen, assignments if m == leader else None, group) for m in members]
        assert all(self.reply(t).error_code == 0 for t in ts), [self.reply(t) for t in ts]
        return gen, leader, members

    def failover(self) -> GroupCoordinator:
        """The coordinator dies: what was not committed is lost, a new one loads the committed log."""
        old = self.coord
        for p in self.log:
            del self.log[p][self.hw[p]:]
        self.coord = GroupCoordinator(self.config, member_id_factory=self.new_member_id)
        for p in self.log:
            self.coord.begin_loading(p)
            self.apply(self.coord.load_partition(p, self.log[p], self.now))
        return old
