"""Cluster pieces that need neither docker nor processes: mirror discovery, recipe hash, cluster file, configs, CLI."""
from __future__ import annotations

import subprocess
import sys

import pytest

from clusters import image, services
from clusters.base import ClusterError, ClusterSpec
from clusters.cli import _parse_settings
from clusters.ssh import SSHCluster, read_cluster_file


def test_mirror_from_deb822_sources(tmp_path):
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n")
    assert image.host_mirror(tmp_path) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources_list(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64] http://other.example/debian bookworm main\n"
        "deb http://other.example/debian-security bookworm-security main\n")
    assert image.host_mirror(tmp_path) == "http://other.example/debian"


def test_no_mirror_is_a_clear_error(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    with pytest.raises(ClusterError, match="no Debian bookworm mirror"):
        image.host_mirror(tmp_path)


def test_recipe_hash_follows_the_package_lists(monkeypatch):
    before = image.recipe_hash()
    assert image.image_tag() == f"acked-node:{before}"
    monkeypatch.setattr(image, "DEBIAN_PACKAGES", [*image.DEBIAN_PACKAGES, "strace"])
    assert image.recipe_hash() != before
    monkeypatch.undo()
    monkeypatch.setattr(image, "NODE_PYTHON_PACKAGES", [*image.NODE_PYTHON_PACKAGES, "attrs"])
    assert image.recipe_hash() != before
    monkeypatch.undo()
    assert image.recipe_hash() == before


def test_missing_tool_error_says_how_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ClusterError, match="apt-get install debootstrap"):
        image.require_tool("debootstrap")


def test_zoo_cfg_ensemble_and_standalone():
    members = [services.ZooKeeperMember(i, f"n{i}") for i in (1, 2, 3)]
    cfg = services.zoo_cfg(members[0], members, "/data")
    assert "server.2=n2:2888:3888" in cfg and "dataDir=/data" in cfg and "admin.enableServer=false" in cfg
    assert "server." not in services.zoo_cfg(members[0], members[:1], "/data")
    assert services.connect_string(members) == "n1:2181,n2:2181,n3:2181"


def test_server_properties_use_kafka_names_and_overrides_win():
    props = services.server_properties(2, "0.0.0.0", 9092, "172.18.0.3", "/d", "n1:2181",
                                       {"min.insync.replicas": "2", "log.dirs": "/other"})
    lines = dict(line.split("=", 1) for line in props.splitlines())
    assert lines["broker.id"] == "2"
    assert lines["advertised.listeners"] == "PLAINTEXT://172.18.0.3:9092"
    assert lines["listeners"] == "PLAINTEXT://0.0.0.0:9092"
    assert lines["min.insync.replicas"] == "2" and lines["log.dirs"] == "/other"


def test_cluster_file(tmp_path):
    f = tmp_path / "hosts.toml"
    f.write_text('key = "id"\nuser = "admin"\n[[hosts]]\nname = "n1"\naddress = "10.0.0.1"\n'
                 '[[hosts]]\nname = "n2"\naddress = "10.0.0.2"\nport = 2222\n'
                 '[[hosts]]\nname = "zk"\naddress = "10.0.0.9"\nrole = "zookeeper"\n')
    cluster = SSHCluster(ClusterSpec(backend="ssh", cluster_file=f, zookeeper="dedicated"))
    assert [(n.name, n.broker_id, n.port, n.user) for n in cluster.nodes] == [("n1", 1, 22, "admin"),
                                                                                ("n2", 2, 2222, "admin")]
    assert [n.name for n in cluster.zk_nodes] == ["zk"]
    assert cluster.nodes[0].key_file == tmp_path / "id"  # relative to the cluster file
    assert cluster.bootstrap_servers() == "10.0.0.1:9092,10.0.0.2:9092"


@pytest.mark.parametrize("text, message", [
    ('key = "k"\n', "add at least one \\[\\[hosts\\]\\]"),
    ('key = "k"\n[[hosts]]\nname = "n1"\n', "lacks address"),
    ('[[hosts]]\nname = "n1"\naddress = "a"\n', "set key"),
    ('key = "k"\n[[hosts]]\nname="n1"\naddress="a"\n[[hosts]]\nname="n1"\naddress="b"\n', "unique"),
    ('key = \n', "not valid TOML"),
])
def test_bad_cluster_file_is_a_clear_error(tmp_path, text, message):
    f = tmp_path / "hosts.toml"
    f.write_text(text)
    with pytest.raises(ClusterError, match=message):
        read_cluster_file(f)


def test_missing_cluster_file_is_a_clear_error(tmp_path):
    with pytest.raises(ClusterError, match="does not exist"):
        read_cluster_file(tmp_path / "nope.toml")
    with pytest.raises(ClusterError, match="--cluster hosts.toml"):
        SSHCluster(ClusterSpec(backend="ssh"))


def test_settings_parse():
    assert _parse_settings(["min.insync.replicas=2", "a.b = c"]) == {"min.insync.replicas": "2", "a.b": "c"}
    with pytest.raises(ClusterError, match="KEY=VALUE"):
        _parse_settings(["min.insync.replicas"])


@pytest.mark.parametrize("argv", [["cluster", "--help"], ["cluster", "up", "--help"], ["cluster", "down", "--help"],
                                  ["cluster", "status", "--help"], ["cluster", "logs", "--help"],
                                  ["image", "build", "--help"], ["doctor", "--help"]])
def test_every_subcommand_has_help(argv):
    p = subprocess.run([sys.executable, "-m", "harness.cli", *argv], capture_output=True, text=True)
    assert p.returncode == 0 and "usage: acked" in p.stdout


def test_cluster_up_bad_input_is_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "harness.cli", "cluster", "up", "--backend", "local",
                        "--set", "oops", "--work-dir", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 4   # bad input, as `acked run`'s (docs/running.md, "Exit statuses")
    assert p.stderr.strip().count("\n") == 0 and "KEY=VALUE" in p.stderr
    p = subprocess.run([sys.executable, "-m", "harness.cli", "cluster", "up", "--backend", "ssh",
                        "--work-dir", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 4 and "--cluster hosts.toml" in p.stderr
