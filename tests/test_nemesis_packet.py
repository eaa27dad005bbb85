"""Packet behaviours (nemesis/packet.py with nemesis/nfq.py) measured between two docker nodes.

Every effect is measured on the nodes themselves: n2 runs a UDP echo and TCP sink, n1 times round trips,
counts echoes (copies, order) and times a TCP transfer; the behaviour is applied to n1's outgoing packets,
so the way back is clean. No assert is about our own speed, only about the fault's effect.
"""
import collections
import json
import statistics

import pytest

from clusters import create_cluster
from clusters.base import ClusterSpec
from nemesis import packet
from nemesis.packet import PacketBehaviour

pytestmark = pytest.mark.docker

PORT = 9000
NETPROBE_PATH = "/var/lib/acked/netprobe.py"   # a volume: put_archive cannot write into the tmpfs /tmp
NETPROBE = r'''
import json, select, socket, sys, threading, time

def serve(port):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    u.bind(("0.0.0.0", port))
    t = socket.socket()
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", port))
    t.listen(16)

    def sink(conn):
        with conn:
            while conn.recv(1 << 16):
                pass
            conn.sendall(b"k")

    print("serving", flush=True)
    while True:
        r, _, _ = select.select([u, t], [], [])
        if u in r:
            data, peer = u.recvfrom(2048)
            u.sendto(data, peer)
        if t in r:
            threading.Thread(target=sink, args=(t.accept()[0],), daemon=True).start()

def ping(ip, port, count, interval):
    """Round trips in ms, one datagram at a time (lost ones left out)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtts = []
    for seq in range(count):
        t0 = time.monotonic()
        s.sendto(str(seq).encode(), (ip, port))
        deadline = t0 + 2
        while True:
            s.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                data = s.recv(2048)
            except socket.timeout:
                break
            if data == str(seq).encode():
                rtts.append((time.monotonic() - t0) * 1000)
                break
        time.sleep(interval)
    return rtts

def blast(ip, port, count, interval, wait):
    """Send count numbered datagrams, interval s apart; the echoes' numbers in their order of arrival."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    arrivals = []
    def drain():
        while True:
            try:
                arrivals.append(int(s.recv(2048, socket.MSG_DONTWAIT)))
            except BlockingIOError:
                return
    start = time.monotonic()
    for seq in range(count):
        try:
            s.sendto(str(seq).encode(), (ip, port))
        except PermissionError:   # an iptables DROP in OUTPUT tells the sender
            pass
        drain()
        pause = start + (seq + 1) * interval - time.monotonic()
        if pause > 0:
            select.select([s], [], [], pause)
            drain()
    end = time.monotonic() + wait
    while time.monotonic() < end:
        select.select([s], [], [], max(0, end - time.monotonic()))
        drain()
    return arrivals

def tcp(ip, port, nbytes):
    """Seconds to send nbytes over TCP until the sink confirms it has them all."""
    c = socket.create_connection((ip, port), timeout=60)
    t0 = time.monotonic()
    c.sendall(b"x" * nbytes)
    c.shutdown(socket.SHUT_WR)
    assert c.recv(1) == b"k"
    return time.monotonic() - t0

mode, args = sys.argv[1], sys.argv[2:]
if mode == "serve":
    serve(int(args[0]))
else:
    ip, port, rest = args[0], int(args[1]), [float(a) for a in args[2:]]
    if mode == "ping":
        print(json.dumps(ping(ip, port, int(rest[0]), rest[1])))
    elif mode == "blast":
        print(json.dumps(blast(ip, port, int(rest[0]), rest[1], rest[2])))
    elif mode == "tcp":
        print(json.dumps(tcp(ip, port, int(rest[0]))))
'''


def netprobe(node, *args, timeout=60):
    res = node.run(["python3", NETPROBE_PATH, *map(str, args)], timeout=timeout, check=True)
    return json.loads(res.stdout)


def rtts(src, dst, count=15, interval=0.01) -> list[float]:
    return netprobe(src, "ping", dst.ip, PORT, count, interval)


def blast(src, dst, count=400, interval=0.001, wait=1.0) -> list[int]:
    return netprobe(src, "blast", dst.ip, PORT, count, interval, wait)


