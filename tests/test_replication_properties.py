"""Hypothesis properties of the replication state machines, driven through a model cluster.

The model wires broker.replication's pieces together the way the broker does: a leader
(`LeaderPartition` + its log and `LeaderEpochCache`), followers that reconcile with each
new leader through OffsetForLeaderEpoch + `truncation_point` before fetching, ISR changes
committed as a controller would, and elections through `choose_leader`. Logs are lists of
the leader epoch each record was written in, which is enough to see divergence.
"""
from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings, strategies as st, find

from broker.replication import (
    ElectionKind, LeaderEpochCache, LeaderPartition, choose_leader, follower_high_watermark, truncation_point,
)

REPLICAS = (1, 2, 3)
LAG_MS = 100


@dataclasses.dataclass
class Replica:
    log: list = dataclasses.field(default_factory=list)
    cache: LeaderEpochCache = dataclasses.field(default_factory=LeaderEpochCache)
    hw: int = 0
    reconciled_epoch: int = -1     # leader epoch this follower last truncated against

    def append(self, epochs):
        for e in epochs:
            self.cache.assign(e, len(self.log))
            self.log.append(e)

    def truncate(self, offset):
        del self.log[offset:]
        self.cache.truncate_from_end(offset)
        self.hw = min(self.hw, offset)


class Model:
    def __init__(self, unclean: bool):
        self.unclean = unclean
        self.now = 0
        self.replicas = {r: Replica() for r in REPLICAS}
        self.alive = set(REPLICAS)
        self.isr = tuple(REPLICAS)
        self.leader = 1
        self.epoch = 0
        self.replicas[1].cache.assign(0, 0)
        self.lp = self._new_leader_state()
        self.committed: list[int] = []    # longest prefix any leader ever exposed under its HW
        self.hw_history: list[int] = []   # leader HWs within the current epoch
        self.elections: list[ElectionKind] = []

    def _new_leader_state(self):
        r = self.replicas[self.leader]
        return LeaderPartition(self.leader, REPLICAS, self.isr, self.epoch, len(r.log), r.hw, self.now,
                               replica_lag_time_max_ms=LAG_MS, epoch_start_offset=r.cache.start_offset_of(self.epoch))

    # -- operations --------------------------------------------------------------------------
    def append(self, n):
        if self.leader < 0:
            return
        r = self.replicas[self.leader]
        r.append([self.epoch] * n)
        self.lp.on_leader_append(len(r.log))
        self._observe()

    def fetch(self, rid, max_records):
        if self.leader < 0 or rid == self.leader or rid not in self.alive:
            return
        f, lead = self.replicas[rid], self.replicas[self.leader]
        if f.reconciled_epoch != self.epoch:
            while True:    # KIP-279 loop: OffsetForLeaderEpoch until the truncation is complete
                le, lo = lead.cache.end_offset_for(f.cache.latest_epoch(), len(lead.log))
                t = truncation_point(f.cache, len(f.log), f.hw, le, lo)
                f.truncate(t.offset)
                if t.complete:
                    break
            f.reconciled_epoch = self.epoch
        offset = len(f.log)
        assert f.log == lead.log[:offset], "a reconciled follower is a prefix of its leader"
        _, change = self.lp.on_follower_fetch(rid, offset, self.now)
        if change:
            self._commit_isr(change.new_isr)
        f.append(lead.log[offset:offset + max_records])
        f.hw = follower_high_watermark(f.hw, self.lp.high_watermark, len(f.log))
        self._observe()

    def tick(self, ms):
        self.now += ms
        if self.leader >= 0:
            change = self.lp.maybe_shrink_isr(self.now)
            if change:
                self._commit_isr(change.new_isr)
        self._observe()

    def crash(self, rid):
        if rid not in self.alive:
            return
        self.alive.discard(rid)
        self.replicas[rid].reconciled_epoch = -1
        if rid == self.leader or self.leader < 0:
            self._elect()
        elif rid in self.isr and len(self.isr) > 1:
            # the controller drops a broker whose ZooKeeper session is gone from the ISR
            self._commit_isr(tuple(r for r in self.isr if r != rid))
        self._observe()

    def restart(self, rid):
        if rid in self.alive:
            return
        self.alive.add(rid)
        if self.leader < 0:
            self._elect()
        self._observe()

    # -- controller-side ---------------------------------------------------------------------
    def _commit_isr(self, new_isr):
        self.isr = tuple(new_isr)
        self.lp.isr_committed(self.isr)

    def _elect(self):
        e = choose_leader(REPLICAS, self.isr, self.alive, self.unclean)
        self.elections.append(e.kind)
        self.isr = e.isr
        if e.kind is ElectionKind.OFFLINE:
            self.leader = -1
            return
        self.epoch += 1
        self.leader = e.leader
        new = self.replicas[self.leader]
        new.cache.assign(self.epoch, len(new.log))
        new.reconciled_epoch = self.epoch
        self.lp = self._new_leader_state()
        self.hw_history = []

    def _observe(self):
        if self.leader < 0:
            return
        lead = self.replicas[self.leader]
        hw = self.lp.high_watermark
        self.hw_history.append(hw)
        if hw > len(self.committed):
            self.committed = lead.log[:hw]
        # invariants that hold whatever elections happened
        assert self.hw_history == sorted(self.hw_history), "HW went backwards within an epoch"
        for r in self.lp.isr:
            assert len(self.replicas[r].log) >= hw, f"HW {hw} above ISR member {r}'s LEO"
            assert self.replicas[r].log[:hw] == lead.log[:hw], f"ISR member {r} disagrees below the HW"

    def lost_committed(self) -> bool:
        if self.leader < 0:
            return False
        return self.replicas[self.leader].log[:len(self.committed)] != self.committed


