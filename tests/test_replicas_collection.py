"""Replica logs read from the brokers' segment files and compared: broker/dump_log.py, clusters/replicas.py,
checkers/divergence.py and the runner's replicas phase, on real files, real brokers and a real ZooKeeper.

A replica made to diverge on purpose (a follower's record rewritten while its broker is down) is found by
reading the logs, although no client ever reads from that follower; a short harness run under kills leaves a
replicas.json whose replicas agree.
"""
import json
import struct
import subprocess
import sys

import crc32c

from broker import records
from broker.core import HW_CHECKPOINT
from broker.log import Log, read_checkpoint, segment_bases, segment_path, write_checkpoint
from checkers.divergence import check_replicas, merge
from clusters.base import ClusterSpec
from clusters.local import REPO_ROOT, LocalCluster
from conftest import wait_until
from harness.config import TestDescription
from harness.runner import Runner, run_test
from replicated_cluster import make_cluster  # noqa: F401 -- the fixture
from workloads.queue import KeyMap, Topics


def append_batches(log: Log, values_per_batch: list[list[bytes]], epoch: int = 0) -> None:
    for values in values_per_batch:
        base = log.log_end_offset
        batch = bytearray(records.build_batch(values))
        records.stamp(batch, 0, base, epoch)
        log.append(bytes(batch), base + len(values), [(0, base, len(batch))], len(values))


def dump(log_dir, *topics) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "broker.dump_log", str(log_dir), *topics], capture_output=True,
                          text=True, timeout=60, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_dump_log_prints_each_batch_with_its_epoch_and_crc_and_the_checkpointed_high_watermark(tmp_path):
    log = Log(str(tmp_path / "t-0"))
    append_batches(log, [[b"a", b"b"], [b"c"]], epoch=0)
    append_batches(log, [[b"d", b"e", b"f"]], epoch=3)
    log.close()
    Log(str(tmp_path / "__consumer_offsets-0")).close()
    write_checkpoint(str(tmp_path / HW_CHECKPOINT), {("t", 0): 3})
    [line] = dump(tmp_path)  # internal topics only when asked for
    assert (line["topic"], line["partition"], line["high-watermark"]) == ("t", 0, 3)
    assert (line["log-start-offset"], line["log-end-offset"], line["tail-bytes"]) == (0, 6, 0)
    assert [b[:3] for b in line["batches"]] == [[0, 1, 0], [2, 2, 0], [3, 5, 3]]
    assert all(b[4] is True for b in line["batches"])
    seg = segment_path(str(tmp_path / "t-0"), 0)
    data = open(seg, "rb").read()
    assert line["batches"][0][3] == records.parse_header(data, 0).crc


def test_dump_log_shows_a_corrupt_batch_and_a_torn_tail_without_touching_the_files(tmp_path):
    log = Log(str(tmp_path / "t-0"))
    append_batches(log, [[b"one"], [b"two"], [b"three"]])
    log.close()
    seg = segment_path(str(tmp_path / "t-0"), 0)
    data = bytearray(open(seg, "rb").read())
    data[data.index(b"two")] = ord("T")           # the middle batch's bytes no longer match its CRC
    data += b"\x00" * 20                           # and a torn write at the end
    open(seg, "wb").write(data)
    [line] = dump(tmp_path, "t")
    assert [b[0] for b in line["batches"]] == [0, 1, 2] and [b[4] for b in line["batches"]] == [True, False, True]
    assert line["tail-bytes"] == 20 and line["high-watermark"] is None
    assert open(seg, "rb").read() == bytes(data)  # read-only: the broker's recovery would have cut both


def test_dump_log_of_a_missing_directory_is_one_line_and_status_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "broker.dump_log", str(tmp_path / "nope")], capture_output=True,
                          text=True, timeout=60, cwd=REPO_ROOT)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "cannot be read" in proc.stderr


def rewrite_record(segment: str, old: bytes, new: bytes, fix_crc: bool) -> int:
    """Replace a record's value bytes in a segment file; with fix_crc the batch's CRC-32C is recomputed (a
    valid-looking batch the broker's recovery keeps), without it the batch is corrupt. Returns its base offset."""
    data = bytearray(open(segment, "rb").read())
    for pos, h, _ in records.scan_batches(data):
        at = data.find(old, pos + records.HEADER_SIZE, pos + h.size)
        if at >= 0:
            data[at:at + len(old)] = new
            if fix_crc:
                struct.pack_into(">I", data, pos + 17, crc32c.crc32c(bytes(data[pos + records.CRC_START:pos + h.size])))
            open(segment, "wb").write(data)
            return h.base_offset
    raise AssertionError(f"{old!r} is not in {segment}")


