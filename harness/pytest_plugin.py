"""pytest plugin of acked (entry point `acked` in pyproject.toml): reliability tests as ordinary pytest suites.

    @pytest.mark.parametrize("profile", ["safe", "acks-1"])
    def test_leader_kills(acked_run, acked_cluster, profile):
        result = acked_run(cluster=acked_cluster, profile=profile, nemeses=["kill"], time_limit=60)
        assert result.valid is (profile == "safe"), result.report

What a suite author gets (ducktape's test runner and kafkatest, Jepsen's `test-all`, as pytest):

- `acked_run(description=None, cluster=None, **fields)` runs one test (fields as in harness.config.TestDescription)
  and returns a harness.runner.RunResult (run_dir, valid, exit_status, results, error, report). With
  `cluster=acked_cluster` it runs on the shared cluster; without, it starts and removes its own.
- `acked_cluster`: a started cluster shared by the tests of a module (or of the session, with
  `--acked-cluster-scope session`), reset between tests (Cluster.reuse / reset: no topic, group, fault or log
  line of one test reaches the next). Docker clusters are made with every capability, so any fault can run.
- `acked_node_image`: the docker node image, built once if missing.
- A per-test timeout (`--acked-timeout`, `@pytest.mark.acked_timeout(seconds)`) fails a hung test with a message;
  a run it interrupts heals its faults, collects its logs and removes (or releases) its cluster.
- Each run's report path is printed in pytest's summary and recorded as a JUnit property (`acked_report`).
- `--acked-repeat N` runs every acked test N times; a cell that both passes and fails is *flaky*, not passed.
- A suite report for the session: `<results>/<suite>/index.html` (the matrix: rows settings, columns faults),
  `junit.xml` (one testcase per cell) and `suite.json` (harness/suite.py); the store's index lists suites too.
- Safe under pytest-xdist: every worker makes its own cluster (names carry a random suffix and the worker id);
  the controller writes the suite report from the workers' reports.

Tests marked `slow` run only with `--run-slow`.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import signal
import threading
from pathlib import Path

import pytest

ACKED_FIXTURES = ("acked_run", "acked_cluster")
#: parameter names that give a test's row (settings) and column (faults) in the suite's matrix
ROW_PARAMS = ("row", "profile", "settings")
COLUMN_PARAMS = ("column", "fault", "faults", "nemesis", "nemeses")
DEFAULT_TIMEOUT = 600.0
ALL_CAPABILITIES = frozenset({"net", "disk", "clock", "acks"})


def pytest_addoption(parser):
    group = parser.getgroup("acked")
    group.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")
    group.addoption("--acked-backend", default=None,
                    help="cluster backend of acked_run and acked_cluster when a test names none (docker, local)")
    group.addoption("--acked-nodes", type=int, default=None, help="nodes per cluster when a test names none (3)")
    group.addoption("--acked-time-limit", type=float, default=None,
                    help="seconds of every run's main phase, overriding the tests' own time_limit (nightly: 120)")
    group.addoption("--acked-results", default=None,
                    help="results directory: runs go to <dir>/<suite>/runs, the suite report to <dir>/<suite>/ "
                         "(default: the tests' tmp_path, the suite report under pytest's basetemp)")
    group.addoption("--acked-suite", default="suite", help="the suite's name: its directory under --acked-results")
    group.addoption("--acked-repeat", type=int, default=1,
                    help="run every acked test N times; a cell that both passes and fails is reported flaky")
    group.addoption("--acked-timeout", type=float, default=DEFAULT_TIMEOUT,
                    help=f"seconds before a test using acked_run/acked_cluster is failed as hung "
                         f"(default {DEFAULT_TIMEOUT:g}; 0: none; @pytest.mark.acked_timeout(s) per test)")
    group.addoption("--acked-columns", default="",
                    help="comma-separated matrix columns (a test's fault parameter) to run, deselecting the rest: "
                         "a shard of a suite, as each nightly job runs one fault family")
    group.addoption("--acked-cluster-scope", default="module", choices=("session", "module"),
                    help="how widely one acked_cluster is shared (default module: a suite's module shares one; "
                         "the cluster is gone before the next module's tests, which may count containers)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running; skipped unless --run-slow")
    config.addinivalue_line("markers", "acked_timeout(seconds): this test's limit (see --acked-timeout)")
    if config.getoption("--acked-repeat") < 1:
        raise pytest.UsageError("--acked-repeat must be at least 1")
    if not hasattr(config, "workerinput"):   # the controller (or a plain run) writes the suite report
        config.pluginmanager.register(SuiteRecorder(config), "acked-suite-recorder")


def pytest_collection_modifyitems(config, items):
    if config.pluginmanager.hasplugin("timeout"):
        # acked tests have their own limit (below), which stops a run cleanly; pytest-timeout's would cut the run
        # short of healing and removing its cluster, and both use SIGALRM
        for item in items:
            if _uses_acked(getattr(item, "fixturenames", ())) and item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(0))
    _select_columns(config, items)
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _column_of(item) -> str | None:
    params = getattr(getattr(item, "callspec", None), "params", {})
    value = next((params[n] for n in COLUMN_PARAMS if n in params), None)
    return None if value is None else value if isinstance(value, str) else ",".join(map(str, value))


def _select_columns(config, items) -> None:
    wanted = [c for c in config.getoption("--acked-columns").split(",") if c]
    if not wanted:
        return
    keep = [item for item in items if _column_of(item) in wanted]
    seen = {_column_of(item) for item in items}
    unknown = [c for c in wanted if c not in seen]
    if unknown:
        known = sorted(c for c in seen if c is not None)
        raise pytest.UsageError(f"--acked-columns: no test has the column {', '.join(unknown)}; the collected "
                                f"tests have: {', '.join(known) or 'none'}")
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep


def _uses_acked(fixturenames) -> bool:
    return any(f in fixturenames for f in ACKED_FIXTURES)


def pytest_generate_tests(metafunc):
    n = metafunc.config.getoption("--acked-repeat")
    if n > 1 and _uses_acked(metafunc.fixturenames):
        metafunc.fixturenames.append("acked_attempt")
        metafunc.parametrize("acked_attempt", range(1, n + 1), ids=[f"attempt{i}" for i in range(1, n + 1)])


@pytest.fixture
def acked_attempt(request) -> int:
    """Which attempt of its cell this is (1 without --acked-repeat)."""
    return getattr(request, "param", 1)


_ATTEMPT = re.compile(r"(?<=[\[-])attempt\d+(?:-|(?=\]))")


def cell_of(nodeid: str) -> str:
    """The node id without its --acked-repeat attempt: every attempt of a case shares it."""
    cell = _ATTEMPT.sub("", nodeid)
    return cell.replace("-]", "]").replace("[]", "")


# ---- timeouts ----------------------------------------------------------------------------------------------

def _timeout_of(item) -> float:
    mark = item.get_closest_marker("acked_timeout")
    if mark is not None:
        return float(mark.args[0] if mark.args else mark.kwargs["seconds"])
    return float(item.config.getoption("--acked-timeout") or 0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    seconds = _timeout_of(item) if _uses_acked(getattr(item, "fixturenames", ())) else 0
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return
    from harness.runner import TimedOut

    def fire(signum, frame):
        raise TimedOut(f"the test ran past its {seconds:g} s limit (--acked-timeout, @pytest.mark.acked_timeout)")
    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "setup" and _uses_acked(getattr(item, "fixturenames", ())):
        item.user_properties.append(("acked_cell", cell_of(item.nodeid)))
        # the matrix's row and column: the test's own parameters when it names them, else its runs' settings
        params = getattr(getattr(item, "callspec", None), "params", {})
        row = next((params[n] for n in ROW_PARAMS if n in params), None)
        if row is not None:
            item.user_properties.append(("acked_row", str(row)))
        column = _column_of(item)
        if column is not None:
            item.user_properties.append(("acked_column", column))
        report.user_properties = list(item.user_properties)


# ---- fixtures ----------------------------------------------------------------------------------------------

def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="session")
def acked_node_image(request) -> str | None:
    """The docker node image's tag, built once if it is missing (None when the backend is not docker)."""
    if (request.config.getoption("--acked-backend") or "docker") != "docker":
        return None
    from clusters.image import build_image, docker_image_exists, image_tag
    tag = image_tag()
    return tag if docker_image_exists(tag) else build_image(quiet=False)


