"""Bad input across `acked run`, `check`, `report`, `cluster` and `acked-broker`: one line on stderr naming what
is wrong, no traceback, no usage block, and the exit status docs/running.md ("Exit statuses") documents; Kafka
settings are refused before anything of a cluster exists. Also: an UNKNOWN run says why, and --version/--help.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.config import PROFILES, ConfigError, TestDescription
from harness.report import send_failures
from harness.run_cli import _summary

BIN = Path(sys.executable).parent
ACKED = str(BIN / "acked")
BROKER_BIN = str(BIN / "acked-broker")

RUN = ["run", "--backend", "local", "--time-limit", "5"]

# (argv after `acked`, exit status, words the one line must contain)
CASES = [
    # 1. Kafka settings, checked by the client library (librdkafka / kafka-python) and acked-broker's key tables
    (RUN + ["--producer", "nonsense.key=1"], 4, ["producer setting", "nonsense.key"]),
    (RUN + ["--producer", "acks=abc"], 4, ["producer setting acks=abc", "Invalid value"]),
    (RUN + ["--producer", "linger.ms=-5"], 4, ["linger.ms=-5", "outside allowed range"]),
    (RUN + ["--consumer", "fetch.wait.max.mss=100"], 4, ["consumer setting", "fetch.wait.max.mss"]),
    (RUN + ["--producer", "client.id=mine"], 4, ["client.id", "set by the harness"]),
    (RUN + ["--client", "kafka-python", "--producer", "linger.mss=5"], 4, ["linger.mss", "KafkaProducer"]),
    (RUN + ["--topic", "min.insync.replicas=9"], 4, ["min.insync.replicas=9", "replication factor 3"]),
    (RUN + ["--topic", "retention.minutes=5"], 4, ["topic setting retention.minutes", "no such topic setting"]),
    (RUN + ["--topic", "min.insync.replicas=two"], 4, ["min.insync.replicas=two", "integer"]),
    (RUN + ["--broker", "num.io.threads=8"], 4, ["broker setting num.io.threads", "no such setting"]),
    (RUN + ["--broker", "broker.id=7"], 4, ["broker.id", "set by the harness"]),
    (RUN + ["--nodes", "2"], 4, ["replication factor 3", "--nodes 3"]),
    # argument errors: argparse's, but one line and 4
    (RUN + ["--rate", "abc"], 4, ["--rate", "'abc'", "see acked run --help"]),
    (["run", "--profile", "nosuch"], 4, ["nosuch", "see acked run --help"]),
    (["run", "--bogus"], 4, ["--bogus", "see acked run --help"]),
    (["nosuch"], 4, ["nosuch", "see acked --help"]),
    (["check"], 4, ["history", "see acked check --help"]),
    (["check", "--jobs", "3", "x.jsonl"], 4, ["--jobs", "see acked check --help"]),
    (["check", "no/such/history.jsonl"], 3, ["no/such/history.jsonl"]),
    (["report"], 4, ["RUN_DIR", "see acked report --help"]),
    (["report", "no/such/run"], 4, ["no/such/run", "not a directory"]),
    (["cluster", "up", "--nodes", "x"], 4, ["--nodes", "see acked cluster up --help"]),
    (["cluster", "up", "--backend", "local", "--nodes", "0"], 4, ["--nodes must be at least 1"]),
    (["cluster", "up", "--backend", "local", "--set", "min.insync.replicas"], 4, ["--set", "KEY=VALUE"]),
    (["cluster", "up", "--backend", "local", "--capabilities", "nett"], 4, ["nett", "net, disk, clock, acks"]),
    (["cluster", "up", "--backend", "ssh"], 4, ["--cluster"]),
]


def _id(case) -> str:
    return " ".join(case[0])[:60]


def run_acked(argv: list[str], cwd: Path, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run([ACKED, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - started


def assert_one_line(stderr: str, words: list[str]) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert "Traceback" not in stderr and "usage:" not in stderr, stderr
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"


@pytest.mark.parametrize("argv,status,words", CASES, ids=[_id(c) for c in CASES])
def test_bad_input_gives_one_line_and_the_documented_status_before_anything_starts(tmp_path, argv, status, words):
    if argv[:2] == ["cluster", "up"]:
        argv = [*argv, "--work-dir", str(tmp_path / "clusters")]
    if argv[0] == "run":
        argv = [*argv, "--results-dir", str(tmp_path / "results")]
    proc, seconds = run_acked(argv, tmp_path)
    assert proc.returncode == status, proc.stderr
    assert_one_line(proc.stderr, words)
    assert proc.stdout == ""
    # nothing of a run or a cluster was made: no run directory, no cluster work directory, no ZooKeeper
    assert not (tmp_path / "results").exists() and not (tmp_path / "clusters").exists()
    assert seconds < 20, f"took {seconds:.1f}s: something was started"



# `python -m checkers.cli`: acked check and export without the rest of acked, with the same argument errors
CHECKERS_CASES = [
    (["check"], ["history", "see acked check --help"]),
    (["check", "--bogus", "x.jsonl"], ["--bogus", "see acked check --help"]),
    (["check", "--jobs", "3", "x.jsonl"], ["--jobs", "see acked check --help"]),
    (["export", "x.jsonl"], ["--edn", "see acked export --help"]),
    (["nosuch"], ["nosuch", "see acked --help"]),
]


@pytest.mark.parametrize("argv,words", CHECKERS_CASES, ids=[" ".join(c[0]) for c in CHECKERS_CASES])
def test_python_m_checkers_cli_gives_one_line_and_exit_4_on_bad_arguments(tmp_path, argv, words):
    proc = subprocess.run([sys.executable, "-m", "checkers.cli", *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 4, proc.stderr
    assert_one_line(proc.stderr, ["acked: error:", *words])
    assert proc.stdout == ""


def test_python_m_checkers_cli_without_a_command_prints_its_help_and_exits_4():
    proc = subprocess.run([sys.executable, "-m", "checkers.cli"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 4
    assert "check" in proc.stdout and "export" in proc.stdout and proc.stderr == ""


def test_the_checkers_command_line_imports_nothing_of_the_harness():
    """ARCHITECTURE.md: checkers import nothing but the history model; the shared argument parser lives in
    checkers/cli.py and harness/cli.py imports it from there."""
    code = ("import sys, checkers.cli; checkers.cli.main(['check', '--help'])")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                          timeout=60)
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line]
    assert imported and not [m for m in imported if m.split(".")[0] == "harness"], imported
    from checkers.cli import Parser
    from harness import cli
    assert cli.Parser is Parser

@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("client", ["confluent-kafka", "kafka-python"])
def test_every_profile_passes_the_kafka_settings_check_with_either_client(profile, client):
    TestDescription(profile=profile, client=client, backend="local").validate()


@pytest.mark.parametrize("fields,words", [
    (dict(nodes=1, topic={"replication.factor": "1"}), ["min.insync.replicas=2", "replication factor 1"]),
    (dict(producer={"acks": "1"}), ["acks", "enable.idempotence", "acked profiles"]),
    (dict(consumer={"group.id": "mine"}), ["consumer setting group.id", "set by the harness"]),
    (dict(client="kafka-python", consumer={"auto.commit.interval.mss": "5"}), ["auto_commit_interval_mss"]),
    (dict(topic={"replication.factor": "three"}), ["replication"]),
])
def test_a_description_with_kafka_settings_that_cannot_work_is_refused(fields, words):
    with pytest.raises(ConfigError) as e:
        TestDescription(backend="local", **fields).validate()
    for w in words:
        assert w in str(e.value), str(e.value)


def test_the_settings_check_builds_clients_quietly_and_quickly(capfd):
    started = time.monotonic()
    TestDescription(backend="local", producer={"linger.ms": "5"}, consumer={"fetch.wait.max.ms": "100"}).validate()
    assert time.monotonic() - started < 2.0
    time.sleep(0.2)  # librdkafka's threads would log a refused connection by now
    assert capfd.readouterr().err == ""


# ---- 2. an UNKNOWN run says why --------------------------------------------------------------------------------

def _history(path: Path, sends: list[tuple[str, str | None]]) -> Path:
    """sends: (type, error) of each send op's completion; also a poll and a nemesis op, which do not count."""
    lines = [{"index": 0, "process": "nemesis", "type": "info", "f": "start", "value": None, "error": "x"}]
    for i, (kind, error) in enumerate(sends):
        lines.append({"process": i, "type": "invoke", "f": "send", "value": [["send", "1", i]]})
        done = {"process": i, "type": kind, "f": "send", "value": [["send", "1", [0 if kind == "ok" else None, i]]]}
        if error:
            done["error"] = error
        lines.append(done)
    lines.append({"process": 99, "type": "fail", "f": "poll", "value": [["poll"]], "error": "timeout"})
    path.write_text("".join(json.dumps(e) + "\n" for e in lines))
    return path


