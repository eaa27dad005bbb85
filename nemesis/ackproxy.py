#!/usr/bin/env python3
"""Lose acknowledgements on their way back: a Kafka-framing-aware TCP proxy in front of one broker.

Role. The ack (or the error) of a write can be lost on its way back to the producer: the broker has
applied the write, the client never hears so, and it retries; without idempotence the retry writes the
records a second time (and with max.in.flight.requests.per.connection > 1 the retried batch can land
behind later ones: reordering). This proxy makes exactly that happen, on demand. It runs on every node
(Python 3.11 standard library only, no project imports) as

    python3 ackproxy.py serve --listen 0.0.0.0:9192 --upstream 127.0.0.1:9092 --control /run/ackproxy.sock

and the clients' connections are sent to it by an iptables rule such as

    iptables -t nat -A PREROUTING -s <clients' address> -p tcp --dport 9092 -j REDIRECT --to-ports 9192

while inter-broker traffic stays direct. Only connections made through the redirect are affected:
connections established before the rule was added keep their conntrack entry and stay direct (they reach
the proxy only once the client reconnects), and removing the rule leaves already-proxied connections on the
proxy. The proxy prints ``listening HOST:PORT`` once it accepts connections (callers wait for that line),
and exits 0 on SIGTERM or SIGINT.

Transparency. Every byte is forwarded unchanged in both directions. The proxy only reads the framing:
requests are ``int32 size | int16 api_key | int16 api_version | int32 correlation_id | ...`` and responses
``int32 size | int32 correlation_id | ...``. It remembers the API of every request that expects a response
by correlation id (a Produce request with acks=0 gets none: its acks field is read, see produce_acks), so
it knows the API of every response. A client stream that cannot be framed (negative or oversized size, a
header too short, a negative api key or version) closes that connection only, never the proxy.

Faults, set and cleared over the control socket (one JSON request a line, one JSON reply a line, see
Proxy.command; ``python3 ackproxy.py ctl SOCKET '{"cmd": "status"}'`` sends one and exits 0 if ok):

- ``lose`` with mode "drop": the matching request has been forwarded and applied by the broker; its
  response is swallowed and the client's connection (and its upstream connection) is closed right after.
  The client sees the connection lost with the request in flight and retries it after retry.backoff.ms:
  exactly "the ack lost on its way back". Holding the response silently instead would be no more
  realistic and far slower: librdkafka would wait out request.timeout.ms (30 s by default) for every loss.
  Other requests in flight on that connection lose their responses too (the broker applied those as well),
  as they would on a real connection loss.
- ``lose`` with mode "delay": the matching response is held for delay_ms and then delivered if the client
  is still connected; later responses on that connection wait behind it (Kafka's in-order guarantee per
  connection holds). ``clear`` delivers what is held when its time comes; ``clear`` with
  ``"held": "discard"`` cuts every connection that holds a delayed response instead, as if it had died with
  the broker. With delay_ms past the client's request timeout the client gives the write up (or
  retries it) although the broker applied it.
A fault matches responses of the given APIs (names or keys, or "all") with probability p each, optionally
only for the first `limit` matches; `seed` makes the choices repeatable.

Why a proxy and not packet drops: a dropped TCP segment is retransmitted; packet loss delays a response,
it never loses one, and it cannot tell a Produce response from a Fetch response. Only the endpoint of the
TCP connection can lose one response of one API and nothing else, so the proxy terminates TCP and reads
the Kafka framing. Counterparts: toxiproxy has byte-level toxics (latency, bandwidth, timeout, reset_peer,
slicer, limit_data) that know nothing of Kafka requests; Jepsen's nemeses (partitions, kills, pauses,
clock skew) have no return-path fault; Kafka's Trogdor has network partition and process faults, no lost
responses.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import signal
import socket
import struct
import sys
import time

#: Kafka API keys and names (those a client can send; unknown keys show as "api_<key>")
API_NAMES: dict[int, str] = {
    0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 4: "LeaderAndIsr", 5: "StopReplica",
    6: "UpdateMetadata", 7: "ControlledShutdown", 8: "OffsetCommit", 9: "OffsetFetch",
    10: "FindCoordinator", 11: "JoinGroup", 12: "Heartbeat", 13: "LeaveGroup", 14: "SyncGroup",
    15: "DescribeGroups", 16: "ListGroups", 17: "SaslHandshake", 18: "ApiVersions", 19: "CreateTopics",
    20: "DeleteTopics", 21: "DeleteRecords", 22: "InitProducerId", 23: "OffsetForLeaderEpoch",
    24: "AddPartitionsToTxn", 25: "AddOffsetsToTxn", 26: "EndTxn", 27: "WriteTxnMarkers",
    28: "TxnOffsetCommit", 29: "DescribeAcls", 30: "CreateAcls", 31: "DeleteAcls", 32: "DescribeConfigs",
    33: "AlterConfigs", 34: "AlterReplicaLogDirs", 35: "DescribeLogDirs", 36: "SaslAuthenticate",
    37: "CreatePartitions", 38: "CreateDelegationToken", 39: "RenewDelegationToken",
    40: "ExpireDelegationToken", 41: "DescribeDelegationToken", 42: "DeleteGroups", 43: "ElectLeaders",
    44: "IncrementalAlterConfigs", 45: "AlterPartitionReassignments", 46: "ListPartitionReassignments",
    47: "OffsetDelete", 48: "DescribeClientQuotas", 49: "AlterClientQuotas",
    50: "DescribeUserScramCredentials", 51: "AlterUserScramCredentials", 52: "Vote",
    53: "BeginQuorumEpoch", 54: "EndQuorumEpoch", 55: "DescribeQuorum", 56: "AlterPartition",
    57: "UpdateFeatures", 58: "Envelope", 59: "FetchSnapshot", 60: "DescribeCluster",
    61: "DescribeProducers", 62: "BrokerRegistration", 63: "BrokerHeartbeat", 64: "UnregisterBroker",
    65: "DescribeTransactions", 66: "ListTransactions", 67: "AllocateProducerIds",
    68: "ConsumerGroupHeartbeat",
}
API_KEYS = {name.lower(): key for key, name in API_NAMES.items()}
PRODUCE = 0
#: requests larger than this are taken as garbage (the broker's socket.request.max.bytes default)
MAX_REQUEST = 100 * 1024 * 1024

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_HEAD = struct.Struct(">hhi")


def api_name(key: int) -> str:
    return API_NAMES.get(key, f"api_{key}")


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


# -- framing ------------------------------------------------------------------------------------

def _uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    """An unsigned varint at pos: (value, position after it)."""
    value = shift = 0
    while True:
        b = buf[pos]  # IndexError past the end
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise ValueError("varint too long")


def produce_acks(payload: bytes) -> int | None:
    """The acks of a Produce request (payload: the frame without its size prefix); None if unreadable.

    Header v1 (non-flexible, Produce v0..v8): api_key, api_version, correlation_id, client_id (int16-length
    nullable string). Header v2 (flexible, Produce v9+) adds tagged fields after client_id, whose length
    stays int16 even there. Body: v0..v2 start with acks; v3..v8 with transactional_id (nullable string)
    then acks; v9+ with transactional_id as a compact nullable string (unsigned varint length+1, 0 = null)
    then acks.
    """
    try:
        _key, version, _corr = _HEAD.unpack_from(payload, 0)
        pos = 8
        (n,) = _I16.unpack_from(payload, pos)
        pos += 2 + max(n, 0)
        flexible = version >= 9
        if flexible:
            count, pos = _uvarint(payload, pos)
            for _ in range(count):
                _tag, pos = _uvarint(payload, pos)
                size, pos = _uvarint(payload, pos)
                pos += size
        if version >= 3:
            if flexible:
                n, pos = _uvarint(payload, pos)
                pos += max(n - 1, 0)
            else:
                (n,) = _I16.unpack_from(payload, pos)
                pos += 2 + max(n, 0)
        (acks,) = _I16.unpack_from(payload, pos)
        return acks
    except (struct.error, ValueError, IndexError):
        return None


class Garbled(Exception):
    """A client stream that is not Kafka framing."""


# -- faults -------------------------------------------------------------------------------------

def resolve_apis(apis) -> frozenset[int] | None:
    """API names or keys (or "all" = None) -> set of keys; ValueError naming what is unknown."""
    if isinstance(apis, (str, int)):
        apis = [apis]
    if not isinstance(apis, list) or not apis:
        raise ValueError('"apis" must be a non-empty list of API names or keys, or "all"')
    keys = set()
    for a in apis:
        if isinstance(a, bool):
            raise ValueError(f"bad api {a!r}")
        if isinstance(a, str) and a.lower() == "all":
            return None
        if isinstance(a, str) and a.strip().lstrip("-").isdigit():
            a = int(a)
        if isinstance(a, int):
            if not 0 <= a <= 32767:
                raise ValueError(f"bad api key {a}")
            keys.add(a)
        elif isinstance(a, str) and a.lower() in API_KEYS:
            keys.add(API_KEYS[a.lower()])
        else:
            raise ValueError(f"unknown api {a!r} (names like Produce, Fetch, OffsetCommit, keys, or \"all\")")
    return frozenset(keys)


class Fault:
    FIELDS = {"cmd", "apis", "mode", "p", "delay_ms", "seed", "limit"}

    def __init__(self, req: dict):
        unknown = set(req) - self.FIELDS
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)} (lose takes {sorted(self.FIELDS - {'cmd'})})")
        if "apis" not in req:
            raise ValueError('lose needs "apis"')
        self.apis_given = req["apis"]
        self.keys = resolve_apis(req["apis"])
        self.mode = req.get("mode", "drop")
        if self.mode not in ("drop", "delay"):
            raise ValueError(f'"mode" must be "drop" or "delay", not {self.mode!r}')
        self.p = req.get("p", 1.0)
        if isinstance(self.p, bool) or not isinstance(self.p, (int, float)) or not 0.0 <= self.p <= 1.0:
            raise ValueError('"p" must be a number in [0, 1]')
        self.delay_ms = req.get("delay_ms")
        bad_delay = isinstance(self.delay_ms, bool) or not isinstance(self.delay_ms, (int, float)) \
            or self.delay_ms < 0
        if self.mode == "delay" and bad_delay:
            raise ValueError('mode "delay" needs "delay_ms" >= 0')
        if self.mode == "drop":  # a delay_ms given with drop (callers may always send one) is ignored
            if self.delay_ms is not None and bad_delay:
                raise ValueError('"delay_ms" must be a number >= 0')
            self.delay_ms = None
        self.seed = req.get("seed")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError('"seed" must be an integer')
        self.limit = req.get("limit")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit < 1):
            raise ValueError('"limit" must be a positive integer')
        self.rng = random.Random(self.seed)
        self.affected = 0

    @property
    def active(self) -> bool:
        return self.limit is None or self.affected < self.limit

    def hits(self, api_key: int) -> bool:
        """Whether this response (of api_key) is lost; counts it if so."""
        if not self.active or (self.keys is not None and api_key not in self.keys):
            return False
        if self.p < 1.0 and self.rng.random() >= self.p:
            return False
        self.affected += 1
        return True

    def describe(self) -> dict:
        return {"apis": "all" if self.keys is None else [api_name(k) for k in sorted(self.keys)],
                "mode": self.mode, "p": self.p, "delay_ms": self.delay_ms, "seed": self.seed,
                "limit": self.limit, "affected": self.affected, "active": self.active}


# -- connections --------------------------------------------------------------------------------

class Conn:
    """One client connection and its upstream connection: two pumps, and a sender for held responses."""

    def __init__(self, proxy: "Proxy", cr, cw, ur, uw):
        self.proxy = proxy
        self.cr, self.cw, self.ur, self.uw = cr, cw, ur, uw
        self.pending: dict[int, int] = {}  # correlation id -> api key, for requests expecting a response
        self.held: collections.deque = collections.deque()  # (release time, frame, api name if delayed)
        self.sender: asyncio.Task | None = None
        self.peer = cw.get_extra_info("peername")

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._requests()), asyncio.create_task(self._responses())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    log(f"connection {self.peer}: {t.exception()!r}")
        finally:
            for t in tasks:
                t.cancel()
            self.close()

    def close(self, abort: bool = False) -> None:
        if self.sender is not None:
            self.sender.cancel()
            self.sender = None
        for _release, _frame, delayed in self.held:
            if delayed:
                self.proxy.count("delayed_discarded", delayed)
        self.held.clear()
        for w in (self.cw, self.uw):
            if abort:
                w.transport.abort()
            else:
                w.close()

    async def _requests(self) -> None:
        """Client -> broker: forward every frame unchanged, remember which responses to expect."""
        reader, up = self.cr, self.uw
        try:
            while True:
                head = await reader.readexactly(4)
                (size,) = _I32.unpack(head)
                if size < 8 or size > MAX_REQUEST:
                    raise Garbled(f"request size {size}")
                payload = await reader.readexactly(size)
                api_key, version, corr = _HEAD.unpack_from(payload, 0)
                if api_key < 0 or version < 0:
                    raise Garbled(f"api key {api_key} version {version}")
                self.proxy.count("requests", api_name(api_key))
                if api_key == PRODUCE and produce_acks(payload) == 0:
                    self.proxy.count("requests_without_response", api_name(api_key))
                else:
                    self.pending[corr] = api_key
                up.write(head + payload)
                await up.drain()
        except Garbled as e:
            self.proxy.stats["garbled"] += 1
            log(f"connection {self.peer}: not Kafka framing ({e}); closing it")
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass

    async def _responses(self) -> None:
        """Broker -> client: forward, drop or hold each response."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                head = await self.ur.readexactly(4)
                (size,) = _I32.unpack(head)
                if size < 4:
                    log(f"connection {self.peer}: upstream sent response size {size}; closing it")
                    self.proxy.stats["garbled_upstream"] += 1
                    return
                payload = await self.ur.readexactly(size)
                (corr,) = _I32.unpack_from(payload, 0)
                api_key = self.pending.pop(corr, None)
                if api_key is None:  # not ours to judge (a client reusing ids, say): pass it on
                    self.proxy.stats["responses_unmatched"] += 1
                    fault = None
                else:
                    self.proxy.count("responses", api_name(api_key))
                    fault = self.proxy.fault
                if fault is not None and fault.hits(api_key):
                    name = api_name(api_key)
                    if fault.mode == "drop":
                        self.proxy.count("dropped", name)
                        self.proxy.stats["closed_by_fault"] += 1
                        log(f"dropped {name} response (correlation id {corr}) to {self.peer}; "
                            "closing the connection")
                        return
                    self.proxy.count("delayed", name)
                    self.held.append((loop.time() + fault.delay_ms / 1000.0, head + payload, name))
                    if self.sender is None:
                        self.sender = asyncio.create_task(self._send_held())
                    continue
                self._deliver(head + payload)
                if not self.held:
                    await self.cw.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            # the broker closed: what is held still goes out (when its time comes), then we close
            if self.sender is not None:
                try:
                    await self.sender
                except (asyncio.CancelledError, ConnectionError, OSError):
                    pass

    def _deliver(self, frame: bytes) -> None:
        """Write a response now, or behind the held ones (order per connection is kept)."""
        if self.held:
            self.held.append((0.0, frame, None))
            if self.sender is None:
                self.sender = asyncio.create_task(self._send_held())
        else:
            self.cw.write(frame)

    async def _send_held(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.held:
                release, frame, _delayed = self.held[0]
                wait = release - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                self.held.popleft()
                self.cw.write(frame)  # no await between popleft and write: order stays
                await self.cw.drain()
        except (ConnectionError, OSError):
            pass  # the client is gone; its pump notices and closes the connection
        finally:
            if self.sender is asyncio.current_task():
                self.sender = None


# -- the proxy ----------------------------------------------------------------------------------

class Proxy:
    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int], control: str):
        self.listen = listen
        self.upstream = upstream
        self.control = control
        self.fault: Fault | None = None
        self.conns: set[Conn] = set()
        self.stats = collections.Counter()
        self.per_api: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.bound = ""
        self.stopping: asyncio.Event | None = None
        self.handlers: set[asyncio.Task] = set()  # client and control handlers, awaited at shutdown
        self.control_writers: set = set()

    def count(self, what: str, name: str) -> None:
        self.per_api[what][name] += 1

    async def handle_client(self, cr, cw) -> None:
        if self.stopping is not None and self.stopping.is_set():
            cw.transport.abort()
            return
        me = asyncio.current_task()
        self.handlers.add(me)
        try:
            await self._proxy_client(cr, cw)
        finally:
            self.handlers.discard(me)

    async def _proxy_client(self, cr, cw) -> None:
        try:
            ur, uw = await asyncio.wait_for(asyncio.open_connection(*self.upstream), 10)
        except (OSError, asyncio.TimeoutError) as e:
            self.stats["upstream_failures"] += 1
            log(f"cannot reach upstream {self.upstream[0]}:{self.upstream[1]}: {e!r}; closing the client")
            cw.transport.abort()
            return
        self.stats["connections_total"] += 1
        conn = Conn(self, cr, cw, ur, uw)
        self.conns.add(conn)
        try:
            await conn.run()
        finally:
            self.conns.discard(conn)

    # control channel
    def command(self, line: str) -> dict:
        try:
            req = json.loads(line)
        except ValueError as e:
            return {"ok": False, "error": f"bad JSON: {e}"}
        if not isinstance(req, dict):
            return {"ok": False, "error": 'a request is a JSON object like {"cmd": "status"}'}
        cmd = req.get("cmd")
        if cmd == "status":
            return self.status()
        if cmd == "lose":
            try:
                fault = Fault(req)
            except ValueError as e:
                return {"ok": False, "error": str(e)}
            self.fault = fault
            log(f"fault set: {json.dumps(fault.describe())}")
            return {"ok": True, "fault": fault.describe()}
        if cmd == "clear":
            held = req.get("held", "deliver")
            if held not in ("deliver", "discard"):
                return {"ok": False, "error": f"held must be 'deliver' or 'discard', not {held!r}"}
            old, self.fault = self.fault, None
            if old is not None:
                log(f"fault cleared: {json.dumps(old.describe())}")
            aborted = 0
            if held == "discard":
                # the held responses never left the broker's node: connections holding any are cut, as a dead
                # broker's are (a sequence holds Fetch responses, then kills the broker)
                for conn in list(self.conns):
                    if any(delayed for _r, _f, delayed in conn.held):
                        conn.close(abort=True)
                        aborted += 1
            return {"ok": True, "cleared": old.describe() if old is not None else None, "aborted": aborted}
        return {"ok": False, "error": f"unknown cmd {cmd!r} (known: status, lose, clear)"}

    def status(self) -> dict:
        return {
            "ok": True,
            "listen": self.bound,
            "upstream": f"{self.upstream[0]}:{self.upstream[1]}",
            "connections_open": len(self.conns),
            "connections_total": self.stats["connections_total"],
            "requests": dict(self.per_api["requests"]),
            "requests_without_response": dict(self.per_api["requests_without_response"]),
            "responses": dict(self.per_api["responses"]),
            "dropped": dict(self.per_api["dropped"]),
            "delayed": dict(self.per_api["delayed"]),
            "delayed_discarded": dict(self.per_api["delayed_discarded"]),
            "closed_by_fault": self.stats["closed_by_fault"],
            "garbled": self.stats["garbled"],
            "garbled_upstream": self.stats["garbled_upstream"],
            "responses_unmatched": self.stats["responses_unmatched"],
            "upstream_failures": self.stats["upstream_failures"],
            "fault_active": self.fault is not None and self.fault.active,
            "fault": self.fault.describe() if self.fault is not None else None,
        }

    async def handle_control(self, reader, writer) -> None:
        me = asyncio.current_task()
        self.handlers.add(me)
        self.control_writers.add(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(b'{"ok": false, "error": "request line too long"}\n')
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                try:
                    reply = self.command(line.decode("utf-8", "replace"))
                except Exception as e:  # a control bug must not take the proxy down
                    reply = {"ok": False, "error": f"internal error: {e!r}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            self.control_writers.discard(writer)
            self.handlers.discard(me)

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        if os.path.exists(self.control):
            os.unlink(self.control)  # a stale socket from a killed run
        control = await asyncio.start_unix_server(self.handle_control, path=self.control)
        server = await asyncio.start_server(self.handle_client, self.listen[0], self.listen[1],
                                            reuse_address=True, backlog=512)
        host, port = server.sockets[0].getsockname()[:2]
        self.bound = f"{host}:{port}"
        print(f"listening {self.bound}", flush=True)
        log(f"upstream {self.upstream[0]}:{self.upstream[1]}, control {self.control}")
        try:
            await self.stopping.wait()
        finally:
            server.close()
            control.close()
            for conn in list(self.conns):
                conn.close(abort=True)
            for w in list(self.control_writers):
                w.transport.abort()
            try:
                os.unlink(self.control)
            except OSError:
                pass
            # the handlers see their connections gone and return; left to asyncio.run they would be
            # cancelled, which Python 3.11's streams report as an error
            if self.handlers:
                await asyncio.wait(list(self.handlers), timeout=2)
        log("stopped")
        return 0


# -- command line -------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + error
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def ctl(path: str, text: str) -> int:
    """Send one request, print the reply line; 0 if it says ok."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(path)
            s.sendall(" ".join(text.splitlines()).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except OSError as e:
        print(json.dumps({"ok": False, "error": f"cannot talk to {path}: {e}"}))
        return 1
    line = buf.decode("utf-8", "replace").strip()
    print(line)
    try:
        return 0 if json.loads(line).get("ok") is True else 1
    except (ValueError, AttributeError):
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="ackproxy.py", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog='control requests (one JSON object a line):\n'
                            '  {"cmd": "status"}\n'
                            '  {"cmd": "lose", "apis": ["Produce"], "mode": "drop"|"delay", "p": 1.0,\n'
                            '   "delay_ms": 3000, "seed": 1, "limit": 1}\n'
                            '  {"cmd": "clear"}')
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("serve", help="run the proxy")
    s.add_argument("--listen", type=hostport, required=True, help="HOST:PORT to accept clients on")
    s.add_argument("--upstream", type=hostport, required=True, help="the broker's HOST:PORT")
    s.add_argument("--control", required=True, help="path of the control unix socket")
    c = sub.add_parser("ctl", help="send one control request and print the reply")
    c.add_argument("socket", help="path of the control unix socket")
    c.add_argument("request", help='a JSON object, e.g. \'{"cmd": "status"}\'')
    args = parser.parse_args(argv)
    if args.command == "ctl":
        return ctl(args.socket, args.request)
    proxy = Proxy(args.listen, args.upstream, args.control)
    try:
        return asyncio.run(proxy.serve())
    except OSError as e:
        print(f"ackproxy.py: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
