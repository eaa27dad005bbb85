"""The queue checker's analyses: one small function per anomaly type, each a function of the Fold.

Jepsen's Kafka checker (jepsen.tests.kafka) runs, after its indexes are built, version-orders (whose errors
are inconsistent-offsets), duplicate-cases, g1a-cases, lost-write-cases, poll-skip+nonmonotonic-cases,
nonmonotonic-send-cases, int-poll-skip+nonmonotonic-cases, int-send-skip+nonmonotonic-cases,
precommitted-read-cases and cycles!. These are the same analyses over the fold of checkers/fold.py, plus our
own unexpected-value and offset-order-realtime. Each yields (anomaly type, record); docs/anomalies.md
explains every type and its record.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right


def _sort_key(v):
    return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))


# -- per key: the version order and the values ---------------------------------------------------------------

def inconsistent_offset_cases(fold):
    """One offset of a key holds two or more different values."""
    for k, ks in fold.keys.items():
        if not ks.conflicts:
            continue
        for o in sorted(ks.conflicts):
            vals = ks.conflicts[o]
            parts, ops = [], []
            for v, op in vals.items():
                w = ks.writer(v)
                src = op if op is not None else (ks.acked.get(v) if ks.acked.get(v) is not None
                                                else ks.read.get(v))
                if src is not None:
                    ops.append(src)
                parts.append(f"{v!r} (op {src})" + ("" if w is None or w == src else f", sent by op {w}"))
            yield "inconsistent-offsets", {
                "key": k, "offset": o, "values": list(vals), "ops": sorted(set(ops)),
                "explanation": f"offset {o} of key {k} holds {len(vals)} different values: "
                               + "; ".join(parts) + ". A log offset can hold only one record."}


def duplicate_cases(fold):
    """One value sits at more than one offset of a key."""
    for k, ks in fold.keys.items():
        if not ks.dups:
            continue
        for v, osorted in ks.dups.items():
            w = ks.writer(v)
            ops = sorted({x for x in (w, ks.read.get(v)) if x is not None})
            yield "duplicate", {
                "key": k, "value": v, "offsets": osorted, "count": len(osorted), "ops": ops,
                "explanation": f"value {v!r} of key {k} appears at {len(osorted)} offsets "
                               f"({', '.join(map(str, osorted))})"
                               + (f"; op {w} sent it" if w is not None else "")
                               + (f", op {ks.read[v]} read it" if v in ks.read else "")
                               + ": it was stored more than once."}


def g1a_cases(fold):
    """An ok read of a value whose send failed."""
    for k, ks in fold.keys.items():
        if not ks.failed:
            continue
        rd = ks.read
        for v in ks.failed.keys() & rd.keys():
            yield "G1a", {
                "key": k, "value": v, "ops": [ks.failed[v], rd[v]],
                "explanation": f"op {ks.failed[v]} sent {v!r} to key {k} and failed (certainly not written), "
                               f"yet op {rd[v]} polled {v!r}: an aborted write was read."}


def unexpected_value_cases(fold):
    """An ok read of a value no op ever sent to that key (ours)."""
    for k, ks in fold.keys.items():
        rd = ks.read
        # Values read that no ok send acknowledged (unseen is exactly acked - read): when info and failed
        # sends account for all of them, nothing is unexpected, and no set of every read value is built.
        not_acked = len(rd) - len(ks.acked) + len(ks.unseen)
        if not_acked == sum(1 for d in (ks.info, ks.failed) for v in d
                            if v in rd and v not in ks.acked and (d is ks.info or v not in ks.info)):
            continue
        for v in rd.keys() - ks.acked.keys() - ks.info.keys() - ks.failed.keys():
            yield "unexpected-value", {
                "key": k, "value": v, "offset": ks.voff.get(v), "ops": [rd[v]],
                "explanation": f"op {rd[v]} polled {v!r} from key {k}"
                               + (f" at offset {ks.voff[v]}" if v in ks.voff else "")
                               + ", but no op ever sent that value to that key."}


def unseen_cases(fold):
    """Values acknowledged but never read by the end of the history: one record per key."""
    for k, ks in fold.keys.items():
        if not ks.unseen:
            continue
        vals = sorted(ks.unseen, key=_sort_key)
        yield "unseen", {
            "key": k, "count": len(vals), "values": vals[:32],
            "ops": sorted(ks.acked[v] for v in vals[:32]),
            "explanation": f"{len(vals)} value(s) acknowledged to key {k} were never read by the end of "
                           f"the history (for example {', '.join(repr(v) for v in vals[:5])}; op "
                           f"{ks.acked[vals[0]]} acknowledged {vals[0]!r})."}


def transaction_cases(fold):
    """precommitted-read, G0, G1c and their variants, from checkers/txn.py."""
    if fold.txn_ops:
        from .txn import analyse_txns
        yield from analyse_txns(fold)


def lost_writes(fold):
    """The facts of each lost write, (key, value, offset, how it is known committed, its op, the key's highest
    read offset, the op that read it): committed, placed at or below the highest offset any ok read reached,
    never read. Their explanations need the read steps (lost_write_cases)."""
    for k, ks in fold.keys.items():
        if ks.maxread < 0:
            continue
        bound = ks.maxread
        rd = ks.read
        committed_info = fold.committed_info.get(k, {})
        for v in list(ks.unseen) + [v for v in committed_info if v not in rd]:
            o = ks.voff.get(v)
            if o is None or o > bound:
                continue
            w = ks.acked.get(v)
            how = "acknowledged" if w is not None else "sent (info) and proven committed"
            if w is None:
                w = committed_info.get(v)
            yield (k, v, o, how, w, bound, ks.maxread_op)


def lost_write_cases(fold, lost=None):
    """lost-write records, each naming a read that jumped over the value when there is one.
    lost: the facts from lost_writes, when they were found already."""
    for k, v, o, how, w, bound, maxread_op in (lost_writes(fold) if lost is None else lost):
        cover = _covering_read(fold, k, o)
        ops = [w]
        text = f"value {v!r} was {how} at offset {o} of key {k} (op {w}); "
        if cover is not None:
            ops.append(cover[0])
            text += f"op {cover[0]} read offsets {cover[1]} to {cover[2]} of key {k} without it; "
        if cover is None or cover[0] != maxread_op:
            ops.append(maxread_op)
            text += f"op {maxread_op} read key {k} up to offset {bound}; "
        text += "no read ever returned it."
        yield "lost-write", {"key": k, "value": v, "offset": o, "max-read-offset": bound,
                             "ops": ops, "explanation": text}


def _covering_read(fold, k, o):
    """An op whose read of key k jumped over offset o, for explanations."""
    for _, kk, o1, o2, ops, *_ in fold.read_steps:
        if kk == k and o1 < o < o2:
            return ops[-1], o1, o2
    return None


# -- per process: the order of reads and sends ----------------------------------------------------------------

def _resolved(fold, steps, scope):
    """The steps of one scope with both offsets known, each with a note for its explanation. An offset a send
    did not report is the one where the version order holds its value (a poll returned it there), as Jepsen
    ranks values in its version order; a step with an offset still unknown says nothing."""
    for sc, k, o1, o2, ops, v1, v2, p in steps:
        if sc != scope:
            continue
        note = ""
        if o1 is None or o2 is None:
            inferred = []
            if o1 is None:
                o1 = fold.offset_of(k, v1)
                inferred.append((v1, o1))
            if o2 is None:
                o2 = fold.offset_of(k, v2)
                inferred.append((v2, o2))
            if o1 is None or o2 is None:
                continue
            note = " (" + "; ".join(f"{v!r} is at offset {o} in the version order: its send reported no offset"
                                    for v, o in inferred) + ")"
        yield (sc, k, o1, o2, ops, v1, v2, p), note


def _skips(fold, steps, scope):
    """Steps of one scope that jump over known offsets: (step, skipped offsets, the record's common fields,
    the skipped records as text, note)."""
    for step, note in _resolved(fold, steps, scope):
        _, k, o1, o2, ops = step[:5]
        if o2 <= o1 + 1:
            continue
        so = fold.sorted_offsets(k)
        lo = bisect_right(so, o1)
        hi = bisect_left(so, o2)
        if hi <= lo:
            continue  # nothing known between: a gap (aborted write, txn marker)
        skipped = so[lo:hi]
        log = fold.keys[k].log
        shown = ", ".join(f"{log[o]!r}@{o}" for o in skipped[:8]) + (" ..." if len(skipped) > 8 else "")
        rec = {"key": k, "offsets": [o1, o2], "skipped-offsets": skipped[:32],
               "skipped-values": [log[o] for o in skipped[:32]], "delta": hi - lo + 1, "ops": list(ops)}
        yield step, skipped, rec, shown, note


def _backwards(fold, steps, scope):
    """Steps of one scope that go back or repeat an offset, each with its note."""
    for step, note in _resolved(fold, steps, scope):
        if step[3] <= step[2]:
            yield step, note


def _skip_cases(steps, fold, scope, kind, explanation, values=False):
    """Records of the steps of one scope that jump over known offsets; explanation: a template of the step's
    fields (k, o1, o2, ops, v1, v2), the number of skipped records n and the skipped records `shown`."""
    for (_, k, o1, o2, ops, v1, v2, _), skipped, rec, shown, note in _skips(fold, steps, scope):
        if values:
            rec["values"] = [v1, v2]
        rec["explanation"] = explanation.format(k=k, o1=o1, o2=o2, ops=ops, v1=v1, v2=v2, n=len(skipped),
                                                shown=shown) + note
        yield kind, rec


def _int_backwards_cases(fold, steps, scope, kind, explanation):
    """Records of the steps inside one op that go back or repeat an offset."""
    for (_, k, o1, o2, (idx,), v1, v2, _), note in _backwards(fold, steps, scope):
        yield kind, {"key": k, "values": [v1, v2], "offsets": [o1, o2], "ops": [idx],
                     "explanation": explanation.format(k=k, o1=o1, o2=o2, idx=idx, v1=v1, v2=v2) + note}


def poll_skip_cases(fold):
    return _skip_cases(fold.read_steps, fold, "poll", "poll-skip",
                       "op {ops[0]} read key {k} up to offset {o1}; the same process's next poll from there, "
                       "op {ops[1]}, started at offset {o2}, skipping {n} known record(s): {shown}.")


def nonmonotonic_poll_cases(fold):
    for (_, k, o1, o2, (op1, idx), v1, _, p), _ in _backwards(fold, fold.read_steps, "poll"):
        yield "nonmonotonic-poll", {
            "key": k, "offsets": [o1, o2], "process": p, "ops": [op1, idx],
            "explanation": f"process {p} read key {k} up to offset {o1} ({v1!r}) in op {op1}; its "
                           f"next poll from there, op {idx}, started at offset {o2}: the consumer went "
                           "backwards without an assign or subscribe in between."}


def int_poll_skip_cases(fold):
    return _skip_cases(fold.read_steps, fold, "int-poll", "int-poll-skip",
                       "op {ops[0]} read offset {o1} of key {k} and then offset {o2}, skipping {n} known record(s) "
                       "in between: {shown}.")


def int_nonmonotonic_poll_cases(fold):
    return _int_backwards_cases(fold, fold.read_steps, "int-poll", "int-nonmonotonic-poll",
                                "op {idx} read {v1!r} at offset {o1} of key {k} and then {v2!r} at offset {o2}: "
                                "inside one poll the consumer went backwards (or repeated an offset).")


def nonmonotonic_send_cases(fold):
    for (_, k, o1, o2, (op1, idx), v1, v2, p), note in _backwards(fold, fold.send_steps, "send"):
        yield "nonmonotonic-send", {
            "key": k, "values": [v1, v2], "offsets": [o1, o2], "process": p, "ops": [op1, idx],
            "explanation": f"process {p} sent {v1!r} to key {k} at offset {o1} (op {op1}), then its later op "
                           f"{idx} sent {v2!r} which landed at offset {o2}, not after it.{note}"}


def int_send_skip_cases(fold):
    return _skip_cases(fold.send_steps, fold, "int-send", "int-send-skip",
                       "op {ops[0]} sent {v1!r} then {v2!r} to key {k}; they landed at offsets {o1} and {o2} with "
                       "{n} other record(s) in between: {shown}.", values=True)


def int_nonmonotonic_send_cases(fold):
    return _int_backwards_cases(fold, fold.send_steps, "int-send", "int-nonmonotonic-send",
                                "op {idx} sent {v1!r} then {v2!r} to key {k}, but they landed at offsets {o1} then "
                                "{o2}: the second send is not after the first in the log.")


def offset_order_realtime_cases(fold):
    """An ok send acknowledged below an offset acknowledged before it was invoked (ours)."""
    for k, o, v, idx, inv_idx, (po, pop, pvv) in fold.offset_order:
        yield "offset-order-realtime", {
            "key": k, "values": [pvv, v], "offsets": [po, o], "ops": [pop, idx],
            "explanation": f"op {pop} sent {pvv!r} to key {k} and was acknowledged at offset {po} before op {idx} "
                           f"was invoked (event {inv_idx}); yet op {idx}'s value {v!r} was acknowledged at the lower "
                           f"offset {o}. A log must order a send after every send acknowledged before it began."}


#: Analyses that need only the per-key half of the fold.
KEY_CASES = (inconsistent_offset_cases, duplicate_cases, g1a_cases, unexpected_value_cases, unseen_cases,
             transaction_cases)
#: Analyses of the per-process half (skips also need the version order).
PROCESS_CASES = (poll_skip_cases, nonmonotonic_poll_cases, int_poll_skip_cases, int_nonmonotonic_poll_cases,
                 nonmonotonic_send_cases, int_send_skip_cases, int_nonmonotonic_send_cases,
                 offset_order_realtime_cases)