def _cluster_scope(fixture_name, config) -> str:
    return config.getoption("--acked-cluster-scope")


def _default_spec(config, work_dir: Path):
    from clusters.base import ClusterSpec
    from harness.config import TestDescription
    desc = TestDescription()
    backend = config.getoption("--acked-backend") or "docker"
    return ClusterSpec(backend=backend, nodes=config.getoption("--acked-nodes") or desc.nodes,
                       broker_config=desc.broker_config(), work_dir=work_dir, run_id=f"pytest-{_worker()}",
                       capabilities=ALL_CAPABILITIES if backend == "docker" else frozenset())


@pytest.fixture(scope=_cluster_scope)
def _acked_shared_cluster(request, tmp_path_factory):
    from clusters import create_cluster
    if (request.config.getoption("--acked-backend") or "docker") == "docker":
        request.getfixturevalue("acked_node_image")
    spec = _default_spec(request.config, tmp_path_factory.mktemp("acked-cluster"))
    cluster = create_cluster(spec)   # the hosts get every capability (container privileges, devices) ...
    # ... but the node-side fault helpers (faultfs, the ack proxy, libfaketime) start only for a run whose faults
    # need them: with them a reset takes 7.0 s, without 3.6 s (bench/cluster_reuse.py)
    cluster.spec = cluster.default_spec = dataclasses.replace(spec, capabilities=frozenset())
    try:
        cluster.start()
        cluster.clean = True
        yield cluster
    finally:
        cluster.teardown()


