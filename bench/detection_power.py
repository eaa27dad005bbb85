"""Detection power: how often each unsafe profile is caught under the fault that exposes it, and how often
`safe` stays valid under every fault of the catalogue mixed.

    .venv/bin/python bench/detection_power.py [--cases unclean-isolate,acks1-kill,acks1-pause,min-isr-1-power,
        no-idempotence-acks,safe-all]
        [--runs 10] [--time-limit 60] [--rate 100] [--nemesis-interval 6] [--first-seed 1] [--results-dir results]

Each case is `acked run --backend docker --nodes 3 --profile P --nemesis N`, RUNS times with seeds
FIRST_SEED..; one JSON line per run (verdict, bad anomaly types, lost writes, faults started, ops/s, wall
time, run directory), then a table. An unsafe case counts a run as caught when it is invalid with the
anomaly the case is about: lost-write for the lost-data cases, a duplicate or a send stored out of order for
no-idempotence (the table also counts the invalid runs: a forked log shows as inconsistent-offsets even when
every lost value had been read before the fork); the safe case counts the runs that are valid (an unknown
verdict counts as neither). safe-all mixes every package but those of nemesis.packages.BEYOND_SAFE.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nemesis.packages import BEYOND_SAFE, PACKAGES, package_of_f  # noqa: E402

#: what a caught lost write is, and what a caught retry is (a duplicate, or a send stored out of its order)
LOSS = ("lost-write",)
RETRY = ("duplicate", "nonmonotonic-send", "int-nonmonotonic-send", "offset-order-realtime")
#: name -> (profile, nemesis, what counts: "caught" (invalid with one of the anomalies) or "valid", anomalies)
CASES = {
    "unclean-isolate": ("unclean-election", "isolate-leader-then-kill", "caught", LOSS),
    "acks1-kill": ("acks-1", "kill:leader", "caught", LOSS),
    "acks1-pause": ("acks-1", "pause:leader", "caught", LOSS),
    "min-isr-1-power": ("min-isr-1", "isolate-leader-then-lose-unfsynced", "caught", LOSS),
    "no-idempotence-acks": ("no-idempotence", "lose-acks", "caught", RETRY),
    "safe-all": ("safe", ",".join(p for p in PACKAGES if p not in BEYOND_SAFE), "valid", ()),
}


def one_run(args, case: str, seed: int) -> dict:
    profile, nemesis, _, anomalies = CASES[case]
    cmd = [sys.executable, "-m", "harness.cli", "run", "--backend", "docker", "--nodes", "3",
           "--profile", profile, "--nemesis", nemesis, "--nemesis-interval", str(args.nemesis_interval),
           "--time-limit", str(args.time_limit), "--rate", str(args.rate), "--seed", str(seed),
           "--results-dir", args.results_dir, "--name", f"detect-{case}", "--plain"]
    t = time.monotonic()
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    out = {"case": case, "seed": seed, "exit": p.returncode, "wall-seconds": round(time.monotonic() - t, 1)}
    run_dir = next((line.split(":", 1)[1].split()[0] for line in p.stdout.splitlines()
                    if line.startswith("run directory:")), None)
    if run_dir is None:
        out["error"] = (p.stderr.strip().splitlines() or ["no run directory printed"])[-1]
        return out
    run = Path(run_dir) if Path(run_dir).is_absolute() else REPO / run_dir
    results = json.loads((run / "results.json").read_text())
    started: dict[str, int] = {}
    for line in (run / "history.jsonl").open():
        if '"nemesis"' in line and '"info"' in line:
            ev = json.loads(line)
            owner = package_of_f(ev["f"])
            if owner and owner[1] == "start" and not ev.get("error"):
                started[owner[0].name] = started.get(owner[0].name, 0) + 1
    out.update({"run-dir": str(run), "valid": results["valid"], "bad": results.get("bad-anomaly-types", []),
                "lost-writes": len(results.get("anomalies", {}).get("lost-write", [])), "faults": started,
                "ops-per-second": results["harness"]["main-phase"]["ops-per-second"],
                "harness-error": results["harness"]["error"]})
    out["caught"] = results["valid"] is False and any(a in out["bad"] for a in anomalies)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--time-limit", type=float, default=60)
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--nemesis-interval", type=float, default=6)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--results-dir", default="results")
    args = ap.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"unknown case {unknown[0]!r}; choose from {', '.join(CASES)}")
    summary = []
    for case in cases:
        runs = []
        for seed in range(args.first_seed, args.first_seed + args.runs):
            runs.append(one_run(args, case, seed))
            print(json.dumps(runs[-1]), flush=True)
        profile, nemesis, counts, _ = CASES[case]
        hits = sum(bool(r.get("caught")) if counts == "caught" else r.get("valid") is True for r in runs)
        invalid = sum(r.get("valid") is False for r in runs)
        summary.append((case, profile, nemesis, counts, hits, invalid, len(runs),
                        sum(r.get("wall-seconds", 0) for r in runs) / max(1, len(runs))))
    print(f"\n{args.time_limit:g} s runs at {args.rate:g} ops/s, nemesis interval {args.nemesis_interval:g} s, "
          f"seeds {args.first_seed}..{args.first_seed + args.runs - 1}")
    print(f"{'case':18} {'profile':18} {'counts':7} {'result':9} {'invalid':9} {'wall/run':>8}  nemesis")
    for case, profile, nemesis, counts, hits, invalid, n, wall in summary:
        print(f"{case:18} {profile:18} {counts:7} {hits:>2} of {n:<3} {invalid:>2} of {n:<3} {wall:7.0f}s  "
              f"{nemesis if len(nemesis) < 40 else 'every package'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