def _summary_of(tmp_path, results, sends) -> list[str]:
    _history(tmp_path / "history.jsonl", sends)
    if failed := send_failures(tmp_path / "history.jsonl"):   # as Runner.run records it in results.json
        results = {**results, "send-failures": failed}
    runner = SimpleNamespace(stats=SimpleNamespace(ok=0, fail=len(sends), info=0), nemesis=None,
                             desc=SimpleNamespace(seed=7, profile="safe", nemeses=[]))
    result = SimpleNamespace(valid="unknown", results=results, run_dir=tmp_path, report=None, error=None)
    return _summary(runner, result)


def test_an_unknown_summary_gives_the_checkers_reason_and_the_error_most_sends_failed_with(tmp_path):
    reason = "no poll completed ok with any record, so nothing could be verified"
    out = _summary_of(tmp_path, {"valid": "unknown", "unknown-reason": reason},
                      [("fail", "MSG_SIZE_TOO_LARGE")] * 5 + [("info", "timeout")])
    assert out[0].startswith("UNKNOWN")
    assert f"  why: {reason}" in out
    assert "  5 of 6 sends failed: MSG_SIZE_TOO_LARGE" in out


def test_an_unknown_summary_names_no_client_error_when_most_sends_succeeded(tmp_path):
    out = _summary_of(tmp_path, {"valid": "unknown", "unknown-reason": "r"}, [("ok", None)] * 3 + [("info", "timeout")])
    assert not [line for line in out if "sends failed" in line]
    assert send_failures(tmp_path / "history.jsonl") is None


