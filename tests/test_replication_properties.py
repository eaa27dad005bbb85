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
from conftest import examples

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


@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, max_size=60))
def test_clean_elections_never_lose_committed_records(ops):
    m = run(ops, unclean=False)
    assert all(k is not ElectionKind.UNCLEAN for k in m.elections)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, max_size=60))
def test_hw_invariants_hold_with_unclean_elections_too(ops):
    run(ops, unclean=True)     # Model._observe asserts monotonic HW and HW <= every ISR LEO


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
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


# ------------------------------------------------------------------------------------------------------------
# A model that races: ISR writes in flight, state changes learned late, truncation apart from re-fetching
# ------------------------------------------------------------------------------------------------------------
#
# The model above applies each ISR change at once and reconciles, truncates and re-fetches a follower in one
# step, so the windows in which Kafka's rules matter never open: computing the HW over the committed ISR only,
# or truncating to the HW instead of the end of the leader's epoch (KIP-101's bug), both survive it.  Here the
# replication.py state machines (LeaderPartition, LeaderEpochCache, truncation_point, follower_high_watermark,
# choose_leader) are driven with a model clock and model transport as the broker drives them, every message a
# separate step that Hypothesis schedules:
#
# - a leader's ISR change is a compare-and-set on the state znode's version that stays in flight until
#   delivered, racing with the controller's elections and ISR removals;
# - every broker learns the state znode late (a ZooKeeper watch), so a deposed leader goes on leading
#   (appending, answering fetches) until it learns, and a follower fetches from whom it last heard of;
# - a fetch's request (the leader records the follower's offset) and its response (the follower appends and
#   takes the HW) are separate steps, and a follower of a new epoch truncates (one OffsetForLeaderEpoch round
#   per step, KIP-279) before it fetches again;
# - a broker crashes (its log, epoch cache and HW checkpoint survive) or is paused past its ZooKeeper session
#   (it keeps its memory; the controller treats it as gone; it registers again when it learns); faults are
#   paced so that replication gets going between them, and one is aimed at KIP-101's moment (the leader fails
#   right after its HW moved, while an in-sync follower that will not succeed it has not learned that yet).
#
# Checked after every step, with unclean election off: the records exposed below any leader's HW (what
# consumers may have read, what acks=all acknowledged) form one history, and every member of the ISR in
# ZooKeeper, so every broker the controller may elect, holds all of it; a leader's HW never goes back; and
# healed, all replicas converge to the leader's log.  Hypothesis finds the breaks this model was built for:
# broker/replication.py computing the HW over `self.isr` instead of `self.maximal_isr` (a follower whose ISR
# write is in flight lands in the ISR lacking committed records), and truncation_point truncating to the
# follower's HW instead of the end of the leader's epoch (an in-sync follower drops records consumers read).

from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule  # noqa: E402


@dataclasses.dataclass
class Broker:
    log: list = dataclasses.field(default_factory=list)          # record ids (epoch written in, number)
    cache: LeaderEpochCache = dataclasses.field(default_factory=LeaderEpochCache)
    hw: int = 0                      # a follower's HW (checkpointed); a leader's is its LeaderPartition's
    alive: bool = True               # the process runs
    registered: bool = True          # holds its ZooKeeper session (the controller counts it as live)
    seen_version: int = -1           # the state znode version it last applied
    lp: LeaderPartition | None = None    # leading, in lp.leader_epoch
    lp_hw: int = 0                   # the highest HW of this lp (it must never go back)
    follows: tuple | None = None     # (leader, epoch) it follows
    reconciled: bool = False         # truncation against that leader and epoch is complete
    response: tuple | None = None    # a fetch answer on its way: (leader, epoch, start offset, records, leader HW)

    def append(self, ids) -> None:
        for rid in ids:
            if rid[0] > self.cache.latest_epoch():
                self.cache.assign(rid[0], len(self.log))
            self.log.append(rid)

    def truncate(self, offset: int) -> None:
        del self.log[offset:]
        self.cache.truncate_from_end(offset)
        self.hw = min(self.hw, offset)

    def stop_leading(self) -> None:
        if self.lp is not None:
            self.hw = self.lp.high_watermark
        self.lp = None


@dataclasses.dataclass
class ZkState:
    leader: int
    epoch: int
    isr: tuple
    version: int = 0


