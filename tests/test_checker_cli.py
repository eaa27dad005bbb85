"""`acked check` / `acked export` through the real console script."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import orjson
import pytest

from checkers.synth import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def acked(*args):
    """The check/export commands exactly as registered into `acked` (checkers.cli.register)."""
    cmd = [sys.executable, "-m", "checkers.cli", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_registered_in_the_acked_console_script():
    exe = shutil.which("acked", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-m", "harness.cli"]
    r = subprocess.run([*cmd, "check", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-500:]
    assert "--delivery" in r.stdout and "--sub-via" in r.stdout


def write(path, events):
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return str(path)


def ev(p, t, f, value, **kw):
    return {"process": p, "type": t, "f": f, "value": value, **kw}


LOST = [
    ev(0, "invoke", "send", [["send", "3", 16]]), ev(0, "ok", "send", [["send", "3", [41, 16]]]),
    ev(0, "invoke", "send", [["send", "3", 17]]), ev(0, "ok", "send", [["send", "3", [42, 17]]]),
    ev(0, "invoke", "send", [["send", "3", 18]]), ev(0, "ok", "send", [["send", "3", [43, 18]]]),
    ev(1, "invoke", "poll", [["poll"]]), ev(1, "ok", "poll", [["poll", {"3": [[41, 16], [43, 18]]}]]),
]


def test_valid_exit_0_and_summary(tmp_path):
    path = write(tmp_path / "history.jsonl", generate(1, n_ops=300, threads=3, active_keys=4))
    r = acked("check", path)
    assert r.returncode == 0, r.stderr
    assert "VALID" in r.stdout and "acknowledged" in r.stdout
    # a run directory works too
    r2 = acked("check", str(tmp_path), "--json")
    assert r2.returncode == 0 and json.loads(r2.stdout)["valid"] is True


def test_invalid_exit_1_with_json(tmp_path):
    path = write(tmp_path / "history.jsonl", LOST)
    r = acked("check", path, "--json")
    assert r.returncode == 1
    res = json.loads(r.stdout)
    assert res["valid"] is False and "lost-write" in res["bad-anomaly-types"]
    lw = res["anomalies"]["lost-write"][0]
    assert lw["ops"][0] == 3 and lw["value"] == 17
    assert "value 17 was acknowledged at offset 42 of key 3 (op 3)" in lw["explanation"]
    r2 = acked("check", path)
    assert r2.returncode == 1 and "INVALID" in r2.stdout and "lost-write" in r2.stdout


def test_unknown_exit_2(tmp_path):
    path = write(tmp_path / "history.jsonl", [ev(0, "invoke", "poll", [["poll"]]),
                                              ev(0, "ok", "poll", [["poll", {}]])])
    r = acked("check", path)
    assert r.returncode == 2 and "UNKNOWN" in r.stdout


def test_options_change_the_verdict(tmp_path):
    events = [
        ev(0, "invoke", "send", [["send", "x", 1]]), ev(0, "ok", "send", [["send", "x", [0, 1]]]),
        ev(1, "invoke", "poll", [["poll"]]), ev(1, "ok", "poll", [["poll", {"x": [[0, 1], [1, 1]]}]]),
    ]
    path = write(tmp_path / "history.jsonl", events)
    assert acked("check", path).returncode == 1
    assert acked("check", path, "--delivery", "at-least-once").returncode == 0
    out = tmp_path / "results.json"
    r = acked("check", path, "--delivery", "at-least-once", "--sub-via", "subscribe", "--txn", "--ww-deps",
              "-o", str(out))
    assert r.returncode == 0
    assert json.loads(out.read_text())["options"] == {"sub-via": "subscribe", "txn": True, "ww-deps": True,
                                                      "delivery": "at-least-once"}


def test_errors_exit_3_with_one_line(tmp_path):
    r = acked("check", str(tmp_path / "missing.jsonl"))
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and "no such file" in r.stderr
    bad = tmp_path / "notes.txt"
    bad.write_text("not a history\n")
    r = acked("check", str(bad))
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and "not a history" in r.stderr
    r = acked("check", str(bad), "--delivery", "sometimes")
    # a bad option: exit 4 (checkers/cli.py), one line, not argparse's usage block and its 2 ("unknown")
    assert r.returncode == 4 and r.stderr.count("\n") == 1 and "invalid choice" in r.stderr


def test_truncated_history_still_checked(tmp_path):
    path = tmp_path / "history.jsonl"
    write(path, LOST)
    with open(path, "ab") as f:
        f.write(b'{"process": 2, "type": "inv')
    r = acked("check", str(path), "--json")
    res = json.loads(r.stdout)
    assert r.returncode == 1 and res["history-problem-count"] == 1
    assert res["history-problems"][0]["line"] == 9


def test_non_integer_offsets_are_problems_of_their_line_not_a_crash(tmp_path):
    """Offsets are integers (or null for an unknown one); anything else is reported with its line,
    and the rest of the history is still checked."""
    events = LOST + [ev(3, "invoke", "poll", [["poll"]]), ev(3, "ok", "poll", [["poll", {"k": [["a", 1]]}]]),
                     ev(4, "invoke", "send", [["send", "k", 9]]), ev(4, "ok", "send", [["send", "k", ["x", 9]]])]
    path = write(tmp_path / "history.jsonl", events)
    r = acked("check", path, "--json")
    res = json.loads(r.stdout)
    assert r.returncode == 1 and "lost-write" in res["anomaly-types"], r.stderr[-300:]
    assert [(p["line"], "not an integer" in p["message"]) for p in res["history-problems"]] == [
        (len(LOST) + 2, True), (len(LOST) + 4, True)]


def test_export_edn_and_back(tmp_path):
    events = generate(2, n_ops=200, threads=3, active_keys=3)
    path = write(tmp_path / "history.jsonl", events)
    edn = tmp_path / "history.edn"
    r = acked("export", path, "--edn", "-o", str(edn))
    assert r.returncode == 0, r.stderr
    assert edn.read_text().splitlines()[0].startswith("{")
    r = acked("check", str(edn))
    assert r.returncode == 0, r.stdout + r.stderr
    back = tmp_path / "back.jsonl"
    assert acked("export", str(edn), "--jsonl", "-o", str(back)).returncode == 0
    assert [orjson.loads(x) for x in back.read_bytes().splitlines()] == events


@pytest.mark.parametrize("cmd", [["check", "--help"], ["export", "--help"]])
def test_help(cmd):
    r = acked(*cmd)
    assert r.returncode == 0 and "usage" in r.stdout


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_acked_check_json_is_check_path_on_generated_faults(tmp_path, seed):
    from checkers import check_path
    events = generate(seed, n_ops=3000, threads=5, active_keys=6, rotate_every=500, p_fail=0.05, p_info=0.05,
                      batch=2)
    # inject faults of both halves: a lost write (keys), a skipping consumer (processes), a G1a
    sent = [(m[1], m[2][0], m[2][1]) for e in events if e["f"] == "send" and e["type"] == "ok" for m in e["value"]]
    k, o, v = sent[len(sent) // 2]
    for e in events:
        if e["f"] == "poll" and e["type"] == "ok":
            pairs = e["value"][0][1].get(k)
            if pairs:
                pairs[:] = [p for p in pairs if p[1] != v]
    failed = [(m[1], m[2]) for e in events if e["f"] == "send" and e["type"] == "fail" for m in e["value"]]
    t = events[-1]["time"]
    events += [ev(99, "invoke", "poll", [["poll"]], time=t + 1),
               ev(99, "ok", "poll", [["poll", {failed[0][0]: [[10**6, failed[0][1]]]}]], time=t + 2)]
    path = write(tmp_path / "history.jsonl", events)
    one = check_path(path)
    assert {"lost-write", "G1a"} <= set(one["bad-anomaly-types"])
    r = acked("check", path, "--json")
    assert r.returncode == 1 and json.loads(r.stdout) == json.loads(orjson.dumps(one))


def cut_history(drained: bool):
    """acked's run op invoked first; value 9 of key y acknowledged after the last poll; drained: the run op's
    ok completion (written when the final drain finished) ends the history."""
    from checkers.history import RUN_INVOKE, run_completion
    events = [dict(RUN_INVOKE),
              ev(0, "invoke", "send", [["send", "x", 1]]), ev(0, "ok", "send", [["send", "x", [0, 1]]]),
              ev(1, "invoke", "poll", [["poll"]]), ev(1, "ok", "poll", [["poll", {"x": [[0, 1]]}]]),
              ev(0, "invoke", "send", [["send", "y", 9]]), ev(0, "ok", "send", [["send", "y", [0, 9]]])]
    if drained:
        events.append(run_completion("log-end", 2))
    return events


def test_cut_history_is_unknown_with_its_reason(tmp_path):
    path = write(tmp_path / "history.jsonl", cut_history(drained=False))
    r = acked("check", path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "UNKNOWN (the history ends before the final drain completed" in r.stdout
    assert "unseen: 1 (allowed: the history ends before the final drain completed" in r.stdout
    r = acked("check", path, "--json")
    assert r.returncode == 2 and "final drain" in json.loads(r.stdout)["unknown-reason"]
    drained = write(tmp_path / "drained.jsonl", cut_history(drained=True))
    r = acked("check", drained)
    assert r.returncode == 1 and r.stdout.splitlines()[-1] == "INVALID: unseen", r.stdout