op = st.one_of(
    st.tuples(st.just("append"), st.integers(1, 4)),
    st.tuples(st.just("fetch"), st.sampled_from(REPLICAS), st.integers(1, 5)),
    st.tuples(st.just("tick"), st.integers(1, 150)),
    st.tuples(st.just("crash"), st.sampled_from(REPLICAS)),
    st.tuples(st.just("restart"), st.sampled_from(REPLICAS)),
)


def run(ops, unclean):
    m = Model(unclean)
    for o in ops:
        getattr(m, o[0])(*o[1:])
        if not unclean:
            assert not m.lost_committed(), f"committed records lost: {m.committed} vs leader {m.replicas[m.leader].log}"
    return m


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, max_size=60))
def test_clean_elections_never_lose_committed_records(ops):
    m = run(ops, unclean=False)
    assert all(k is not ElectionKind.UNCLEAN for k in m.elections)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, max_size=60))
def test_hw_invariants_hold_with_unclean_elections_too(ops):
    run(ops, unclean=True)     # Model._observe asserts monotonic HW and HW <= every ISR LEO


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, max_size=60))
def test_followers_converge_to_the_leader_after_healing(ops):
    m = run(ops, unclean=False)
    for r in REPLICAS:
        m.restart(r)
    if m.leader < 0:
        return
    for _ in range(3):
        for r in REPLICAS:
            m.fetch(r, 10_000)
    lead = m.replicas[m.leader].log
    for r in REPLICAS:
        assert m.replicas[r].log == lead
    assert m.lp.high_watermark == len(lead)


def test_unclean_election_can_lose_committed_records():
    # Hypothesis searches for a schedule where an unclean election loses committed data.
    ops = find(st.lists(op, max_size=40), lambda ops: run(ops, unclean=True).lost_committed(),
               settings=settings(max_examples=5000, deadline=None, database=None))
    m = run(ops, unclean=True)
    assert ElectionKind.UNCLEAN in m.elections


def test_the_talks_scenario_step_by_step():
    # RF 3, followers drop out, the leader alone acks, dies; a stale follower is elected.
    for unclean in (True, False):
        m = Model(unclean)
        m.append(2)
        for r in (2, 3):
            m.fetch(r, 10)
        m.fetch(2, 10)
        m.fetch(3, 10)                                # everyone has 2 records, HW 2
        assert m.lp.high_watermark == 2
        m.tick(LAG_MS + 1)
        m.append(3)
        m.tick(LAG_MS + 1)                            # followers "paused": shrink
        m.tick(LAG_MS + 1)
        assert m.isr == (1,)
        assert m.lp.high_watermark == 5               # acked and committed by the leader alone
        m.crash(2), m.crash(3)
        m.crash(1)
        assert m.leader == -1
        m.restart(2)
        if unclean:
            assert m.leader == 2 and m.elections[-1] is ElectionKind.UNCLEAN
            assert m.lost_committed()
            m.restart(1)
            m.fetch(1, 10)                            # the old leader truncates its 3 records away
            assert m.replicas[1].log == [0, 0]
        else:
            assert m.leader == -1                     # offline until the ISR member returns
            m.restart(1)
            assert m.leader == 1 and not m.lost_committed()
            m.fetch(2, 10)
            assert m.replicas[2].log == m.replicas[1].log == [0] * 5
