"""The runner and the run store without a cluster: failure paths still leave a complete run directory."""
import json
import os

import pytest

from clusters.base import ClusterError
from harness.config import TestDescription
from harness.runner import (EXIT_HARNESS_FAILED, EXIT_INVALID, EXIT_UNKNOWN, EXIT_VALID, make_run_dir, run_test,
                            verdict_exit_status)
from workloads.queue import ConfluentClient, KeyMap, classify_send_error, kafka_python_config


def test_run_store_layout_and_latest_symlink(tmp_path):
    a = make_run_dir(tmp_path, "t1")
    b = make_run_dir(tmp_path, "t2")
    assert a.parent.name == "t1" and (a / "logs").is_dir()
    assert (tmp_path / "latest").resolve() == b.resolve()
    assert not os.path.isabs(os.readlink(tmp_path / "latest"))  # relative: the store can be moved


def test_exit_status_of_verdicts():
    assert verdict_exit_status(True, None) == EXIT_VALID
    assert verdict_exit_status(False, None) == EXIT_INVALID
    assert verdict_exit_status(False, "teardown failed") == EXIT_INVALID
    assert verdict_exit_status("unknown", None) == EXIT_UNKNOWN
    assert verdict_exit_status(True, "drain failed") == EXIT_HARNESS_FAILED
    assert verdict_exit_status(None, "setup failed") == EXIT_HARNESS_FAILED


@pytest.mark.parametrize("exc", [ClusterError("no docker here: install docker"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_setup_still_writes_the_run_directory(tmp_path, exc):
    def factory(spec):
        assert spec.backend == "local" and spec.nodes == 3 and spec.broker_config["min.insync.replicas"] == "2"
        raise exc
    result = run_test(TestDescription(backend="local", results_dir=str(tmp_path), seed=3), cluster_factory=factory)
    assert result.exit_status == EXIT_HARNESS_FAILED
    run = result.run_dir
    assert (run / "history.jsonl").exists()
    results = json.loads((run / "results.json").read_text())
    assert results["harness"]["error"]
    assert results["harness"]["interrupted"] is isinstance(exc, KeyboardInterrupt)
    test = json.loads((run / "test.json").read_text())
    assert test["seed"] == 3 and test["test"]["effective"]["producer"]["acks"] == "all"
    assert test["versions"]["confluent-kafka"].count(".") == 2  # "2.16.1", not the first character of it


def test_send_errors_that_prove_nothing_was_written_fail_and_others_are_info():
    assert classify_send_error("MSG_SIZE_TOO_LARGE", 2147483647) == "fail"
    assert classify_send_error("_QUEUE_FULL", 5) == "fail"
    assert classify_send_error("NOT_ENOUGH_REPLICAS", 0) == "fail"
    # after a retry, an earlier attempt may have been appended
    assert classify_send_error("NOT_ENOUGH_REPLICAS", 3) == "info"
    assert classify_send_error("NOT_ENOUGH_REPLICAS_AFTER_APPEND", 0) == "info"
    assert classify_send_error("_MSG_TIMED_OUT", 0) == "info"
    assert classify_send_error("REQUEST_TIMED_OUT", 0) == "info"


def test_keymap_round_trip():
    km = KeyMap(8)
    for k in range(100):
        t, p = km.topic_partition(str(k))
        assert km.key_of(t, p) == str(k)
    assert km.key_of("other", 0) is None


def test_kafka_python_config_names():
    c = kafka_python_config({"acks": "all", "enable.idempotence": "true", "max.in.flight.requests.per.connection": "5",
                             "retries": "3"})
    assert c == {"acks": "all", "enable_idempotence": True, "max_in_flight_requests_per_connection": 5, "retries": 3}
    assert kafka_python_config({"acks": "1"})["acks"] == 1


def test_a_send_to_an_unreachable_cluster_times_out_as_info():
    # the real librdkafka producer, nothing listening: the op must not claim the write failed
    client = ConfluentClient(process=0, bootstrap="127.0.0.1:1", keymap=KeyMap(8), topics=None,
                             producer_config={"acks": "all"}, consumer_config={}, group_id="g", op_timeout=1.0)
    try:
        c = client.invoke({"process": 0, "f": "send", "value": [["send", "3", 42]]})
    finally:
        client.close()
    assert c["type"] == "info" and c["value"] == [["send", "3", [None, 42]]] and c["error"] == "timeout"


def test_the_history_starts_with_the_run_op_and_a_cut_one_says_so(tmp_path):
    """Setup fails: the history holds only the run op's invocation, so the checker calls it cut."""
    from checkers.history import RUN_INVOKE

    def factory(spec):
        raise ClusterError("no cluster in this test")
    result = run_test(TestDescription(backend="local", results_dir=str(tmp_path), seed=3), cluster_factory=factory)
    lines = [json.loads(x) for x in (result.run_dir / "history.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and {k: lines[0][k] for k in RUN_INVOKE} == RUN_INVOKE and lines[0]["index"] == 0
    assert result.results["history-cut"] is True


class _Gen:
    all_keys: list = []
    processes = [0, 1]


def _drain_runner(tmp_path):
    from checkers.history import HistoryWriter, RUN_INVOKE
    from harness.runner import Runner
    r = Runner(TestDescription(backend="local", results_dir=str(tmp_path), seed=3))
    r.workload.generator = _Gen()
    r.history = HistoryWriter(tmp_path / "history.jsonl")
    r.history.append(RUN_INVOKE)
    return r


def test_a_finished_drain_completes_the_run_op(tmp_path):
    r = _drain_runner(tmp_path)
    r._drain()  # nothing was written: nothing to read, the drain is done at once
    r.history.close()
    last = json.loads((tmp_path / "history.jsonl").read_text().splitlines()[-1])
    assert (last["process"], last["type"], last["f"]) == ("harness", "ok", "run")
    assert last["value"] == {"final-drain": "complete", "stopped": "nothing-written", "keys": 0}


def test_a_failed_drain_leaves_the_run_op_open(tmp_path, monkeypatch):
    r = _drain_runner(tmp_path)

    def broken(append):
        raise RuntimeError("final drain could not assign its keys")
    monkeypatch.setattr(r.workload, "final", broken)
    with pytest.raises(RuntimeError):
        r._drain()
    r.history.close()
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 1
