"""Shared fixtures: real ZooKeeper and local-process clusters, always removed, also when a test fails."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from hypothesis import settings

from clusters.base import ClusterSpec

from clusters import local
from clusters.local import REPO_ROOT, LocalCluster, LocalZooKeeper, new_name

# `make mutation` (issue 19) runs the rule tests once per mutant: ACKED_HYPOTHESIS_PROFILE=mutation gives them a small,
# derandomized budget (the same examples every run, so a killed mutant stays killed).  `make test` sets nothing and
# keeps each test's own max_examples.
settings.register_profile("mutation", max_examples=50, derandomize=True, database=None, deadline=None)
MUTATION_RUN = os.environ.get("ACKED_HYPOTHESIS_PROFILE") == "mutation"
if MUTATION_RUN:
    settings.load_profile("mutation")


def examples(n: int) -> int:
    """A test's max_examples: `n`, or the mutation profile's smaller budget in `make mutation`."""
    return min(n, settings.get_profile("mutation").max_examples) if MUTATION_RUN else n


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs `-n 2 --dist loadgroup`): every docker test in one group, so one
    worker runs them one after another as before (one docker cluster at a time on two cores, the matrix's shared
    cluster kept), and each other module in a group of its own, so a module's shared fixtures start once. The
    suite is wall-clock bound (runs of fixed length, cluster starts, fault windows: 6.5 CPU minutes in a
    31-minute make test), so the local and unit tests run beside the docker ones."""
    if not getattr(config.option, "numprocesses", None):
        return
    for item in items:
        group = "docker" if item.get_closest_marker("docker") else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))


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


def wait_until(pred, timeout: float = 10.0, every: float = 0.1, what: str | None = None):
    """Poll `pred` until it answers something true or `timeout` seconds pass, and return its last answer
    (tests assert on it, or use the value it found).  With `what`, a timeout raises AssertionError naming
    what was awaited and the last answer."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        answer = pred()
        if answer or time.monotonic() >= deadline:
            break
        time.sleep(every)
    if not answer and what is not None:
        raise AssertionError(f"{what}: not within {timeout}s; last answer {answer!r}")
    return answer


@contextlib.contextmanager
def docker_nemesis_cluster(tmp_path_factory, run_id: str, capabilities: set[str]):
    """Three docker nodes for the fault tests of one module (the ISR shrinks after 3 s of lag, a killed broker's
    session expires after 6 s), removed at the end whatever happened."""
    from clusters import create_cluster
    cluster = create_cluster(ClusterSpec(
        backend="docker", nodes=3, work_dir=tmp_path_factory.mktemp(run_id), run_id=run_id,
        capabilities=frozenset(capabilities),
        broker_config={"replica.lag.time.max.ms": "3000", "zookeeper.session.timeout.ms": "6000",
                       "default.replication.factor": "3", "min.insync.replicas": "2"}))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.teardown()


@contextlib.contextmanager
def key_topics(cluster, key: str):
    """The queue workload's Topics with `key`'s partition created and its ISR full."""
    from workloads.queue import KeyMap, Topics
    topics = Topics(cluster.bootstrap_servers(), KeyMap(8), 3, {"min.insync.replicas": "2"})
    try:
        topics.ensure(key)
        assert wait_until(lambda: len(topics.isr_of(key)) == 3, 30), topics.isr_of(key)
        yield topics
    finally:
        topics.close()


@contextlib.contextmanager
def ssh_hosts(tmp_path, run_id: str):
    """Three docker nodes treated as real hosts (sshd, the cluster's key, a known_hosts file), removed at the end
    whatever happened. Yields (hosts, cluster_file): cluster_file(name="hosts.toml", broker=None) writes an ssh
    cluster file naming them, with a [broker] table of the given keys when asked."""
    import json
    from clusters.docker import DockerCluster
    from clusters.ssh import cluster_key
    hosts = DockerCluster(ClusterSpec(backend="docker", nodes=3, brokers=False, work_dir=CLUSTERS_DIR, run_id=run_id))
    try:
        hosts.create()
        hosts.start_sshd()
        known = hosts.write_known_hosts(tmp_path / "known_hosts")
        key = cluster_key(hosts.dir)

        def cluster_file(name: str = "hosts.toml", broker: dict | None = None) -> Path:
            lines = ['user = "root"', f'key = "{key.path}"', f'known_hosts = "{known}"', ""]
            if broker:   # TOML strings and integers are JSON's
                lines += ["[broker]", *(f"{k} = {json.dumps(v)}" for k, v in broker.items()), ""]
            for n in hosts.nodes:
                lines += ["[[hosts]]", f'name = "{n.name}"', f'address = "{n.ip}"', ""]
            path = tmp_path / name
            path.write_text("\n".join(lines))
            return path
        yield hosts, cluster_file
    finally:
        hosts.teardown()
