"""Side by side in one run: bench/produce.py against the broker of an older revision and of the work tree.

A refactor that promises "no slowdown" (issue 17: error codes in one home, group messages apart, a checked
transition table) is judged by running the same benchmark against both trees, round by round alternately
(bench/sidebyside.py), so both see the same machine. The benchmark script and the client are the work tree's;
only the broker differs: the older revision is checked out with `git worktree` and put first on PYTHONPATH, so
`acked-broker` (and, with --brokers 3, the local cluster's brokers) import its `broker` package.

    .venv/bin/python bench/compare_trees.py --rev 69a2f02 --rounds 5 -- --messages 200000 --acks 1,all
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from sidebyside import side_by_side  # noqa: E402

FIELDS = [("acks1", ",.0f", " msg/s"), ("acksall", ",.0f", " msg/s"), ("consume", ",.0f", " msg/s"),
          ("paced_p99_ms", ".2f", " ms")]


def measure(tree: Path, produce_args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, str(HERE / "produce.py"), "--json", *produce_args], env=env,
                         capture_output=True, text=True, check=True, cwd=tree).stdout
    res = json.loads(out.strip().splitlines()[-1])
    unpaced = {r["acks"]: r for r in res["produce"] if r["rate"] == "max"}
    paced = [r for r in res["produce"] if r["rate"] != "max"]
    return {"acks1": unpaced.get("1", {}).get("msgs_per_s", 0), "acksall": unpaced.get("all", {}).get("msgs_per_s", 0),
            "consume": min(c["msgs_per_s"] for c in res["consume"]),
            "paced_p99_ms": max((r["p99_ms"] for r in paced), default=0.0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", required=True, help="the older revision (git rev) to compare the work tree with")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("produce_args", nargs="*", help="arguments for bench/produce.py, after --")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="acked-tree-") as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old), args.rev], check=True)
        try:
            trees = {args.rev[:10]: old, "worktree": ROOT}
            side_by_side(tuple(trees), args.rounds, lambda mode: measure(trees[mode], args.produce_args), FIELDS)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