@pytest.fixture
def acked_cluster(_acked_shared_cluster):
    """A started cluster shared across tests (see --acked-cluster-scope), wiped clean before each test uses it."""
    cluster = _acked_shared_cluster
    if not cluster.clean:
        cluster.spec = cluster.default_spec
        cluster.reset()
        cluster.clean = True
    try:
        yield cluster
    finally:
        cluster.clean = False


@pytest.fixture
def acked_run(tmp_path, request):
    from harness.config import TestDescription, from_dict
    from harness.runner import Runner

    config = request.config
    backend = config.getoption("--acked-backend")
    nodes = config.getoption("--acked-nodes")
    time_limit = config.getoption("--acked-time-limit")
    results = config.getoption("--acked-results")

    def run(description: TestDescription | None = None, cluster=None, **fields):
        desc = copy.deepcopy(description) if description is not None else TestDescription()
        if description is None:
            if backend and "backend" not in fields:
                desc.backend = backend
            if nodes and "nodes" not in fields:
                desc.nodes = nodes
            if "name" not in fields:
                fields["name"] = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")[:80]
        if cluster is not None:
            fields.setdefault("backend", cluster.spec.backend)
            fields.setdefault("nodes", cluster.spec.nodes)
        if time_limit:
            fields["time_limit"] = time_limit
        if "results_dir" not in fields:
            fields["results_dir"] = str(Path(results) / config.getoption("--acked-suite") / "runs") if results \
                else str(tmp_path / "results")
        desc = from_dict(dict(fields), desc, where="acked_run")
        runner = Runner(desc, cluster=cluster)
        result = runner.run()
        verdict = {True: "valid", False: "INVALID"}.get(result.valid, "unknown")
        record = {"run_dir": str(result.run_dir), "report": str(result.report or result.run_dir),
                  "verdict": verdict, "profile": desc.profile, "nemeses": ",".join(desc.nemeses) or "none",
                  "error": result.error or ""}
        request.node.user_properties.append(("acked_report", record["report"]))
        request.node.user_properties.append(("acked_run", json.dumps(record)))
        if runner.timed_out:
            pytest.fail(f"acked: {result.error}; report: {record['report']}", pytrace=False)
        return result

    return run


