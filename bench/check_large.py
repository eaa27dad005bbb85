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
- the same for a history a tenth the size, for the growth factor;
- with --compare TREE: the checker of another checkout (a `git worktree` of an
  earlier commit, say) on the same files, its runs alternating with this
  tree's, both started as `python -m checkers.cli check` from their own tree,
  so a change is measured against its base under the same load.

Usage: .venv/bin/python bench/check_large.py [--events 1000000] [--keep DIR] [--compare TREE]
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import os
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


@contextlib.contextmanager
def bench_dir(args):
    """The directory for the histories (--keep, or a temporary one removed at the end), between two lines
    of load averages: a busy host is visible next to the figures."""
    d = args.keep or tempfile.mkdtemp(prefix="acked-bench-")
    os.makedirs(d, exist_ok=True)
    print(f"load before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    try:
        yield d
        print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)


def history_file(d, target):
    """(path, events) of the history of about `target` events in d, generated unless it is there already."""
    path = os.path.join(d, f"history-{target}.jsonl")
    if not os.path.exists(path):
        t0 = time.perf_counter()
        n = write_history(path, target)
        print(f"generated {n} events ({os.path.getsize(path) / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
        return path, n
    with open(path, "rb") as f:
        return path, sum(1 for _ in f)


def parse_only(path, library="msgspec"):
    """Wall and CPU seconds a JSON library needs merely to parse every line."""
    loads = msgspec.json.Decoder().decode if library == "msgspec" else orjson.loads
    t0, c0 = time.perf_counter(), time.process_time()
    with open(path, "rb") as f:
        for line in f:
            loads(line)
    return time.perf_counter() - t0, time.process_time() - c0


def acked_check(path, jobs, tree=None):
    """`acked check` on path; tree: run the checkers package of that checkout instead (python -m)."""
    exe = os.path.join(os.path.dirname(sys.executable), "acked")
    env = None
    if tree is not None or not os.path.exists(exe):
        cmd = [sys.executable, "-m", "checkers.cli", "check", path, "--json", "--jobs", str(jobs)]
        tree = tree or ROOT
        env = dict(os.environ, PYTHONPATH=tree)
    else:
        cmd = [exe, "check", path, "--json", "--jobs", str(jobs)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tree or ROOT, env=env, stdout=out, stderr=err)
        # this child's own usage (with --jobs 2, its forked helper's too): RUSAGE_CHILDREN's peak RSS
        # would be the largest child so far
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    res = orjson.loads(stdout) if stdout else {}
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "maxrss_mb": usage.ru_maxrss / 1024,
            "exit": proc.returncode, "valid": res.get("valid"), "stderr": stderr.decode()[-300:]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000, help="lines of the large history (default 1000000)")
    ap.add_argument("--keep", help="directory to keep the generated histories in (default: a temp dir, removed)")
    ap.add_argument("--repeat", type=int, default=1, help="timed repetitions (best is reported)")
    ap.add_argument("--jobs", type=int, nargs="+", default=[1], help="acked check --jobs values to time (default 1)")
    ap.add_argument("--compare", metavar="TREE",
                    help="also time the checker of another checkout on the same files, alternating with this one")
    args = ap.parse_args(argv)
    if args.compare:
        return compare(args)
    with bench_dir(args) as d:
        rows = []
        for target in (args.events // 10, args.events):
            path, n = history_file(d, target)
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


def compare(args):
    """This tree's checker against TREE's, same files, runs alternating; best of --repeat each."""
    trees = [("base", os.path.abspath(args.compare)), ("this", ROOT)]
    with bench_dir(args) as d:
        for target in (args.events // 10, args.events):
            path, n = history_file(d, target)
            for jobs in args.jobs:
                runs = {name: [] for name, _ in trees}
                for _ in range(args.repeat):
                    for name, tree in trees:
                        runs[name].append(acked_check(path, jobs, tree))
                best = {name: (min(r["wall"] for r in rs), min(r["cpu"] for r in rs), max(r["maxrss_mb"] for r in rs),
                               {(r["exit"], r["valid"]) for r in rs}) for name, rs in runs.items()}
                for name, tree in trees:
                    w, c, m, outcome = best[name]
                    print(f"{n:>9} events, --jobs {jobs}, {name} ({tree}): best wall {w:.2f} s, best cpu {c:.2f} s, "
                          f"peak RSS {m:.0f} MB, exit/valid {sorted(outcome)}")
                print(f"{n:>9} events, --jobs {jobs}: this/base wall {best['this'][0] / best['base'][0]:.3f}x, "
                      f"cpu {best['this'][1] / best['base'][1]:.3f}x ({args.repeat} alternating runs each)")


if __name__ == "__main__":
    main()
