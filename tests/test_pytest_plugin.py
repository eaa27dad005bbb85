"""The pytest plugin as a suite author meets it: a suite run in a pytest of its own (pytester, in a subprocess),
its suite report, JUnit XML and store index, a flaky cell under --acked-repeat, a hung test stopped by the
timeout with its cluster removed, and a shared cluster wiped between tests."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

#: the inner pytest imports this tree's acked (its plugin, harness, clusters), wherever it runs from
INNER_ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

SUITE = '''
import pytest

@pytest.mark.parametrize("profile", ["safe", "acks-1"])
@pytest.mark.parametrize("fault", ["kill", "none"])
def test_cell(acked_run, acked_cluster, acked_attempt, profile, fault):
    result = acked_run(cluster=acked_cluster, profile=profile, nemeses=[] if fault == "none" else [fault],
                       time_limit=3, nemesis_interval=1, rate=50, final_time_limit=20, seed=acked_attempt)
    assert result.error is None, result.error
    # a cell that fails one attempt in two: the suite must call it flaky, not passed
    assert not (profile == "acks-1" and fault == "none" and acked_attempt == 2), "<b>second attempt</b> fails"

@pytest.mark.acked_timeout(15)
def test_hung(acked_run):
    acked_run(profile="safe", nemeses=["kill"], time_limit=120, rate=20, name="hung")
'''


def chromium_dom(page: Path) -> str:
    exe = shutil.which("chromium")
    assert exe, "Debian's chromium is needed to look at the reports (make test installs it)"
    out = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def processes_under(root: Path) -> list[str]:
    """Processes whose command line names a path below `root`: a local cluster's brokers and ZooKeeper members
    run with their config files in its directory."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(root).encode() in cmdline.read_bytes():
                found.append(cmdline.parent.name)
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def local_suite(tmp_path_factory):
    """The suite above, run once on the local backend with --acked-repeat 2 on two xdist workers."""
    root = tmp_path_factory.mktemp("suite")
    (root / "test_two.py").write_text(SUITE)
    results = root / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--rootdir", str(root), str(root / "test_two.py"),
         "--acked-backend", "local", "--acked-repeat", "2", "--acked-results", str(results), "--acked-suite", "two",
         "--basetemp", str(root / "tmp"),   # the shared clusters' directories below root too (processes_under)
         "-n", "2"],   # pytest-xdist: each worker its own cluster, the controller writes the suite report
        cwd=root, capture_output=True, text=True, timeout=900, env=INNER_ENV)
    return root, results, proc


def test_a_suite_writes_one_junit_testcase_per_cell_with_its_reports_and_calls_a_half_failing_cell_flaky(local_suite):
    root, results, proc = local_suite
    assert proc.returncode == 1, proc.stdout[-3000:]
    junit = ET.parse(results / "two" / "junit.xml").getroot()
    cases = {tc.get("name"): tc for tc in junit.iter("testcase")}
    assert set(cases) == {"test_cell[kill-safe]", "test_cell[kill-acks-1]", "test_cell[none-safe]",
                          "test_cell[none-acks-1]", "test_hung"}, set(cases)
    for name, tc in cases.items():
        reports = [p.get("value") for p in tc.iter("property") if p.get("name") == "acked_report"]
        assert len(reports) == 2 and all(Path(r).exists() for r in reports), (name, reports)
    flaky = cases["test_cell[none-acks-1]"].find("failure")
    assert flaky is not None and flaky.get("type") == "flaky" and "passed 1 of 2" in flaky.get("message")
    assert cases["test_cell[kill-safe]"].find("failure") is None
    suite = json.loads((results / "two" / "suite.json").read_text())
    assert suite["counts"] == {"passed": 3, "failed": 1, "flaky": 1, "error": 0, "skipped": 0}, suite["counts"]
    # pytest's own summary names every run's report
    for cell in suite["cells"]:
        for attempt in cell["attempts"]:
            for run in attempt["runs"]:
                assert f"{attempt['nodeid']}: {run['verdict']} {run['report']}" in proc.stdout