def description(**fields):
    """A TestDescription from keyword fields (for parametrizing tests)."""
    from harness.config import TestDescription
    return dataclasses.replace(TestDescription(), **fields)


# ---- the suite report --------------------------------------------------------------------------------------

class SuiteRecorder:
    """Collects the acked tests' reports (on the xdist controller, or in a plain run) into a harness.suite.Suite
    and writes it at the end of the session."""

    def __init__(self, config):
        from harness.suite import Suite, now
        self.config = config
        self.suite = Suite(config.getoption("--acked-suite"), now())
        self.pending: dict[str, dict] = {}
        self.written: dict[str, Path] = {}

    def pytest_runtest_logreport(self, report):
        props = dict((k, v) for k, v in report.user_properties if k in ("acked_cell", "acked_row", "acked_column"))
        if "acked_cell" not in props:
            return
        p = self.pending.setdefault(report.nodeid, {"outcome": "passed", "duration": 0.0, "message": ""})
        p["duration"] += report.duration
        if report.failed:
            p["outcome"] = "failed" if report.when == "call" else "error"
            p["message"] = p["message"] or _message(report)
        elif report.skipped and p["outcome"] == "passed":
            p["outcome"] = "skipped"
            p["message"] = _message(report)
        if report.when != "teardown":
            return
        from harness.suite import Attempt
        runs = [json.loads(v) for k, v in report.user_properties if k == "acked_run"]
        row = props.get("acked_row") or ", ".join(dict.fromkeys(r["profile"] for r in runs)) or "(no run)"
        column = props.get("acked_column") or ", ".join(dict.fromkeys(r["nemeses"] for r in runs)) or "(no run)"
        p = self.pending.pop(report.nodeid)
        self.suite.add(props["acked_cell"], row, column,
                       Attempt(report.nodeid, p["outcome"], round(p["duration"], 3), p["message"], runs))

    def suite_dir(self) -> Path:
        results = self.config.getoption("--acked-results")
        if results:
            return Path(results) / self.suite.name
        return Path(self.config._tmp_path_factory.getbasetemp()) / "acked-suite" / self.suite.name

    def pytest_sessionfinish(self, session):
        if not self.suite.cells:
            return
        from harness.suite import now, write_all
        self.suite.finished = now()
        self.written = write_all(self.suite, self.suite_dir())
        results = self.config.getoption("--acked-results")
        if results:
            try:
                from harness.report import render_index
                render_index(Path(results))
            except Exception as e:  # noqa: BLE001 -- the suite's own report is written
                self.written["index-error"] = Path(f"{type(e).__name__}: {e}")

    def pytest_terminal_summary(self, terminalreporter):
        if not self.suite.cells:
            return
        tr = terminalreporter
        tr.section("acked")
        for cell in self.suite.cells.values():
            for a in cell.attempts:
                for r in a.runs:
                    tr.write_line(f"{a.nodeid}: {r['verdict']} {r['report']}")
        counts = ", ".join(f"{n} {k}" for k, n in self.suite.counts().items() if n)
        if "html" in self.written:
            tr.write_line(f"suite report: {self.written['html']} ({len(self.suite.cells)} cells: {counts})")
            tr.write_line(f"junit: {self.written['junit']}")


def _message(report) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    text = getattr(report, "longreprtext", "") or ""
    lines = [ln for ln in text.splitlines() if ln.startswith("E ")] or text.splitlines()[-1:]
    return "\n".join(ln[1:].strip() if ln.startswith("E ") else ln for ln in lines)[:2000]
