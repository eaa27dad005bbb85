"""Check a large history file on two cores.

Both processes parse the whole file (parsing is cheap next to the analysis);
a forked child does the per-key value work (version order, reads, unseen,
lost writes, G1a, duplicates, transactions) and the parent the per-process
order checks and the stats. The child sends its findings back through a pipe;
the parent resolves what needs both halves (which reads jumped over a lost
write, which skips jumped over known offsets) and assembles the results.

Used by `acked check` for big files only: fork() is unsafe in a process with
threads, so library callers (the harness) get the one-process checker.
"""
from __future__ import annotations

import os
import pickle
import traceback

from .queue import QueueChecker, _Key, totals as _totals

# Anomaly types the "keys" half finds; everything else comes from the parent.
KEY_KINDS = {"inconsistent-offsets", "duplicate", "G1a", "unexpected-value", "unseen", "precommitted-read",
             "G0", "G0-process", "G0-realtime", "G1c", "G1c-process", "G1c-realtime"}


def check_path_parallel(path, opts: dict, open_history) -> dict:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the per-key half
        os.close(r)
        code = 0
        try:
            chk = QueueChecker(**opts)
            chk.role = "keys"
            with open_history(path) as fh:
                chk.feed_lines(fh)
            chk.finish_keys()
            payload = {
                "anoms": {k: v for k, v in chk.anoms.items() if k in KEY_KINDS},
                "counts": {k: v for k, v in chk.counts.items() if k in KEY_KINDS},
                "lost": chk.lost_raw,
                "logs": {k: ks.log for k, ks in chk.keys.items()},
                "totals": _totals(chk),
                "unseen-samples": [u for _, u, _ in chk.stats.samples],
            }
        except BaseException:  # report, never raise into the parent's code
            payload = {"error": traceback.format_exc()}
            code = 1
        try:
            with os.fdopen(w, "wb") as out:
                pickle.dump(payload, out, protocol=pickle.HIGHEST_PROTOCOL)
        finally:
            os._exit(code)
    os.close(w)
    try:
        chk = QueueChecker(**opts)
        chk.role = "procs"
        with open_history(path) as fh:
            chk.feed_lines(fh)
        with os.fdopen(r, "rb") as inp:
            payload = pickle.load(inp)
    finally:
        os.waitpid(pid, 0)
    if "error" in payload:
        raise RuntimeError("the per-key half of the check failed:\n" + payload["error"])
    # The parent's keys know only offsets progress; take the version order from the child.
    for k, log in payload["logs"].items():
        ks = chk.keys.get(k)
        if ks is None:
            ks = chk.keys[k] = _Key()
        ks.log = log
    if chk.last_time is not None:
        chk.stats.sample(chk.last_time, chk.keys)
    chk.anoms = {k: v for k, v in chk.anoms.items() if k not in KEY_KINDS}
    chk.counts = {k: v for k, v in chk.counts.items() if k not in KEY_KINDS}
    for kind, recs in payload["anoms"].items():
        chk.anoms[kind] = recs
    chk.counts.update(payload["counts"])
    chk._resolve_skips()
    for raw in payload["lost"]:
        chk._lost_write(*raw)
    # unseen evolution from the child, offsets progress from the parent (same sample times)
    chk.stats.samples = [(t, u, o) for (t, _, o), u in zip(chk.stats.samples, payload["unseen-samples"])]
    return chk._results(totals=payload["totals"])
