"""Slow, lossy, duplicating and reordering links on kernels without sch_netem.

What netem would do to the packets LEAVING a node is done here with what such
kernels have: iptables and tc, plus a small NFQUEUE program on the node.

- loss: `iptables -m statistic --mode random --probability p -j DROP`, in the kernel;
- delay, jitter, reordering, duplication: `-j NFQUEUE --queue-bypass` to nemesis/nfq.py, run on the node as
  a daemon (`python3`, standard library only), which lets each packet leave late (or twice);
- rate: a tbf root qdisc on the interface (with `peers`: an htb root whose u32 filters send the peers'
  packets through a tbf, and everything else past it).

Every rule lives in our own chain ACKED-PACKET, jumped to from OUTPUT for the node's interface; the tc
root qdisc carries our handle. `heal` removes exactly those, and the daemon. Nodes are reached only
through the Node transport (`run`, `output`, `start_daemon`, `stop_daemon`, `is_running`, and `put`
when the program is not on the node yet).

Unlike netem:
- loss is a DROP in OUTPUT, which the sender's stack is told about: a UDP sendto fails with EPERM, and TCP
  keeps the segment and sends it again later instead of recovering from a loss in the network;
- nfq.py costs CPU on the node, about 50 us per queued packet (10% of a core at 2000 packets/s);
- IPv4 only; packets nfq.py re-sends (mode "reinject") go through OUTPUT again as new packets (same bytes,
  same conntrack flow, the kernel's metadata such as skb priority is lost);
- duplicated TCP segments are dropped by the receiver as duplicates (it answers with a duplicate ACK / D-SACK);
- jitter reorders packets (as netem's does without a rate).
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
import shlex
from pathlib import Path
from typing import Any

from clusters import remote
from clusters.base import ClusterError, Node

#: our own iptables chain, jumped to from OUTPUT
CHAIN = "ACKED-PACKET"
#: daemon name of nfq.py (pidfile /var/run/acked/<name>.pid, log /var/log/acked/<name>.log)
DAEMON = "acked-nfq"
PROBE_DAEMON = "acked-nfq-probe"
LOG_DIR = "/var/log/acked"
DEFAULT_QUEUE = 4242
#: firewall mark of the packets nfq.py sends itself (copies, re-sent packets): never queued again
COPY_MARK = 0xACED
#: mark of probe()'s test datagram
PROBE_MARK = 0xACE0
#: handle of our tc root qdisc; heal deletes a root qdisc only when it has this handle
TC_HANDLE = remote.TC_HANDLE
#: where the repository is on a node: docker (/src, read-only mount), ssh (the installed bundle)
PROGRAM_PATHS = ("/src/nemesis/nfq.py", "/opt/acked/src/nemesis/nfq.py")
UPLOADED_PROGRAM = "/var/lib/acked/nfq.py"
BIND_TIMEOUT = 10.0
MODES = ("reinject", "hold")

_RATE = re.compile(r"^\d+(\.\d+)?([kmgt]i?)?(bit|bps)$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class PacketBehaviour:
    """What happens to the packets leaving a node (all zero: nothing)."""

    delay_ms: float = 0.0          #: every packet leaves this much later
    jitter_ms: float = 0.0         #: plus a uniform random -jitter..+jitter (packets may overtake each other)
    loss: float = 0.0              #: fraction of packets dropped, 0..1
    duplicate: float = 0.0         #: fraction of packets sent twice, 0..1
    reorder: float = 0.0           #: fraction of packets held reorder_gap_ms longer, so later ones overtake them
    reorder_gap_ms: float = 10.0
    rate: str | None = None        #: tc rate, e.g. "1mbit", "512kbit"; None: unlimited

    def __post_init__(self):
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value!r}: a fraction between 0 and 1")
        for name in ("delay_ms", "jitter_ms", "reorder_gap_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} is negative")
        if self.rate is not None and not _RATE.match(self.rate):
            raise ValueError(f"rate={self.rate!r}: a tc rate such as 1mbit, 512kbit, 10mbps")

    @property
    def queued(self) -> bool:
        """Whether packets go through nfq.py."""
        return bool(self.delay_ms or self.jitter_ms or self.duplicate or (self.reorder and self.reorder_gap_ms))

    @property
    def active(self) -> bool:
        return self.queued or bool(self.loss) or self.rate is not None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PacketBehaviour":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown packet behaviour fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    def nfq_args(self) -> list[str]:
        args = []
        for flag, value in (("--delay-ms", self.delay_ms), ("--jitter-ms", self.jitter_ms),
                            ("--duplicate", self.duplicate), ("--reorder", self.reorder),
                            ("--reorder-gap-ms", self.reorder_gap_ms)):
            args += [flag, _num(value)]
        return args


def _num(value: float) -> str:
    return format(float(value), ".6g")


def _targets(peers: list[str] | None) -> list[str]:
    """iptables destination selectors: [""] for all traffic, or one `-d ip` per peer."""
    if peers is None:
        return [""]
    if not peers:
        raise ValueError("peers is empty: pass None for all traffic, or the destination addresses")
    out = []
    for peer in peers:
        try:
            out.append(f"-d {ipaddress.IPv4Network(peer, strict=False)} ")
        except ValueError:
            raise ValueError(f"peer {peer!r} is not an IPv4 address") from None
    return out


def _program(node: Node) -> str:
    """Where nfq.py is on the node; copied there (UPLOADED_PROGRAM) when the repository is not."""
    test = "; ".join(f"[ -f {p} ] && {{ echo {p}; exit 0; }}" for p in PROGRAM_PATHS) + "; echo missing"
    found = node.output(test, timeout=10).stdout.strip().splitlines()
    if found and found[-1] in PROGRAM_PATHS:
        return found[-1]
    node.put(Path(__file__).with_name("nfq.py"), UPLOADED_PROGRAM)
    return UPLOADED_PROGRAM


def _start_nfq(node: Node, name: str, args: list[str], queue: int, timeout: float = BIND_TIMEOUT) -> None:
    """Start nfq.py as daemon `name` and return once it printed "bound queue"; RuntimeError (with its log) if not."""
    try:
        node.start_daemon_ready(name, ["python3", _program(node), "--queue", str(queue), *args],
                                f"{LOG_DIR}/{name}.log", "bound queue", timeout)
    except ClusterError as e:
        raise RuntimeError(f"nfq.py (NFQUEUE queue {queue}): {e}") from None


def _rate_commands(rate: str, peers: list[str] | None, dev: str) -> list[str]:
    """tbf as the root qdisc; for peers, htb only sorts (two unlimited classes, a u32 filter per peer) and
    a tbf under the peers' class limits them (htb's own rate overshot by ~10% here; this kernel has no prio qdisc)."""
    q = shlex.quote
    tbf = f"tbf rate {q(rate)} burst 32kbit latency 400ms"
    if peers is None:
        return [f"tc qdisc replace dev {q(dev)} root handle {TC_HANDLE}: {tbf}"]
    cmds = [f"tc qdisc replace dev {q(dev)} root handle {TC_HANDLE}: htb default 1",
            f"tc class add dev {q(dev)} parent {TC_HANDLE}: classid {TC_HANDLE}:1 htb rate 100gbit quantum 60000",
            f"tc class add dev {q(dev)} parent {TC_HANDLE}: classid {TC_HANDLE}:2 htb rate 100gbit quantum 60000",
            f"tc qdisc add dev {q(dev)} parent {TC_HANDLE}:2 {tbf}"]
    for target in _targets(peers):
        net = target.split()[1]
        cmds.append(f"tc filter add dev {q(dev)} parent {TC_HANDLE}: protocol ip prio 1 u32 match ip dst {net} "
                    f"flowid {TC_HANDLE}:2")
    return cmds


def apply(node: Node, behaviour: PacketBehaviour, peers: list[str] | None = None, queue: int = DEFAULT_QUEUE, *,
          dev: str = "eth0", seed: int | None = None, mode: str = "reinject") -> dict[str, Any]:
    """Make the packets leaving `node` on `dev` (to `peers` only, when given) behave as `behaviour`.

    Replaces whatever behaviour the node had (heals first); on any failure heals again and raises.
    `mode` is how nfq.py lets a delayed packet leave: "reinject" (drop it at once, send its copy later:
    TCP sees a delayed link) or "hold" (accept it later: simpler, but TCP small queues then throttle every
    connection to about two packets per delay). Returns what was applied, for the history.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: one of {', '.join(MODES)}")
    targets = _targets(peers)
    q = shlex.quote
    heal(node, dev=dev)
    try:
        cmds = ["set -e"]
        if behaviour.rate is not None:
            cmds += _rate_commands(behaviour.rate, peers, dev)
        if behaviour.queued:
            args = behaviour.nfq_args() + ["--mark", hex(COPY_MARK), "--mode", mode]
            if seed is not None:
                args += ["--seed", str(seed)]
            _start_nfq(node, DAEMON, args, queue)
        if behaviour.loss or behaviour.queued:
            cmds += [f"iptables -N {CHAIN}",
                     # what nfq.py sends itself has been through here once already
                     f"iptables -A {CHAIN} -m mark --mark {COPY_MARK:#x} -j RETURN"]
            for target in targets:
                if behaviour.loss >= 1:
                    cmds.append(f"iptables -A {CHAIN} {target}-j DROP")
                elif behaviour.loss:
                    cmds.append(f"iptables -A {CHAIN} {target}-m statistic --mode random "
                                f"--probability {_num(behaviour.loss)} -j DROP")
                if behaviour.queued:
                    cmds.append(f"iptables -A {CHAIN} {target}-m mark ! --mark {COPY_MARK:#x} "
                                f"-j NFQUEUE --queue-num {int(queue)} --queue-bypass")
            cmds.append(f"iptables -I OUTPUT 1 -o {q(dev)} -j {CHAIN}")
        node.run("\n".join(cmds), timeout=30, check=True)
    except BaseException:
        try:
            heal(node, dev=dev)
        except Exception:
            pass
        raise
    return {"node": node.name, "behaviour": behaviour.to_dict(), "peers": None if peers is None else list(peers),
            "queue": queue, "dev": dev, "mode": mode}


