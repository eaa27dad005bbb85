"""Replicated brokers in one process, for the rule tests that `make mutation` runs (issue 19).

Each node is a real Broker with its real ReplicaManager; what is faked is only what surrounds them:

- `FakeZooKeeper` holds the partition state and applies the leader's ISR writes with compare-and-set, as
  ZooKeeper does; `Cluster.elect` plays the controller and delivers a state to every node, as the state
  watches do.
- `Wire` stands in for a connection: what a follower's ReplicaFetcher writes is answered at once by the
  leader's handlers (broker/handlers.py), as broker/server.py would, with no long poll.  An answer can be
  held on its way (`Cluster.in_flight`) while the test changes the cluster, or replaced (`Wire.replace`).
- the clock of broker/replica_manager.py (`_now_ms`) and of the fetch sessions is `Cluster.now`, moved by
  the tests.

Nothing runs by itself: a test moves the followers (`Cluster.replicate`: every fetcher a node has started
that still has partitions does one round, as their tasks would), the clock and the leader's tick, so every
step is deterministic.  Subprocess brokers (tests/broker_fixtures.py) test the same paths end to
end but cannot see mutmut's mutants, which exist only in the test process.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import uuid
from types import SimpleNamespace

from broker import handlers, protocol, server
from broker import replica_manager as rm_module
from broker.config import BrokerConfig, parse_properties
from broker.controller import PartitionState, VersionedState
from broker.core import Broker
from broker.metadata import TopicInfo
from broker.records import build_batch
from broker.replica_manager import ReplicaManager

TOPIC = "t"
KEY = (TOPIC, 0)


class InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """The ISR-write worker thread, run inline: the write is done when submit returns."""

    def submit(self, fn, /, *args, **kwargs):
        f = concurrent.futures.Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 -- handed to the caller like the real executor does
            f.set_exception(e)
        return f


class FakeZooKeeper:
    """What ReplicaManager asks of its ZkBroker, answered from the cluster's partition state."""

    def __init__(self, cluster: "Cluster"):
        self.cluster = cluster
        self.registration_zxid = 1
        self.zk = SimpleNamespace(DataWatch=lambda *a, **k: None, connected=False)
        self.on_partition_state = self.on_session_lost = None
        self.refuse_writes = False

    def write_isr(self, topic, p, current: VersionedState, new_isr):
        if self.refuse_writes:
            raise ConnectionError("ZooKeeper unreachable")
        return self.cluster.compare_and_set_isr((topic, p), current, tuple(new_isr))

    def partition_state(self, topic, p):
        return self.cluster.state.get((topic, p))

    def topic_assignment(self, topic):
        return dict(self.cluster.info.assignment)

    def controller_id(self):
        return None


class FakeMetadata:
    def __init__(self, cluster: "Cluster"):
        self.cluster = cluster
        self.producer_id_limit = 0

    def describe(self, name):
        return self.cluster.info if name == TOPIC else None

    def allocate_producer_id_block(self):
        start = self.producer_id_limit
        self.producer_id_limit += 1000
        return start, self.producer_id_limit


class Wire:
    """A follower's connection to `node`: a request frame written is answered by node's handlers.

    `hold`: the next answer to a request of that API key is computed when the request arrives (as the
    leader would) but reaches the fetcher only after `release()`.  `replace(api_key, make)`: the next
    answer of that API key is make(request, answer frame) instead, for answers the leader cannot be
    brought to give through its own state."""

    def __init__(self, node: "Node", hold: int | None = None):
        self.node = node
        self.pending = bytearray()
        self.requests: list[protocol.Request] = []
        self.hold = hold
        self.held: asyncio.Future | None = None
        self.replacements: dict[int, object] = {}

    def replace(self, api_key: int, make) -> None:
        self.replacements[api_key] = make

    def write(self, frame) -> None:
        req = protocol.decode_request(bytes(frame)[4:])
        self.requests.append(req)
        answer = self.node.answer(req)
        make = self.replacements.pop(req.api_key, None)
        if make is not None:
            answer = make(req, answer)
        if self.hold == req.api_key:
            self.hold = None
            self.held = asyncio.get_running_loop().create_future()
        self.pending += answer

    def release(self) -> None:
        self.held.set_result(None)

    async def drain(self) -> None:
        return None

    async def readexactly(self, n: int) -> bytes:
        if self.held is not None:
            await self.held
            self.held = None
        out = bytes(self.pending[:n])
        del self.pending[:n]
        if len(out) < n:
            raise asyncio.IncompleteReadError(out, n)
        return out

    def close(self) -> None:
        return None


