"""The replica-divergence checker as a pure function of replicas.json, and its place in results.json and `acked check`."""
import json
import subprocess
import sys

from checkers import check
from checkers.divergence import check_replicas, merge

B0 = [0, 4, 0, 0x11111111, True]
B5 = [5, 9, 0, 0x22222222, True]
B10 = [10, 14, 1, 0x33333333, True]
B10_OTHER = [10, 14, 1, 0x44444444, True]


def replica(node, batches, hw, topic="t", partition=0, broker_id=None):
    return {"node": node, "broker-id": broker_id or int(node[1:]), "topic": topic, "partition": partition,
            "high-watermark": hw, "log-start-offset": batches[0][0] if batches else 0,
            "log-end-offset": batches[-1][1] + 1 if batches else 0, "tail-bytes": 0, "batches": batches}


def data(*replicas):
    nodes = sorted({r["node"] for r in replicas})
    return {"version": 1, "topics": ["t"], "nodes": [{"node": n, "broker-id": int(n[1:]), "partitions": 1} for n in nodes],
            "replicas": list(replicas), "errors": []}


def test_identical_replicas_are_no_finding():
    same = [B0, B5, B10]
    assert check_replicas(data(replica("n1", same, 15), replica("n2", same, 15), replica("n3", same, 15))) == []


def test_a_differing_crc_below_the_high_watermark_is_one_anomaly_naming_both_nodes():
    found = check_replicas(data(replica("n1", [B0, B5, B10], 15), replica("n2", [B0, B5, B10_OTHER], 15)))
    assert len(found) == 1
    rec = found[0]
    assert rec["nodes"] == ["n1", "n2"] and (rec["topic"], rec["partition"]) == ("t", 0)
    assert rec["offsets"] == [10, 14] and rec["high-watermark"] == 15 and rec["differing-batches"] == 1
    assert rec["batches"]["n1"]["crc"] == 0x33333333 and rec["batches"]["n2"]["crc"] == 0x44444444
    assert rec["batches"]["n1"]["leader-epoch"] == 1
    assert "n1" in rec["explanation"] and "n2" in rec["explanation"] and "0x44444444" in rec["explanation"]


def test_a_difference_above_the_high_watermark_is_no_finding():
    # n2 has an uncommitted tail of another epoch from 10 on: not committed anywhere, it may still be truncated
    assert check_replicas(data(replica("n1", [B0, B5, B10], 10), replica("n2", [B0, B5, B10_OTHER], 15))) == []


def test_the_bound_is_the_lower_of_the_two_high_watermarks():
    # n1 says 15 is committed, n2 only 10: offsets 10..14 are compared with a third replica at 15
    a, b = replica("n1", [B0, B5, B10], 15), replica("n2", [B0, B5, B10], 10)
    c = replica("n3", [B0, B5, B10_OTHER], 15)
    found = check_replicas(data(a, b, c))
    assert [rec["nodes"] for rec in found] == [["n1", "n3"]]


def test_a_replica_that_is_merely_shorter_is_behind_not_divergent():
    # n2's log ends at 5 although its checkpoint says 15 (it lost unsynced writes): it holds less, not other data
    d = data(replica("n1", [B0, B5, B10], 15), replica("n2", [B0], 15))
    assert check_replicas(d) == []
    assert merge({"valid": True}, d)["replicas"]["shorter-than-high-watermark"] == [
        {"topic": "t", "partition": 0, "node": "n2", "log-end-offset": 5, "high-watermark": 15}]


def test_a_hole_below_the_high_watermark_is_divergence():
    found = check_replicas(data(replica("n1", [B0, B5, B10], 15), replica("n2", [B0, B10], 15)))
    assert len(found) == 1 and found[0]["offsets"] == [5, 9] and found[0]["batches"]["n2"] is None
    assert "n2 has no batch there" in found[0]["explanation"]