def heal(node: Node, *, dev: str = "eth0") -> None:
    """Remove our rules, the nfq.py daemon and our qdisc; idempotent, safe when nothing is active.

    The chain is flushed first, so no packet is queued any more when the daemon (TERM) lets every packet it
    still holds leave at once.
    """
    q = shlex.quote
    node.run(f"iptables -F {CHAIN} 2>/dev/null; true", timeout=15)
    node.stop_daemon(DAEMON, "TERM", timeout=5)
    ours = f"^qdisc [^ ]* {TC_HANDLE}: root"
    script = (
        f"iptables -S OUTPUT 2>/dev/null | grep -e '-j {CHAIN}$' | sed 's/^-A /-D /' | "
        f"while read -r rule; do iptables $rule; done\n"
        f"iptables -X {CHAIN} 2>/dev/null\n"
        f"if tc qdisc show dev {q(dev)} 2>/dev/null | grep -q '{ours}'; then tc qdisc del dev {q(dev)} root; fi\n"
        f"left=''\n"
        f"iptables -S {CHAIN} >/dev/null 2>&1 && left=\"$left chain {CHAIN};\"\n"
        f"tc qdisc show dev {q(dev)} 2>/dev/null | grep -q '{ours}' && left=\"$left qdisc on {dev};\"\n"
        f"[ -z \"$left\" ] || {{ echo \"still there:$left\"; exit 1; }}"
    )
    res = node.run(script, timeout=20)
    if not res.ok:
        raise RuntimeError(f"{node.name}: could not heal the packet behaviour: "
                           f"{(res.stdout + res.stderr).strip()}")


