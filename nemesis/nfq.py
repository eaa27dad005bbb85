#!/usr/bin/env python3
"""Delay, jitter, reorder and duplicate packets from an NFQUEUE queue: netem's job on kernels without sch_netem.

Runs on a node (Python 3.11 standard library only) as

    python3 nfq.py --queue N [--delay-ms D] [--jitter-ms J] [--reorder P --reorder-gap-ms G]
                   [--duplicate P] [--mark M] [--mode reinject|hold] [--seed S]

It binds queue N of nfnetlink_queue over a raw netlink socket and decides for
every packet the kernel queues to it when it leaves: D ms later, plus a
uniform random -J..+J ms, plus G ms for a fraction P of packets (so later
packets overtake those). Packets wait in a heap keyed by that time; one select
loop reads packets and lets them go. A fraction of the packets (--duplicate)
also leaves a second time, right after the original.

How a packet leaves late (--mode):
- reinject (default): the kernel's packet gets the DROP verdict at once and its copy is sent at the release
  time through a raw IPv4 socket. Like netem, which orphans delayed packets, this frees the sender's socket
  buffer at once: TCP sees a delayed link, not a throttled one.
- hold: the kernel's packet is kept and gets the ACCEPT verdict at the release time. It stays charged to its
  sending socket meanwhile, so TCP small queues let a connection have only about two packets below TCP, and
  its throughput falls to a few packets per delay.
Packets that cannot be re-sent whole (bigger than the MTU) are held in either mode.

Everything this program sends itself (copies, re-sent packets) carries the firewall mark M, which the
queueing iptables rule must exclude (`-m mark ! --mark M`), or it would be queued again. Loss and rate
limits are not done here: iptables `-m statistic` and tc do them in the kernel (see nemesis/packet.py).

It prints "bound queue N ..." once bound. On SIGTERM or SIGINT every packet it holds leaves at once; then it
unbinds and exits 0. The queue is configured fail-open, so the kernel lets packets pass (undelayed) rather
than drop them when the queue or our socket buffer is full; with `--queue-bypass` on the iptables rule they
pass too once nothing is bound any more.
"""
from __future__ import annotations

import argparse
import errno
import heapq
import os
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_MARK = getattr(socket, "SO_MARK", 36)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)

# struct nlmsghdr: len, type, flags, seq, portid (host byte order)
NLMSGHDR = struct.Struct("=IHHII")
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
# struct nlattr: len, type (host byte order); payloads are padded to 4 bytes
NLATTR = struct.Struct("=HH")
NLA_TYPE_MASK = 0x3FFF

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
# packet attributes
NFQA_PACKET_HDR, NFQA_VERDICT_HDR, NFQA_PAYLOAD, NFQA_CAP_LEN = 1, 2, 10, 13
# config attributes and commands
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_UNBIND, NFQNL_CFG_CMD_PF_BIND = 1, 2, 3
NFQNL_COPY_META, NFQNL_COPY_PACKET = 1, 2
NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_GSO = 0x1, 0x4
NF_DROP, NF_ACCEPT = 0, 1

BE32 = struct.Struct(">I")
#: packets read per wake-up before releasing what is due
READ_BATCH = 256
#: verdicts per sendto (each is 32 bytes)
VERDICT_BATCH = 512


def attr(kind: int, data: bytes) -> bytes:
    out = NLATTR.pack(NLATTR.size + len(data), kind) + data
    return out + b"\0" * (-len(out) % 4)


def nfq_message(msg: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST, seq: int = 0,
                family: int = socket.AF_UNSPEC) -> bytes:
    # struct nfgenmsg: family u8, version u8 (NFNETLINK_V0), res_id be16 (the queue number)
    body = struct.pack("=BB", family, 0) + struct.pack(">H", queue) + attrs
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, seq, 0) + body


