"""Benchmark: `acked check` on a large synthetic queue history.

Generates a realistic history with checkers.synth (about 100 active keys that
rotate, 10 client threads, half sends and half polls of up to 100 records,
some fail / info ops and crashed clients, then a final drain so it is valid),
writes it as history.jsonl, and measures in the same run:

- parse: the JSON library the checker decodes with (msgspec) merely parsing
  every line of the file into Python objects, results discarded (the floor);
  orjson's time for the same is printed too;
- check: `acked check FILE --json --jobs N` as a subprocess (wall time, CPU, peak RSS),
  with one process (and with two if asked: --jobs 1 2);
- the same for a history a tenth the size, for the growth factor.

Usage: .venv/bin/python bench/check_large.py [--events 1000000] [--keep DIR]
"""
from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import msgspec
import orjson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from checkers.synth import generate  # noqa: E402


def write_history(path, events_target, seed=42):
    # About 2 events per op plus the drain; aim a little under, then report.
    n_ops = int(events_target * 0.49)
    events = generate(seed, n_ops=n_ops, threads=10, active_keys=100, rotate_every=2000,
                      max_poll=100, p_fail=0.01, p_info=0.01, p_crash=0.001)
    with open(path, "wb") as f:
        for ev in events:
            f.write(orjson.dumps(ev))
            f.write(b"\n")
    n = len(events)
    del events
    gc.collect()
    return n


def parse_only(path, library="msgspec"):
    """Wall and CPU seconds a JSON library needs merely to parse every line."""
    loads = msgspec.json.Decoder().decode if library == "msgspec" else orjson.loads
    t0, c0 = time.perf_counter(), time.process_time()
    with open(path, "rb") as f:
        for line in f:
            loads(line)
    return time.perf_counter() - t0, time.process_time() - c0


def acked_check(path, jobs):
    exe = os.path.join(os.path.dirname(sys.executable), "acked")
    cmd = [exe, "check", path, "--json", "--jobs", str(jobs)] if os.path.exists(exe) else \
        [sys.executable, "-m", "checkers.cli", "check", path, "--json", "--jobs", str(jobs)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = orjson.loads(proc.stdout) if proc.stdout else {}
    return {"wall": wall, "cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
            "maxrss_mb": after.ru_maxrss / 1024, "exit": proc.returncode, "valid": res.get("valid"),
            "stderr": proc.stderr.decode()[-300:]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000, help="lines of the large history (default 1000000)")
    ap.add_argument("--keep", help="directory to keep the generated histories in (default: a temp dir, removed)")
    ap.add_argument("--repeat", type=int, default=1, help="timed repetitions (best is reported)")
    ap.add_argument("--jobs", type=int, nargs="+", default=[1], help="acked check --jobs values to time (default 1)")
    args = ap.parse_args(argv)
    d = args.keep or tempfile.mkdtemp(prefix="acked-bench-")
    os.makedirs(d, exist_ok=True)
    try:
        print(f"load before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
        rows = []
        for target in (args.events // 10, args.events):
            path = os.path.join(d, f"history-{target}.jsonl")
            if not os.path.exists(path):
                t0 = time.perf_counter()
                n = write_history(path, target)
                print(f"generated {n} events ({os.path.getsize(path) / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
            else:
                with open(path, "rb") as f:
                    n = sum(1 for _ in f)
            for jobs in args.jobs:
                # parse and check alternate, so both see the same load
                runs = [(parse_only(path), parse_only(path, "orjson"), acked_check(path, jobs))
                        for _ in range(args.repeat)]
                best_parse = min(p[0] for p, _, _ in runs)
                parse_cpu = min(p[1] for p, _, _ in runs)
                orj_parse = min(o[0] for _, o, _ in runs)
                orj_cpu = min(o[1] for _, o, _ in runs)
                best = min((r for _, _, r in runs), key=lambda r: r["wall"])
                best_cpu = min(r["cpu"] for _, _, r in runs)
                rows.append((n, jobs, best_cpu, best))
                print(f"{n:>9} events, --jobs {jobs}: parse msgspec wall {best_parse:.2f} s cpu {parse_cpu:.2f} s "
                      f"(orjson wall {orj_parse:.2f} s cpu {orj_cpu:.2f} s) | acked check wall {best['wall']:.2f} s "
                      f"cpu {best['cpu']:.2f} s (best cpu {best_cpu:.2f} s) peak RSS {best['maxrss_mb']:.0f} MB "
                      f"exit {best['exit']} valid {best['valid']} | check/parse wall {best['wall'] / best_parse:.2f}x "
                      f"cpu {best_cpu / parse_cpu:.2f}x | {n / best['wall'] / 1e3:.0f}k events/s wall, "
                      f"{n / best_cpu / 1e3:.0f}k events/s cpu ({n / 2 / best['wall'] / 1e3:.0f}k invoke+complete "
                      f"pairs/s wall)")
                if best["exit"] not in (0, 1, 2):
                    print("  stderr:", best["stderr"])
        for jobs in args.jobs:
            (n1, _, c1, r1), (n2, _, c2, r2) = [r for r in rows if r[1] == jobs]
            print(f"growth --jobs {jobs}: {n2 / n1:.1f}x events -> {r2['wall'] / r1['wall']:.2f}x wall time, "
                  f"{c2 / c1:.2f}x cpu time (interpreter start-up included)")
        print(f"load after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