def test_send_failures_counts_send_completions_only(tmp_path):
    path = _history(tmp_path / "h.jsonl", [("fail", "A"), ("fail", "B"), ("fail", "A"), ("ok", None)])
    assert send_failures(path) == {"failed": 2, "sends": 4, "error": "A"}


def test_a_local_run_whose_sends_are_all_refused_ends_unknown_with_the_reason(tmp_path):
    """Valid settings, yet no send can succeed: the broker refuses every batch (max.message.bytes=0)."""
    one = ["--nodes", "1", "--topic", "replication.factor=1", "--topic", "min.insync.replicas=1",
           "--broker", "default.replication.factor=1", "--broker", "min.insync.replicas=1"]
    proc, _ = run_acked(["run", "--backend", "local", *one, "--topic", "max.message.bytes=0", "--time-limit", "3",
                         "--rate", "20", "--plain", "--seed", "1", "--results-dir", str(tmp_path / "results")],
                        tmp_path, timeout=180)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "\nUNKNOWN" in proc.stdout
    assert "  why: no poll completed ok" in proc.stdout
    failed = [line for line in proc.stdout.splitlines() if "sends failed: MSG_SIZE_TOO_LARGE" in line]
    assert failed, proc.stdout
    n, total = failed[0].split(" sends")[0].split(" of ")
    assert int(n) == int(total) > 0
    # results.json and the report's banner say the same
    run_dir = Path(re.search(r"^run directory: (\S+)", proc.stdout, re.M).group(1))
    results = json.loads((run_dir / "results.json").read_text())
    assert results["send-failures"] == {"failed": int(n), "sends": int(total), "error": "MSG_SIZE_TOO_LARGE"}
    banner = re.search(r'id="verdict">(.*?)</section>', (run_dir / "index.html").read_text(), re.S).group(1)
    assert "no poll completed ok" in banner and f"{int(n)} of {int(total)} sends failed: MSG_SIZE_TOO_LARGE" in banner


# ---- 4. acked-broker: an unusable data directory --------------------------------------------------------------

