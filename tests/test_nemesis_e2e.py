"""End to end beyond the matrix: what `safe` does not survive (correlated power loss), an exact replay of a run's
faults, and a SIGTERM mid-run.

What each unsafe profile loses under the fault that exposes it, and `safe` under every fault, are cells of the
reliability matrix (tests/chaos/test_reliability_matrix.py); the 60 s figures, ten runs each, are
bench/detection_power.py's (docs/benchmarks.md).
"""
import pytest

from harness.config import from_dict


@pytest.mark.slow
@pytest.mark.docker
def test_safe_loses_acknowledged_writes_when_every_replica_of_a_key_loses_power_unless_each_message_is_fsynced(acked_run):
    """Kafka acknowledges before fsync: its durability rests on replication. A power loss of every replica at once
    takes what no disk held yet; with log.flush.interval.messages=1 every replica fsyncs before it acknowledges."""
    lost = acked_run(backend="docker", nodes=3, profile="safe", nemeses=["lose-unfsynced:replicas"], time_limit=60,
                     rate=200, seed=12)
    assert lost.valid is False and "lost-write" in lost.results["bad-anomaly-types"], lost.run_dir
    fsynced = acked_run(backend="docker", nodes=3, profile="safe", nemeses=["lose-unfsynced:replicas"], time_limit=60,
                        rate=200, seed=12, broker={"log.flush.interval.messages": "1"})
    assert fsynced.error is None and fsynced.valid is True, (fsynced.results["bad-anomaly-types"], fsynced.run_dir)


@pytest.mark.slow
@pytest.mark.docker
def test_safe_loses_acknowledged_writes_when_its_last_in_sync_replica_loses_power(acked_run):
    """Beyond the talk: min.insync.replicas=2 keeps an ISR of one from acknowledging, not from being elected. When
    the ISR has shrunk to the leader and the leader loses power, it comes back without its unfsynced tail, is the
    only replica that may lead, and the followers truncate to it (Kafka's ZooKeeper-era rule; KIP-966 fixes it)."""
    result = acked_run(backend="docker", nodes=3, profile="safe", nemeses=["isolate-leader-then-lose-unfsynced"],
                       time_limit=60, rate=200, seed=1)
    assert result.valid is False and "lost-write" in result.results["bad-anomaly-types"], result.run_dir


def test_a_replayed_run_repeats_the_same_fault_ops_on_the_same_nodes_at_the_same_times(acked_run):
    first = acked_run(backend="local", nodes=3, profile="safe", nemeses=["kill:one", "pause:one"], nemesis_interval=2,
                      time_limit=12, rate=100, seed=8, final_time_limit=30)
    assert first.error is None, first.error
    again = acked_run(description=from_dict({"replay": str(first.run_dir)}, from_dict(
        {"backend": "local", "nodes": 3, "profile": "safe", "nemesis": ["kill:one", "pause:one"], "nemesis_interval": 2,
         "time_limit": 12, "rate": 100, "seed": 8, "final_time_limit": 30})))
    assert again.error is None, again.error
    import orjson
    ops = [orjson.loads((r.run_dir / "nemesis.json").read_bytes())["ops"] for r in (first, again)]
    assert len(ops[0]) >= 6 and [o["f"] for o in ops[0]] == [o["f"] for o in ops[1]]
    for a, b in zip(*ops):
        assert abs(a["time"] - b["time"]) <= 1.0, (a, b)
        if a["f"] in ("kill", "pause"):
            assert a["resolved"]["nodes"] == b["resolved"]["nodes"], (a, b)   # random targets: the same nodes
    assert orjson.loads((again.run_dir / "nemesis.json").read_bytes())["replayed-from"] == str(first.run_dir)


def test_sigterm_mid_run_heals_the_faults_drains_and_tears_down(tmp_path):
    """A CI job's timeout sends SIGTERM: the run heals (a paused broker is continued, a killed one restarted,
    both recorded), still drains and checks, and leaves no broker or ZooKeeper process behind."""
    import signal
    import subprocess
    import sys
    import time
    import orjson
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "--backend", "local", "--nodes", "3",
                             "--nemesis", "kill:one,pause:one", "--nemesis-interval", "2", "--time-limit", "60",
                             "--rate", "100", "--seed", "9", "--results-dir", str(tmp_path), "--name", "term",
                             "--plain"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        history = None
        while time.monotonic() < deadline:
            runs = list((tmp_path / "term").glob("*/history.jsonl"))
            if runs and b'"nemesis","type":"info"' in runs[0].read_bytes():
                history = runs[0]
                break
            time.sleep(0.5)
        assert history is not None, "no fault was recorded in time"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, out          # interrupted: a harness failure, not a verdict on the history
    results = orjson.loads((history.parent / "results.json").read_bytes())
    assert results["harness"]["interrupted"] is True and results["valid"] is True, out
    ops = orjson.loads((history.parent / "nemesis.json").read_bytes())["ops"]
    starts = {"kill": "start", "pause": "resume"}
    for f, stop in starts.items():
        if any(o["f"] == f for o in ops):
            assert [o["f"] for o in ops if o["f"] in (f, stop)][-1] == stop, ops   # the last one was healed
    cluster_dirs = list((tmp_path / ".clusters").glob("*"))
    assert cluster_dirs == [] or all(not any(d.iterdir()) for d in cluster_dirs)
    pids = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert pids == [], pids                   # every broker and ZooKeeper of the run is gone
