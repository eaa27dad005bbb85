"""Harness throughput (issue 7: at least 2,000 recorded ops/s against 3 nodes).

    .venv/bin/python bench/harness_throughput.py [--concurrency 12 24 48] [--time-limit 30] [--profile safe]
                                                 [--backend docker] [--results-dir results]

For each concurrency: `acked run --backend docker --nodes 3 --rate 0 --nemesis none` and prints the recorded
ops/s of the main phase (ok + fail + info completions over its wall time, from results.json), the verdict,
and op latencies (median / p90 ms per op type) computed from the history.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]


def latencies(history: Path) -> dict[str, str]:
    invoked: dict = {}
    lat: dict[str, list[float]] = {}
    with history.open("rb") as f:
        for line in f:
            e = orjson.loads(line)
            if not isinstance(e["process"], int):  # nemesis and harness ops
                continue
            if e["type"] == "invoke":
                invoked[e["process"]] = e["time"]
            elif e["process"] in invoked:
                lat.setdefault(e["f"], []).append((e["time"] - invoked.pop(e["process"])) / 1e6)
    out = {}
    for f, v in sorted(lat.items()):
        v.sort()
        out[f] = f"n={len(v)} p50={v[len(v) // 2]:.1f} p90={v[int(len(v) * 0.9)]:.1f}"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", nargs="+", default=["12", "24", "48"])
    ap.add_argument("--time-limit", type=float, default=30)
    ap.add_argument("--profile", default="safe")
    ap.add_argument("--backend", default="docker")
    ap.add_argument("--results-dir", default="results")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    for c in args.concurrency:
        cmd = [sys.executable, "-m", "harness.cli", "run", "--backend", args.backend, "--nodes", "3",
               "--profile", args.profile, "--nemesis", "none", "--rate", "0", "--concurrency", c,
               "--time-limit", str(args.time_limit), "--seed", str(args.seed), "--results-dir", args.results_dir,
               "--name", f"throughput-c{c}", "--plain"]
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        run_dir = next((line.split(":", 1)[1].split()[0] for line in p.stdout.splitlines()
                        if line.startswith("run directory:")), None)
        if run_dir is None:
            print(json.dumps({"concurrency": c, "exit": p.returncode, "error": p.stderr.strip()[-300:]}))
            continue
        rd = Path(run_dir) if Path(run_dir).is_absolute() else REPO / run_dir
        results = json.loads((rd / "results.json").read_text())
        print(json.dumps({"concurrency": c, "profile": args.profile, "valid": results["valid"],
                          **results["harness"]["main-phase"], "latency-ms": latencies(rd / "history.jsonl"),
                          "run-dir": run_dir}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
