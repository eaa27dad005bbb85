"""Check a large history file on two cores.

Both processes parse the whole file (parsing is cheap next to the analysis);
a forked child folds the per-key half (version order, reads, unseen, lost
writes, G1a, duplicates, transactions: `KeyHalf`) and the parent the
per-process half (positions, read and send steps, stats: `ProcessHalf`).
The child sends its findings back through a pipe; the parent runs the
analyses that need both halves (which reads jumped over a lost write, which
steps jumped over known offsets) and assembles the results. Jepsen's checker
has no counterpart: it runs its analyses as tasks on one history in one JVM.

Used by `acked check` for big files only: fork() is unsafe in a process with
threads, so library callers (the harness) get the one-process checker.
"""
from __future__ import annotations

import os
import pickle
import traceback

from .cases import KEY_CASES, PROCESS_CASES, lost_write_cases, lost_writes
from .fold import KeyIndex, _send_parts, polled_records
from .queue import QueueChecker, totals as _totals


class KeyHalf(QueueChecker):
    """Folds only what the per-key analyses read: the common completions skip positions and stats."""

    fast_path = False
    counts_stats = False

    def _poll_one(self, idx, p, mop, inv, ev):
        polled = polled_records(mop)
        if polled:
            self._fold_poll(idx, p, polled, inv, ev, None)

    def _send_one(self, idx, p, mop, inv):
        k, o, v = _send_parts(mop)
        ks = self.fold.acked(k, v, idx)
        if o is not None:
            cur = ks.log.get(o)
            if cur is None or cur != v:
                ks.place(o, v, idx)


class ProcessHalf(QueueChecker):
    """Folds only what the per-process analyses read: consumer positions, send order, highest reads, stats."""

    fast_path = False

    def _poll_one(self, idx, p, mop, inv, ev):
        polled = polled_records(mop)
        if not polled:
            return
        fold = self.fold
        pr = fold.read_pos.setdefault(p, {})
        for k, pairs in polled.items():
            n = len(pairs)
            if not n:
                continue
            ks = fold.key(k)
            o0 = pairs[0][0]
            ol, lv = pairs[-1]
            if type(o0) is not int or type(ol) is not int or (n > 1 and [x[0] for x in pairs] != list(range(o0, o0 + n))):
                self._client_op(idx, "ok", p, "poll", [["poll", {k: pairs}]], inv, ev)
                continue
            if ol > ks.maxread:
                ks.maxread = ol
                ks.maxread_op = idx
            prev = pr.get(k)
            if prev is not None and o0 != prev[0] + 1:
                self._poll_step(p, k, prev, o0, idx)
            pr[k] = (ol, idx, lv)
        fold.any_ok_read = True

    def _send_one(self, idx, p, mop, inv):
        k, o, v = _send_parts(mop)
        self._order_ok_send(self.fold.key(k), idx, p, k, o, v, inv)


def check_path_parallel(path, opts: dict, open_history) -> dict:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the per-key half
        os.close(r)
        code = 0
        try:
            chk = KeyHalf(**opts)
            with open_history(path) as fh:
                chk.feed_lines(fh)
            fold = chk.close()
            for analysis in KEY_CASES:
                chk.add(analysis(fold))
            payload = {
                "anoms": chk.anoms,
                "counts": chk.counts,
                "lost": list(lost_writes(fold)),
                "logs": {k: (ks.log, ks.conflicts) for k, ks in fold.keys.items()},
                "totals": _totals(fold),
                "unseen-samples": [u for _, u, _ in fold.stats.samples],
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
        chk = ProcessHalf(**opts)
        with open_history(path) as fh:
            chk.feed_lines(fh)
        with os.fdopen(r, "rb") as inp:
            payload = pickle.load(inp)
    finally:
        os.waitpid(pid, 0)
    if "error" in payload:
        raise RuntimeError("the per-key half of the check failed:\n" + payload["error"])
    fold = chk.fold
    # The parent's keys know only offsets progress; take the version order from the child.
    for k, (log, conflicts) in payload["logs"].items():
        ks = fold.keys.setdefault(k, KeyIndex())
        ks.log, ks.conflicts = log, conflicts
    if fold.last_time is not None:
        fold.stats.sample(fold.last_time, fold.keys)
    chk.anoms = payload["anoms"]
    chk.counts = payload["counts"]
    for analysis in PROCESS_CASES:
        chk.add(analysis(fold))
    chk.add(lost_write_cases(fold, payload["lost"]))
    # unseen evolution from the child, offsets progress from the parent (same sample times)
    fold.stats.samples = [(t, u, o) for (t, _, o), u in zip(fold.stats.samples, payload["unseen-samples"])]
    return chk._results(counted=payload["totals"])
