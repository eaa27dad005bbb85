"""The workload interface (workloads/base.py): the runner drives any workload through it and knows nothing of Kafka.

The workload here is a counter against an in-memory register that a stand-in
cluster holds: clients add to it and read it, the final phase reads it once
more, and the checker says whether that read lies between the sum of the
acknowledged adds and that sum plus the adds that may or may not have
happened. The real Runner runs it; everything in the run directory comes out
through the interface.
"""
from __future__ import annotations

import ast
import json
import threading
from pathlib import Path

import pytest

from harness.config import ConfigError, TestDescription
from harness.runner import EXIT_VALID, Runner
from workloads import WORKLOADS
from workloads.base import Workload
from workloads.queue import QueueWorkload

HARNESS_PHASE_CALLS = ["versions", "setup", "roles", "recover", "final", "collect", "teardown", "check"]


class RegisterCluster:
    """No nodes, no processes: a register in memory, started and torn down as the runner asks."""

    def __init__(self, spec):
        self.spec = spec
        self.value = 0
        self.lock = threading.Lock()
        self.nodes: list = []
        self.started = self.torn_down = False

    def start(self):
        self.started = True

    def collect_logs(self, dest: Path):
        (dest / "register.log").write_text(f"final value {self.value}\n")

    def teardown(self):
        self.torn_down = True


class CounterClient:
    """add: ok, except each process's first add, which is applied but answered `info` (a lost reply)."""

    def __init__(self, cluster: RegisterCluster, process: int):
        self.cluster, self.process, self.adds = cluster, process, 0

    def invoke(self, op):
        with self.cluster.lock:
            if op["f"] == "add":
                self.cluster.value += op["value"]
                self.adds += 1
                return {"type": "info" if self.adds == 1 else "ok", "value": op["value"]}
            return {"type": "ok", "value": self.cluster.value}

    def close(self):
        pass


class CounterGenerator:
    def __init__(self, concurrency: int):
        self.concurrency = concurrency
        self.processes = list(range(concurrency))
        self.ops = 0

    def next_op(self, slot, now):
        self.ops += 1
        f = "add" if self.ops % 3 else "read"
        return {"process": self.processes[slot], "f": f, "value": self.ops if f == "add" else None}

    def next_delay(self):
        return 0.005

    def complete(self, slot, op, type_):
        if type_ == "info":
            self.processes[slot] += self.concurrency
        return self.processes[slot]


class CounterRoles:
    def leader_of(self, key): return None
    def replicas_of(self, key): return []
    def isr_of(self, key): return []
    def controller(self): return None
    def coordinator_of(self, group=None): return None
    def hot_keys(self): return ["counter"]


class CounterWorkload(Workload):
    name = "counter"

    def __init__(self, test, log=None):
        super().__init__(test, log)
        self.calls: list[str] = []
        self.completions: list[dict] = []
        self.cluster = None

    def versions(self):
        self.calls.append("versions")
        return {"register": "1.0"}

    def setup(self, cluster, run_dir, logger):
        self.calls.append("setup")
        self.cluster = cluster
        self.generator = CounterGenerator(self.test.concurrency_count())

    def roles(self):
        self.calls.append("roles")
        return CounterRoles()

    def client(self, process):
        self.calls.append("client")
        return CounterClient(self.cluster, process)

    def prepare(self, op):
        self.calls.append("prepare")

    def on_completion(self, op, completion):
        self.calls.append("on_completion")
        self.completions.append({"process": op["process"], "f": op["f"], **completion})

    def recover(self, seconds):
        self.calls.append("recover")

    def final(self, append):
        self.calls.append("final")
        with self.lock:
            process = max(self.generator.processes) + 1
        client = self.client(process)
        append({"process": process, "type": "invoke", "f": "read", "value": None})
        append({"process": process, "f": "read", **client.invoke({"process": process, "f": "read"})})
        client.close()
        return "read-everything", 1

    def collect(self, cluster, run_dir):
        self.calls.append("collect")
        (run_dir / "register.json").write_text(json.dumps({"value": cluster.value}))
        return []

    def teardown(self):
        self.calls.append("teardown")

    def check(self, history, run_dir, test):
        self.calls.append("check")
        events = [json.loads(line) for line in Path(history).read_text().splitlines()]
        client = [e for e in events if isinstance(e["process"], int)]
        acked = sum(e["value"] for e in client if e["f"] == "add" and e["type"] == "ok")
        maybe = sum(e["value"] for e in client if e["f"] == "add" and e["type"] == "info")
        final = [e["value"] for e in client if e["f"] == "read" and e["type"] == "ok"][-1]
        stored = json.loads((run_dir / "register.json").read_text())["value"]
        ok = acked <= final <= acked + maybe and final == stored
        return {"valid": ok, "anomaly-types": [] if ok else ["lost-add"], "bad-anomaly-types": [] if ok else
                ["lost-add"], "anomalies": {}, "counter": {"acknowledged": acked, "indeterminate": maybe,
                                                           "final-read": final}}