def tcp_seconds(src, dst, nbytes) -> float:
    return netprobe(src, "tcp", dst.ip, PORT, nbytes)


def leftovers(node) -> list[str]:
    """What packet behaviours could have left on a node: our rules, our qdisc, the daemon."""
    found = []
    rules = node.run("iptables -S", timeout=10, check=True).stdout
    found += [line for line in rules.splitlines() if packet.CHAIN in line or "NFQUEUE" in line]
    qdiscs = node.run("tc qdisc show dev eth0", timeout=10, check=True).stdout
    found += [line for line in qdiscs.splitlines() if f" {packet.TC_HANDLE}:" in line]
    if node.is_running(packet.DAEMON):
        found.append(f"daemon {packet.DAEMON}")
    procs = node.run("ps -eo pid,args", timeout=10, check=True).stdout
    found += [line for line in procs.splitlines() if "nfq.py" in line and "ps -eo" not in line]
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = create_cluster(ClusterSpec(backend="docker", nodes=2, brokers=False,
                                   work_dir=tmp_path_factory.mktemp("packet"), run_id="test-packet",
                                   capabilities=frozenset({"net"})))
    try:
        c.start()
        n1, n2 = c.nodes
        for node in (n1, n2):
            node.put_bytes(NETPROBE.encode(), NETPROBE_PATH)
        n2.start_daemon("netprobe", ["python3", NETPROBE_PATH, "serve", str(PORT)], "/var/log/acked/netprobe.log")
        for _ in range(50):
            if rtts(n1, n2, count=1):
                break
        else:
            pytest.fail("the echo server on n2 does not answer")
        yield c
    finally:
        c.teardown()


@pytest.fixture
def link(cluster):
    """(n1, n2); whatever a test applies to n1 is healed afterwards."""
    n1, n2 = cluster.nodes
    try:
        yield n1, n2
    finally:
        packet.heal(n1)


def test_a_behaviour_round_trips_through_a_dict_and_refuses_nonsense():
    b = PacketBehaviour(delay_ms=100, jitter_ms=10, loss=0.1, duplicate=0.05, reorder=0.2, reorder_gap_ms=30,
                        rate="1mbit")
    assert PacketBehaviour.from_dict(b.to_dict()) == b
    assert PacketBehaviour.from_dict(json.loads(json.dumps(b.to_dict()))) == b
    assert not PacketBehaviour().active and PacketBehaviour(loss=0.5).active and not PacketBehaviour(loss=0.5).queued
    for bad in ({"loss": 1.5}, {"delay_ms": -1}, {"rate": "fast"}, {"latency": 3}):
        with pytest.raises(ValueError):
            PacketBehaviour.from_dict(bad)


def test_probe_says_nfqueue_and_the_program_work_on_a_node(link):
    n1, _ = link
    ok, message = packet.probe(n1)
    assert ok, message
    assert not leftovers(n1)


def test_a_delay_to_a_peer_is_added_to_every_round_trip_and_heal_takes_it_away(link):
    n1, n2 = link
    before = statistics.median(rtts(n1, n2))
    packet.apply(n1, PacketBehaviour(delay_ms=100), peers=[n2.ip])
    delayed = rtts(n1, n2)
    assert len(delayed) == 15
    # every packet n1 sends is 100 ms late; the way back is untouched
    assert min(delayed) - before >= 90, (before, delayed)
    packet.heal(n1)
    after = statistics.median(rtts(n1, n2))
    assert after < before + 30, (before, after)


def test_jitter_spreads_the_delay_and_tcp_stays_fast_under_delay(link):
    n1, n2 = link
    packet.apply(n1, PacketBehaviour(delay_ms=60, jitter_ms=20), seed=7)
    delayed = rtts(n1, n2, count=40)
    # uniform in 40..80 ms: the mean of 40 has a standard deviation of 1.8 ms
    assert min(delayed) >= 0.9 * 40, delayed
    assert statistics.mean(delayed) >= 50, delayed
    assert max(delayed) - min(delayed) >= 15, delayed
    # packets are re-sent, not held, so TCP small queues do not throttle the connection to a few packets
    # per delay: 4 MB within 20 s is ~50 times what a held-packet connection moved at this delay
    assert tcp_seconds(n1, n2, 4_000_000) < 20