def test_a_follower_made_to_diverge_is_found_in_the_logs_though_no_client_reads_it(make_cluster):  # noqa: F811
    c = make_cluster(**{"replica.high.watermark.checkpoint.interval.ms": "200"})
    topics = ["rewritten", "corrupted"]
    leaders = {t: c.create_topic(t)["leader"] for t in topics}
    values = [f"value-{i:03d}" for i in range(20)]
    for t in topics:
        assert len(c.produce(values, acks="all", topic=t)) == 20
    follower = next(b for b in (1, 2, 3) if b not in leaders.values())
    node = c.node(follower)
    data_dir = c.cluster.data_dir(node)
    wait_until(lambda: all(read_checkpoint(str(data_dir / HW_CHECKPOINT)).get((t, 0)) == 20 for t in topics), 20,
               what=f"broker {follower}'s checkpoint says both partitions are committed up to 20")
    assert check_replicas(c.cluster.collect_replicas(topics)) == []

    c.cluster.stop_broker(node, "TERM")
    c.unavailable.add(follower)
    segment = lambda t: segment_path(str(data_dir / f"{t}-0"), segment_bases(str(data_dir / f"{t}-0"))[0])  # noqa: E731
    assert rewrite_record(segment("rewritten"), b"value-010", b"VALUE-010", fix_crc=True) == 10
    assert rewrite_record(segment("corrupted"), b"value-012", b"VALUE-012", fix_crc=False) == 12

    data = c.cluster.collect_replicas(topics)
    assert data["errors"] == [] and {n["node"] for n in data["nodes"]} == {"n1", "n2", "n3"}
    res = merge({"valid": True, "anomaly-types": [], "bad-anomaly-types": [], "anomalies": {}}, data)
    assert res["valid"] is False and res["bad-anomaly-types"] == ["replica-divergence"]
    found = res["anomalies"]["replica-divergence"]
    assert {(r["topic"], tuple(r["offsets"])) for r in found} == {("rewritten", (10, 10)), ("corrupted", (12, 12))}
    assert all(node.name in r["nodes"] for r in found) and len(found) == 4  # against each of the two others
    corrupt = next(r for r in found if r["topic"] == "corrupted")
    assert corrupt["batches"][node.name]["crc-ok"] is False
    rewritten = next(r for r in found if r["topic"] == "rewritten")
    ours, theirs = (rewritten["batches"][n] for n in (node.name, next(n for n in rewritten["nodes"] if n != node.name)))
    assert ours["crc-ok"] and ours["crc"] != theirs["crc"] and ours["leader-epoch"] == theirs["leader-epoch"]

    # back up: recovery cuts the corrupt batch (and what follows) and the follower fetches it again; the
    # rewritten batch is valid, so the broker keeps it, and only reading the logs shows it
    c.restart(follower)
    c.wait_until_registered(follower)
    for t in topics:
        c.wait_state(lambda s: len(s["isr"]) == 3, f"broker {follower} back in the ISR of {t}", timeout=30, topic=t)
    found = check_replicas(c.cluster.collect_replicas(topics))
    assert {r["topic"] for r in found} == {"rewritten"} and all(node.name in r["nodes"] for r in found)


def test_a_short_local_run_under_kills_leaves_replicas_json_without_divergence(tmp_path):
    result = run_test(TestDescription(name="replicas", backend="local", nodes=3, profile="safe", nemeses=["kill"],
                                      nemesis_interval=3, time_limit=10, final_time_limit=30, rate=100, seed=7,
                                      results_dir=str(tmp_path)))
    run = result.run_dir
    data = json.loads((run / "replicas.json").read_text())
    assert data["errors"] == [], data["errors"]
    assert {n["node"] for n in data["nodes"]} == {"n1", "n2", "n3"} and data["topics"]
    assert {r["topic"] for r in data["replicas"]} == set(data["topics"])
    assert any(r["batches"] for r in data["replicas"])
    assert "replica-divergence" not in result.results["anomaly-types"], result.results["anomalies"]
    summary = result.results["replicas"]
    assert summary["divergent-pairs"] == 0 and summary["partitions"] > 0 and summary["errors"] == []
    assert not [e for e in result.results["harness"]["errors"] if "replicas" in e]



def test_logs_that_cannot_be_read_are_harness_error_lines_not_a_failed_run(tmp_path):
    # a real local cluster that was never started: its nodes have no log directories to read
    cluster = LocalCluster(ClusterSpec(backend="local", nodes=2, work_dir=tmp_path / "clusters"), name="unstarted")
    runner = Runner(TestDescription(backend="local", results_dir=str(tmp_path), seed=3), cluster=cluster)
    runner.run_dir = tmp_path
    runner.workload.topics = Topics("127.0.0.1:1", KeyMap(8), 3, {})
    runner.workload.topics._created.add(0)
    runner._replicas()
    data = json.loads((tmp_path / "replicas.json").read_text())
    assert data["topics"] == ["acked-queue-0"] and data["replicas"] == [] and len(data["errors"]) == 2
    assert len(runner.errors) == 2 and all("cannot be read" in e for e in runner.errors), runner.errors
    assert merge({"valid": True}, data)["replicas"]["errors"] == data["errors"]
