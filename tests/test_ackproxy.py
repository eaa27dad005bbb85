"""nemesis/ackproxy.py in front of a real broker: acks lost on the return path, and what clients make of it.

The broker advertises the proxy's port, so every client connection after bootstrap goes through the proxy
(on the docker nodes an iptables REDIRECT does that instead). The proxy runs as its own process, as on a
node, with the standard library only (python -I -S: no site-packages).
"""

from __future__ import annotations

import datetime
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from broker_fixtures import RawClient, broker_factory, free_port  # noqa: F401
from conftest import wait_until
from nemesis.ackproxy import produce_acks

SCRIPT = str(Path(__file__).resolve().parent.parent / "nemesis" / "ackproxy.py")
TOPIC = "acks"


class AckProxy:
    """ackproxy.py as a subprocess: started on `port` in front of `upstream_port`, always stopped."""

    def __init__(self, port: int, upstream_port: int):
        self.port = port
        self.upstream_port = upstream_port
        # unix socket paths are limited to 108 bytes: pytest's tmp_path can be longer
        self.dir = tempfile.mkdtemp(prefix="ackproxy")
        self.control = os.path.join(self.dir, "ctl.sock")
        self.log_path = os.path.join(self.dir, "ackproxy.log")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "AckProxy":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", SCRIPT, "serve", "--listen", f"127.0.0.1:{self.port}",
             "--upstream", f"127.0.0.1:{self.upstream_port}", "--control", self.control],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self.dir)
        assert wait_until(lambda: f"listening 127.0.0.1:{self.port}" in self.log()
                          or self.proc.poll() is not None, 10)
        assert self.proc.poll() is None, self.log()
        return self

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def ctl(self, **req) -> dict:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(self.control)
            s.sendall(json.dumps(req).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                assert chunk, "control socket closed without a reply"
                buf += chunk
        return json.loads(buf)

    def status(self) -> dict:
        reply = self.ctl(cmd="status")
        assert reply["ok"], reply
        return reply

    def stop(self) -> int | None:
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
            try:
                rc = self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return rc


@pytest.fixture
def proxied(broker_factory):  # noqa: F811
    """(broker, proxy): the broker advertises the proxy, which forwards to the broker; the topic exists."""
    port = free_port()
    b = broker_factory({"advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}"})
    proxy = AckProxy(port, b.port)
    try:
        proxy.start()
        admin = AdminClient({"bootstrap.servers": b.bootstrap})
        admin.create_topics([NewTopic(TOPIC, 1, 1)])[TOPIC].result(15)
        del admin  # or it would outlive the proxy and complain that it cannot reconnect
        yield b, proxy
    finally:
        proxy.stop()


def producer(proxy: AckProxy, **conf) -> Producer:
    return Producer({"bootstrap.servers": f"127.0.0.1:{proxy.port}", "acks": "all", "linger.ms": 0,
                     "retry.backoff.ms": 50, "max.in.flight.requests.per.connection": 1, **conf})


def produce_one(p: Producer, value: bytes, timeout: float = 15):
    """Produce value to partition 0 and wait for its delivery report: the error, or None."""
    reports = []
    p.produce(TOPIC, value, partition=0, on_delivery=lambda err, _m: reports.append(err))
    assert p.flush(timeout) == 0
    assert len(reports) == 1
    return reports[0]


def read_all(bootstrap: str) -> list[bytes]:
    """Every record of partition 0, read from offset 0 up to the high watermark."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "ackproxy-test", "enable.auto.commit": False,
                  "fetch.wait.max.ms": 50})
    try:
        low, high = c.get_watermark_offsets(TopicPartition(TOPIC, 0), timeout=10)
        c.assign([TopicPartition(TOPIC, 0, low)])
        out: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(out) < high - low and time.monotonic() < deadline:
            out += [m.value() for m in c.consume(100, 0.2) if m.error() is None]
        return out
    finally:
        c.close()


def api_versions_v0(sock: socket.socket, corr: int) -> None:
    """Send an ApiVersions v0 request (header v1, empty body)."""
    cid = b"probe"
    payload = struct.pack(">hhih", 18, 0, corr, len(cid)) + cid
    sock.sendall(struct.pack(">i", len(payload)) + payload)


def read_response(sock: socket.socket) -> tuple[int, int]:
    """(correlation id, error code) of an ApiVersions response."""
    def exact(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            assert chunk, "connection closed"
            buf += chunk
        return buf
    (size,) = struct.unpack(">i", exact(4))
    frame = exact(size)
    return struct.unpack_from(">ih", frame)


# -- 1. transparent without a fault ---------------------------------------------------------------

def test_without_a_fault_clients_produce_and_consume_through_the_proxy_and_it_counts_their_requests(proxied):
    b, proxy = proxied
    p = producer(proxy, **{"enable.idempotence": False})
    for i in range(5):
        assert produce_one(p, f"v{i}".encode()) is None
    assert read_all(f"127.0.0.1:{proxy.port}") == [f"v{i}".encode() for i in range(5)]
    st = proxy.status()
    assert st["requests"]["Produce"] >= 5 and st["responses"]["Produce"] >= 5
    assert st["requests"]["Fetch"] >= 1 and st["requests"]["Metadata"] >= 1
    assert st["dropped"] == {} and st["delayed"] == {} and st["garbled"] == 0
    assert st["fault"] is None and st["fault_active"] is False
    assert st["listen"] == f"127.0.0.1:{proxy.port}" and st["upstream"] == f"127.0.0.1:{b.port}"
    assert st["connections_open"] >= 1 and st["upstream_failures"] == 0


# -- 2. a dropped Produce response: the retry duplicates, unless idempotent -----------------------

def test_a_lost_produce_ack_makes_a_non_idempotent_producer_write_the_value_twice(proxied):
    b, proxy = proxied
    reply = proxy.ctl(cmd="lose", apis=["Produce"], mode="drop", limit=1)
    assert reply["ok"] and reply["fault"]["active"], reply
    p = producer(proxy, **{"enable.idempotence": False, "retries": 5})
    assert produce_one(p, b"once") is None  # delivered, after a retry
    st = proxy.status()
    assert st["dropped"] == {"Produce": 1} and st["closed_by_fault"] == 1
    assert st["fault_active"] is False  # the limit of one is used up
    assert proxy.ctl(cmd="clear")["cleared"]["affected"] == 1
    assert read_all(b.bootstrap) == [b"once", b"once"]  # the duplicate the talk warns of


def test_an_idempotent_producer_writes_the_value_once_although_its_ack_was_lost(proxied):
    b, proxy = proxied
    assert proxy.ctl(cmd="lose", apis=["Produce"], mode="drop", limit=1)["ok"]
    p = producer(proxy, **{"enable.idempotence": True})
    assert produce_one(p, b"once") is None
    assert proxy.status()["dropped"] == {"Produce": 1}
    assert proxy.ctl(cmd="clear")["ok"]
    assert read_all(b.bootstrap) == [b"once"]
    assert "duplicate batch of producer" in b.log_text()  # the broker recognised the retry


# -- 3. a delayed Produce response: the client gives up a write that happened ---------------------

def test_an_ack_delayed_past_the_request_timeout_fails_a_write_that_a_later_read_returns(proxied):
    b, proxy = proxied
    assert proxy.ctl(cmd="lose", apis=["Produce"], mode="delay", delay_ms=5000, limit=1)["ok"]
    p = producer(proxy, **{"enable.idempotence": False, "retries": 0,
                           "request.timeout.ms": 1000, "message.timeout.ms": 1500})
    t0 = time.monotonic()
    err = produce_one(p, b"late")
    assert err is not None and err.code() in (KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT,
                                              KafkaError.REQUEST_TIMED_OUT), err
    assert time.monotonic() - t0 < 4.5  # the client gave up before the ack came (after ~2 s)
    st = proxy.status()
    assert st["delayed"] == {"Produce": 1}
    # librdkafka closes a connection whose request timed out: the held ack is never delivered
    assert wait_until(lambda: proxy.status()["delayed_discarded"] == {"Produce": 1}, 2)
    assert proxy.ctl(cmd="clear")["ok"]
    assert read_all(b.bootstrap) == [b"late"]  # ...yet the write is there


def test_a_delayed_response_arrives_late_and_later_responses_on_the_connection_stay_behind_it(proxied):
    _b, proxy = proxied
    assert proxy.ctl(cmd="lose", apis=["ApiVersions"], mode="delay", delay_ms=400, limit=1, seed=3)["ok"]
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        t0 = time.monotonic()
        api_versions_v0(s, 1)
        api_versions_v0(s, 2)  # not delayed itself (limit 1), but behind the first
        assert read_response(s) == (1, 0)
        assert time.monotonic() - t0 >= 0.38
        assert read_response(s) == (2, 0)
        api_versions_v0(s, 3)
        t1 = time.monotonic()
        assert read_response(s) == (3, 0)
        assert time.monotonic() - t1 < 0.3
    assert proxy.status()["delayed"] == {"ApiVersions": 1}


def test_clearing_with_held_discard_cuts_the_connections_that_hold_responses_and_delivers_none_of_them(proxied):
    """What a sequence needs when it kills the broker whose responses it held: they never arrive."""
    _b, proxy = proxied
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as other:
        assert proxy.ctl(cmd="lose", apis=["ApiVersions"], mode="delay", delay_ms=60_000, limit=1, seed=3)["ok"]
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as held:
            api_versions_v0(held, 1)
            assert wait_until(lambda: proxy.status()["delayed"] == {"ApiVersions": 1}, 5)
            reply = proxy.ctl(cmd="clear", held="discard")
            assert reply["ok"] and reply["aborted"] == 1
            try:
                assert held.recv(100) == b""   # cut, and the held response never came
            except ConnectionResetError:
                pass
        api_versions_v0(other, 2)           # a connection holding nothing is untouched
        assert read_response(other) == (2, 0)
    assert proxy.status()["delayed_discarded"] == {"ApiVersions": 1}
    assert not proxy.ctl(cmd="clear", held="sometimes")["ok"]


# -- 4. robustness and shutdown ------------------------------------------------------------------

def test_a_garbage_client_stream_is_closed_without_hurting_a_live_connection_and_sigterm_exits_0(proxied):
    _b, proxy = proxied
    rng = random.Random(7)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as live:
        api_versions_v0(live, 1)
        assert read_response(live) == (1, 0)
        open_before = proxy.status()["connections_open"]
        for garbage in (b"\xde\xad\xbe\xef" + rng.randbytes(2000),          # negative size
                        struct.pack(">i", 16) + b"\xff" * 16 + rng.randbytes(500)):  # negative api key
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as bad:
                bad.sendall(garbage)
                try:
                    assert bad.recv(100) == b""  # closed by the proxy
                except ConnectionResetError:
                    pass
        api_versions_v0(live, 2)
        assert read_response(live) == (2, 0)
        st = proxy.status()
        assert st["garbled"] == 2
        assert wait_until(lambda: proxy.status()["connections_open"] == open_before, 2)
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.proc.wait(10) == 0
    assert not os.path.exists(proxy.control)
    assert "stopped" in proxy.log()


# -- 5. the control CLI --------------------------------------------------------------------------

def ctl_cli(proxy: AckProxy, text: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-S", SCRIPT, "ctl", proxy.control, text],
                          capture_output=True, text=True, timeout=10)


def test_the_ctl_cli_exits_1_with_a_one_line_error_for_an_unknown_command_or_bad_json(proxied):
    _b, proxy = proxied
    for text, words in (('{"cmd": "explode"}', "unknown cmd"), ('{"cmd": ', "bad JSON"),
                        ('{"cmd": "lose", "apis": ["Nonsense"]}', "unknown api"),
                        ('{"cmd": "lose", "apis": ["Produce"], "mode": "delay"}', "delay_ms"),
                        ('["status"]', "JSON object")):
        r = ctl_cli(proxy, text)
        assert r.returncode == 1, (text, r)
        lines = r.stdout.splitlines()
        assert len(lines) == 1 and words in lines[0], (text, r.stdout)
        assert json.loads(lines[0])["ok"] is False
    r = ctl_cli(proxy, '{"cmd": "lose", "apis": ["produce", 8], "mode": "drop", "p": 0.5, "seed": 1}')
    assert r.returncode == 0 and json.loads(r.stdout)["fault"]["apis"] == ["Produce", "OffsetCommit"]
    r = ctl_cli(proxy, '{"cmd": "status"}')
    assert r.returncode == 0 and json.loads(r.stdout)["fault_active"] is True
    # what nemesis/acks.py sends: a delay_ms with mode drop is ignored
    r = ctl_cli(proxy, '{"cmd": "lose", "apis": ["Produce"], "mode": "drop", "p": 1.0, "delay_ms": 0, "seed": 5}')
    assert r.returncode == 0 and json.loads(r.stdout)["fault"]["delay_ms"] is None
    assert ctl_cli(proxy, '{"cmd": "clear"}').returncode == 0
    r = subprocess.run([sys.executable, "-I", "-S", SCRIPT, "ctl", proxy.control + ".missing", '{"cmd": "status"}'],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and len(r.stdout.splitlines()) == 1


def test_help_works_and_bad_arguments_give_a_one_line_error():
    r = subprocess.run([sys.executable, "-I", "-S", SCRIPT, "--help"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and "serve" in r.stdout and "ctl" in r.stdout
    r = subprocess.run([sys.executable, "-I", "-S", SCRIPT, "serve", "--listen", "nonsense", "--upstream",
                        "127.0.0.1:9092", "--control", "/tmp/x.sock"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "HOST:PORT" in r.stderr


# -- acks parsing, for the versions librdkafka and kafka-python send -------------------------------

@pytest.mark.parametrize("version", [3, 7, 8, 9])
@pytest.mark.parametrize("acks", [0, 1, -1])
@pytest.mark.parametrize("txn", [None, "a-transactional-id"])
def test_the_acks_of_a_produce_request_are_read_at_every_version(version, acks, txn):
    import importlib
    mod = importlib.import_module(f"kio.schema.produce.v{version}.request")
    body = mod.ProduceRequest(transactional_id=txn, acks=acks, timeout=datetime.timedelta(seconds=5),
                              topic_data=())
    payload = RawClient.encode(SimpleNamespace(correlation=0), body)
    assert produce_acks(payload) == acks


def test_acks_are_found_behind_tagged_fields_of_a_v9_header_and_garbage_reads_as_unknown():
    cid = b"client"
    header = struct.pack(">hhih", 0, 9, 5, len(cid)) + cid
    tagged = bytes([1, 0, 3]) + b"xyz"  # one tagged field: tag 0, 3 bytes
    txn = bytes([4]) + b"txn"  # compact string of 3
    assert produce_acks(header + tagged + txn + struct.pack(">hi", 0, 1000)) == 0
    assert produce_acks(header + tagged + bytes([0]) + struct.pack(">hi", -1, 1000)) == -1  # null txn id
    assert produce_acks(struct.pack(">hhih", 0, 2, 1, -1) + struct.pack(">h", 0)) == 0  # v2: acks first
    assert produce_acks(header + b"\xff\xff\xff\xff\xff\xff") is None
    assert produce_acks(b"\x00\x00\x00") is None
