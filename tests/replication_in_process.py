"""Replicated brokers in one process, for the rule tests that `make mutation` runs (issue 19).

Each node is a real Broker with its real ReplicaManager; what is faked is only what surrounds them:

- `FakeZooKeeper` holds the partition state and applies the leader's ISR writes with compare-and-set, as
  ZooKeeper does; `Cluster.elect` plays the controller and delivers a state to every node, as the state
  watches do.
- `Wire` stands in for a connection: what a follower's ReplicaFetcher writes is answered at once by the
  leader's handlers (broker/handlers.py), as broker/server.py would, with no long poll.
- the clock of broker/replica_manager.py (`_now_ms`) is `Cluster.now`, moved by the tests.

Nothing runs by itself: a test moves the followers (`Cluster.replicate`), the clock and the leader's tick,
so every step is deterministic.  Subprocess brokers (tests/broker_fixtures.py) test the same paths end to
end but cannot see mutmut's mutants, which exist only in the test process.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import uuid
from types import SimpleNamespace

from broker import handlers, protocol
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
    """A follower's connection to `node`: a request frame written is answered by node's handlers."""

    def __init__(self, node: "Node"):
        self.node = node
        self.pending = bytearray()
        self.requests: list[protocol.Request] = []

    def write(self, frame) -> None:
        req = protocol.decode_request(bytes(frame)[4:])
        self.requests.append(req)
        self.pending += self.node.answer(req)

    async def drain(self) -> None:
        return None

    async def readexactly(self, n: int) -> bytes:
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
        # broker/server.py's _wake_fetchers: a changed partition is looked at again by the fetch sessions holding it
        self.broker.append_listeners.append(lambda p: self.broker.fetch_sessions.touch((p.topic, p.index)))

    @property
    def partition(self):
        return self.broker.partitions[KEY]

    @property
    def leader_state(self):
        return self.rm.leaders.get(KEY)

    def answer(self, req: protocol.Request) -> bytes:
        """What broker/server.py sends for `req` (no long poll: a fetch is answered with what there is)."""
        if req.api_key == 1:
            ctx = handlers.fetch_context(self.broker, req)
            reply = handlers.fetch(self.broker, req, ctx, True)
            ctx.sent(reply.included)
            return reply.encode(req)
        body = handlers.HANDLERS[req.api_key](self.broker, req)
        if isinstance(body, bytes):
            return body
        return protocol.encode_response(req.api_key, req.api_version, req.correlation_id, body)


def request(api_key: int, version: int, data: dict) -> protocol.Request:
    return protocol.Request(api_key, version, 1, "test", protocol.build(protocol.request_class(api_key, version), data))


def produce_request(values, acks: int = -1, timeout_ms: int = 5000, **batch) -> protocol.Request:
    records = build_batch([v if isinstance(v, bytes) else v.encode() for v in values], **batch)
    return request(0, 8, {"transactional_id": None, "acks": acks, "timeout": timeout_ms, "topic_data": [
        {"name": TOPIC, "partition_data": [{"index": 0, "records": records}]}]})


def produce_answer(frame: bytes):
    """(error code, base offset) of a Produce v8 response frame."""
    _corr, body = protocol.decode_response(0, 8, frame[4:])
    r = body.responses[0].partition_responses[0]
    return r.error_code.value, r.base_offset


def fetch_request(offset: int, *, replica_id: int = -1, current_leader_epoch: int = -1) -> protocol.Request:
    return request(1, 11, {"replica_id": replica_id, "max_wait": 0, "min_bytes": 1, "max_bytes": 1 << 20,
                           "isolation_level": 0, "session_id": 0, "session_epoch": -1, "rack_id": "",
                           "forgotten_topics_data": [],
                           "topics": [{"topic": TOPIC, "partitions": [
                               {"partition": 0, "current_leader_epoch": current_leader_epoch,
                                "fetch_offset": offset, "log_start_offset": -1,
                                "partition_max_bytes": 1 << 20}]}]})


@dataclasses.dataclass
class Fetched:
    error: int
    high_watermark: int
    records: bytes
    last_stable_offset: int = -1

    @property
    def offsets(self) -> list[int]:
        from broker.records import split_batches
        return [h.base_offset + i for _p, h in split_batches(self.records) for i in range(h.last_offset_delta + 1)] \
            if self.records else []


def fetched(reply) -> Fetched | None:
    """The one partition of a handlers.fetch reply, None when the reply leaves it out."""
    for _topic, parts in reply.topics:
        for part, error, hw, lso, _start, _aborted, records in parts:
            if part == 0:
                return Fetched(error, hw, bytes(records), lso)
    return None


def list_offsets_request(timestamp: int, current_leader_epoch: int = -1) -> protocol.Request:
    return request(2, 5, {"replica_id": -1, "isolation_level": 0, "topics": [
        {"name": TOPIC, "partitions": [{"partition_index": 0, "current_leader_epoch": current_leader_epoch,
                                        "timestamp": timestamp}]}]})


class Cluster:
    """Replicas first_id..first_id+n-1 (1..n by default) of one partition of topic `t`."""

    def __init__(self, tmp, monkeypatch, n: int = 3, topic_config: dict[str, str] | None = None,
                 broker_config: dict[str, str] | None = None, first_id: int = 1):
        self.tmp = tmp
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(InlineExecutor())   # the re-read after a lost ISR write, inline
        self.now = 1_000_000
        monkeypatch.setattr(rm_module, "_now_ms", lambda: self.now)
        self.replicas = tuple(range(first_id, first_id + n))
        self.info = TopicInfo(TOPIC, uuid.uuid4(), 1, n, dict(topic_config or {}), {0: self.replicas})
        self.zxid = 100
        self.state: dict[tuple[str, int], VersionedState] = {}
        self.nodes = {i: Node(self, i, dict(broker_config or {})) for i in self.replicas}

    def close(self) -> None:
        for node in self.nodes.values():
            for f in node.rm.fetchers.values():
                f.stop()
            self.run(asyncio.sleep(0))
            node.broker.close()
        self.loop.close()

    # -- the controller ---------------------------------------------------------------------
    def elect(self, leader: int, epoch: int, isr, to=None) -> VersionedState:
        """Write a new partition state and deliver it to the nodes `to` (every node by default)."""
        old = self.state.get(KEY)
        self.zxid += 1
        vs = VersionedState(PartitionState(leader, epoch, tuple(isr), 1), 0 if old is None else old.zk_version + 1,
                            self.zxid)
        self.state[KEY] = vs
        self.deliver(to)
        return vs

    def deliver(self, to=None) -> None:
        """The state watch fires on the nodes `to` (every node by default)."""
        for i in (self.replicas if to is None else to):
            node = self.nodes[i]
            node.rm._apply_state(TOPIC, 0, self.state[KEY], self.replicas, self.info)
            for f in node.rm.fetchers.values():
                f.task.cancel()         # the test drives the fetcher (replicate), not its connection loop
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

    def replicate(self, follower: int, rounds: int = 1) -> Wire:
        """`follower`'s fetcher truncates if it must, then fetches once from its leader; `rounds` times."""
        node = self.nodes[follower]
        leader = node.rm.following[KEY]
        fetcher = node.rm.fetchers[leader]
        wire = Wire(self.nodes[leader])
        for _ in range(rounds):
            self.run(fetcher._truncate_pending(wire, wire))
            self.run(fetcher._fetch_once(wire, wire))
        self.settle()
        return wire

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
        return fetched(handlers.fetch(self.nodes[node].broker, fetch_request(offset, **kw)))

    def list_offsets(self, node: int, timestamp: int, current_leader_epoch: int = -1):
        body = handlers.list_offsets(self.nodes[node].broker, list_offsets_request(timestamp, current_leader_epoch))
        p = body.topics[0].partitions[0]
        return p.error_code.value, p.offset