def _description(tmp_path, **kw) -> TestDescription:
    return TestDescription(name="counter", backend="local", concurrency="2", time_limit=1.0, seed=5,
                           results_dir=str(tmp_path), **kw)


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def test_the_runner_drives_a_workload_that_is_not_kafka_through_the_interface_alone(tmp_path):
    clusters: list[RegisterCluster] = []

    def factory(spec):
        clusters.append(RegisterCluster(spec))
        return clusters[0]
    desc = _description(tmp_path)
    workload = CounterWorkload(desc)
    result = Runner(desc, cluster_factory=factory, workload=workload).run()

    assert result.error is None and result.valid is True and result.exit_status == EXIT_VALID
    assert clusters[0].started and clusters[0].torn_down
    # the phases call the workload once each, in the runner's order; the workers' calls come between
    phase_calls = [c for c in workload.calls if c in HARNESS_PHASE_CALLS]
    assert phase_calls == HARNESS_PHASE_CALLS
    worker_calls = [i for i, c in enumerate(workload.calls) if c in ("prepare", "on_completion")]
    assert worker_calls and workload.calls.index("roles") < min(worker_calls)
    assert max(worker_calls) < workload.calls.index("recover")

    history = _history(result.run_dir)
    assert (history[0]["process"], history[0]["f"], history[0]["type"]) == ("harness", "run", "invoke")
    assert (history[-1]["process"], history[-1]["f"], history[-1]["type"]) == ("harness", "run", "ok")
    assert history[-1]["value"] == {"final-drain": "complete", "stopped": "read-everything", "keys": 1}
    # every worker completion in the history went to on_completion, and nothing else did
    final_process = history[-2]["process"]
    worker_completions = [{k: e[k] for k in ("process", "f", "type", "value")} for e in history
                          if isinstance(e["process"], int) and e["type"] != "invoke" and e["process"] != final_process]
    assert sorted(map(json.dumps, worker_completions)) == sorted(
        json.dumps({k: c[k] for k in ("process", "f", "type", "value")}) for c in workload.completions)
    # a process whose add ended `info` was retired: its slot went on with a new process and a new client
    assert any(c["type"] == "info" for c in workload.completions)
    assert {e["process"] for e in history if isinstance(e["process"], int)} - {0, 1}

    results = json.loads((result.run_dir / "results.json").read_text())
    assert results["valid"] is True and results["counter"]["final-read"] == clusters[0].value
    assert results["harness"]["error"] is None and results["harness"]["errors"] == []
    test = json.loads((result.run_dir / "test.json").read_text())
    assert test["versions"]["register"] == "1.0"
    assert (result.run_dir / "register.json").exists() and (result.run_dir / "logs" / "register.log").exists()
    assert not (result.run_dir / "replicas.json").exists()


def test_the_runners_code_names_nothing_of_kafka_outside_its_comments_and_docstrings():
    """harness/runner.py, comments and docstrings aside, says nothing of Kafka: no import, name or string."""
    source = Path(__file__).resolve().parent.parent / "harness" / "runner.py"
    tree = ast.parse(source.read_text())
    docstrings = {id(body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and (body := node.body) and isinstance(body[0], ast.Expr)
                  and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)}
    words = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            words += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            words += [node.module or "", *(a.name for a in node.names)]
        elif isinstance(node, ast.Name):
            words.append(node.id)
        elif isinstance(node, ast.Attribute):
            words.append(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            words.append(node.name)
        elif isinstance(node, ast.arg):
            words.append(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.append(node.value)
    found = [w for w in words if any(k in w.lower() for k in ("kafka", "topic", "partition", "offset", "librdkafka"))]
    assert found == []


def test_a_description_naming_a_registered_workload_runs_that_workload(tmp_path, monkeypatch):
    monkeypatch.setitem(WORKLOADS, "counter", CounterWorkload)
    runner = Runner(_description(tmp_path, workload="counter"), cluster_factory=RegisterCluster)
    assert isinstance(runner.workload, CounterWorkload) and runner.workload.test is runner.desc
    result = runner.run()
    assert result.valid is True and result.exit_status == EXIT_VALID
    assert json.loads((result.run_dir / "test.json").read_text())["test"]["workload"] == "counter"


def test_the_default_workload_is_the_queue_and_an_unknown_one_is_refused_with_the_choices(tmp_path):
    assert isinstance(Runner(_description(tmp_path)).workload, QueueWorkload)
    with pytest.raises(ConfigError, match="unknown workload 'pipe'; choose one of: queue, pipeline"):
        _description(tmp_path, workload="pipe").validate()


def test_acked_run_takes_the_workload_by_name_and_names_an_unnamed_test_after_it(monkeypatch):
    from harness.cli import build_parser
    from harness.run_cli import description_from_args
    monkeypatch.setitem(WORKLOADS, "counter", CounterWorkload)

    def desc(*argv):
        return description_from_args(build_parser(["run"]).parse_args(["run", *argv]))
    assert (desc().workload, desc().name) == ("queue", "queue-safe")
    assert (desc("--workload", "counter").workload, desc("--workload", "counter", "--profile", "acks-1").name) == \
        ("counter", "counter-acks-1")
    assert desc("--workload", "counter", "--name", "mine").name == "mine"