def _broker(tmp_path: Path, log_dirs: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([BROKER_BIN, "/dev/null", "--override", f"log.dirs={log_dirs}",
                           "--override", "listeners=PLAINTEXT://127.0.0.1:0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("argv,words", [
    (["/dev/null", "--override", "log.segment.bytes=lots"], ["invalid value 'lots' for log.segment.bytes",
                                                              "expected an integer"]),
    (["/dev/null", "--override", "foo"], ["--override 'foo' is not key=value"]),
    (["no/such.properties"], ["cannot read config file no/such.properties", "No such file or directory"]),
    (["/dev/null", "--bogus"], ["unrecognized arguments: --bogus", "acked-broker --help"]),
    ([], ["the following arguments are required: CONFIG"]),
], ids=["bad value", "override without =", "missing config file", "unknown option", "no config"])
def test_a_broker_given_bad_settings_exits_2_with_one_line(tmp_path, argv, words):
    proc = subprocess.run([BROKER_BIN, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert_one_line(proc.stderr, ["acked-broker: error:", *words])


def _regular_file(tmp_path: Path) -> str:
    (tmp_path / "a-file").write_text("x")
    return str(tmp_path / "a-file" / "data")


def _read_only(tmp_path: Path) -> str:
    if os.geteuid() == 0:
        pytest.skip("root writes to a read-only directory")
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    return str(d / "data")


@pytest.mark.parametrize("make,cause", [
    (lambda tmp: "/proc/acked-data", "No such file or directory"),
    (_regular_file, "Not a directory"),
    (_read_only, "Permission denied"),
], ids=["under /proc", "under a regular file", "read-only"])
def test_a_broker_whose_log_dir_cannot_be_written_exits_with_one_line_naming_it(tmp_path, make, cause):
    log_dir = make(tmp_path)
    proc = _broker(tmp_path, log_dir)
    assert proc.returncode == 2
    assert_one_line(proc.stderr, ["acked-broker: error:", log_dir, cause])


def test_a_brand_new_data_directory_is_new_and_a_restart_after_sigterm_is_clean(tmp_path):
    data = tmp_path / "fresh" / "data"
    logs = []
    for _ in range(2):
        proc = subprocess.Popen([BROKER_BIN, "/dev/null", "--override", f"log.dirs={data}",
                                 "--override", "listeners=PLAINTEXT://127.0.0.1:0"],
                                stderr=subprocess.PIPE, text=True)
        try:
            lines = []
            for line in proc.stderr:
                lines.append(line)
                if "started" in line:
                    break
            proc.send_signal(signal.SIGTERM)
            lines += proc.stderr.read().splitlines(keepends=True)
            assert proc.wait(30) == 0, "".join(lines)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        logs.append("".join(lines))
    assert f"opening log dir {data} (new)" in logs[0], logs[0]
    assert f"opening log dir {data} (clean shutdown before)" in logs[1], logs[1]
    assert not (data / ".acked-write-probe").exists()


# ---- 5. --version and --help --------------------------------------------------------------------------------

@pytest.mark.parametrize("binary,name", [(ACKED, "acked"), (BROKER_BIN, "acked-broker")])
def test_version_prints_the_installed_packages_version(binary, name):
    from importlib.metadata import version
    proc = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"{name} {version('acked')}"


@pytest.mark.parametrize("argv", [["cluster", "up"], ["cluster", "down"], ["cluster", "status"], ["cluster", "logs"],
                                  ["image", "build"]])
def test_every_cluster_and_image_subcommand_states_its_exit_statuses_in_its_help(argv):
    proc = subprocess.run([ACKED, *argv, "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    assert "exit statuses: 0 done;" in proc.stdout and "4 bad arguments" in " ".join(proc.stdout.split())


def test_run_help_shows_the_defaults_and_that_the_default_nemesis_is_none():
    proc = subprocess.run([ACKED, "run", "--help"], capture_output=True, text=True, timeout=30)
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0
    for default in ("(default: safe)", "(default: docker)", "(default: 3)", "(default: 60)", "(default: 100)",
                    "(default: 2n)", "(default: none: no faults", "(default: confluent-kafka)",
                    "(default: random)", "4 bad arguments or test description"):
        assert default in text, default


@pytest.mark.parametrize("toml,words", [
    ("time-limt = 5\n", ["unknown setting 'time-limt'", "time-limit", "nemesis-interval", "nemesis,"]),
    ('time-limit = "abc"\n', ["time-limit must be a float"]),
    ("time-limit = -1\n", ["time-limit must be positive"]),
    ('kill-target = "x"\n', ["kill-target must be"]),
    ('nemesis = "meteor"\n', ["unknown nemesis 'meteor'", "`acked nemeses`"]),
], ids=["unknown key", "not a number", "not positive", "bad choice", "unknown nemesis"])
def test_a_test_file_error_uses_the_names_the_docs_and_the_file_use(tmp_path, toml, words):
    (tmp_path / "t.toml").write_text('backend = "local"\n' + toml)
    proc, _ = run_acked(["run", "t.toml", "--results-dir", str(tmp_path / "results")], tmp_path)
    assert proc.returncode == 4
    assert_one_line(proc.stderr, words)
    assert "_" not in proc.stderr.replace("acked nemeses", ""), proc.stderr   # no time_limit, nemesis_interval


def _args(*argv):
    from harness.cli import build_parser
    return build_parser(["run"]).parse_args(["run", *argv])


def test_a_run_without_a_profile_is_named_as_one_with_the_default_profile(tmp_path):
    from harness.run_cli import description_from_args
    assert description_from_args(_args()).name == description_from_args(_args("--profile", "safe")).name \
        == "queue-safe"
    assert description_from_args(_args("--profile", "acks-1")).name == "queue-acks-1"
    assert description_from_args(_args("--name", "mine", "--profile", "acks-1")).name == "mine"
    (tmp_path / "named.toml").write_text('name = "leader-kills"\nprofile = "acks-1"\n')
    (tmp_path / "unnamed.toml").write_text('profile = "acks-1"\n')
    assert description_from_args(_args(str(tmp_path / "named.toml"))).name == "leader-kills"
    assert description_from_args(_args(str(tmp_path / "unnamed.toml"))).name == "queue-acks-1"


def test_acked_run_validates_its_description_once(monkeypatch, tmp_path, capsys):
    """The Kafka settings check builds a producer and a consumer: run_cli and the Runner used to do it twice."""
    from harness import runner as runner_mod
    from harness.cli import main
    calls = []
    validate = TestDescription.validate
    monkeypatch.setattr(TestDescription, "validate", lambda self: calls.append(self) or validate(self))

    def run(self):   # no cluster: what matters happened before
        return runner_mod.RunResult(tmp_path, True, 0, {"valid": True, "stats": {"by-f": {}}}, None, None)
    monkeypatch.setattr(runner_mod.Runner, "run", run)
    assert main(["run", "--backend", "local", "--plain", "--results-dir", str(tmp_path)]) == 0
    assert len(calls) == 1
    assert capsys.readouterr().out.startswith("acked run queue-safe: profile safe")


def test_the_status_line_fits_80_columns_and_its_clock_stops_at_the_time_limit():
    from harness.run_cli import _Progress
    from harness.runner import RunStats
    stats = RunStats(phase="main", ok=1234567, fail=12345, info=123456,
                     faults=["isolate-leader-then-kill", "partition-then-kill-leader", "kill-zookeeper", "clock"])
    stats.main_started = time.monotonic() - 100   # the workers' last ops complete after the 8 s limit
    line = _Progress(SimpleNamespace(stats=stats, desc=TestDescription(time_limit=8))).line()
    assert len(line) <= 80, line
    assert "  8.0/8 s" in line and "faults: is" in line and line.endswith("… +3"), line
    stats.ok, stats.fail, stats.info = 4321, 0, 12
    stats.faults = ["kill", "pause", "partition", "clock", "packet"]
    line = _Progress(SimpleNamespace(stats=stats, desc=TestDescription(time_limit=8))).line()
    assert len(line) <= 80 and line.endswith("faults: kill,pause +3"), line
    stats.faults = []
    assert _Progress(SimpleNamespace(stats=stats, desc=TestDescription(time_limit=8))).line().endswith("faults: none")


@pytest.mark.parametrize("argv,codes", [
    ([], ["0 valid", "1 invalid", "2 unknown", "3 the harness failed", "4 bad arguments or test description"]),
    (["run"], ["3 the harness failed or the run was interrupted", "4 bad arguments or test description"]),
    (["check"], ["3 the history could not be read", "4 bad arguments or -o cannot be written"]),
    (["report"], ["Exit 0 written, 4 bad arguments or a path that is not a run or results directory"]),
], ids=["acked", "run", "check", "report"])
def test_help_states_the_exit_statuses_as_the_docs_do(argv, codes):
    proc = subprocess.run([ACKED, *argv, "--help"], capture_output=True, text=True, timeout=30)
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0
    for c in codes:
        assert c in text, c