class Queue:
    """One bound nfnetlink_queue queue."""

    def __init__(self, number: int, copy_packet: bool, maxlen: int, rcvbuf: int):
        self.number = number
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        for opt in (SO_RCVBUFFORCE, socket.SO_RCVBUF):  # FORCE passes rmem_max, with CAP_NET_ADMIN
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, rcvbuf)
                break
            except OSError:
                pass
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        except OSError:
            pass
        self.seq = 0
        self.buf = bytearray(256 * 1024)
        self.view = memoryview(self.buf)
        # a verdict is one of these prefixes (nlmsghdr, nfgenmsg, the attribute header, the verdict) + the packet id
        self.verdict_prefix = {v: nfq_message(NFQNL_MSG_VERDICT, number,
                                              attr(NFQA_VERDICT_HDR, BE32.pack(v) + b"\0\0\0\0"))[:-4]
                               for v in (NF_ACCEPT, NF_DROP)}
        # obsolete since Linux 3.8 but harmless; older kernels want the family bound first
        self.request(NFQNL_MSG_CONFIG, 0, attr(NFQA_CFG_CMD, struct.pack("=BB", NFQNL_CFG_CMD_PF_BIND, 0)
                                                  + struct.pack(">H", socket.AF_INET)), check=False)
        # struct nfqnl_msg_config_cmd: command u8, pad u8, pf be16
        # struct nfqnl_msg_config_params: copy_range be32, copy_mode u8 (packed)
        if copy_packet:
            params = BE32.pack(0xFFFF) + bytes([NFQNL_COPY_PACKET])
        else:
            params = BE32.pack(0) + bytes([NFQNL_COPY_META])
        self.request(NFQNL_MSG_CONFIG, number,
                     attr(NFQA_CFG_CMD, struct.pack("=BB", NFQNL_CFG_CMD_BIND, 0) + struct.pack(">H", socket.AF_INET))
                     + attr(NFQA_CFG_PARAMS, params)
                     + attr(NFQA_CFG_QUEUE_MAXLEN, BE32.pack(maxlen)))
        # Fail open: accept rather than drop when the queue or our socket is full. Without copies, let the
        # kernel queue GSO packets whole (fewer, larger packets to hold; the payload is not read anyway).
        flags = NFQA_CFG_F_FAIL_OPEN | (0 if copy_packet else NFQA_CFG_F_GSO)
        self.flags = flags
        for want in (flags, NFQA_CFG_F_FAIL_OPEN):
            err = self.request(NFQNL_MSG_CONFIG, number, attr(NFQA_CFG_FLAGS, BE32.pack(want))
                               + attr(NFQA_CFG_MASK, BE32.pack(want)), check=False)
            if err == 0:
                self.flags = want
                break
        else:
            self.flags = 0
        self.sock.setblocking(False)

    def request(self, msg: int, queue: int, attrs: bytes, check: bool = True) -> int:
        """Send a config message asking for an ack; returns 0 or the positive errno (raised when check)."""
        self.seq += 1
        seq = self.seq
        self.sock.send(nfq_message(msg, queue, attrs, NLM_F_REQUEST | NLM_F_ACK, seq))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                n = self.sock.recv_into(self.buf)
            except socket.timeout:
                break
            off = 0
            while off + NLMSGHDR.size <= n:
                length, kind, _flags, mseq, _pid = NLMSGHDR.unpack_from(self.buf, off)
                if length < NLMSGHDR.size:
                    break
                if kind == NLMSG_ERROR and mseq == seq:
                    err = -struct.unpack_from("=i", self.buf, off + NLMSGHDR.size)[0]
                    if err and check:
                        raise OSError(err, f"nfnetlink_queue refused message {msg} for queue {queue}: "
                                           f"{os.strerror(err)}")
                    return err
                off += (length + 3) & ~3
        if check:
            raise OSError(errno.ETIMEDOUT, f"no answer from nfnetlink_queue for queue {queue}")
        return errno.ETIMEDOUT

    def unbind(self) -> None:
        self.sock.setblocking(True)
        self.request(NFQNL_MSG_CONFIG, self.number,
                     attr(NFQA_CFG_CMD, struct.pack("=BB", NFQNL_CFG_CMD_UNBIND, 0) + struct.pack(">H", socket.AF_INET)),
                     check=False)
        self.sock.close()

    def verdict(self, ids: list[int], verdict: int = NF_ACCEPT) -> None:
        """Give `verdict` to the packets `ids`: many verdict messages in one datagram."""
        prefix, pack = self.verdict_prefix[verdict], BE32.pack
        for i in range(0, len(ids), VERDICT_BATCH):
            data = b"".join(prefix + pack(pid) for pid in ids[i:i + VERDICT_BATCH])
            while True:
                try:
                    self.sock.send(data)
                    break
                except BlockingIOError:
                    select.select([], [self.sock], [], 0.1)
                except InterruptedError:
                    continue


def default_mtu() -> int:
    """The smallest MTU of the non-loopback interfaces: a bigger packet cannot be re-sent whole."""
    mtus = []
    try:
        for dev in os.listdir("/sys/class/net"):
            if dev != "lo":
                with open(f"/sys/class/net/{dev}/mtu") as f:
                    mtus.append(int(f.read()))
    except (OSError, ValueError):
        pass
    return min(mtus) if mtus else 1500