class Node:
    def __init__(self, cluster: "Cluster", broker_id: int, broker_config: dict[str, str]):
        props = {"broker.id": str(broker_id), "log.dirs": str(cluster.tmp / f"broker-{broker_id}"),
                 "zookeeper.connect": "zk:2181", "replica.lag.time.max.ms": "10000", **broker_config}
        config = BrokerConfig(parse_properties("".join(f"{k}={v}\n" for k, v in props.items())))
        self.id = broker_id
        self.broker = Broker(config, metadata_store=FakeMetadata(cluster))
        self.zk = FakeZooKeeper(cluster)
        self.rm = ReplicaManager(self.broker, self.zk, cluster.loop)
        self.rm._zk_writes = InlineExecutor()
        self.broker.replication = self.rm
        self.broker.fetch_sessions.clock = lambda: cluster.now
        # broker/server.py's _wake_fetchers: a changed partition is looked at again by the fetch sessions holding it
        self.broker.append_listeners.append(lambda p: self.broker.fetch_sessions.touch((p.topic, p.index)))
        #: every ReplicaFetcher this node's ReplicaManager started, in order: each runs until stopped
        self.fetchers: list = []

    def note_fetchers(self) -> None:
        for f in self.rm.fetchers.values():
            if f not in self.fetchers:
                self.fetchers.append(f)

    @property
    def partition(self):
        return self.broker.partitions[KEY]

    def part(self, p: int = 0):
        return self.broker.partitions[(TOPIC, p)]

    @property
    def leader_state(self):
        return self.rm.leaders.get(KEY)

    def fetch(self, req: protocol.Request):
        """The handlers.fetch reply that broker/server.py sends for a Fetch, the session told what it carried."""
        ctx = handlers.fetch_context(self.broker, req)
        reply = handlers.fetch(self.broker, req, ctx, True)
        ctx.sent(reply.included)
        return reply

    def answer(self, req: protocol.Request) -> bytes:
        """What broker/server.py sends for `req` (no long poll: a fetch is answered with what there is)."""
        if req.api_key == 1:
            return self.fetch(req).encode(req)
        body = handlers.HANDLERS[req.api_key](self.broker, req)
        if isinstance(body, bytes):
            return body
        return protocol.encode_response(req.api_key, req.api_version, req.correlation_id, body)


def request(api_key: int, version: int, data: dict) -> protocol.Request:
    return protocol.Request(api_key, version, 1, "test", protocol.build(protocol.request_class(api_key, version), data))


def produce_request(values, acks: int = -1, timeout_ms: int = 5000, p: int = 0, **batch) -> protocol.Request:
    records = build_batch([v if isinstance(v, bytes) else v.encode() for v in values], **batch)
    return request(0, 8, {"transactional_id": None, "acks": acks, "timeout": timeout_ms, "topic_data": [
        {"name": TOPIC, "partition_data": [{"index": p, "records": records}]}]})


def produce_answer(frame: bytes):
    """(error code, base offset) of a Produce v8 response frame."""
    _corr, body = protocol.decode_response(0, 8, frame[4:])
    r = body.responses[0].partition_responses[0]
    return r.error_code.value, r.base_offset


def fetch_request(offset: int, *, replica_id: int = -1, current_leader_epoch: int = -1, partitions=None,
                  max_bytes: int = 1 << 20, partition_max_bytes: int = 1 << 20, session_id: int = 0,
                  session_epoch: int = -1, forgotten=(), version: int = 11) -> protocol.Request:
    """A Fetch of partition 0 at `offset`, or of `partitions`: [(topic, partition, offset)]."""
    parts = partitions if partitions is not None else [(TOPIC, 0, offset)]
    topics: dict[str, list] = {}
    for topic, p, at in parts:
        topics.setdefault(topic, []).append({"partition": p, "current_leader_epoch": current_leader_epoch,
                                             "fetch_offset": at, "log_start_offset": -1,
                                             "partition_max_bytes": partition_max_bytes})
    gone: dict[str, list] = {}
    for topic, p in forgotten:
        gone.setdefault(topic, []).append(p)
    return request(1, version, {
        "replica_id": replica_id, "max_wait": 0, "min_bytes": 1, "max_bytes": max_bytes, "isolation_level": 0,
        "session_id": session_id, "session_epoch": session_epoch, "rack_id": "",
        "forgotten_topics_data": [{"topic": t, "partitions": ps} for t, ps in gone.items()],
        "topics": [{"topic": t, "partitions": ps} for t, ps in topics.items()]})


@dataclasses.dataclass
class Fetched:
    error: int
    high_watermark: int
    records: bytes
    last_stable_offset: int = -1
    log_start_offset: int = -1

    @property
    def offsets(self) -> list[int]:
        from broker.records import split_batches
        return [h.base_offset + i for _p, h in split_batches(self.records) for i in range(h.last_offset_delta + 1)] \
            if self.records else []


