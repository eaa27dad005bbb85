"""Without docker: a whole harness run on the local-process backend that must come out INVALID.

The local backend runs brokers as processes on 127.0.0.1 (kill and pause faults only), enough for the
talk's first lesson: with acks=1 the leader acknowledges alone, and followers of the acks-1 profile fetch
in batches up to 500 ms apart, so killing the leader loses acknowledged writes.  The checker must find
them (lost-write) and the run must end INVALID with exit status 1, as `acked run` reports it.
"""
import pytest

pytestmark = pytest.mark.timeout(300)


def test_a_local_acks_1_run_with_leader_kills_is_invalid_with_lost_writes(acked_run):
    result = acked_run(backend="local", nodes=3, profile="acks-1", nemeses=["kill"], kill_target="leader",
                       nemesis_interval=4, time_limit=20, rate=300, seed=2, final_time_limit=30)
    assert result.error is None, result.error
    assert result.valid is False, result.run_dir
    assert "lost-write" in result.results["bad-anomaly-types"], result.results["bad-anomaly-types"]
    assert result.exit_status == 1
    lost = result.results["anomalies"]["lost-write"][0]
    assert "was acknowledged" in lost["explanation"]