def test_a_batch_whose_bytes_fail_their_crc_differs_from_the_good_copy():
    bad = [10, 14, 1, 0x33333333, False]  # the stored CRC is the leader's, the bytes were changed
    found = check_replicas(data(replica("n1", [B0, B5, B10], 15), replica("n2", [B0, B5, bad], 15)))
    assert len(found) == 1 and found[0]["batches"]["n2"]["crc-ok"] is False
    assert "its bytes do not match" in found[0]["explanation"]


def test_each_partition_is_compared_on_its_own():
    d = data(replica("n1", [B0], 5, partition=0), replica("n2", [B0], 5, partition=1))
    assert check_replicas(d) == []  # one replica per partition: nothing to compare
    assert merge({"valid": True}, d)["replicas"]["partitions"] == 2


def test_a_missing_checkpoint_entry_compares_nothing():
    assert check_replicas(data(replica("n1", [B0, B5], None), replica("n2", [B0, [5, 9, 3, 7, True]], 10))) == []


def test_divergence_makes_valid_and_unknown_results_invalid():
    d = data(replica("n1", [B0, B10], 15), replica("n2", [B0, B10_OTHER], 15))
    res = merge({"valid": "unknown", "unknown-reason": "nothing read", "anomaly-types": ["G0"],
                 "bad-anomaly-types": [], "anomaly-counts": {"G0": 1}, "anomalies": {"G0": [{}]}}, d)
    assert res["valid"] is False and "unknown-reason" not in res
    assert res["anomaly-types"] == ["G0", "replica-divergence"]
    assert res["bad-anomaly-types"] == ["replica-divergence"]
    assert res["anomaly-counts"]["replica-divergence"] == 1
    assert res["replicas"]["divergent-pairs"] == 1


def history_file(tmp_path):
    events = [{"process": 0, "type": "invoke", "f": "send", "value": [["send", "x", 1]]},
              {"process": 0, "type": "ok", "f": "send", "value": [["send", "x", [0, 1]]]},
              {"process": 1, "type": "invoke", "f": "poll", "value": [["poll"]]},
              {"process": 1, "type": "ok", "f": "poll", "value": [["poll", {"x": [[0, 1]]}]]}]
    path = tmp_path / "history.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def test_check_merges_replicas_and_leaves_history_only_results_alone(tmp_path):
    path = history_file(tmp_path)
    plain = check(path)
    assert plain["valid"] is True and "replicas" not in plain
    d = data(replica("n1", [B0, B10], 15), replica("n2", [B0, B10_OTHER], 15))
    res = check(path, replicas=d)
    assert res["valid"] is False and res["bad-anomaly-types"] == ["replica-divergence"]


def test_an_unreadable_replicas_file_is_reported_and_the_history_verdict_stands(tmp_path):
    (tmp_path / "replicas.json").write_text("{not json")
    res = check(history_file(tmp_path), replicas=tmp_path / "replicas.json")
    assert res["valid"] is True and "cannot be read" in res["replicas"]["errors"][0]


def acked_check(*args):
    return subprocess.run([sys.executable, "-m", "checkers.cli", "check", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def test_acked_check_of_a_run_directory_reads_its_replicas_json_when_there_is_one(tmp_path):
    history_file(tmp_path)
    without = acked_check(tmp_path)
    assert without.returncode == 0 and "replicas:" not in without.stdout
    (tmp_path / "replicas.json").write_text(json.dumps(data(replica("n1", [B0, B10], 15),
                                                            replica("n2", [B0, B10_OTHER], 15))))
    proc = acked_check(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "replica-divergence: 1" in proc.stdout and "INVALID: replica-divergence" in proc.stdout
    assert "replicas: 1 partitions, 2 replicas on 2 nodes compared; 1 divergent pair(s)" in proc.stdout
    same = tmp_path / "same.json"
    same.write_text(json.dumps(data(replica("n1", [B0, B10], 15), replica("n2", [B0, B10], 15))))
    assert acked_check(tmp_path, "--replicas", same).returncode == 0