def probe(node: Node, queue: int = DEFAULT_QUEUE + 1) -> tuple[bool, str]:
    """Whether packet behaviours work on `node`: nfq.py binds a spare queue and delays a test datagram on lo."""
    rule = (f"OUTPUT -o lo -m mark --mark {PROBE_MARK:#x} -m mark ! --mark {COPY_MARK:#x} "
            f"-j NFQUEUE --queue-num {int(queue)}")
    measure = (
        "import socket,time\n"
        "r=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); r.bind(('127.0.0.1',0)); r.settimeout(3)\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"s.setsockopt(socket.SOL_SOCKET,36,{PROBE_MARK})\n"
        "t=time.monotonic(); s.sendto(b'probe',r.getsockname())\n"
        "try:\n r.recv(16); print('%.1f' % ((time.monotonic()-t)*1000))\n"
        "except socket.timeout:\n print('lost')\n"
    )
    try:
        _start_nfq(node, PROBE_DAEMON, ["--delay-ms", "50", "--mark", hex(COPY_MARK)], queue)
    except Exception as e:
        return False, f"NFQUEUE does not work: {e}"
    try:
        added = node.run(f"iptables -I {rule}", timeout=15)
        if not added.ok:
            return False, f"iptables refused an NFQUEUE rule: {added.stderr.strip()}"
        res = node.run(["python3", "-c", measure], timeout=15)
        said = res.stdout.strip()
        stat = node.run("iptables -C OUTPUT -m statistic --mode random --probability 0.5 -j ACCEPT", timeout=15)
    finally:
        node.run(f"iptables -D {rule} 2>/dev/null; true", timeout=15)
        node.stop_daemon(PROBE_DAEMON, "TERM", timeout=5)
    try:
        ms = float(said)
    except ValueError:
        return False, f"a datagram sent through NFQUEUE queue {queue} did not arrive ({said or res.stderr.strip()})"
    if ms < 40:
        return False, f"nfq.py should have delayed the test datagram by 50 ms; it took {ms:.1f} ms"
    # -C checks for a rule that is not there: status 1 means the match itself loaded
    stat_ok = stat.status == 1
    return stat_ok, (f"NFQUEUE and nfq.py work (a test datagram delayed {ms:.0f} ms of 50); iptables statistic match "
                     + ("works" if stat_ok else f"does not work: {stat.stderr.strip()}"))


