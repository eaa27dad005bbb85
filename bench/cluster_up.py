"""Cluster bring-up and reset times (issue 6: up <= 15 s for 3 nodes, <= 25 s for 5; reset <= 5 s).

    .venv/bin/python bench/cluster_up.py [--backend docker|local] [--nodes 3 5] [--repeat 3]

Measures, with the node image already built: the wall time of `acked cluster up` (process start
to ready: ZooKeeper quorum, and when the broker registers in ZooKeeper every broker registered
and a controller elected), of `DockerCluster.reset()`, and of `acked cluster down`.
Prints one line per measurement and a median summary.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ACKED = [sys.executable, "-m", "harness.cli"]


def timed(cmd: list[str]) -> tuple[float, str]:
    """Wall time of a command, and its stderr's "ready in" line (with the phases)."""
    t = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr.strip()}")
    ready = next((line for line in p.stderr.splitlines() if "ready in" in line), "")
    return time.monotonic() - t, ready


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="docker", choices=["docker", "local"])
    ap.add_argument("--nodes", type=int, nargs="+", default=[3, 5])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-brokers", action="store_true", help="ZooKeeper only")
    args = ap.parse_args()
    brokers = not args.no_brokers
    print(f"backend={args.backend} layout: {'ZooKeeper + brokers' if brokers else 'ZooKeeper only'}")
    from clusters.base import ClusterSpec
    summary = []
    for n in args.nodes:
        ups, resets, downs = [], [], []
        for i in range(args.repeat):
            name = f"bench-{n}-{i}"
            extra = [] if brokers else ["--no-brokers"]
            up, ready = timed([*ACKED, "cluster", "up", "--backend", args.backend, "--nodes", str(n), "--name", name, *extra])
            ups.append(up)
            if args.backend == "docker":
                from clusters.docker import DockerCluster
                cluster = DockerCluster.attach(ClusterSpec(backend="docker", nodes=n, brokers=brokers), name)
                t = time.monotonic()
                cluster.reset()
                resets.append(time.monotonic() - t)
            down, _ = timed([*ACKED, "cluster", "down", "--name", name])
            downs.append(down)
            print(f"nodes={n} run={i} up={up:.2f}s reset={resets[-1] if resets else float('nan'):.2f}s down={down:.2f}s"
                  f"   [{ready.split(' ready in ')[-1]}]", flush=True)
        summary.append((n, statistics.median(ups), statistics.median(resets) if resets else None,
                        statistics.median(downs)))
    print("\nnodes  up(median)  reset(median)  down(median)")
    for n, up, reset, down in summary:
        print(f"{n:5}  {up:9.2f}s  {'%12.2fs' % reset if reset is not None else '           -'}  {down:11.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
