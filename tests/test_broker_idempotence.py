"""Idempotence proved: retried produces after the broker appended.

A TCP proxy between client and broker forwards every request but, for some
Produce requests, closes the client connection instead of passing the
response back: the broker has appended, the client never hears so, and it
retries.  Without idempotence that duplicates records; with it, none.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from broker.config import BrokerConfig, TopicConfig
from broker.errors import INVALID_PRODUCER_EPOCH, NONE, OUT_OF_ORDER_SEQUENCE_NUMBER
from broker.log import Log
from broker.partition import Partition
from broker.records import build_batch
from broker_fixtures import RawClient, broker, broker_factory, free_port, produce_req  # noqa: F401


class ResponseDroppingProxy:
    """Forwards 127.0.0.1:port -> broker; drops the connection instead of
    delivering every ``every``-th Produce response, ``budget`` times."""

    def __init__(self, target_port: int, every: int = 4, budget: int = 15, port: int | None = None):
        self.target_port = target_port
        self.every = every
        self.budget = budget
        self.produce_responses = 0
        self.dropped = 0
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port or 0))
        self.listener.listen(50)
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            api_of: dict[int, int] = {}
            threading.Thread(target=self._pump, args=(client, upstream, api_of, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, api_of, False), daemon=True).start()

    @staticmethod
    def _read_frame(s: socket.socket) -> bytes | None:
        buf = b""
        while len(buf) < 4:
            chunk = s.recv(4 - len(buf))
            if not chunk:
                return None
            buf += chunk
        (n,) = struct.unpack(">i", buf)
        body = bytearray()
        while len(body) < n:
            chunk = s.recv(n - len(body))
            if not chunk:
                return None
            body += chunk
        return buf + bytes(body)

    def _pump(self, src, dst, api_of, is_request: bool) -> None:
        try:
            while True:
                frame = self._read_frame(src)
                if frame is None:
                    break
                if is_request:
                    api_key, _v, corr = struct.unpack_from(">hhi", frame, 4)
                    api_of[corr] = api_key
                else:
                    (corr,) = struct.unpack_from(">i", frame, 4)
                    if api_of.pop(corr, None) == 0:
                        with self.lock:
                            self.produce_responses += 1
                            drop = self.dropped < self.budget and self.produce_responses % self.every == 0
                            if drop:
                                self.dropped += 1
                        if drop:
                            break  # the broker appended; the client never hears about it
                dst.sendall(frame)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


@pytest.fixture
def proxied_broker(broker_factory):
    proxy_port = free_port()
    b = broker_factory({"advertised.listeners": f"PLAINTEXT://127.0.0.1:{proxy_port}"})
    proxy = ResponseDroppingProxy(b.port, port=proxy_port)
    try:
        yield b, proxy
    finally:
        proxy.close()


def _produce_through(proxy, n: int, **conf) -> int:
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{proxy.port}"})
    admin.create_topics([NewTopic("idem", 1, 1)])["idem"].result(15)
    failed = []
    p = Producer({"bootstrap.servers": f"127.0.0.1:{proxy.port}", "acks": "all",
                  "linger.ms": 0, "batch.num.messages": 20, "retries": 1000000,
                  "retry.backoff.ms": 10, "message.timeout.ms": 60000, **conf})
    for i in range(n):
        p.produce("idem", str(i).encode(), partition=0,
                  on_delivery=lambda err, m: failed.append(err) if err else None)
        if i % 50 == 0:
            p.poll(0.01)  # keep produce requests small and many
    assert p.flush(60) == 0
    assert failed == []
    return proxy.dropped


def _read(bootstrap: str) -> list[int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "x", "enable.auto.commit": False})
    try:
        low, high = c.get_watermark_offsets(TopicPartition("idem", 0), timeout=10)
        c.assign([TopicPartition("idem", 0, low)])
        out = []
        deadline = time.monotonic() + 30
        while len(out) < high - low and time.monotonic() < deadline:
            out += [int(m.value()) for m in c.consume(10000, 0.5) if m.error() is None]
        return out
    finally:
        c.close()


N = 3000


def test_retries_duplicate_without_idempotence(proxied_broker):
    b, proxy = proxied_broker
    dropped = _produce_through(proxy, N, **{"enable.idempotence": False,
                                            "max.in.flight.requests.per.connection": 1})
    assert dropped > 0
    values = _read(b.bootstrap)
    assert set(values) == set(range(N))  # nothing lost...
    dups = {v: c for v, c in Counter(values).items() if c > 1}
    assert dups, "expected duplicates from retried produce requests"  # ...but duplicated


def test_idempotent_producer_has_no_duplicates(proxied_broker):
    b, proxy = proxied_broker
    dropped = _produce_through(proxy, N, **{"enable.idempotence": True})
    assert dropped > 0
    assert _read(b.bootstrap) == list(range(N))  # each once, in order
    assert "duplicate batch of producer" in b.log_text()


# -- the same rules, byte for byte, with a raw client ------------------------------------

def _produce_raw(client: RawClient, batch: bytes):
    part = client.request(produce_req("raw", batch)).responses[0].partition_responses[0]
    return part.error_code.value, part.base_offset


def test_sequence_rules_and_state_rebuilt_after_restart(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic("raw", 1, 1)])["raw"].result(15)
    c = RawClient(broker.port)
    pid, epoch = 7, 0
    b0 = build_batch([b"a", b"b"], producer_id=pid, producer_epoch=epoch, base_sequence=0)
    b1 = build_batch([b"c"], producer_id=pid, producer_epoch=epoch, base_sequence=2)
    assert _produce_raw(c, b0) == (0, 0)
    assert _produce_raw(c, b1) == (0, 2)
    assert _produce_raw(c, b0) == (0, 0)  # retried duplicate: original offset, not appended
    gap = build_batch([b"d"], producer_id=pid, producer_epoch=epoch, base_sequence=5)
    assert _produce_raw(c, gap)[0] == 45  # OUT_OF_ORDER_SEQUENCE_NUMBER
    unknown = build_batch([b"e"], producer_id=99, producer_epoch=0, base_sequence=3)
    assert _produce_raw(c, unknown)[0] == 59  # UNKNOWN_PRODUCER_ID
    bumped = build_batch([b"f"], producer_id=pid, producer_epoch=1, base_sequence=0)
    assert _produce_raw(c, bumped) == (0, 3)
    stale = build_batch([b"g"], producer_id=pid, producer_epoch=0, base_sequence=3)
    assert _produce_raw(c, stale)[0] == 47  # INVALID_PRODUCER_EPOCH
    c.close()
    broker.restart()
    c = RawClient(broker.port)
    assert _produce_raw(c, bumped) == (0, 3)  # still known as a duplicate after restart
    assert _produce_raw(c, stale)[0] == 47
    nxt = build_batch([b"h"], producer_id=pid, producer_epoch=1, base_sequence=1)
    assert _produce_raw(c, nxt) == (0, 4)
    c.close()


# -- the producer state of a replica: across a leader change, at the sequence wrap, after an epoch bump ----------

def _replica(tmp_path, name: str, leader: bool) -> Partition:
    p = Partition("t", 0, Log(str(tmp_path / name)), TopicConfig(BrokerConfig({}), {}))
    p.on_leader_append = lambda: None      # as a replicated leader: the HW waits for its ISR
    p.is_leader = leader
    return p


def _idem(values: list[bytes], seq: int, epoch: int = 0, pid: int = 11, base_offset: int = 0) -> bytes:
    return build_batch(values, base_offset=base_offset, producer_id=pid, producer_epoch=epoch, base_sequence=seq)


def test_a_follower_that_becomes_leader_answers_a_retry_of_a_batch_it_replicated_with_the_original_offset(tmp_path):
    """The producer state is built from the batches a follower appends, so a retry that reaches the new leader
    after a leader change (the old leader appended the batch and died before its answer got out) is a duplicate
    answered with its original offset, not a second copy nor UNKNOWN_PRODUCER_ID."""
    old, new = _replica(tmp_path, "old", leader=True), _replica(tmp_path, "new", leader=False)
    sent = [_idem([b"a", b"b"], 0), _idem([b"c"], 2), _idem([b"d", b"e"], 3)]
    assert [old.append_as_leader(b).base_offset for b in sent] == [0, 2, 3]
    assert new.append_as_follower(old.read(0, 1 << 20, committed_only=False).records) == 5
    new.become_leader(1)
    for batch, offset in zip(sent, [0, 2, 3]):
        retry = new.append_as_leader(batch)
        assert (retry.error, retry.base_offset, retry.duplicate) == (NONE, offset, True)
    assert new.log_end_offset == 5
    assert new.append_as_leader(_idem([b"f"], 7)).error == OUT_OF_ORDER_SEQUENCE_NUMBER
    nxt = new.append_as_leader(_idem([b"f"], 5))
    assert (nxt.error, nxt.base_offset, nxt.duplicate) == (NONE, 5, False)
    old.close()
    new.close()


def test_sequence_numbers_wrap_from_int32_max_to_zero(tmp_path):
    """Kafka's sequences are Int32 and wrap to 0 after 2^31 - 1, between batches and inside one."""
    top = 2**31 - 1
    p = _replica(tmp_path, "p", leader=False)
    # the producers' earlier batches came from the previous leader: a follower takes sequences as they come
    assert p.append_as_follower(_idem([b"a", b"b"], top - 2) + _idem([b"y"], top - 5, pid=12, base_offset=2)) == 3
    p.become_leader(1)
    # producer 11: a batch ending at Int32 max, then one starting at 0
    at_max, wrapped = _idem([b"c"], top), _idem([b"d", b"e"], 0)
    assert p.append_as_leader(at_max).base_offset == 3
    w = p.append_as_leader(wrapped)
    assert (w.error, w.base_offset) == (NONE, 4)
    assert p.append_as_leader(at_max).base_offset == 3 and p.append_as_leader(wrapped).duplicate
    assert p.append_as_leader(_idem([b"f"], 3)).error == OUT_OF_ORDER_SEQUENCE_NUMBER      # next is 2
    # producer 12: one batch whose sequences run top-4 .. top, 0; the next starts at 1
    assert p.append_as_leader(_idem([b"z"] * 6, top - 4, pid=12)).base_offset == 6
    assert p.append_as_leader(_idem([b"z"], 1, pid=12)).base_offset == 12
    p.close()


