"""Hypothesis drives random clients against the group coordinator, with coordinator failovers.

Checked after every step:
- each request is answered at most once;
- at most one leader per generation, the leader is one of the members it is told about,
  and only the leader gets the member list;
- the generations a group hands out never go down (per coordinator), its generation never
  goes down, and a coordinator that rebuilt from the log is never behind what was stored;
- committed offsets equal the last acknowledged commit per partition, also after a
  failover that loses every record above the high watermark: no offset ever goes back.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from broker.errors import ErrorCode as E
from broker.groups import CoordinatorConfig, GroupState
from broker.offsets import rebuild
from test_groups_driver import Driver

N_CLIENTS = 4
TOPIC_PARTITIONS = [("t", 0), ("t", 1), ("t", 2)]

# "play" does what a well-behaved client does next (join, sync, heartbeat); weighted so that
# generations actually form between the disruptive operations
play = st.tuples(st.just("play"), st.integers(0, N_CLIENTS - 1))
others = st.one_of(
    st.tuples(st.just("tick"), st.sampled_from([500, 1000, 3000])),
    st.tuples(st.just("hw"), st.just(True)),
    st.tuples(st.just("join"), st.integers(0, N_CLIENTS - 1)),
    st.tuples(st.just("sync"), st.integers(0, N_CLIENTS - 1)),
    st.tuples(st.just("heartbeat"), st.integers(0, N_CLIENTS - 1)),
    st.tuples(st.just("leave"), st.integers(0, N_CLIENTS - 1)),
    st.tuples(st.just("commit"), st.integers(0, N_CLIENTS - 1), st.sampled_from(TOPIC_PARTITIONS), st.integers(0, 1000)),
    st.tuples(st.just("simple-commit"), st.sampled_from(TOPIC_PARTITIONS), st.integers(0, 1000)),
    st.tuples(st.just("tick"), st.sampled_from([1, 2999, 6000, 10000, 31000])),
    st.tuples(st.just("hw"), st.booleans()),
    st.tuples(st.just("failover")),
)
ops = st.integers(0, 9).flatmap(lambda k: play if k < 6 else others)  # 60 % play


class Client:
    def __init__(self, index):
        self.client_id = f"c{index}"
        self.member_id = ""
        self.generation = -1
        self.join_token = None
        self.sync_token = None
        self.members = []
        self.synced_generation = -1


class Model:
    def __init__(self):
        # commits never time out here: a timed-out commit is indeterminate, which this model does not track
        self.d = Driver(CoordinatorConfig(offsets_topic_num_partitions=2, group_initial_rebalance_delay_ms=1000,
                                          offsets_commit_timeout_ms=10**12),
                        auto_commit=False)
        self.clients = [Client(i) for i in range(N_CLIENTS)]
        self.epoch = 0  # coordinator incarnation
        self.leader_of = {}  # (epoch, generation) -> leader
        self.last_join_generation = {}  # epoch -> highest generation handed out
        self.commit_tokens = {}  # token -> (group, append_id, {tp: offset})
        self.acked = {}  # group -> tp -> ((epoch, append_id), offset) of the newest acknowledged commit
        self.seen = 0

    @property
    def c(self):
        return self.d.coord

    def step(self, op):
        d, kind = self.d, op[0]
        if kind == "play":
            cl = self.clients[op[1]]
            if cl.join_token is not None or cl.sync_token is not None:
                for p in d.log:  # waiting: let the offsets partition catch up and time pass
                    d.commit_partition(p)
                kind, op = "tick", ("tick", 1000)
            elif not cl.member_id or cl.generation < 0:
                kind = "join"
            elif cl.synced_generation != cl.generation:
                kind = "sync"
            else:
                kind = "heartbeat"
        if kind == "join":
            cl = self.clients[op[1]]
            if cl.join_token is None:
                cl.join_token = d.join(member_id=cl.member_id, client_id=cl.client_id, session=10000, rebalance=20000)
        elif kind == "sync":
            cl = self.clients[op[1]]
            if cl.generation >= 0 and cl.sync_token is None and cl.join_token is None:
                assignments = {m: f"{m}@{cl.generation}".encode() for m in cl.members}
                cl.sync_token = d.sync(cl.member_id, cl.generation, assignments)
                cl.synced_generation = cl.generation
        elif kind == "heartbeat":
            cl = self.clients[op[1]]
            if cl.member_id:
                err = d.heartbeat(cl.member_id, cl.generation)
                if err == E.UNKNOWN_MEMBER_ID:
                    self.forget(cl)
                elif err in (E.REBALANCE_IN_PROGRESS, E.ILLEGAL_GENERATION):
                    cl.generation = -1  # rejoin, keeping the member id
        elif kind == "leave":
            cl = self.clients[op[1]]
            if cl.member_id:
                d.leave(cl.member_id)
                self.forget(cl)
        elif kind == "commit":
            cl = self.clients[op[1]]
            t = d.commit({op[2]: op[3]}, cl.member_id, cl.generation)
            self.commit_tokens[t] = ("g", (self.epoch, d.last_commit_append), {op[2]: op[3]})
        elif kind == "simple-commit":
            t = d.commit({op[1]: op[2]}, group="s")
            self.commit_tokens[t] = ("s", (self.epoch, d.last_commit_append), {op[1]: op[2]})
        elif kind == "tick":
            d.advance(op[1])
        elif kind == "hw":
            for p in d.log:
                full = len(d.log[p])
                d.commit_partition(p, full if op[1] else max(d.hw[p], full - 1))
        elif kind == "failover":
            self.failover()
        self.collect()
        self.check()

    def forget(self, cl):
        cl.member_id, cl.generation, cl.members, cl.synced_generation = "", -1, [], -1

    def collect(self):
        d = self.d
        for cl in self.clients:
            if cl.join_token is not None and (r := d.reply(cl.join_token)) is not None:
                cl.join_token = None
                if r.error_code == E.MEMBER_ID_REQUIRED:
                    cl.member_id = r.member_id
                elif r.error_code == E.NONE:
                    self.check_join(r)
                    cl.member_id, cl.generation = r.member_id, r.generation_id
                    cl.members = [m.member_id for m in r.members]
                elif r.error_code == E.UNKNOWN_MEMBER_ID:
                    self.forget(cl)
            if cl.sync_token is not None and (r := d.reply(cl.sync_token)) is not None:
                cl.sync_token = None
                if r.error_code in (E.UNKNOWN_MEMBER_ID,):
                    self.forget(cl)
                elif r.error_code != E.NONE:
                    cl.generation = -1
                if r.error_code == E.NONE:
                    assert r.assignment in (b"", f"{cl.member_id}@{cl.generation}".encode())
        for t, (group, append_id, offsets) in list(self.commit_tokens.items()):
            r = d.reply(t)
            if r is None:
                continue
            del self.commit_tokens[t]
            for p in r.partitions:
                if p.error_code == E.NONE:
                    assert append_id[1] is not None
                    prev = self.acked.setdefault(group, {}).get((p.topic, p.partition))
                    if prev is None or prev[0] < append_id:
                        self.acked[group][(p.topic, p.partition)] = (append_id, offsets[(p.topic, p.partition)])

    def check_join(self, r):
        key = (self.epoch, r.generation_id)
        assert self.leader_of.setdefault(key, r.leader) == r.leader, "two leaders in one generation"
        assert r.generation_id >= self.last_join_generation.get(self.epoch, 0), "generation went down"
        self.last_join_generation[self.epoch] = r.generation_id
        if r.member_id == r.leader:
            assert r.leader in {m.member_id for m in r.members}
        else:
            assert r.members == []

    def check(self):
        g = self.c.groups.get("g")
        if g is not None:
            if g.state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE):
                assert g.members and g.leader_id in g.members
                assert all(m.join_token is None for m in g.members.values())
            if g.state is GroupState.EMPTY:
                assert not g.members
            if g.state is not GroupState.COMPLETING_REBALANCE:
                assert all(m.sync_token is None for m in g.members.values())
            assert g.generation >= getattr(self, "min_generation", 0)
            self.min_generation = g.generation
        for group in ("g", "s"):
            expected = {tp: off for tp, (_, off) in self.acked.get(group, {}).items()}
            assert self.c.committed_offsets(group) == expected, group

    def failover(self):
        old = self.d.failover()
        self.epoch += 1
        # requests parked on the dead coordinator are lost with their connections
        for cl in self.clients:
            cl.join_token = cl.sync_token = None
        self.commit_tokens.clear()
        stored = rebuild(self.d.log[self.c.partition_for("g")]).groups.get("g")
        new_g = self.c.groups.get("g")
        if stored is not None:
            assert new_g.generation == stored.generation
        self.min_generation = new_g.generation if new_g else 0
        for group in ("g", "s"):
            # nothing acknowledged is lost, and nothing goes back
            assert self.c.committed_offsets(group) == old.committed_offsets(group)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, min_size=20, max_size=120))
def test_random_clients_keep_the_group_invariants(script):
    model = Model()
    for op in script:
        model.step(op)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["heartbeat", "tick"]), min_size=5, max_size=40))
def test_a_group_settles_when_everyone_plays_along(script):
    """Members that join, sync and heartbeat every 3 s stay in one stable generation whatever else ticks."""
    d = Driver(CoordinatorConfig(offsets_topic_num_partitions=1))
    gen, leader, members = d.form_group(3)
    for op in script:
        if op == "tick":
            d.advance(3000)
        for m in members:
            assert d.heartbeat(m, gen) == E.NONE
    g = d.coord.groups["g"]
    assert (g.state, g.generation, g.leader_id) == (GroupState.STABLE, gen, leader)