class Shaper:
    """Reads queued packets, decides when each leaves, and lets it leave then.

    Two ways to make a packet leave late:
    - hold: keep the kernel's packet and give the ACCEPT verdict at its release time. The packet stays
      charged to its sending socket while held, so TCP small queues (TSQ) let a connection have only
      about two packets in flight below TCP: its throughput collapses to a few packets per delay.
    - reinject (default): give the DROP verdict at once (which frees the sender's buffer, as netem
      does by orphaning) and, at the release time, send the copied packet through the raw socket,
      marked so it is not queued again. TCP then sees a link that is delayed, not throttled. A packet
      that cannot be re-sent whole (bigger than the MTU, or truncated) is held instead.
    """

    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.delay = args.delay_ms / 1000.0
        self.jitter = args.jitter_ms / 1000.0
        self.gap = args.reorder_gap_ms / 1000.0
        self.reorder = args.reorder
        self.duplicate = args.duplicate
        self.reinject = args.mode == "reinject"
        self.mtu = args.mtu or default_mtu()
        self.heap: list = []
        self.counter = 0
        self.stats = {"queued": 0, "accepted": 0, "reinjected": 0, "reordered": 0, "duplicated": 0,
                      "send_errors": 0, "max_held": 0, "recv_errors": 0}
        self.raw = None
        need_payload = self.duplicate > 0 or (self.reinject and (self.delay > 0 or self.jitter > 0 or self.reorder > 0))
        if need_payload:
            self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            self.raw.setsockopt(socket.SOL_SOCKET, SO_MARK, args.mark)
            # What we send is ours until the device took it: a qdisc backlog (tc tbf) fills our send
            # buffer, and a full buffer blocks us (backpressure, as the senders would feel it), for 1 s at most.
            for opt in (SO_SNDBUFFORCE, socket.SO_SNDBUF):
                try:
                    self.raw.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
                    break
                except OSError:
                    pass
            self.raw.settimeout(1.0)
        self.queue = Queue(args.queue, copy_packet=need_payload, maxlen=args.queue_maxlen, rcvbuf=args.rcvbuf)
        self.stopping = False

    # ---------------------------------------------------------------- packets in
    def read(self, now: float, accept: list[int], drop: list[int]) -> None:
        """Read what the kernel queued (up to READ_BATCH messages) and decide the fate of each packet."""
        sock, buf, view = self.queue.sock, self.queue.buf, self.queue.view
        for _ in range(READ_BATCH):
            try:
                n = sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:   # the kernel could not deliver some: fail-open accepted them
                    self.stats["recv_errors"] += 1
                    continue
                raise
            off = 0
            while off + NLMSGHDR.size <= n:
                length, kind, _flags, _seq, _pid = NLMSGHDR.unpack_from(buf, off)
                if length < NLMSGHDR.size or off + length > n:
                    break
                if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                    self.packet(view, off + NLMSGHDR.size + 4, off + length, now, accept, drop)
                off += (length + 3) & ~3

    def packet(self, view, off: int, end: int, now: float, accept: list[int], drop: list[int]) -> None:
        pid = None
        payload = None
        truncated = False
        while off + NLATTR.size <= end:
            alen, kind = NLATTR.unpack_from(view, off)
            if alen < NLATTR.size:
                break
            kind &= NLA_TYPE_MASK
            if kind == NFQA_PACKET_HDR:
                # struct nfqnl_msg_packet_hdr: packet_id be32, hw_protocol be16, hook u8
                pid = BE32.unpack_from(view, off + NLATTR.size)[0]
            elif kind == NFQA_PAYLOAD:
                payload = view[off + NLATTR.size:off + alen]
            elif kind == NFQA_CAP_LEN:   # present only when the payload was cut short
                truncated = True
            off += (alen + 3) & ~3
        if pid is None:
            return
        self.stats["queued"] += 1
        rng = self.rng
        delay = self.delay
        if self.jitter:
            delay += rng.uniform(-self.jitter, self.jitter)
        if self.reorder and rng.random() < self.reorder:
            delay += self.gap
            self.stats["reordered"] += 1
        dup = self.duplicate > 0 and rng.random() < self.duplicate
        whole = (payload is not None and not truncated and len(payload) >= 20 and payload[0] >> 4 == 4
                 and len(payload) <= self.mtu)
        if delay <= 0 and not dup:
            accept.append(pid)
            return
        self.counter += 1
        release = now + max(delay, 0.0)
        if self.reinject and whole:
            drop.append(pid)
            entry = (release, self.counter, None, bytes(payload), 2 if dup else 1)
        else:
            entry = (release, self.counter, pid, bytes(payload) if dup and whole else None, 1 if dup and whole else 0)
        heapq.heappush(self.heap, entry)
        if len(self.heap) > self.stats["max_held"]:
            self.stats["max_held"] = len(self.heap)

    # ---------------------------------------------------------------- packets out
    def release(self, now: float, accept: list[int], drop: list[int], everything: bool = False) -> None:
        """Verdicts for what was decided, then every held packet due by `now` leaves (all with `everything`)."""
        heap = self.heap
        if drop:
            self.queue.verdict(drop, NF_DROP)
        sends = []
        while heap and (everything or heap[0][0] <= now):
            _, _, pid, packet, copies = heapq.heappop(heap)
            if pid is not None:
                accept.append(pid)
            if copies:
                sends.append((packet, copies, pid is None))
        if accept:
            self.queue.verdict(accept, NF_ACCEPT)
            self.stats["accepted"] += len(accept)
        for packet, copies, reinjected in sends:
            self.send(packet, copies, reinjected)

    def send(self, packet: bytes, copies: int, reinjected: bool) -> None:
        dest = (socket.inet_ntoa(packet[16:20]), 0)
        for i in range(copies):
            try:
                self.raw.sendto(packet, dest)
            except OSError:   # buffer full, no route: lost, as on a real link
                self.stats["send_errors"] += 1
                continue
            if reinjected and i == 0:
                self.stats["reinjected"] += 1
            else:
                self.stats["duplicated"] += 1

    # ---------------------------------------------------------------- loop
    def run(self) -> None:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)

        def stop(signum, frame):
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        print(f"bound queue {self.args.queue} (mode {self.args.mode}, flags {self.queue.flags:#x}, mtu {self.mtu})",
              flush=True)
        nl = self.queue.sock
        readers = [nl, wake_r]
        heap = self.heap
        while not self.stopping:
            timeout = max(0.0, heap[0][0] - time.monotonic()) if heap else None
            try:
                readable, _, _ = select.select(readers, [], [], timeout)
            except InterruptedError:
                continue
            accept: list[int] = []
            drop: list[int] = []
            if nl in readable:
                self.read(time.monotonic(), accept, drop)
            if wake_r in readable:
                try:
                    wake_r.recv(64)
                except BlockingIOError:
                    pass
            self.release(time.monotonic(), accept, drop)
        self.shutdown()

    def shutdown(self) -> None:
        """What still waits in the socket, then everything held, leaves now; then unbind."""
        accept: list[int] = []
        drop: list[int] = []
        self.read(time.monotonic(), accept, drop)
        self.release(time.monotonic(), accept, drop, everything=True)
        self.queue.unbind()
        print("unbound queue {} {}".format(self.args.queue, " ".join(f"{k}={v}" for k, v in self.stats.items())),
              flush=True)


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1")
    return value


