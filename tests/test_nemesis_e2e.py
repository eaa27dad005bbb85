"""End to end under the fault catalogue: what each unsafe profile loses under the fault that exposes it,
`safe` valid under every fault mixed, and an exact replay of a run's faults.

Short main phases here (`make test`); the 60 s figures, ten runs each, are bench/detection_power.py's
(docs/benchmarks.md), and the nightly suite runs `safe` under each family alone.
"""
import pytest

from checkers.history import read_history
from harness.config import from_dict
from nemesis.packages import BEYOND_SAFE, PACKAGES, package_of_f

#: every fault family of the catalogue that safe claims to survive, mixed
ALL_FAULTS = [name for name in PACKAGES if name not in BEYOND_SAFE]


def nemesis_ops(run_dir, kind="info"):
    return [e for e in read_history(run_dir / "history.jsonl") if e["process"] == "nemesis" and e["type"] == kind]


def started_packages(run_dir) -> set[str]:
    out = set()
    for e in nemesis_ops(run_dir):
        owner = package_of_f(e["f"])
        if owner and owner[1] == "start" and not e.get("error"):
            out.add(owner[0].name)
    return out


@pytest.mark.docker
def test_unclean_election_under_isolate_leader_then_kill_loses_acknowledged_writes(acked_run):
    result = acked_run(backend="docker", nodes=3, profile="unclean-election", nemeses=["isolate-leader-then-kill"],
                       time_limit=35, rate=200, seed=3)
    steps = [e["value"] for e in nemesis_ops(result.run_dir) if e["f"] == "isolate-leader-then-kill"]
    assert steps, "the sequence never ran"
    # the talk's path, as recorded: the ISR shrank to the leader alone, it was killed, a stale follower elected
    assert any(s["isr-shrunk-to-leader"] and s["isr-before-kill"] == [s["leader"]] and s["elected"] not in
               (None, s["leader"]) for s in steps), steps
    assert result.valid is False, result.run_dir
    # acknowledged writes gone: lost-write when a later read passed their offsets, unseen when the key was not
    # written again and the completed final drain never found them (60 s runs show lost-write: the bench)
    assert {"lost-write", "unseen"} & set(result.results["bad-anomaly-types"]), result.results["bad-anomaly-types"]


@pytest.mark.docker
def test_acks_1_under_a_paused_leader_loses_acknowledged_writes(acked_run):
    result = acked_run(backend="docker", nodes=3, profile="acks-1", nemeses=["pause:leader"], time_limit=30,
                       rate=300, seed=4)
    pauses = [e["value"] for e in nemesis_ops(result.run_dir) if e["f"] == "pause"]
    assert pauses and all(p["target"] == "leader" and p["nodes"] == [f"n{p['leader']}"] for p in pauses if "leader" in p)
    assert result.valid is False, result.run_dir
    assert "lost-write" in result.results["bad-anomaly-types"]


@pytest.mark.docker
def test_no_idempotence_under_lost_produce_acks_stores_retried_writes_twice(acked_run):
    """The talk's return path: the broker applied the write, its ack was lost, the producer retried."""
    result = acked_run(backend="docker", nodes=3, profile="no-idempotence", nemeses=["lose-acks:produce"],
                       nemesis_interval=4, time_limit=25, rate=200, seed=10)
    losses = [e["value"] for e in nemesis_ops(result.run_dir) if e["f"] == "stop-lose-acks"]
    assert any(n["dropped"].get("Produce") for v in losses for n in v["responses-lost"].values()), losses
    assert result.valid is False, result.run_dir
    assert "duplicate" in result.results["bad-anomaly-types"], result.results["bad-anomaly-types"]


@pytest.mark.docker
def test_min_isr_1_loses_what_its_isr_of_one_acknowledged_when_that_replica_loses_power(acked_run):
    # 50 s: the sequence takes ~25 s (shrink, writes, power loss, a 12 s wait for an election that min-isr-1
    # with unclean election off never holds), and the keys must be written and read past the lost offsets after
    # the old leader returns, or the loss shows only as unseen
    result = acked_run(backend="docker", nodes=3, profile="min-isr-1", nemeses=["isolate-leader-then-lose-unfsynced"],
                       time_limit=50, rate=200, seed=11)
    steps = [e["value"] for e in nemesis_ops(result.run_dir) if e["f"] == "isolate-leader-then-lose-unfsynced"]
    assert any(s["isr-shrunk-to-leader"] and s["lost"][s["killed"]]["bytes"] > 0 for s in steps), steps
    assert result.valid is False, result.run_dir
    assert "lost-write" in result.results["bad-anomaly-types"], result.results["bad-anomaly-types"]


@pytest.mark.docker
def test_acks_1_loses_acknowledged_writes_when_the_leaders_disk_fails(acked_run):
    """A failed disk halts the broker at once (Kafka's log dir failure), as a kill does: what the leader alone
    acknowledged under acks=1 is gone when a follower takes over."""
    result = acked_run(backend="docker", nodes=3, profile="acks-1", nemeses=["disk-errors:leader"], nemesis_interval=4,
                       time_limit=30, rate=300, seed=13)
    healed = [e["value"] for e in nemesis_ops(result.run_dir) if e["f"] == "stop-disk-errors"]
    assert any(v["restarted"] for v in healed), healed       # the errors made a broker halt; heal restarted it
    assert result.valid is False, result.run_dir
    assert "lost-write" in result.results["bad-anomaly-types"], result.results["bad-anomaly-types"]


@pytest.mark.docker
def test_safe_is_valid_under_every_fault_of_the_catalogue_mixed(acked_run):
    result = acked_run(backend="docker", nodes=3, profile="safe", nemeses=ALL_FAULTS, nemesis_interval=4,
                       time_limit=45, rate=200, seed=5)
    assert result.error is None, result.error
    assert result.valid is True, (result.results["bad-anomaly-types"], result.run_dir)
    assert len(started_packages(result.run_dir)) >= 5, started_packages(result.run_dir)
    assert result.results["harness"]["nemesis-errors"] == []


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.parametrize("fault", ALL_FAULTS)
def test_safe_is_valid_under_each_fault_family_alone(acked_run, fault):
    result = acked_run(backend="docker", nodes=3, profile="safe", nemeses=[fault], time_limit=60, rate=200, seed=6)
    assert result.error is None, result.error
    assert result.valid is True, (result.results["bad-anomaly-types"], result.run_dir)
    assert fault in started_packages(result.run_dir)


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
    import os
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