class RacingReplication(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.now = 0
        self.next_id = 0
        self.b = {r: Broker() for r in REPLICAS}
        self.zk = ZkState(leader=1, epoch=0, isr=REPLICAS)
        self.isr_writes: list[tuple] = []     # in flight: (writer, leader epoch, expected version, new ISR)
        self.exposed: list = []               # the longest prefix any leader exposed below its HW
        self.steps, self.last_fault, self.pace, self.lag_ms = 0, 0, 0, 1000
        for r in REPLICAS:
            self._learn(r)
            self.b[r].reconciled = True       # empty logs: nothing to truncate

    # -- the controller and ZooKeeper (a write here is atomic, as ZooKeeper's are) ----------------------------
    def _live(self) -> set:
        return {r for r in REPLICAS if self.b[r].registered}

    def _elect(self) -> None:
        e = choose_leader(REPLICAS, self.zk.isr, self._live(), unclean_allowed=False)
        assert e.kind is not ElectionKind.UNCLEAN
        self.zk = ZkState(e.leader, self.zk.epoch + 1, e.isr, self.zk.version + 1)

    def _gone(self, r: int) -> None:
        """r's session ended: the controller elects if it led, else takes it out of the ISR."""
        self.b[r].registered = False
        if r == self.zk.leader:
            self._elect()
        elif r in self.zk.isr and len(self.zk.isr) > 1:
            self.zk = dataclasses.replace(self.zk, isr=tuple(x for x in self.zk.isr if x != r),
                                          version=self.zk.version + 1)

    def _registered_again(self, r: int) -> None:
        self.b[r].registered = True
        if self.zk.leader < 0:
            self._elect()

    # -- a broker applies the state znode (its watch fired) ----------------------------------------------------
    def _learn(self, r: int) -> None:
        b, st = self.b[r], self.zk
        if not b.registered:             # a session lost: stop leading at once, register again, then obey
            b.stop_leading()
            self._registered_again(r)
            st = self.zk
        b.seen_version = st.version
        if st.leader == r:
            if b.lp is not None and b.lp.leader_epoch == st.epoch:
                if st.isr != b.lp.isr:
                    b.lp.isr_committed(st.isr)
                return
            b.follows, b.response = None, None
            b.cache.assign(st.epoch, len(b.log))
            b.lp = LeaderPartition(r, REPLICAS, st.isr, st.epoch, len(b.log), b.hw, self.now,
                                   replica_lag_time_max_ms=self.lag_ms, epoch_start_offset=len(b.log))
            b.lp_hw = b.lp.high_watermark
        else:
            b.stop_leading()
            follows = (st.leader, st.epoch) if st.leader >= 0 else None
            if follows != b.follows:
                b.follows, b.reconciled, b.response = follows, False, None

    def _leading(self, r: int) -> bool:
        return self.b[r].alive and self.b[r].lp is not None

    def _serving(self, f: int) -> int | None:
        """The broker f fetches from, if that one believes it leads in the epoch f follows it in (else fenced)."""
        b = self.b[f]
        if not b.alive or b.follows is None:
            return None
        leader, epoch = b.follows
        if leader == f or not self._leading(leader) or self.b[leader].lp.leader_epoch != epoch:
            return None
        return leader

    # -- rules: each draws among the brokers it can act on, so that no step is wasted ---------------------------
    def _can_fetch(self, f: int) -> bool:
        b = self.b[f]
        return self._serving(f) is not None and b.reconciled and b.response is None

    def _can_reconcile(self, f: int) -> bool:
        return self._serving(f) is not None and not self.b[f].reconciled

    def _stale(self, r: int) -> bool:
        b = self.b[r]
        return b.alive and (b.seen_version < self.zk.version or not b.registered)

    def _pick(self, data, pred) -> int:
        return data.draw(st.sampled_from([r for r in REPLICAS if pred(r)]))

    @precondition(lambda self: any(self._leading(r) for r in REPLICAS))
    @rule(data=st.data(), n=st.integers(1, 3))
    def append(self, data, n):
        b = self.b[self._pick(data, self._leading)]
        ids = [(b.lp.leader_epoch, self.next_id + i) for i in range(n)]
        self.next_id += n
        b.append(ids)
        b.lp.on_leader_append(len(b.log))

    @precondition(lambda self: any(self._can_fetch(r) for r in REPLICAS))
    @rule(data=st.data(), most=st.sampled_from([1, 2, 100]))
    def fetch_request(self, data, most):
        self._fetch_request(self._pick(data, self._can_fetch), most)

    def _fetch_request(self, f: int, most: int) -> None:
        b = self.b[f]
        leader = self._serving(f)
        lead = self.b[leader]
        offset = len(b.log)
        assert b.log == lead.log[:offset], "a reconciled follower is a prefix of the leader it fetches from"
        _, change = lead.lp.on_follower_fetch(f, offset, self.now)
        if change is not None:
            self.isr_writes.append((leader, lead.lp.leader_epoch, lead.seen_version, change.new_isr))
        b.response = (leader, lead.lp.leader_epoch, offset, lead.log[offset:offset + most], lead.lp.high_watermark)

    @precondition(lambda self: any(self.b[r].alive and self.b[r].response for r in REPLICAS))
    @rule(data=st.data())
    def fetch_response(self, data):
        self._fetch_response(self._pick(data, lambda r: self.b[r].alive and self.b[r].response))

    def _fetch_response(self, f: int) -> None:
        b = self.b[f]
        leader, epoch, offset, records, leader_hw = b.response
        b.response = None
        if b.follows != (leader, epoch) or len(b.log) != offset:
            return                       # followed elsewhere, or truncated, since it asked
        b.append(records)
        b.hw = follower_high_watermark(b.hw, leader_hw, len(b.log))

    @precondition(lambda self: any(self._can_reconcile(r) for r in REPLICAS))
    @rule(data=st.data())
    def offset_for_leader_epoch(self, data):
        self._offset_for_leader_epoch(self._pick(data, self._can_reconcile))

    def _offset_for_leader_epoch(self, f: int) -> None:
        """One KIP-279 round: ask where the follower's latest epoch ends at the leader, truncate there."""
        b, lead = self.b[f], self.b[self._serving(f)]
        le, lo = lead.cache.end_offset_for(b.cache.latest_epoch(), len(lead.log))
        t = truncation_point(b.cache, len(b.log), b.hw, le, lo)
        b.truncate(t.offset)
        b.reconciled = t.complete

    @rule(ms=st.integers(1, 100))
    def tick(self, ms):
        self.now += ms
        for r in REPLICAS:
            if self._leading(r):
                lp = self.b[r].lp
                change = lp.maybe_shrink_isr(self.now)
                if change is not None:
                    self.isr_writes.append((r, lp.leader_epoch, self.b[r].seen_version, change.new_isr))

    @precondition(lambda self: self.isr_writes)
    @rule(data=st.data())
    def deliver_isr_write(self, data):
        """One of the ISR writes in flight reaches ZooKeeper, in any order."""
        self._deliver(data.draw(st.integers(0, len(self.isr_writes) - 1)))

    def _deliver(self, i: int) -> None:
        """A compare-and-set on the version its writer last saw."""
        writer, epoch, version, new_isr = self.isr_writes.pop(i)
        b = self.b[writer]
        ok = version == self.zk.version
        if ok:
            self.zk = dataclasses.replace(self.zk, isr=new_isr, version=version + 1)
        if not self._leading(writer) or b.lp.leader_epoch != epoch:
            return                       # its writer is gone or leads no more: nobody hears the outcome
        if ok:
            b.seen_version = self.zk.version
            b.lp.isr_committed(new_isr)
        else:
            b.lp.isr_write_failed()
            self._learn(writer)          # re-read, then obey the newer state

    @precondition(lambda self: any(self._stale(r) for r in REPLICAS))
    @rule(data=st.data())
    def learn_state(self, data):
        self._learn(self._pick(data, self._stale))

    # -- faults: paced (at most one every `pace` steps, `pace` drawn per run), so that replication gets going
    # between them, but for the one aimed at KIP-101's moment, which comes whenever that moment does ------------
    @initialize(pace=st.integers(3, 30), lag_ms=st.sampled_from([100, 1000]))
    def settings_of_the_run(self, pace, lag_ms):
        """A short replica.lag.time.max.ms churns the ISR (shrinks and expansions in flight), a long one keeps
        followers in it while they lag in what they know of the HW."""
        self.pace, self.lag_ms = pace, lag_ms
        for b in self.b.values():
            if b.lp is not None:
                b.lp.replica_lag_time_max_ms = lag_ms

    def _fault_due(self) -> bool:
        return self.steps - self.last_fault >= self.pace

    def _fail(self, r: int, process_dies: bool) -> None:
        """Broker r crashes (its log, epoch cache and HW checkpoint survive), or is paused past its ZooKeeper
        session: the controller treats it as gone, and it keeps its memory and goes on as before (a deposed
        leader leads on) until it learns the state."""
        self.last_fault = self.steps
        if process_dies:
            b = self.b[r]
            b.stop_leading()
            b.alive, b.follows, b.reconciled, b.response, b.seen_version = False, None, False, None, -1
        self._gone(r)

    @precondition(lambda self: self._fault_due() and any(b.alive and b.registered for b in self.b.values()))
    @rule(data=st.data(), process_dies=st.booleans(), the_leader=st.booleans())
    def fail(self, data, process_dies, the_leader):
        """A broker fails: the leader half the time, else any."""
        r = self.zk.leader
        if not the_leader or r < 0 or not self.b[r].registered:
            r = self._pick(data, lambda r: self.b[r].alive and self.b[r].registered)
        self._fail(r, process_dies)

    def _a_follower_lags_the_hw(self) -> bool:
        """An in-sync follower that would not succeed the leader has a HW below the leader's."""
        leader = self.zk.leader
        if leader < 0 or not self._leading(leader) or not self.b[leader].registered:
            return False
        successor = choose_leader(REPLICAS, self.zk.isr, self._live() - {leader}, unclean_allowed=False).leader
        return any(self.b[f].hw < self.b[leader].lp.high_watermark for f in self.zk.isr if f not in (leader, successor))

    @precondition(_a_follower_lags_the_hw)
    @rule(process_dies=st.booleans())
    def fail_the_leader_while_a_follower_lags_its_hw(self, process_dies):
        """A fault aimed at KIP-101's moment: followers learn the HW one fetch late, so right after the HW
        moved an in-sync follower's own HW is below what consumers may have read; the leader fails then, and
        the follower will truncate against its successor."""
        self._fail(self.zk.leader, process_dies)

    @precondition(lambda self: any(not b.alive for b in self.b.values()))
    @rule(data=st.data())
    def restart(self, data):
        self._restart(self._pick(data, lambda r: not self.b[r].alive))

    def _restart(self, r: int) -> None:
        self.b[r].alive = True
        self._learn(r)

    # -- invariants ------------------------------------------------------------------------------------------
    @invariant()
    def one_history_below_every_high_watermark_and_the_isr_holds_it(self):
        self.steps += 1
        for r in REPLICAS:
            b = self.b[r]
            if b.lp is None:
                continue
            hw = b.lp.high_watermark
            assert hw >= b.lp_hw, f"broker {r}'s HW went back from {b.lp_hw} to {hw}"
            b.lp_hw = hw
            shared = min(hw, len(self.exposed))
            assert b.log[:shared] == self.exposed[:shared], f"broker {r} exposes another history below its HW"
            if hw > len(self.exposed):
                self.exposed = b.log[:hw]
        for r in self.zk.isr:
            log = self.b[r].log
            assert log[:len(self.exposed)] == self.exposed, (
                f"ISR member {r} lacks exposed records: {log} vs {self.exposed} (state {self.zk})")

    def teardown(self):
        """Heal: every broker runs and holds its session, learns the state, reconciles and fetches until done."""
        for r in REPLICAS:
            if not self.b[r].alive:
                self._restart(r)
        for _round in range(10):
            for r in REPLICAS:
                self._learn(r)
            while self.isr_writes:
                self._deliver(0)
            for r in REPLICAS:
                while self._can_reconcile(r):
                    self._offset_for_leader_epoch(r)
                if self._can_fetch(r):
                    self._fetch_request(r, 10_000)
                if self.b[r].response:
                    self._fetch_response(r)
            self.one_history_below_every_high_watermark_and_the_isr_holds_it()
            leader = self.b[self.zk.leader]
            if all(b.log == leader.log for b in self.b.values()) and leader.lp.high_watermark == len(leader.log):
                return
        raise AssertionError(f"no convergence: {[b.log for b in self.b.values()]}, state {self.zk}")


RacingReplication.TestCase.settings = settings(max_examples=examples(600), stateful_step_count=100, deadline=None,
                                               suppress_health_check=[HealthCheck.too_slow])
TestRacingReplication = RacingReplication.TestCase
