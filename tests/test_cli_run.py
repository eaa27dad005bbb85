"""`acked run` end to end on the local backend, as its user sees it: the verdict line's totals agree with
results.json, the report and the runs index (issue 18, item 3); Ctrl-C says at once what acked does, a second one
skips the drain, and the run ends with one verdict line saying what the history holds (item 5)."""
from __future__ import annotations

import html
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from checkers.history import client_ops, client_ops_text

ACKED = str(Path(sys.executable).parent / "acked")


def test_the_verdict_line_results_json_the_report_and_the_runs_index_show_the_same_totals(tmp_path):
    results_dir = tmp_path / "results"
    proc = subprocess.run([ACKED, "run", "--backend", "local", "--nodes", "3", "--time-limit", "8",
                           "--final-time-limit", "30", "--nemesis", "kill", "--nemesis-interval", "2", "--seed", "3",
                           "--plain", "--results-dir", str(results_dir)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1, 2), proc.stdout + proc.stderr
    verdict = [line for line in proc.stdout.splitlines() if re.match(r"(VALID|INVALID|UNKNOWN)\b", line)]
    assert len(verdict) == 1, proc.stdout
    terminal = re.search(r": (\d+ ok, \d+ fail, \d+ info) client ops completed", verdict[0]).group(1)

    run_dir = Path(re.search(r"^run directory: (\S+)", proc.stdout, re.M).group(1))
    results = json.loads((run_dir / "results.json").read_text())
    assert client_ops_text(results["client-ops"]) == terminal
    by_f = results["stats"]["by-f"]
    assert results["client-ops"] == client_ops(by_f)
    # the faults' ops are in the checker's completions, not in the run's totals
    assert "kill" in by_f, by_f
    assert results["stats"]["completions"]["info"] > results["client-ops"]["info"]

    ok, fail, info = (int(n) for n in re.findall(r"\d+", terminal))
    page = html.unescape(re.sub(r"<[^>]+>", " ", (run_dir / "index.html").read_text()))
    assert re.search(rf"{re.escape(terminal)}\s+client ops completed", page), page[:2000]
    table = re.search(r"function\s+ok\s+fail\s+info(.*?)Anomalies", page, re.S).group(1).split()
    rows = {table[i]: [int(n) for n in table[i + 1:i + 4]] for i in range(0, len(table), 4)}
    assert set(rows) <= {"send", "poll", "assign", "subscribe", "crash", "txn"} and "send" in rows, rows
    assert [sum(col) for col in zip(*rows.values())] == [ok, fail, info]

    index = (results_dir / "index.html").read_text()
    assert f'title="{terminal}">{ok + fail + info}<' in index

    # and `acked check` of the same history
    check = subprocess.run([ACKED, "check", str(run_dir / "history.jsonl")], capture_output=True, text=True,
                           timeout=120)
    assert f"client ops completed: {terminal}" in check.stdout, check.stdout


# ---- Ctrl-C ------------------------------------------------------------------------------------------------------

NOTICE = "interrupted: healing faults, draining, tearing down (Ctrl-C again to skip the drain)"
SKIP = "skipping the final drain: "


class LiveRun:
    """`acked run --plain` under leader kills in a subprocess whose stdout lines are collected as they come;
    killed on leaving the with block if it still runs."""

    def __init__(self, tmp_path: Path, seed: int):
        self.tmp_path = tmp_path
        self.proc = subprocess.Popen([ACKED, "run", "--backend", "local", "--nodes", "3", "--plain",
                                      "--nemesis", "kill", "--nemesis-interval", "2", "--time-limit", "60",
                                      "--seed", str(seed), "--results-dir", str(tmp_path), "--name", "ctrl-c"],
                                     cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def __enter__(self) -> "LiveRun":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()

    def wait_for_line(self, predicate, after: int = 0, limit: float = 120) -> int:
        """The index of the first line from `after` on that satisfies predicate (a guard against a hang, not a
        measurement: `limit` seconds)."""
        deadline = time.monotonic() + limit
        with self.changed:
            while True:
                for i in range(after, len(self.lines)):
                    if predicate(self.lines[i]):
                        return i
                assert self.proc.poll() is None, "\n".join(self.lines)
                assert self.changed.wait(max(deadline - time.monotonic(), 0)), "\n".join(self.lines)

    def history(self) -> Path | None:
        runs = list((self.tmp_path / "ctrl-c").glob("*/history.jsonl"))
        return runs[0] if runs else None

    def interrupt_during_a_fault(self) -> None:
        """SIGINT in the main phase once the nemesis has hit a node: a heal has something to do."""
        self.wait_for_line(lambda line: line == "phase main")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            h = self.history()
            if h and b'"process":"nemesis","type":"info"' in h.read_bytes():
                self.proc.send_signal(signal.SIGINT)
                return
            time.sleep(0.2)
        raise AssertionError("no fault was recorded in time:\n" + "\n".join(self.lines))

    def finish(self) -> tuple[int, list[str], str]:
        status = self.proc.wait(timeout=300)
        self.reader.join(10)
        return status, self.lines, self.proc.stderr.read()

    def no_process_left(self) -> None:
        pids = subprocess.run(["pgrep", "-f", str(self.tmp_path)], capture_output=True, text=True).stdout.split()
        assert pids == [], pids    # every broker and ZooKeeper of the run is gone


def test_ctrl_c_says_at_once_what_acked_does_then_heals_drains_tears_down_and_the_history_checks_valid(tmp_path):
    with LiveRun(tmp_path, seed=5) as run:
        run.interrupt_during_a_fault()
        status, lines, stderr = run.finish()
    out = "\n".join(lines)
    assert status == 3, out + stderr        # interrupted: no verdict on the test, whatever the history says
    assert stderr == "", stderr
    # the notice comes at once: before the workers' last ops are awaited and the faults healed, not at the end
    notice = lines.index(NOTICE)
    assert notice < lines.index("phase heal") < lines.index("phase drain") < lines.index("phase teardown"), out
    assert not [line for line in lines if line.startswith("interrupted during")], out   # one message, not two
    verdict = [i for i, line in enumerate(lines) if re.match(r"(VALID|INVALID|UNKNOWN)\b", line)]
    assert len(verdict) == 1, out
    assert lines[verdict[0]].startswith("VALID, interrupted during main: "), out
    history_line = lines[verdict[0] + 1]
    assert "the history is complete up to the interrupt, and the final drain read back what was written" \
        in history_line, out
    run_dir = run.history().parent
    assert history_line.endswith(f"check it again with: acked check {run_dir}"), out
    results = json.loads((run_dir / "results.json").read_text())
    assert results["harness"]["interrupted"] is True and results["valid"] is True and not results.get("history-cut")
    ops = json.loads((run_dir / "nemesis.json").read_text())["ops"]
    assert [o["f"] for o in ops if o["f"] in ("kill", "start")][-1] == "start", ops   # the kill was healed
    run.no_process_left()
    again = subprocess.run([ACKED, "check", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.rstrip().endswith("VALID"), again.stdout + again.stderr
    page = html.unescape(re.sub(r"<[^>]+>", " ", (run_dir / "index.html").read_text()))
    assert page.count("interrupted") == 1 and "Harness error" not in page, page[:3000]


def test_a_second_ctrl_c_skips_the_final_drain_and_the_verdict_line_says_so(tmp_path):
    with LiveRun(tmp_path, seed=6) as run:
        run.interrupt_during_a_fault()
        notice = run.wait_for_line(lambda line: line == NOTICE)
        run.proc.send_signal(signal.SIGINT)    # while the workers' last ops are awaited or the faults healed
        status, lines, stderr = run.finish()
    out = "\n".join(lines)
    assert status == 3, out + stderr
    skip = [i for i, line in enumerate(lines) if line.startswith(SKIP)]
    assert len(skip) == 1 and skip[0] > notice, out
    assert "phase drain" not in lines and "phase recover" not in lines, out
    assert lines.index("phase teardown") > skip[0], out
    verdict = [i for i, line in enumerate(lines) if re.match(r"(VALID|INVALID|UNKNOWN)\b", line)]
    assert len(verdict) == 1 and ", interrupted during main: " in lines[verdict[0]], out
    assert "but the final drain was skipped" in lines[verdict[0] + 1], out
    run_dir = run.history().parent
    results = json.loads((run_dir / "results.json").read_text())
    assert results["harness"]["interrupted"] is True and results["history-cut"] is True
    events = [json.loads(line) for line in run.history().read_text().splitlines()]
    assert not [e for e in events if e.get("f") == "run" and e["type"] == "ok"]   # the run op never completed
    run.no_process_left()


# ---- an unsafe profile's expected failure ------------------------------------------------------------------------

def test_every_unsafe_profile_says_what_it_is_expected_to_show_and_safe_says_nothing():
    from harness.config import PROFILES
    from harness.report import DEVIATIONS, expectation
    assert set(DEVIATIONS) == set(PROFILES) - {"safe"}
    assert expectation("safe", ["kill"], False, ["lost-write"]) is None
    for profile in DEVIATIONS:
        assert expectation(profile, ["kill"]).startswith(f"{profile} is expected to ")


@pytest.mark.parametrize("profile,nemeses,valid,bad,words", [
    ("acks-1", ["kill"], None, [], ["acks-1 is expected to lose acknowledged writes", "(lost-write)",
                                     "an INVALID verdict would confirm the talk's warning, not a fault of acked"]),
    ("acks-1", [], None, [], ["a run without faults may not expose it (--nemesis kill exposes it)"]),
    ("acks-1", ["kill:leader"], False, ["lost-write", "unseen"], ["INVALID here confirms the talk's warning"]),
    ("acks-1", ["kill"], False, ["lost-write", "G1c"], ["but G1c is not what the talk predicts for acks-1"]),
    ("acks-1", ["kill"], True, [], ["this run's faults (kill) did not expose it this time",
                                    "VALID does not show acks-1 safe"]),
    ("unclean-election", ["kill"], True, [], ["did not expose it this time (--nemesis isolate-leader-then-kill "
                                              "exposes it)"]),
    ("no-idempotence", ["lose-acks"], False, ["duplicate"], ["(duplicate)", "confirms the talk's warning"]),
    ("auto-commit", ["kill"], True, [], ["what poll returned, not what was processed"]),
])
def test_the_expectation_of_an_unsafe_profile_matches_the_verdict(profile, nemeses, valid, bad, words):
    from harness.report import expectation
    text = expectation(profile, nemeses, valid, bad)
    for w in words:
        assert w in text, text


def _unsafe_run_dir(tmp_path: Path, valid, bad: list[str]) -> Path:
    run_dir = tmp_path / "queue-acks-1" / "20261205T000000.000"
    run_dir.mkdir(parents=True)
    events = [{"index": 0, "time": 1000, "process": 0, "type": "invoke", "f": "send", "value": [["send", "1", 1]]},
              {"index": 1, "time": 2000, "process": 0, "type": "ok", "f": "send", "value": [["send", "1", [0, 1]]]}]
    (run_dir / "history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run_dir / "test.json").write_text(json.dumps({"test": {"name": "queue-acks-1", "profile": "acks-1",
                                                            "nemeses": ["kill"]}, "seed": 1}))
    anomalies = {a: [{"ops": [1], "explanation": f"{a} of value 1"}] for a in bad}
    (run_dir / "results.json").write_text(json.dumps({
        "valid": valid, "anomaly-types": bad, "bad-anomaly-types": bad, "anomalies": anomalies,
        "anomaly-counts": {a: 1 for a in bad}, "stats": {"by-f": {"send": {"ok": 1, "fail": 0, "info": 0}}}}))
    return run_dir


@pytest.mark.parametrize("valid,bad,words", [
    (False, ["lost-write"], "INVALID here confirms the talk's warning, not a fault of acked"),
    (True, [], "this run's faults (kill) did not expose it this time: VALID does not show acks-1 safe"),
])
def test_the_report_of_an_unsafe_profile_says_under_its_verdict_what_the_talk_predicts(tmp_path, valid, bad, words):
    from harness import report
    page = report.render(_unsafe_run_dir(tmp_path, valid, bad)).read_text()
    note = html.unescape(re.sub(r"<[^>]+>", "", re.search(r'<div class="note" id="expected">(.*?)</div>', page,
                                                          re.S).group(1)))
    assert note.startswith("Expected: acks-1 is expected to lose acknowledged writes") and words in note, note
    assert page.index('id="verdict"') < page.index('id="expected"') < page.index('id="totals"')


def test_an_unsafe_run_says_before_and_after_what_its_profile_is_expected_to_show(tmp_path):
    proc = subprocess.run([ACKED, "run", "--backend", "local", "--nodes", "3", "--profile", "acks-1",
                           "--nemesis", "kill", "--nemesis-interval", "2", "--time-limit", "8", "--final-time-limit",
                           "30", "--seed", "2", "--plain", "--results-dir", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("acked run queue-acks-1: profile acks-1"), proc.stdout
    assert lines[1].startswith("  acks-1 is expected to lose acknowledged writes") and \
        lines[1].endswith("an INVALID verdict would confirm the talk's warning, not a fault of acked"), proc.stdout
    verdict = [i for i, line in enumerate(lines) if re.match(r"(VALID|INVALID|UNKNOWN)\b", line)]
    assert len(verdict) == 1, proc.stdout
    after = lines[verdict[0] + 1]
    # either outcome is the talk's: INVALID is its warning confirmed, VALID a run in which the kills missed
    if proc.returncode == 1:
        assert after.endswith("INVALID here confirms the talk's warning, not a fault of acked") or \
            "is not what the talk predicts" in after, proc.stdout
    else:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert after.endswith("did not expose it this time: VALID does not show acks-1 safe"), proc.stdout
