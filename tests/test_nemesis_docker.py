"""The partition and kill faults on real docker nodes (ZooKeeper only: no broker needed for the network part)."""
import random

import pytest

from clusters import create_cluster
from clusters.base import ClusterSpec
from nemesis.faults import CHAIN, PartitionFault

pytestmark = pytest.mark.docker

PROBE = ("python3 -c \"import socket,sys; s=socket.socket(); s.settimeout(2); "
         "sys.exit(0 if s.connect_ex(('{ip}', 2181)) == 0 else 1)\"")


def reachable(src, dst) -> bool:
    return src.run(PROBE.format(ip=dst.ip), timeout=10).ok


@pytest.fixture
def zk_cluster(tmp_path):
    cluster = create_cluster(ClusterSpec(backend="docker", nodes=3, brokers=False, work_dir=tmp_path,
                                         run_id="test-nemesis", capabilities=frozenset({"net"})))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.teardown()


def test_partition_cuts_exactly_the_grudge_and_heal_restores_it(zk_cluster):
    nodes = {n.name: n for n in zk_cluster.nodes}
    fault = PartitionFault(zk_cluster)
    value = fault.start(random.Random(1))
    try:
        assert fault.active
        cut = {tuple(e) for e in value["cut"]}
        assert sorted(len(g) for g in value["groups"]) == [1, 2]
        for a in nodes:
            for b in nodes:
                if a != b:
                    blocked = (min(a, b), max(a, b)) in cut
                    assert reachable(nodes[a], nodes[b]) is not blocked, (a, b, cut)
    finally:
        fault.stop()
    assert not fault.active
    for a in nodes:
        for b in nodes:
            if a != b:
                assert reachable(nodes[a], nodes[b])
        # healing flushed our chain and left the jump into it; no rule of anyone else was touched
        rules = nodes[a].run(f"iptables -S {CHAIN}", timeout=10)
        assert rules.ok and rules.stdout.strip() == f"-N {CHAIN}"