def test_a_bumped_producer_epoch_starts_at_sequence_zero(tmp_path):
    """After InitProducerId bumped the epoch (KIP-360), the producer's sequences restart at 0: any other first
    sequence is OUT_OF_ORDER_SEQUENCE_NUMBER, the new epoch's sequence 0 is a new batch (not a duplicate of the
    old epoch's), and the old epoch is fenced."""
    p = _replica(tmp_path, "p", leader=True)
    assert p.append_as_leader(_idem([b"a", b"b"], 0)).base_offset == 0
    assert p.append_as_leader(_idem([b"c"], 2)).base_offset == 2
    assert p.append_as_leader(_idem([b"x"], 3, epoch=1)).error == OUT_OF_ORDER_SEQUENCE_NUMBER
    assert p.log_end_offset == 3
    first = p.append_as_leader(_idem([b"a", b"b"], 0, epoch=1))
    assert (first.error, first.base_offset, first.duplicate) == (NONE, 3, False)
    assert p.append_as_leader(_idem([b"d"], 3, epoch=0)).error == INVALID_PRODUCER_EPOCH
    assert p.append_as_leader(_idem([b"a", b"b"], 0, epoch=1)).duplicate
    assert p.append_as_leader(_idem([b"e"], 2, epoch=1)).base_offset == 5
    p.close()
