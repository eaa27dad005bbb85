"""A shared cluster between tests: what pytest's `acked_cluster` costs per test (issue 14: reset <= 5 s on 3 docker
nodes), beside a new cluster per test.

    .venv/bin/python bench/cluster_reuse.py [--nodes 3] [--repeat 5]

Makes the cluster as the plugin does (hosts with every capability: net, disk, clock, acks; no fault helper
running), then times, side by side in one run: `Cluster.reset()` with the default (safe) settings; `Cluster.reuse()` for a run with another profile's broker
settings (acks-1); `reuse()` for a run whose faults need the disk and acks helpers (faultfs mounted under log.dirs,
the ack proxy and its nat rule); and, for comparison, creating and starting a new cluster and removing it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    import dataclasses
    from clusters import create_cluster
    from clusters.base import ClusterSpec
    from harness.config import TestDescription
    from harness.pytest_plugin import ALL_CAPABILITIES

    work = Path(tempfile.mkdtemp(prefix="acked-bench-reuse-"))
    safe = ClusterSpec(backend="docker", nodes=args.nodes, broker_config=TestDescription().broker_config(),
                       work_dir=work, run_id="bench-reuse", capabilities=ALL_CAPABILITIES)
    acks1 = dataclasses.replace(safe, broker_config=TestDescription(profile="acks-1").broker_config(),
                                capabilities=frozenset())
    helpers = dataclasses.replace(safe, capabilities=frozenset({"net", "disk", "acks"}))
    times: dict[str, list[float]] = {"reset (safe)": [], "reuse (acks-1 settings)": [],
                                     "reuse (disk + acks helpers)": [], "new cluster (create, start, remove)": []}

    def timed(label: str, fn) -> None:
        t = time.monotonic()
        fn()
        times[label].append(time.monotonic() - t)

    cluster = create_cluster(safe)
    plain = dataclasses.replace(safe, capabilities=frozenset())   # what the plugin's cluster runs between tests
    cluster.spec = plain
    try:
        cluster.start()
        for i in range(args.repeat):
            cluster.spec = plain
            timed("reset (safe)", cluster.reset)
            cluster.clean = False
            timed("reuse (acks-1 settings)", lambda: cluster.reuse(acks1))
            timed("reuse (disk + acks helpers)", lambda: cluster.reuse(helpers))
            print(f"run {i}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items() if v), flush=True)
    finally:
        cluster.teardown()
    for i in range(min(args.repeat, 3)):
        def fresh():
            c = create_cluster(dataclasses.replace(safe, run_id="bench-fresh"))
            try:
                c.start()
            finally:
                c.teardown()
        timed("new cluster (create, start, remove)", fresh)
        print(f"fresh {i}: {times['new cluster (create, start, remove)'][-1]:.2f}s", flush=True)
    print(f"\n{args.nodes} docker nodes, medians:")
    for label, v in times.items():
        print(f"  {label:40s} {statistics.median(v):6.2f} s  (min {min(v):.2f}, max {max(v):.2f}, n={len(v)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