def fetched(reply, topic: str = TOPIC, p: int = 0) -> Fetched | None:
    """One partition of a handlers.fetch reply, None when the reply leaves it out."""
    for name, parts in reply.topics:
        for part, error, hw, lso, start, _aborted, records in parts:
            if name == topic and part == p:
                return Fetched(error, hw, bytes(records), lso, start)
    return None


def fetched_on_the_wire(req: protocol.Request, reply) -> dict:
    """A handlers.fetch reply as the client decodes it: {(topic, partition): Fetched}, and the top level's
    (error code, session id) under the key None."""
    _corr, body = protocol.decode_response(1, req.api_version, reply.encode(req)[4:])
    error = getattr(body, "error_code", None)
    out: dict = {None: (0 if error is None else error.value, getattr(body, "session_id", 0))}
    for t in body.responses:
        for r in t.partitions:
            out[(t.topic, r.partition_index)] = Fetched(
                r.error_code.value, r.high_watermark, bytes(r.records or b""), r.last_stable_offset,
                getattr(r, "log_start_offset", -1))
    return out


def answered_at_once(req: protocol.Request, reply) -> bool:
    """Whether broker/server.py answers this reply now rather than long-polling for more."""
    return bool(server._answerable(req, reply, 1.0))


def list_offsets_request(timestamp: int, current_leader_epoch: int = -1) -> protocol.Request:
    return request(2, 5, {"replica_id": -1, "isolation_level": 0, "topics": [
        {"name": TOPIC, "partitions": [{"partition_index": 0, "current_leader_epoch": current_leader_epoch,
                                        "timestamp": timestamp}]}]})