def non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queue", type=int, required=True, help="NFQUEUE queue number (0-65535)")
    p.add_argument("--delay-ms", type=non_negative, default=0.0, help="hold every packet this long")
    p.add_argument("--jitter-ms", type=non_negative, default=0.0, help="plus a uniform random -J..+J ms")
    p.add_argument("--reorder", type=fraction, default=0.0, help="fraction of packets held --reorder-gap-ms longer")
    p.add_argument("--reorder-gap-ms", type=non_negative, default=10.0)
    p.add_argument("--duplicate", type=fraction, default=0.0, help="fraction of packets sent twice")
    p.add_argument("--mark", type=lambda s: int(s, 0), default=0xACED,
                   help="firewall mark of the copies; the NFQUEUE rule must skip it")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--mode", choices=("reinject", "hold"), default="reinject",
                   help="how a delayed packet leaves: re-sent as a copy (the original dropped at once), or held "
                        "and accepted late (throttles TCP, see Shaper)")
    p.add_argument("--mtu", type=int, default=0, help="largest packet re-sent whole (default: smallest interface MTU)")
    p.add_argument("--queue-maxlen", type=int, default=16384, help="packets the kernel queues before failing open")
    p.add_argument("--rcvbuf", type=int, default=8 << 20, help="netlink receive buffer, bytes")
    args = p.parse_args(argv)
    if not 0 <= args.queue <= 0xFFFF:
        p.error("--queue must be between 0 and 65535")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        shaper = Shaper(args)
    except OSError as e:
        hints = {errno.EPERM: " (is another program bound to this queue? it needs CAP_NET_ADMIN too)",
                 errno.EBUSY: " (already bound)",
                 errno.EPROTONOSUPPORT: " (no nfnetlink_queue in this kernel)"}
        hint = hints.get(e.errno, "")
        print(f"cannot bind queue {args.queue}: {e}{hint}", file=sys.stderr, flush=True)
        return 1
    shaper.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
