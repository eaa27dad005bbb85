"""Detection power (issue 7): how often `acks-1` with leader kills is caught with lost-write.

    .venv/bin/python bench/detection_power.py [--runs 10] [--time-limit 120] [--rate 100] [--nemesis-interval 10]
                                              [--profile acks-1] [--first-seed 1] [--results-dir results]

Runs `acked run --backend docker --nodes 3 --profile acks-1 --nemesis kill --kill-target leader` RUNS times
with seeds FIRST_SEED.. and prints one line per run (verdict, lost writes, kills, ops/s, run directory)
and the number caught. A run counts as caught when the checker found it invalid with lost-write among its
bad anomaly types. Also useful against `--profile safe` (expect 0 caught).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_run(args, seed: int) -> dict:
    name = f"detect-{args.profile}"
    cmd = [sys.executable, "-m", "harness.cli", "run", "--backend", "docker", "--nodes", "3",
           "--profile", args.profile, "--nemesis", "kill", "--kill-target", "leader",
           "--nemesis-interval", str(args.nemesis_interval), "--time-limit", str(args.time_limit),
           "--rate", str(args.rate), "--seed", str(seed), "--results-dir", args.results_dir, "--name", name,
           "--plain"]
    t = time.monotonic()
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - t
    run_dir = next((line.split(":", 1)[1].split()[0] for line in p.stdout.splitlines()
                    if line.startswith("run directory:")), None)
    out = {"seed": seed, "exit": p.returncode, "wall-seconds": round(wall, 1), "run-dir": run_dir}
    if run_dir is None:
        out["error"] = (p.stderr.strip().splitlines() or ["no run directory printed"])[-1]
        return out
    results = json.loads((REPO / run_dir / "results.json").read_text()) if not Path(run_dir).is_absolute() \
        else json.loads((Path(run_dir) / "results.json").read_text())
    history = (Path(run_dir) if Path(run_dir).is_absolute() else REPO / run_dir) / "history.jsonl"
    kills = sum(1 for line in history.open() if '"nemesis"' in line and '"info"' in line and '"kill"' in line)
    out.update({"valid": results["valid"], "bad": results.get("bad-anomaly-types", []),
                "lost-writes": len(results.get("anomalies", {}).get("lost-write", [])), "kills": kills,
                "ops-per-second": results["harness"]["main-phase"]["ops-per-second"],
                "harness-error": results["harness"]["error"]})
    out["caught"] = results["valid"] is False and "lost-write" in out["bad"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--time-limit", type=float, default=120)
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--nemesis-interval", type=float, default=10)
    ap.add_argument("--profile", default="acks-1")
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--results-dir", default="results")
    args = ap.parse_args()
    caught = 0
    for seed in range(args.first_seed, args.first_seed + args.runs):
        r = one_run(args, seed)
        caught += bool(r.get("caught"))
        print(json.dumps(r), flush=True)
    print(f"{args.profile}, leader kills every ~{args.nemesis_interval:g} s, {args.time_limit:g} s runs at "
          f"{args.rate:g} ops/s: caught {caught} of {args.runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
