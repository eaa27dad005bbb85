"""Pytest fixtures that run real ``acked-broker`` processes on free 127.0.0.1 ports.

Import them into a test module (``from broker_fixtures import broker_factory, broker``);
every process started is killed when the test ends, also when it fails.
"""

from __future__ import annotations

import datetime
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BROKER_BIN = str(Path(sys.executable).parent / "acked-broker")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BrokerProcess:
    """One broker: a properties file and data dir under tmp; start/stop/kill/restart."""

    def __init__(self, tmp: Path, overrides: dict[str, str] | None = None, name: str = "broker"):
        self.dir = tmp / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_dir = self.dir / "data"
        self.config_path = self.dir / "server.properties"
        self.stderr_path = self.dir / "broker.log"
        self.overrides = dict(overrides or {})
        self.proc: subprocess.Popen | None = None
        self._write_config()

    def _write_config(self) -> None:
        props = {"broker.id": "0", "listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
                 "log.dirs": str(self.log_dir)}
        props.update(self.overrides)
        self.config_path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "BrokerProcess":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self._write_config()
        self._stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([BROKER_BIN, str(self.config_path)], stdout=self._stderr,
                                     stderr=self._stderr, cwd=str(self.dir))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"broker did not listen within {timeout}s:\n{self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send sig and wait for exit; returns the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._stderr.close()
        return rc

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)

    def restart(self, sig: int = signal.SIGTERM) -> "BrokerProcess":
        self.stop(sig)
        return self.start()


@pytest.fixture
def broker_factory(tmp_path):
    """broker_factory(**overrides) -> started BrokerProcess; all killed at teardown."""
    started: list[BrokerProcess] = []

    def make(overrides: dict[str, str] | None = None, start: bool = True, name: str | None = None):
        b = BrokerProcess(tmp_path, overrides, name or f"broker{len(started)}")
        started.append(b)
        return b.start() if start else b

    try:
        yield make
    finally:
        for b in started:
            if b.proc is not None and b.proc.poll() is None:
                b.proc.kill()
                b.proc.wait()
            if b.proc is not None:
                b._stderr.close()


@pytest.fixture
def broker(broker_factory):
    return broker_factory()


# -- a minimal raw Kafka client, for tests that need exact control of the bytes -------------

class RawClient:
    """Blocking socket client speaking the wire protocol through kio's schemas."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.correlation = 0

    def close(self) -> None:
        self.sock.close()

    def send_frame(self, payload: bytes) -> None:
        self.sock.sendall(struct.pack(">i", len(payload)) + payload)

    def recv_frame(self) -> bytes | None:
        head = self._recv_exact(4)
        if head is None:
            return None
        (n,) = struct.unpack(">i", head)
        return self._recv_exact(n)

    def _recv_exact(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def encode(self, body) -> bytes:
        from kio.serial import entity_writer
        self.correlation += 1
        cls = type(body)
        buf = io.BytesIO()
        client_id = b"raw"
        buf.write(struct.pack(">hhih", cls.__api_key__, cls.__version__, self.correlation, len(client_id)))
        buf.write(client_id)
        if cls.__flexible__:
            buf.write(b"\0")
        entity_writer(cls)(buf, body)
        return buf.getvalue()

    def send(self, body) -> int:
        """Send body (a kio request entity) without waiting; returns its correlation id (see `receive`)."""
        self.send_frame(self.encode(body))
        return self.correlation

    def receive(self, request_type, correlation: int | None = None):
        """Read the next response frame, the answer to a request of `request_type`, and decode it."""
        import kio.index
        from kio.serial import entity_reader
        frame = self.recv_frame()
        if frame is None:
            raise ConnectionError("broker closed the connection")
        (corr,) = struct.unpack_from(">i", frame)
        expected = self.correlation if correlation is None else correlation
        assert corr == expected, (corr, expected)
        cls = kio.index.load_response_from_request(request_type)
        pos = 4
        if cls.__flexible__ and cls.__api_key__ != 18:
            pos += 1
        value, _size = entity_reader(cls)(frame, pos)
        return value

    def request(self, body):
        """Send body (a kio request entity) and return the decoded response entity."""
        return self.receive(type(body), self.send(body))

    def answer_waiting(self, within: float) -> bool:
        """Whether a response frame arrives (or the connection closes) within `within` seconds."""
        import select
        return bool(select.select([self.sock], [], [], within)[0])


def produce_req(topic: str, records: bytes, partition: int = 0, acks: int = -1, timeout_ms: int = 5000):
    """Produce v9 of one batch (or several, concatenated) to one partition."""
    from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData
    return ProduceRequest(transactional_id=None, acks=acks, timeout=datetime.timedelta(milliseconds=timeout_ms),
                          topic_data=(TopicProduceData(name=topic, partition_data=(
                              PartitionProduceData(index=partition, records=records),)),))


def fetch_request(parts: dict, *, replica_id: int = -1, wait_ms: int = 0, min_bytes: int = 1, session_id: int = 0,
                  session_epoch: int = -1, forgotten=(), current_leader_epoch: int = -1, max_bytes: int = 1 << 20):
    """Fetch v12 of {(topic, partition): fetch offset}; `session_epoch` -1 is a fetch without a session, 0 opens
    one (KIP-227); `replica_id` >= 0 is a follower's fetch; `forgotten` lists (topic, partition) to drop."""
    from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic, ForgottenTopic
    topics: dict[str, list] = {}
    for (t, p), offset in parts.items():
        topics.setdefault(t, []).append(FetchPartition(partition=p, fetch_offset=offset, partition_max_bytes=max_bytes,
                                                       current_leader_epoch=current_leader_epoch))
    gone: dict[str, list] = {}
    for t, p in forgotten:
        gone.setdefault(t, []).append(p)
    return FetchRequest(replica_id=replica_id, max_wait=datetime.timedelta(milliseconds=wait_ms), min_bytes=min_bytes,
                        max_bytes=max_bytes, isolation_level=0, session_id=session_id, session_epoch=session_epoch,
                        topics=tuple(FetchTopic(topic=t, partitions=tuple(ps)) for t, ps in topics.items()),
                        forgotten_topics_data=tuple(ForgottenTopic(topic=t, partitions=tuple(ps))
                                                    for t, ps in gone.items()),
                        rack_id="")


def fetched(resp) -> dict:
    """A Fetch response's partitions by (topic, partition)."""
    return {(t.topic, p.partition_index): p for t in resp.responses for p in t.partitions}


def batch_offsets(data) -> list[tuple[int, int]]:
    """(first offset, last offset) of each record batch in `data` (a Fetch answer's records)."""
    from broker.records import split_batches
    return [(h.base_offset, h.last_offset) for _pos, h in split_batches(bytes(data))] if data else []


#: a standalone broker set up for consumer groups: quick rebalances and short sessions
GROUP_BROKER = {
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "5",
    "group.initial.rebalance.delay.ms": "0",
    "group.min.session.timeout.ms": "1000",
}


@pytest.fixture
def gbroker(broker_factory):
    return broker_factory(GROUP_BROKER)
