"""`acked run` end to end on the local backend, as its user sees it: the verdict line's totals agree with
results.json, the report and the runs index (issue 18, item 3)."""
from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

from harness.report import client_ops, client_ops_text

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