def test_loss_drops_the_configured_fraction_of_packets(link):
    n1, n2 = link
    assert len(set(blast(n1, n2))) >= 396   # the link itself loses (next to) nothing
    packet.apply(n1, PacketBehaviour(loss=0.3))
    arrivals = blast(n1, n2)
    lost = 1 - len(set(arrivals)) / 400
    assert 0.21 <= lost <= 0.39, lost


def test_duplicated_packets_arrive_twice(link):
    n1, n2 = link
    packet.apply(n1, PacketBehaviour(duplicate=0.3), seed=3)
    arrivals = blast(n1, n2)
    copies = collections.Counter(arrivals)
    assert len(copies) >= 396, "duplication must not lose packets"
    assert max(copies.values()) == 2
    twice = sum(1 for n in copies.values() if n == 2) / len(copies)
    assert 0.21 <= twice <= 0.39, twice


def test_reordered_packets_are_overtaken_by_later_ones(link):
    n1, n2 = link
    assert blast(n1, n2, count=200) == list(range(200))   # in order without the fault
    packet.apply(n1, PacketBehaviour(reorder=0.25, reorder_gap_ms=30), seed=5)
    arrivals = blast(n1, n2, count=300)
    assert sorted(arrivals) == list(range(300)), "reordering must neither lose nor duplicate"
    highest, overtaken = -1, 0
    for seq in arrivals:
        if seq < highest:
            overtaken += 1
        highest = max(highest, seq)
    # each held packet is overtaken by the ~30 sent after it: about 75 (standard deviation 7.5)
    assert overtaken >= 0.5 * 0.25 * 300, overtaken


def test_rate_limiting_lowers_throughput_to_all_or_only_to_the_peers_given(link):
    n1, n2 = link
    nbytes, rate_bits = 250_000, 2_000_000
    at_rate = nbytes * 8 / rate_bits   # 1 s
    packet.apply(n1, PacketBehaviour(rate="2mbit"))
    assert tcp_seconds(n1, n2, nbytes) >= 0.8 * at_rate
    packet.apply(n1, PacketBehaviour(rate="2mbit"), peers=[n2.ip])
    assert tcp_seconds(n1, n2, nbytes) >= 0.8 * at_rate
    # limited towards another address only: n2 is not slowed down
    packet.apply(n1, PacketBehaviour(rate="2mbit"), peers=["192.0.2.1"])
    assert tcp_seconds(n1, n2, nbytes) < 0.5 * at_rate


def test_heal_restores_everything_and_leaves_no_rule_qdisc_or_daemon_behind(link):
    n1, n2 = link
    packet.heal(n1)   # safe when nothing is active
    applied = packet.apply(n1, PacketBehaviour(delay_ms=30, jitter_ms=5, loss=0.1, duplicate=0.1, reorder=0.1,
                                               reorder_gap_ms=20, rate="5mbit"))
    assert applied["behaviour"]["rate"] == "5mbit"
    assert len(leftovers(n1)) >= 3   # the jump, the chain's rules, the qdisc, the daemon
    packet.heal(n1)
    packet.heal(n1)   # idempotent
    assert leftovers(n1) == []
    assert statistics.median(rtts(n1, n2)) < 20
    assert blast(n1, n2, count=200) == list(range(200))


def test_apply_fails_loudly_and_leaves_nothing_when_nfq_cannot_bind(link):
    n1, _ = link
    queue = packet.DEFAULT_QUEUE + 7
    packet._start_nfq(n1, "queue-squatter", [], queue)   # another program holds the queue
    try:
        with pytest.raises(RuntimeError, match=f"queue {queue}") as failure:
            packet.apply(n1, PacketBehaviour(delay_ms=10), queue=queue)
        assert "cannot bind" in str(failure.value)
        assert packet.CHAIN not in n1.run("iptables -S", timeout=10, check=True).stdout
        assert not n1.is_running(packet.DAEMON)
    finally:
        n1.stop_daemon("queue-squatter", "TERM", timeout=5)
    assert leftovers(n1) == []
