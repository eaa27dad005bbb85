"""Hypothesis fuzzes a live broker with random and mutated frames.

For every frame: the broker answers or closes that connection, never hangs it
and never dies; a well-behaved client on its own connection keeps working.
"""

from __future__ import annotations

import datetime
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kio.schema.api_versions.v0.request import ApiVersionsRequest as ApiVersionsV0
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from kio.schema.produce.v9.request import PartitionProduceData, ProduceRequest, TopicProduceData

from broker.records import build_batch
from broker_fixtures import RawClient, broker, broker_factory  # noqa: F401

_enc = RawClient.__new__(RawClient)
_enc.correlation = 100


def _valid_frames() -> list[bytes]:
    batch = build_batch([b"hello", b"world"])
    bodies = [
        ApiVersionsRequest(client_software_name="fuzz", client_software_version="1"),
        MetadataRequest(topics=(MetadataRequestTopic(topic_id=None, name="fz"),),
                        allow_auto_topic_creation=True, include_topic_authorized_operations=False),
        ProduceRequest(transactional_id=None, acks=1, timeout=datetime.timedelta(seconds=1),
                       topic_data=(TopicProduceData(name="fz", partition_data=(
                           PartitionProduceData(index=0, records=batch),)),)),
        FetchRequest(replica_id=-1, max_wait=datetime.timedelta(milliseconds=10), min_bytes=1,
                     max_bytes=1 << 20, isolation_level=0, session_id=0, session_epoch=-1,
                     topics=(FetchTopic(topic="fz", partitions=(FetchPartition(
                         partition=0, fetch_offset=0, partition_max_bytes=1 << 20),)),),
                     forgotten_topics_data=(), rack_id=""),
    ]
    return [_enc.encode(b) for b in bodies]


VALID = _valid_frames()


@st.composite
def mutated(draw):
    frame = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not frame:
            break
        i = draw(st.integers(0, len(frame) - 1))
        if op == "flip":
            frame[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            frame[i] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF]))
        elif op == "insert":
            frame[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del frame[i:i + draw(st.integers(1, 8))]
        else:
            del frame[i:]
    return bytes(frame)


frames = st.one_of(
    st.binary(max_size=200),
    mutated(),
    # A known API key and version with a random body.
    st.builds(lambda k, v, body: struct.pack(">hhih", k, v, 1, -1) + body,
              st.sampled_from([0, 1, 2, 3, 18, 19, 20, 22, 32, 44, 9, 1000, -1]),
              st.integers(-1, 20), st.binary(max_size=120)),
)

PROBE = ApiVersionsV0()


def _long_poll_ms(frame: bytes) -> int:
    """How long the broker may rightly hold this frame's answer (a Fetch long poll)."""
    from broker.protocol import decode_request
    try:
        req = decode_request(frame)
    except Exception:
        return 0
    if req.api_key == 1:
        return max(0, int(req.body.max_wait.total_seconds() * 1000))
    return 0


def _answers_or_closes(port: int, frame: bytes) -> str:
    """Send frame then an ApiVersions probe; 'answered' or 'closed', else raise.
    A mutated Fetch may carry a long max_wait: its answer (and the probe's) may
    rightly wait that long, so such frames only count as 'deferred'."""
    wait_ms = _long_poll_ms(frame)
    if wait_ms > 3000:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(struct.pack(">i", len(frame)) + frame)
        s.close()
        return "deferred"
    s = socket.create_connection(("127.0.0.1", port), timeout=10 + wait_ms / 1000)
    try:
        probe = _enc.encode(PROBE)
        probe_corr = _enc.correlation
        s.sendall(struct.pack(">i", len(frame)) + frame + struct.pack(">i", len(probe)) + probe)
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return "closed"
            except socket.timeout:
                raise AssertionError(f"broker neither answered nor closed for frame {frame!r}")
            if not chunk:
                return "closed"
            buf += chunk
            while len(buf) >= 8:
                (n,) = struct.unpack_from(">i", buf)
                if len(buf) < 4 + n:
                    break
                (corr,) = struct.unpack_from(">i", buf, 4)
                if corr == probe_corr:
                    return "answered"
                buf = buf[4 + n:]
    finally:
        s.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from broker_fixtures import BrokerProcess
    b = BrokerProcess(tmp_path_factory.mktemp("fuzz"))
    try:
        b.start()
        good = RawClient(b.port)
        yield b, good
        good.close()
    finally:
        if b.proc is not None and b.proc.poll() is None:
            b.proc.kill()
            b.proc.wait()


def _well_behaved_works(good: RawClient) -> None:
    meta = good.request(MetadataRequest(topics=(MetadataRequestTopic(topic_id=None, name="good"),),
                                        allow_auto_topic_creation=True,
                                        include_topic_authorized_operations=False))
    assert meta.topics[0].error_code.value == 0
    resp = good.request(ProduceRequest(
        transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=5),
        topic_data=(TopicProduceData(name="good", partition_data=(
            PartitionProduceData(index=0, records=build_batch([b"ok"])),)),)))
    assert resp.responses[0].partition_responses[0].error_code.value == 0


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(frame=frames)
def test_fuzzed_frames_never_hurt_the_broker(live, frame):
    b, good = live
    outcome = _answers_or_closes(b.port, frame)
    assert outcome in ("answered", "closed", "deferred")
    assert b.alive(), b.log_text()[-2000:]
    _well_behaved_works(good)


def test_oversized_and_negative_frames_close_only_that_connection(live):
    b, good = live
    for head in (struct.pack(">i", 200 * 1024 * 1024), struct.pack(">i", -5)):
        s = socket.create_connection(("127.0.0.1", b.port), timeout=5)
        s.sendall(head + b"\0" * 16)
        assert s.recv(10) == b""  # closed
        s.close()
    assert "socket.request.max.bytes" in b.log_text()
    _well_behaved_works(good)
    assert b.alive()
