"""Shared fixtures: real ZooKeeper and local-process clusters, always removed, also when a test fails."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from clusters.base import ClusterSpec

from clusters import local
from clusters.local import REPO_ROOT, LocalCluster, LocalZooKeeper, new_name

#: where fixtures keep cluster directories; a killed run's leftovers there are reaped by the next start
CLUSTERS_DIR = Path(os.environ.get("ACKED_CLUSTERS_DIR", REPO_ROOT / "results" / ".clusters"))


@pytest.fixture
def zookeeper():
    """A real single-member ZooKeeper on a free 127.0.0.1 port; `.connect_string` for kazoo or a broker."""
    zk = LocalZooKeeper(CLUSTERS_DIR / new_name("zk"), members=1)
    try:
        zk.start(timeout=30)
        yield zk
    finally:
        zk.teardown()


@pytest.fixture
def local_cluster_factory(request):
    """Call with ClusterSpec fields (nodes=3, broker_config={...}, brokers=True); returns a started LocalCluster.

    Every cluster made is torn down at the end of the test, whatever happened.
    """
    made: list[LocalCluster] = []

    def make(**fields) -> LocalCluster:
        fields.setdefault("backend", "local")
        fields.setdefault("work_dir", CLUSTERS_DIR)
        fields.setdefault("run_id", "pytest")
        cluster = LocalCluster(ClusterSpec(**fields), name=new_name(request.node.name[:24]))
        made.append(cluster)
        cluster.start()
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.teardown()


def wait_until(pred, timeout: float = 10.0, every: float = 0.1) -> bool:
    """Poll `pred` until it is true or `timeout` seconds pass; the last answer (tests assert on it)."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return bool(pred())