def test_a_hung_test_is_failed_by_its_timeout_and_its_cluster_is_removed(local_suite):
    root, results, proc = local_suite
    assert "ran past its 15 s limit" in proc.stdout, proc.stdout[-3000:]
    hung = sorted((results / "two" / "runs" / "hung").iterdir())
    assert len(hung) == 2
    for run_dir in hung:
        res = json.loads((run_dir / "results.json").read_text())
        # usually in main; on a loaded machine the cluster's start can take the 15 s
        assert res["harness"]["error"].startswith(("timed out during main", "timed out during setup")), res
        assert res["valid"] == "unknown"   # cut before its drain: not a lost write
        if res["harness"]["error"].startswith("timed out during main"):
            assert {p.name for p in (run_dir / "logs").iterdir()} >= {"n1", "n2", "n3"}   # logs still collected
        test = json.loads((run_dir / "test.json").read_text())
        assert test["test"]["time_limit"] == 120
    clusters = list((results / "two" / "runs" / ".clusters").glob("*/*"))
    assert clusters == [], clusters   # every run's cluster directory is gone
    assert processes_under(root) == []   # no broker or ZooKeeper of the suite's runs or shared clusters is left


def test_the_suite_report_and_a_run_report_open_in_chromium_with_their_verdicts_and_markup_as_text(local_suite):
    root, results, proc = local_suite
    dom = chromium_dom(results / "two" / "index.html")
    assert "3 passed" in dom and "1 flaky" in dom and "1 failed" in dom
    assert 'id="matrix"' in dom and "acks-1" in dom and "none" in dom
    assert "&lt;b&gt;second attempt&lt;/b&gt;" in dom and "<b>second attempt</b>" not in dom
    index = chromium_dom(results / "index.html")
    assert 'id="suites"' in index and "two/index.html" in index
    run = json.loads((results / "two" / "suite.json").read_text())["cells"][0]["attempts"][0]["runs"][0]
    page = chromium_dom(Path(run["report"]))
    assert f'<section class="banner {run["verdict"].lower()}" id="verdict">' in page, run


SHARED = '''
import subprocess
import pytest

def test_one_leaves_a_topic_a_group_and_faults(acked_cluster):
    from confluent_kafka import Consumer, Producer, TopicPartition
    p = Producer({"bootstrap.servers": acked_cluster.bootstrap_servers()})
    p.produce("leftover", b"x"); assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": acked_cluster.bootstrap_servers(), "group.id": "leftover-group"})
    c.commit(offsets=[TopicPartition("leftover", 0, 1)], asynchronous=False); c.close()
    n1 = acked_cluster.nodes[0]
    # a partition's rule in its own chain, a slow link's qdisc, a clock offset: what the faults leave on a node
    n1.run("iptables -N ACKED-NEMESIS && iptables -I INPUT -j ACKED-NEMESIS && "
           "iptables -A ACKED-NEMESIS -s 10.255.255.1 -j DROP && "
           "tc qdisc replace dev eth0 root handle acd: tbf rate 100mbit burst 32kb latency 50ms && "
           "echo +60 > /var/lib/acked/faketime", check=True)
    n1.run("echo test-one-was-here >> /var/log/acked/broker.log", check=True)

@pytest.mark.parametrize("n", [2, 3])
def test_later_tests_see_none_of_it(acked_cluster, n):
    from confluent_kafka.admin import AdminClient
    admin = AdminClient({"bootstrap.servers": acked_cluster.bootstrap_servers()})
    assert "leftover" not in admin.list_topics(timeout=30).topics
    groups = admin.list_consumer_groups(request_timeout=30).result()
    assert [g.group_id for g in groups.valid] == []
    for node in acked_cluster.nodes:
        assert "10.255.255.1" not in node.output("iptables -S").stdout
        assert "acd:" not in node.output("tc qdisc show dev eth0").stdout
        assert node.output("cat /var/lib/acked/faketime 2>/dev/null").stdout == ""
        assert "test-one-was-here" not in node.output("cat /var/log/acked/broker.log").stdout
'''


@pytest.mark.docker
def test_a_cluster_shared_by_three_tests_is_wiped_between_them(tmp_path):
    (tmp_path / "test_shared.py").write_text(SHARED)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
         "--rootdir", str(tmp_path), str(tmp_path / "test_shared.py"), "--acked-backend", "docker"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=INNER_ENV)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "3 passed" in proc.stdout
