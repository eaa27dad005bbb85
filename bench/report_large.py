"""Benchmark: rendering a run's HTML report beside checking its history, for a large run directory.

For each history shape of bench/check_large.py (synth, read-heavy) it makes a run directory holding the
history of about --events events and the results.json `acked check` writes for it, then times, alternating
so both see the same load, in fresh interpreters:

- check: `acked check history.jsonl --json` (CPU and wall, as bench/check_large.py);
- render: harness.report.render_run(run directory) -- what `acked report DIR` does for a run (the index.html
  of a results directory around it is not written here);
- with --compare TREE: the render of another checkout (a `git worktree` of an earlier commit) too.

Issue 16's target: render <= 2x the check's time.

Usage: .venv/bin/python bench/report_large.py [--events 1000000] [--shape synth read-heavy] [--keep DIR]
       [--repeat N] [--compare TREE]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import check_large  # noqa: E402

RENDER = "import sys; from pathlib import Path; from harness.report import render_run; render_run(Path(sys.argv[1]))"


def run_dir(d, shape, args):
    """A run directory with the history of about args.events events and its results.json."""
    path, n, reads = check_large.history_file(d, args.events, shape, args)
    rd = os.path.join(d, f"run-{os.path.basename(path)[:-len('.jsonl')]}")
    os.makedirs(rd, exist_ok=True)
    hist = os.path.join(rd, "history.jsonl")
    if not os.path.exists(hist):
        os.link(path, hist)
    results = os.path.join(rd, "results.json")
    if not os.path.exists(results):
        subprocess.run([sys.executable, "-m", "checkers.cli", "check", hist, "--json", "-o", results],
                       cwd=ROOT, stdout=subprocess.DEVNULL, check=False)
    return rd, n, reads


def timed(cmd, tree):
    """Wall and CPU seconds of a command run from a checkout (its own packages first), and its exit status."""
    env = dict(os.environ, PYTHONPATH=tree, OPENBLAS_NUM_THREADS="1")
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        err.seek(0)
        tail = err.read().decode()[-300:]
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1, 2):
        print(f"  {' '.join(cmd[:3])}... exited {code}: {tail}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000, help="events of the run's history (default 1000000)")
    ap.add_argument("--shape", nargs="+", choices=("synth", "read-heavy"), default=["synth", "read-heavy"])
    ap.add_argument("--readers", type=int, default=80, help="read-heavy: consumers reading every value (80)")
    ap.add_argument("--records-per-poll", type=int, default=80, help="read-heavy: records a poll returns (80)")
    ap.add_argument("--keys", type=int, default=8, help="read-heavy: keys (8)")
    ap.add_argument("--keep", help="directory to keep the histories and run directories in (default: temporary)")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions (best is reported)")
    ap.add_argument("--compare", metavar="TREE", help="also time the render of another checkout")
    args = ap.parse_args(argv)
    d = args.keep or tempfile.mkdtemp(prefix="acked-bench-")
    os.makedirs(d, exist_ok=True)
    print(f"load before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    try:
        for shape in args.shape:
            rd, n, reads = run_dir(d, shape, args)
            hist = os.path.join(rd, "history.jsonl")
            kinds = [("check", [sys.executable, "-m", "checkers.cli", "check", hist, "--json"], ROOT),
                     ("render", [sys.executable, "-c", RENDER, rd], ROOT)]
            if args.compare:
                kinds.append(("render base", [sys.executable, "-c", RENDER, rd], os.path.abspath(args.compare)))
            best = {name: [float("inf")] * 3 for name, _, _ in kinds}
            for _ in range(args.repeat):
                for name, cmd, tree in kinds:
                    best[name] = [min(a, b) for a, b in zip(best[name], timed(cmd, tree))]
            for name, _, tree in kinds:
                w, c, m = best[name]
                print(f"{shape} {n} events ({reads} records read), {name} ({tree}): best wall {w:.2f} s, "
                      f"best cpu {c:.2f} s, peak RSS {m:.0f} MB")
            chk, ren = best["check"], best["render"]
            print(f"{shape}: render/check wall {ren[0] / chk[0]:.2f}x, cpu {ren[1] / chk[1]:.2f}x "
                  f"(target <= 2x; best of {args.repeat} alternating runs)"
                  + (f"; render this/base cpu {ren[1] / best['render base'][1]:.2f}x" if args.compare else ""),
                  flush=True)
        print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
