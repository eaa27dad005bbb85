"""Benchmark: `acked check` on large synthetic queue histories of two shapes.

- synth: a realistic history from checkers.synth.generate (about 100 active
  keys that rotate, 10 client threads, half sends and half polls of up to 100
  records, some fail / info ops and crashed clients, then a final drain so it
  is valid): each value is read about twice (once by the group, once by the
  drain);
- read-heavy: checkers.synth.generate_read_heavy (10 writers, --readers
  consumers that each read every value, polls of up to --records-per-poll
  records over --keys keys, then the drain): with 80 readers and 80 records
  a poll, 1M events read ~20M records (issue 16 part 2).

For each it writes history.jsonl (once; --keep keeps them) and measures in the
same run, alternating so all see the same load:

- parse: msgspec and orjson merely parsing every line of the file into Python
  objects, results discarded; the faster of the two is the floor the check is
  compared with;
- check: `acked check FILE --json` as a subprocess (wall time, CPU, peak RSS);
- the same for a history a tenth the size, for the growth factor;
- events/s and records read/s (records returned by ok polls);
- with --compare TREE: the checker of another checkout (a `git worktree` of an
  earlier commit, say) on the same files, its runs alternating with this
  tree's, both started as `python -m checkers.cli check` from their own tree,
  so a change is measured against its base under the same load.

Usage: .venv/bin/python bench/check_large.py [--events 1000000] [--shape synth read-heavy] [--keep DIR]
       [--repeat N] [--compare TREE]
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

from checkers.synth import generate, generate_read_heavy, records_read  # noqa: E402


def write_history(path, events_target, shape, args, seed=42):
    """Write a history of about events_target events; returns (events, records read)."""
    # About 2 events per op plus the drain; aim a little under, then report.
    n_ops = int(events_target * 0.49)
    if shape == "synth":
        events = generate(seed, n_ops=n_ops, threads=10, active_keys=100, rotate_every=2000,
                          max_poll=100, p_fail=0.01, p_info=0.01, p_crash=0.001)
    else:
        events = generate_read_heavy(seed, n_ops=n_ops, readers=args.readers,
                                     records_per_poll=args.records_per_poll, keys=args.keys)
    with open(path, "wb") as f:
        for ev in events:
            f.write(orjson.dumps(ev))
            f.write(b"\n")
    n, reads = len(events), records_read(events)
    del events
    gc.collect()
    return n, reads


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


def history_file(d, target, shape, args):
    """(path, events, records read) of the history of about `target` events in d, generated unless it is
    there already."""
    name = "history" if shape == "synth" else \
        f"read-heavy-r{args.readers}-p{args.records_per_poll}-k{args.keys}"
    path = os.path.join(d, f"{name}-{target}.jsonl")
    meta = path + ".meta.json"
    if not os.path.exists(path) or not os.path.exists(meta):
        t0 = time.perf_counter()
        # in a child process, so this one stays small: a child inherits its parent's peak RSS across exec, and
        # the checks' peak RSS would be this process's after generating
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                n, reads = write_history(path, target, shape, args)
                with open(meta, "wb") as f:
                    f.write(orjson.dumps({"events": n, "records-read": reads}))
                code = 0
            finally:
                os._exit(code)
        if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0:
            sys.exit(f"generating {path} failed")
        with open(meta, "rb") as f:
            n, reads = orjson.loads(f.read()).values()
        print(f"generated {shape}: {n} events, {reads} records read ({os.path.getsize(path) / 1e6:.1f} MB) "
              f"in {time.perf_counter() - t0:.1f} s")
    with open(meta, "rb") as f:
        m = orjson.loads(f.read())
    return path, m["events"], m["records-read"]


def parse_only(path, library="msgspec"):
    """Wall and CPU seconds a JSON library needs merely to parse every line."""
    loads = msgspec.json.Decoder().decode if library == "msgspec" else orjson.loads
    t0, c0 = time.perf_counter(), time.process_time()
    with open(path, "rb") as f:
        for line in f:
            loads(line)
    return time.perf_counter() - t0, time.process_time() - c0


def acked_check(path, tree=None):
    """`acked check` on path; tree: run the checkers package of that checkout instead (python -m)."""
    exe = os.path.join(os.path.dirname(sys.executable), "acked")
    env = None
    if tree is not None or not os.path.exists(exe):
        cmd = [sys.executable, "-m", "checkers.cli", "check", path, "--json"]
        tree = tree or ROOT
        env = dict(os.environ, PYTHONPATH=tree)
    else:
        cmd = [exe, "check", path, "--json"]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=tree or ROOT, env=env, stdout=out, stderr=err)
        # this child's own usage: RUSAGE_CHILDREN's peak RSS would be the largest child so far
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
    ap.add_argument("--shape", nargs="+", choices=("synth", "read-heavy"), default=["synth", "read-heavy"],
                    help="history shapes to time (default both)")
    ap.add_argument("--readers", type=int, default=80, help="read-heavy: consumers reading every value (80)")
    ap.add_argument("--records-per-poll", type=int, default=80, help="read-heavy: records a poll returns (80)")
    ap.add_argument("--keys", type=int, default=8, help="read-heavy: keys (8, the workload's key_count)")
    ap.add_argument("--keep", help="directory to keep the generated histories in (default: a temp dir, removed)")
    ap.add_argument("--repeat", type=int, default=1, help="timed repetitions (best is reported)")
    ap.add_argument("--compare", metavar="TREE",
                    help="also time the checker of another checkout on the same files, alternating with this one")
    args = ap.parse_args(argv)
    if args.compare:
        return compare(args)
    with bench_dir(args) as d:
        for shape in args.shape:
            rows = []
            for target in (args.events // 10, args.events):
                path, n, reads = history_file(d, target, shape, args)
                # parse and check alternate, so both see the same load
                runs = [(parse_only(path), parse_only(path, "orjson"), acked_check(path))
                        for _ in range(args.repeat)]
                ms_wall = min(p[0] for p, _, _ in runs)
                ms_cpu = min(p[1] for p, _, _ in runs)
                oj_wall = min(o[0] for _, o, _ in runs)
                oj_cpu = min(o[1] for _, o, _ in runs)
                parse_wall, parse_cpu = min(ms_wall, oj_wall), min(ms_cpu, oj_cpu)
                best = min((r for _, _, r in runs), key=lambda r: r["wall"])
                best_cpu = min(r["cpu"] for _, _, r in runs)
                rows.append((n, best_cpu, best))
                print(f"{shape} {n:>9} events {reads:>9} records read: parse msgspec "
                      f"wall {ms_wall:.2f} s cpu {ms_cpu:.2f} s, orjson wall {oj_wall:.2f} s cpu {oj_cpu:.2f} s | "
                      f"acked check wall {best['wall']:.2f} s cpu {best['cpu']:.2f} s (best cpu {best_cpu:.2f} s) "
                      f"peak RSS {best['maxrss_mb']:.0f} MB exit {best['exit']} valid {best['valid']} | "
                      f"check/fastest parse wall {best['wall'] / parse_wall:.2f}x cpu {best_cpu / parse_cpu:.2f}x | "
                      f"{n / best['wall'] / 1e3:.0f}k events/s, {reads / best['wall'] / 1e6:.2f}M records read/s "
                      f"wall ({n / best_cpu / 1e3:.0f}k events/s, {reads / best_cpu / 1e6:.2f}M records/s cpu)",
                      flush=True)
                if best["exit"] not in (0, 1, 2):
                    print("  stderr:", best["stderr"])
            (n1, c1, r1), (n2, c2, r2) = rows
            print(f"{shape} growth: {n2 / n1:.1f}x events -> {r2['wall'] / r1['wall']:.2f}x wall "
                  f"time, {c2 / c1:.2f}x cpu time (interpreter start-up included)")


def compare(args):
    """This tree's checker against TREE's, same files, runs alternating; best of --repeat each."""
    trees = [("base", os.path.abspath(args.compare)), ("this", ROOT)]
    with bench_dir(args) as d:
        for shape in args.shape:
            for target in (args.events // 10, args.events):
                path, n, reads = history_file(d, target, shape, args)
                these = trees
                runs = {name: [] for name, _ in these}
                for _ in range(args.repeat):
                    for name, tree in these:
                        runs[name].append(acked_check(path, tree))
                best = {name: (min(r["wall"] for r in rs), min(r["cpu"] for r in rs),
                               max(r["maxrss_mb"] for r in rs), {(r["exit"], r["valid"]) for r in rs})
                        for name, rs in runs.items()}
                for name, tree in these:
                    w, c, m, outcome = best[name]
                    print(f"{shape} {n:>9} events, {name} ({tree}): best wall {w:.2f} s, "
                          f"best cpu {c:.2f} s, peak RSS {m:.0f} MB, exit/valid {sorted(outcome)}, "
                          f"{reads / c / 1e6:.2f}M records read per cpu s")
                print(f"{shape} {n:>9} events: this/base wall "
                      f"{best['this'][0] / best['base'][0]:.3f}x, cpu {best['this'][1] / best['base'][1]:.3f}x "
                      f"({args.repeat} alternating runs each)", flush=True)

if __name__ == "__main__":
    main()