class PacketNemesis:
    """The `packet` package's nemesis: a behaviour on the packets leaving the target nodes (all their
    traffic, to brokers, ZooKeeper and clients alike); `stop-packet` heals every node it touched."""

    fs = frozenset({"start-packet", "stop-packet"})

    def __init__(self):
        self.affected: list[Node] = []

    def setup(self, ctx) -> None:
        from nemesis.core import NemesisUnavailable
        ok, detail = probe(ctx.nodes[0])
        if not ok:
            raise NemesisUnavailable(f"packet: {detail} -- the nodes need NET_ADMIN and NFQUEUE (see `acked doctor`)")

    def invoke(self, ctx, op: dict) -> Any:
        from nemesis.core import names, resolve
        if op["f"] == "stop-packet":
            nodes, self.affected = self.affected, []
            for node in nodes:
                heal(node)
            return {"nodes": names(nodes)}
        value = dict(op.get("value") or {})
        target = value.pop("target", "one")
        label = value.pop("behaviour", None)
        behaviour = PacketBehaviour.from_dict(value)
        nodes, seen = resolve(ctx, target)
        for node in nodes:
            apply(node, behaviour, seed=ctx.rng.randrange(2**31))
            if node not in self.affected:
                self.affected.append(node)
        return {"behaviour": label, "target": target, **behaviour.to_dict(), "nodes": names(nodes), **seen}

    def teardown(self, ctx) -> None:
        for node in ctx.nodes:
            heal(node)
        self.affected = []
