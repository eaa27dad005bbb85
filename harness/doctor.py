"""`acked doctor`: what works on this machine -- each backend's prerequisites, each capability a fault
needs on the nodes, and so which nemesis packages can run here (read from nemesis/packages.py).

It lives in harness/ because it reads both clusters (a test container) and the nemesis registry.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from clusters.base import ClusterError, ClusterSpec
from clusters.cli import DEFAULT_WORK_DIR

#: which doctor rows each capability of a package rests on
CAPABILITY_ROWS = {
    "net": ("iptables in a node (NET_ADMIN)", "tc tbf in a node (packet rate)",
            "NFQUEUE + iptables statistic in a node (packet)"),
    "clock": ("libfaketime skews a process's clock (clock nemesis)",),
    "disk": ("FUSE in a node (/dev/fuse, SYS_ADMIN)", "faultfs mounts and loses unfsynced writes in a node (disk)"),
    "acks": ("iptables nat REDIRECT in a node (NET_ADMIN)", "ackproxy listens in a node (lose-acks)"),
}

#: faultfs end to end on a node: mount, write without fsync, power loss, the write is gone, unmount
FAULTFS_PROBE = (
    "b=/var/tmp/doctor-fs.b m=/var/tmp/doctor-fs.m s=/run/doctor-fs.sock; mkdir -p $b $m; "
    "python3 /src/nemesis/faultfs.py mount $b $m --control $s > /var/tmp/doctor-fs.log 2>&1 & pid=$!; "
    "for i in $(seq 100); do grep -q ^mounted /var/tmp/doctor-fs.log && break; sleep 0.1; done; "
    "echo unsynced > $m/probe && python3 /src/nemesis/faultfs.py ctl $s lose-unfsynced > /dev/null && "
    "size=$(stat -c %s $m/probe); kill $pid; wait; fusermount3 -u -z $m 2>/dev/null; "
    "echo size=$size; tail -3 /var/tmp/doctor-fs.log")
#: ackproxy on a node: it listens and answers its control socket
ACKPROXY_PROBE = (
    "python3 /src/nemesis/ackproxy.py serve --listen 127.0.0.1:9193 --upstream 127.0.0.1:9 --control "
    "/run/doctor-ap.sock > /var/tmp/doctor-ap.log 2>&1 & pid=$!; "
    "for i in $(seq 100); do grep -q ^listening /var/tmp/doctor-ap.log && break; sleep 0.1; done; "
    "python3 /src/nemesis/ackproxy.py ctl /run/doctor-ap.sock '{\"cmd\": \"status\"}'; r=$?; kill $pid; wait; "
    "exit $r")


def register(subparsers) -> None:
    doctor = subparsers.add_parser("doctor", help="check what works here (docker, image, each fault package, sshd)",
                                   description="A table of the prerequisites of each backend and fault, with "
                                               "the fix for every failing row, then which nemesis packages can run "
                                               "here. Takes a few seconds. Exit 0 when every check passed, 1 if not.")
    doctor.add_argument("--skip-node", action="store_true", help="do not start a test container")
    doctor.set_defaults(func=cmd_doctor)


def doctor_rows(start_node: bool = True) -> list[tuple[str, bool, str, str]]:
    """(check, ok, detail, fix) rows."""
    rows = []

    def add(check, ok, detail="", fix=""):
        rows.append((check, bool(ok), detail, "" if ok else fix))

    java = shutil.which("java")
    add("host: java", java, java or "not found", "apt-get install default-jre-headless")
    zk_jar = Path("/usr/share/java/zookeeper.jar").exists()
    add("host: zookeeper (local backend)", zk_jar, "/usr/share/java/zookeeper.jar" if zk_jar else "not found",
        "apt-get install zookeeper")
    add("host: debootstrap", shutil.which("debootstrap"), "", "apt-get install debootstrap")
    try:
        from clusters.docker import docker_client
        client = docker_client()
        add("docker reachable", True, client.version().get("Version", ""))
    except ClusterError as e:
        add("docker reachable", False, str(e), "install docker.io and start the daemon (or set DOCKER_HOST)")
        return rows
    from clusters.image import docker_image_exists, image_tag
    tag = image_tag()
    current = docker_image_exists(tag)
    stale = [t for img in client.images.list(name="acked-node") for t in img.tags if t != "acked-node:latest"]
    add("node image present and current", current, tag if current else f"{tag} missing (have: {stale or 'none'})",
        "acked image build")
    if not current or not start_node:
        return rows
    from clusters.docker import DockerCluster
    from clusters.ssh import SSHNode, cluster_key
    spec = ClusterSpec(backend="docker", nodes=1, brokers=False, capabilities=frozenset({"net", "disk"}),
                       run_id="doctor", work_dir=DEFAULT_WORK_DIR)
    cluster = DockerCluster(spec)
    try:
        cluster.create()
        node = cluster.nodes[0]
        r = node.run("iptables -A OUTPUT -d 192.0.2.1 -j DROP && iptables -D OUTPUT -d 192.0.2.1 -j DROP")
        add("iptables in a node (NET_ADMIN)", r.ok, r.stderr.strip()[:80],
            "the docker daemon must allow NET_ADMIN; on the host: modprobe ip_tables iptable_filter")
        r = node.run("tc qdisc add dev eth0 root handle acd: tbf rate 1mbit burst 32kbit latency 400ms "
                     "&& tc qdisc del dev eth0 root")
        add("tc tbf in a node (packet rate)", r.ok, r.stderr.strip()[:80],
            "the host kernel lacks sch_tbf: modprobe sch_tbf")
        from nemesis.packet import probe
        ok, detail = probe(node)
        add("NFQUEUE + iptables statistic in a node (packet)", ok,
            detail[:80], "the host kernel needs nfnetlink_queue and xt_statistic: modprobe nfnetlink_queue "
            "xt_NFQUEUE xt_statistic (netem is not needed)")
        r = node.run(["python3", "-c", "import os; os.close(os.open('/dev/fuse', os.O_RDWR))"])
        add("FUSE in a node (/dev/fuse, SYS_ADMIN)", r.ok, r.stderr.strip().splitlines()[-1][:80] if r.stderr else "",
            "on the host: modprobe fuse, and let docker pass /dev/fuse")
        r = node.run(FAULTFS_PROBE, timeout=30)
        add("faultfs mounts and loses unfsynced writes in a node (disk)", "size=0" in r.stdout,
            (r.stdout.strip().splitlines() or [r.stderr.strip()[:80]])[-1][:80],
            "acked image build --force (the image needs fuse3 and mfusepy)")
        r = node.run("iptables -t nat -A PREROUTING -p tcp --dport 9 -j REDIRECT --to-ports 9193 && "
                     "iptables -t nat -D PREROUTING -p tcp --dport 9 -j REDIRECT --to-ports 9193")
        add("iptables nat REDIRECT in a node (NET_ADMIN)", r.ok, r.stderr.strip()[:80],
            "on the host: modprobe iptable_nat xt_REDIRECT")
        r = node.run(ACKPROXY_PROBE, timeout=30)
        add("ackproxy listens in a node (lose-acks)", r.ok and '"ok": true' in r.stdout,
            (r.stdout or r.stderr).strip()[:80], "see /var/tmp/doctor-ap.log in the node")
        node.start_daemon("doctor-sleep", ["sleep", "30"], "/var/log/acked/doctor.log")
        node.signal("doctor-sleep", "STOP")
        pid = node.pid("doctor-sleep")
        state = node.run(f"grep ^State: /proc/{pid}/status").stdout.strip()
        add("SIGSTOP pauses a process", "stopped" in state, state, "the container runtime must deliver signals")
        node.signal("doctor-sleep", "KILL")
        r = node.run("echo +3600 > /var/tmp/doctor-faketime && LD_PRELOAD=$(ls /usr/lib/*/faketime/libfaketimeMT.so.1) "
                     "FAKETIME_TIMESTAMP_FILE=/var/tmp/doctor-faketime python3 -c 'import time; "
                     "print(round(time.time()))'; date +%s")
        try:
            faked, real = (int(x) for x in r.stdout.split())
            skew = faked - real
        except ValueError:
            skew = None
        add("libfaketime skews a process's clock (clock nemesis)", skew is not None and abs(skew - 3600) < 5,
            f"+{skew} s asked +3600 s" if skew is not None else (r.stderr.strip()[:80] or r.stdout.strip()[:80]),
            "acked image build --force (the image needs libfaketime)")
        try:
            cluster._start_sshd(node)
            time.sleep(0.3)
            ssh = SSHNode(node.name, 1, node.ip, "root", cluster_key(cluster.dir).path, cluster.write_known_hosts())
            ok = ssh.run("hostname").stdout.strip() == node.name
            ssh.close()
            add("sshd in a node (SSH transport)", ok, f"root@{node.ip}")
        except ClusterError as e:
            add("sshd in a node (SSH transport)", False, str(e)[:80], "acked image build --force (needs openssh-server)")
    except ClusterError as e:
        add("start a node container", False, str(e)[:120], "see `docker ps -a`; run acked image build --force")
    finally:
        cluster.teardown()
    return rows


def cmd_doctor(args) -> int:
    started = time.monotonic()
    rows = doctor_rows(start_node=not args.skip_node)
    width = max(len(r[0]) for r in rows)
    for check, ok, detail, fix in rows:
        print(f"{'ok  ' if ok else 'FAIL'}  {check:{width}}  {detail}")
        if not ok and fix:
            print(f"      {'':{width}}  fix: {fix}")
    for line in package_lines(rows):
        print(line)
    failed = sum(not r[1] for r in rows)
    print(f"{len(rows) - failed}/{len(rows)} checks passed in {time.monotonic() - started:.1f}s")
    return 0 if not failed else 1


def package_lines(rows: list[tuple[str, bool, str, str]]) -> list[str]:
    """One line per nemesis package: whether the checks its capabilities rest on passed."""
    from nemesis.packages import PACKAGES
    passed = {check: ok for check, ok, _, _ in rows}
    out = []
    for pkg in PACKAGES.values():
        needed = [r for cap in sorted(pkg.capabilities) for r in CAPABILITY_ROWS.get(cap, ())]
        missing = [r for r in needed if not passed.get(r, False)]
        backends = ", ".join(sorted(pkg.backends))
        out.append(f"{'ok  ' if not missing else 'FAIL'}  nemesis {pkg.name} ({backends})"
                   + (f": needs {'; '.join(missing)}" if missing else ""))
    return out
