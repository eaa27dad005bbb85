"""End to end: real brokers, real ZooKeeper, real confluent-kafka clients, real faults.

The local-process backend runs on 127.0.0.1 (kill only: no network faults on the host); the docker tests are
short versions of the issue's acceptance runs on 3 containers (the full-length figures are in
docs/benchmarks.md, from bench/detection_power.py).
"""
import json
import subprocess
import sys

import docker
import pytest

from checkers.history import read_history


def nemesis_events(run_dir):
    return [e for e in read_history(run_dir / "history.jsonl") if e["process"] == "nemesis"]


def labelled_leftovers(run_id_prefix):
    """Containers and networks with our cluster label left behind by runs whose acked.run starts with the prefix."""
    client = docker.from_env()
    try:
        containers = [c.name for c in client.containers.list(all=True, filters={"label": "acked.cluster"})
                      if c.labels.get("acked.run", "").startswith(run_id_prefix)]
        networks = [n.name for n in client.networks.list(filters={"label": "acked.cluster"})
                    if n.attrs.get("Labels", {}).get("acked.run", "").startswith(run_id_prefix)]
        return containers + networks
    finally:
        client.close()


def test_local_safe_run_with_kills_is_valid_and_leaves_a_complete_run_directory(acked_run):
    result = acked_run(backend="local", nodes=3, profile="safe", nemeses=["kill"], nemesis_interval=4,
                       time_limit=20, rate=300, seed=11, final_time_limit=30)
    run = result.run_dir
    assert result.error is None, result.error
    assert result.valid is True, result.results["bad-anomaly-types"]
    assert result.exit_status == 0
    for name in ("history.jsonl", "test.json", "results.json", "index.html"):
        assert (run / name).exists()
    assert result.report == run / "index.html"
    assert {p.name for p in (run / "logs").iterdir()} >= {"n1", "n2", "n3"}
    events = nemesis_events(run)
    kills = [e for e in events if e["f"] == "kill" and e["type"] == "info"]
    assert kills and all(e["value"]["nodes"] for e in kills)
    assert [e["f"] for e in events if e["type"] == "info"][-1] == "start"  # the last killed broker was restarted
    stats = result.results["stats"]
    assert stats["acknowledged"] > 100 and stats["acknowledged-but-never-read"] == 0


def test_acked_run_cli_prints_verdict_run_directory_and_report(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--backend", "local", "--nodes", "3",
                           "--time-limit", "8", "--rate", "100", "--results-dir", str(tmp_path), "--name", "cli",
                           "--seed", "5"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("acked run cli: profile safe, 3 local nodes")
    assert "phase main" in lines  # plain progress lines when not on a terminal
    verdict = next(line for line in lines if line.startswith(("VALID", "INVALID", "UNKNOWN")))
    assert verdict.startswith("VALID: ")
    run_line = next(line for line in lines if line.startswith("run directory: "))
    run_dir = run_line.split()[2]
    assert run_dir.startswith(f"{tmp_path}/cli/") and "--seed 5" in run_line
    assert f"report: {run_dir}/index.html" in lines
    results = json.loads((tmp_path / "latest" / "results.json").read_text())
    assert results["valid"] is True


@pytest.mark.slow   # make demo's settings; make test's matrix runs safe on docker under every fault mixed
@pytest.mark.docker
def test_docker_safe_profile_survives_kills_and_partitions(acked_run):
    result = acked_run(backend="docker", nodes=3, profile="safe", nemeses=["kill", "partition"],
                       nemesis_interval=4, time_limit=40, rate=200, seed=1)
    assert result.error is None, result.error
    assert result.valid is True, (result.results["bad-anomaly-types"], result.run_dir)
    assert result.exit_status == 0
    fs = {e["f"] for e in nemesis_events(result.run_dir) if e["type"] == "info" and not e.get("error")}
    assert {"kill", "start", "start-partition", "stop-partition"} <= fs, fs
    assert result.results["stats"]["acknowledged"] > 100  # faults stall most processes most of the time
    assert labelled_leftovers(json.loads((result.run_dir / "test.json").read_text())["test"]["name"]) == []