class Cluster:
    """Replicas first_id..first_id+n-1 (1..n by default) of `partitions` partitions (one by default) of topic `t`."""

    def __init__(self, tmp, monkeypatch, n: int = 3, topic_config: dict[str, str] | None = None,
                 broker_config: dict[str, str] | None = None, first_id: int = 1, partitions: int = 1):
        self.tmp = tmp
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(InlineExecutor())   # the re-read after a lost ISR write, inline
        self.now = 1_000_000
        monkeypatch.setattr(rm_module, "_now_ms", lambda: self.now)
        self.replicas = tuple(range(first_id, first_id + n))
        self.info = TopicInfo(TOPIC, uuid.uuid4(), partitions, n, dict(topic_config or {}),
                              {p: self.replicas for p in range(partitions)})
        self.zxid = 100
        self.state: dict[tuple[str, int], VersionedState] = {}
        self.nodes = {i: Node(self, i, dict(broker_config or {})) for i in self.replicas}
        self._rounds: list[asyncio.Task] = []

    def close(self) -> None:
        for task in self._rounds:
            task.cancel()
        for node in self.nodes.values():
            node.note_fetchers()
            for f in node.fetchers:
                f.stop()
            self.run(asyncio.sleep(0))
            node.broker.close()
        self.loop.close()

    # -- the controller ---------------------------------------------------------------------
    def elect(self, leader: int, epoch: int, isr, to=None, p: int = 0) -> VersionedState:
        """Write a new state of partition p and deliver it to the nodes `to` (every node by default)."""
        key = (TOPIC, p)
        old = self.state.get(key)
        self.zxid += 1
        vs = VersionedState(PartitionState(leader, epoch, tuple(isr), 1), 0 if old is None else old.zk_version + 1,
                            self.zxid)
        self.state[key] = vs
        self.deliver(to, p)
        return vs

    def deliver(self, to=None, p: int | None = None, state: VersionedState | None = None) -> None:
        """The state watch of partition p (of every partition with a state by default) fires on the nodes `to`
        (every node by default), with `state` if given: one the watch would have delivered earlier."""
        keys = sorted(self.state) if p is None else [(TOPIC, p)]
        for i in (self.replicas if to is None else to):
            node = self.nodes[i]
            for key in keys:
                node.note_fetchers()
                node.rm._apply_state(TOPIC, key[1], state or self.state[key], self.replicas, self.info)
                node.note_fetchers()
            for f in node.fetchers:
                f.task.cancel()         # the test drives the fetchers (replicate), not their connection loops
        self.settle()

    def delete_topic(self) -> None:
        """The topic's state znodes are gone: the state watches fire with no state on every node."""
        for key in sorted(self.state):
            del self.state[key]
            for node in self.nodes.values():
                node.rm._apply_state(TOPIC, key[1], None, (), None)
        self.settle()

    def compare_and_set_isr(self, key, current: VersionedState, new_isr) -> VersionedState | None:
        vs = self.state[key]
        if current.zk_version != vs.zk_version:
            return None
        self.zxid += 1
        self.state[key] = VersionedState(dataclasses.replace(vs.state, isr=new_isr), vs.zk_version + 1, self.zxid)
        return self.state[key]

    # -- moving things ----------------------------------------------------------------------
    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def settle(self) -> None:
        """Let the loop run the callbacks already scheduled (an ISR write's completion)."""
        for _ in range(5):
            self.run(asyncio.sleep(0))

    def running_fetchers(self, node: int) -> list:
        """The fetchers of `node` whose connection loop would go on now: not stopped, with partitions."""
        n = self.nodes[node]
        n.note_fetchers()
        return [f for f in n.fetchers if not f._stopped and f.parts]

    @staticmethod
    async def _round(fetcher, wire) -> None:
        """One turn of ReplicaFetcher._run's inner loop: truncate what must be, then fetch once."""
        await fetcher._truncate_pending(wire, wire)
        await fetcher._fetch_once(wire, wire)

    def replicate(self, follower: int, rounds: int = 1, replace: dict | None = None) -> Wire | None:
        """Each running fetcher of `follower` truncates if it must, then fetches once from its leader (the broker
        it was started for); `rounds` times.  Returns the wire to the leader of partition 0 (or the last).
        `replace`: {api key: make} for that leader's wire (see Wire.replace)."""
        node = self.nodes[follower]
        wires: dict[int, Wire] = {}
        for _ in range(rounds):
            for fetcher in self.running_fetchers(follower):
                wire = wires.get(fetcher.leader)
                if wire is None:
                    wire = wires[fetcher.leader] = Wire(self.nodes[fetcher.leader])
                    if replace and fetcher.leader == node.rm.following.get(KEY):
                        for api_key, make in replace.items():
                            wire.replace(api_key, make)
                self.run(self._round(fetcher, wire))
        self.settle()
        return wires.get(node.rm.following.get(KEY)) or (list(wires.values())[-1] if wires else None)

    def in_flight(self, follower: int, api_key: int) -> "InFlight":
        """Start a round of `follower`'s fetcher for its leader of partition 0 and stop it where the leader's
        answer to its next request of `api_key` (23 OffsetForLeaderEpoch, 1 Fetch) is on its way: computed
        by the leader, not yet read.  The test changes the cluster, then `arrive()` lets the answer through
        and finishes the round."""
        node = self.nodes[follower]
        fetcher = node.rm.fetchers[node.rm.following[KEY]]
        wire = Wire(self.nodes[fetcher.leader], hold=api_key)
        task = self.loop.create_task(self._round(fetcher, wire))
        self._rounds.append(task)
        self.settle()
        assert wire.held is not None and not task.done(), "the round ended before that request was answered"
        return InFlight(self, wire, task)

    def tick(self, node: int) -> None:
        self.nodes[node].rm.tick()
        self.settle()

    def produce(self, node: int, values, acks: int = -1, timeout_ms: int = 60000, **batch):
        """The answer to a Produce: (error, base offset) now, or a Deferred (acks=all waiting for the ISR)."""
        out = handlers.produce(self.nodes[node].broker, produce_request(values, acks, timeout_ms, **batch))
        if out is None or isinstance(out, handlers.Deferred):
            return out
        return produce_answer(out)

    @staticmethod
    def answered(deferred):
        """(error, base offset) of a Deferred whose waits are all resolved, else None."""
        if not all(w.done() for w in deferred.waits):
            return None
        return produce_answer(deferred.finish([w.result() for w in deferred.waits]))

    def fetch(self, node: int, offset: int, **kw) -> Fetched | None:
        """A consumer's (or, with replica_id, a follower's) Fetch of partition 0, as the client decodes it."""
        req = fetch_request(offset, **kw)
        return fetched_on_the_wire(req, handlers.fetch(self.nodes[node].broker, req)).get(KEY)

    def list_offsets(self, node: int, timestamp: int, current_leader_epoch: int = -1):
        body = handlers.list_offsets(self.nodes[node].broker, list_offsets_request(timestamp, current_leader_epoch))
        p = body.topics[0].partitions[0]
        return p.error_code.value, p.offset


class InFlight:
    """A fetcher's round stopped with the leader's answer on its way (Cluster.in_flight)."""

    def __init__(self, cluster: Cluster, wire: Wire, task: asyncio.Task):
        self.cluster, self.wire, self.task = cluster, wire, task

    def arrive(self) -> Wire:
        self.wire.release()
        self.cluster.run(self.task)
        self.cluster.settle()
        return self.wire
