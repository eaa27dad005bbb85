"""The queue safety checker: one pass over the events, then a short analysis.

Semantics follow Jepsen's Kafka checker (jepsen.tests.kafka); docs/anomalies.md
explains every anomaly type. The pass keeps per-key dictionaries (offset ->
value, value -> offset, value -> op index) and a handful of small candidate
lists instead of per-event objects, so a million events fold in seconds.

"read" below means returned by a poll (or txn) that completed ok; the version
order (which value sits at which offset) is built from ok sends, info sends
proven committed (one of their values was read), and every poll whatever its
outcome, exactly as Jepsen does.
"""
from __future__ import annotations

import gc
import io
from bisect import bisect_left, bisect_right
from collections import Counter
from contextlib import contextmanager
from itertools import repeat
from operator import itemgetter
from typing import Literal

import msgspec

import orjson

from .history import BATCH_BYTES, HARNESS, RUN_F, Event, decode_value, iter_event_batches, validate_event
from .stats import StatsCollector

# Allowed anomaly types (they never make a run invalid), as in Jepsen.
ALWAYS_ALLOWED = {"int-send-skip", "G0", "G0-process", "G0-realtime"}

SAMPLE_NS = 250_000_000  # unseen/offset progress sampled every 250 ms of history time
_COMPLETIONS = frozenset(("ok", "fail", "info"))
MAX_EXAMPLES = 1000  # anomalies kept per type; anomaly-counts has the totals
#: Why `unseen` does not make a cut history invalid (docs/anomalies.md, "Cut histories").
CUT_REASON = ("the history ends before the final drain completed (acked's run op never completed ok), "
              "so an unseen value may only not have been read yet")


_UNSET = object()
_decode_ok_poll = msgspec.json.Decoder(
    tuple[tuple[Literal["poll"], dict[str, list[tuple[int, int | str]]]]]).decode
_decode_ok_send = msgspec.json.Decoder(tuple[tuple[Literal["send"], str, tuple[int, int | str]]]).decode
_op_of = itemgetter(1)
_EMPTY_POLL = msgspec.Raw(b'[["poll",{}]]')


@contextmanager
def _no_gc():
    """The checker allocates millions of small objects and frees none in
    cycles; the cyclic GC would rescan them over and over."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _inv_tuple(inv):
    """A pending invocation as the general code takes it: (index, time, f, value, None)."""
    if type(inv) is Event:
        return (inv.index, inv.time, inv.f, decode_value(inv.value), None)
    return inv


def _ok_send_parts(mop):
    """(key, offset or None, value) of an ok send micro-op ["send", key, [offset, value]]."""
    if mop[0] != "send":
        raise ValueError(f"a send op holds micro-op {mop[0]!r}")
    _, k, x = mop
    if type(k) is not str:
        k = str(k)
    if type(x) is not list:
        return k, None, x
    o, v = x
    if type(o) is not int and o is not None:
        raise TypeError(f"offset {o!r} of key {k} is not an integer")
    return k, o, v


class _Key:
    """Everything known about one key (one partition)."""

    __slots__ = ("log", "voff", "read", "acked", "failed", "info", "unseen",
                 "conflicts", "dups", "maxread", "maxread_op", "acked_max", "attempted",
                 "am_hist")

    def __init__(self):
        self.log = {}        # offset -> first value seen there
        self.voff = None     # value -> offset, built at the end
        self.read = {}       # value -> first ok op that read it
        self.acked = {}      # value -> ok send completion index
        self.failed = {}     # value -> fail send completion index
        self.info = {}       # value -> info send completion index
        self.unseen = set()  # acked values not read (yet)
        self.conflicts = None  # offset -> {value: op}
        self.dups = None       # value -> {offset: op}
        self.maxread = -1      # highest offset of any ok read
        self.maxread_op = None
        self.acked_max = None  # (offset, op, value) highest ok send offset so far
        self.attempted = None  # values only invoked (never completed)
        # Every rise of acked_max, (offset, op, value) in history order. It
        # answers "the highest acknowledged offset when op X was invoked" at X's
        # completion, so invocations need no snapshot.
        self.am_hist = []


class QueueChecker:
    def __init__(self, *, sub_via="assign", txn=False, ww_deps=False, delivery="exactly-once",
                 max_examples=MAX_EXAMPLES):
        if sub_via not in ("assign", "subscribe"):
            raise ValueError(f"sub_via must be assign or subscribe, not {sub_via!r}")
        if delivery not in ("exactly-once", "at-least-once"):
            raise ValueError(f"delivery must be exactly-once or at-least-once, not {delivery!r}")
        # role: "all" (one process does everything), or one half of a two-process
        # check (see checkers/parallel.py): "keys" does the per-key value work,
        # "procs" the per-process order checks and the stats.
        self.role = "all"
        self.lost_raw = []
        self.opts = {"sub-via": sub_via, "txn": bool(txn), "ww-deps": bool(ww_deps),
                     "delivery": delivery}
        self.max_examples = max_examples
        self.keys: dict[str, _Key] = {}
        self.problems: list = []
        self.anoms: dict[str, list] = {}
        self.counts: dict[str, int] = {}
        self.info_sends = []       # (op, [(k, offset, value)]) decided at the end
        self.skip_cands = []       # (kind, k, o1, o2, ops) where o2 > o1 + 1
        self.pending = {}          # process -> (index, time, f, value, None), or its Event (fast path)
        self.pread = {}            # process -> {k: (last offset, op)}
        self.psend = {}            # process -> {k: (last offset, op)}
        self.txn_ops = []          # (op, process, inv_index, writes, reads) for the graph
        self.collect_txn = bool(txn)
        self.stats = StatsCollector()
        self.n_events = 0
        self.any_ok_read = False
        self.next_sample = 0
        self.lines = 0
        self.last_time = None
        self.run_done = None  # type of the harness's run op completion (None: not seen)

    # -- recording ---------------------------------------------------------
    def _add(self, kind, rec):
        self.counts[kind] = self.counts.get(kind, 0) + 1
        lst = self.anoms.setdefault(kind, [])
        if len(lst) < self.max_examples:
            lst.append(rec)

    def _key(self, k):
        ks = self.keys.get(k)
        if ks is None:
            ks = self.keys[k] = _Key()
        return ks

    def _place(self, ks, k, o, v, op):
        """Put value v at offset o of key k in the version order."""
        cur = ks.log.get(o)
        if cur is None:
            ks.log[o] = v
        elif cur != v:
            if ks.conflicts is None:
                ks.conflicts = {}
            c = ks.conflicts.get(o)
            if c is None:
                c = ks.conflicts[o] = {cur: None}
            c.setdefault(v, op)

    def _index_values(self, ks):
        """value -> offset, and values stored at several offsets (duplicates).

        Done once at the end in C-speed bulk operations rather than per record."""
        log = ks.log
        voff = dict(zip(log.values(), log.keys()))
        where = {}
        if len(voff) < len(log):
            counts = Counter(log.values())
            dset = {v for v, n in counts.items() if n > 1}
            for o, v in log.items():
                if v in dset:
                    where.setdefault(v, set()).add(o)
        if ks.conflicts:
            for o, vals in ks.conflicts.items():
                for v in vals:
                    prev = voff.get(v)
                    if prev is None:
                        voff[v] = o
                    elif prev != o:
                        where.setdefault(v, {prev}).add(o)
        for v, offs in where.items():
            voff[v] = min(offs)
        ks.voff = voff
        ks.dups = {v: sorted(offs) for v, offs in where.items()} or None

    # -- the pass ----------------------------------------------------------
    def feed(self, items):
        """items: iterable of (line number, event dict)."""
        with _no_gc():
            self._feed(items)

    def feed_lines(self, lines):
        """Fold raw JSON Lines (bytes) directly: parsing inside the loop saves a
        generator and a tuple per event. Bad lines become problems."""
        with _no_gc():
            self._feed(lines, raw=True)

    def feed_file(self, fh, batch_bytes=BATCH_BYTES):
        """Fold a binary history.jsonl file: blocks of well-formed lines go
        through the fast path (msgspec-decoded Events, values decoded only for
        completions); any block with a bad line is folded line by line, which
        reports each problem with its line number."""
        with _no_gc():
            fast = self.role == "all" and not self.collect_txn
            for _lines, events, block in iter_event_batches(fh, batch_bytes):
                if events is not None and fast:
                    self._feed_events(events)
                else:
                    self._feed(io.BytesIO(block), raw=True)

    def _feed_events(self, events):
        """The fast path of _feed for one block of Events (role "all", no --txn).

        The same decisions as _feed + _poll_fast + _send_one, in one loop with
        everything bound to locals: invocations are only remembered (their
        value stays undecoded unless the completion lacks one), the common
        completions (an ok poll or an ok single-record send) are folded
        inline, and the stats of the block's completions are added in bulk
        at its end. Anything unusual goes through the general code.
        """
        keys = self.keys
        pending = self.pending
        pop = pending.pop
        pread = self.pread
        problems = self.problems
        sample = self.stats.sample
        next_sample = self.next_sample
        fold_poll = self._fold_poll
        fold_ok_send = self._fold_ok_send
        general = self._general_completion
        decode_ok_poll = _decode_ok_poll
        decode_ok_send = _decode_ok_send
        empty_poll = _EMPTY_POLL
        ValidationError = msgspec.ValidationError
        kind_index = self.stats.kind_index
        # Kinds of the two common completions, looked up once they are seen
        # (kinds are numbered in order of first appearance).
        kind_ok_send = self.stats.kind_of.get("send", {}).get("ok")
        kind_ok_poll = self.stats.kind_of.get("poll", {}).get("ok")
        # The block's completions: kind, time and latency, added to the stats at the end.
        kinds = []
        times = []
        lats = []
        for lineno, ev in enumerate(events, self.lines + 1):
            t = ev.type
            if t == "invoke":
                pending[ev.process] = ev
                continue
            p = ev.process
            f = ev.f
            time = ev.time
            inv = pop(p, None)
            if type(inv) is Event:
                lats.append(time - inv.time)
            else:  # invoked in a block the general path folded, or never
                if inv is None:
                    if p != "nemesis":
                        problems.append((lineno, f"completion of process {p} has no invocation"))
                    inv = (None, None, f, None, None)
                lats.append(-1 if inv[1] is None else time - inv[1])
            times.append(time)
            if time >= next_sample:
                sample(time, keys)
                next_sample = time + SAMPLE_NS
            if t != "ok" or (f != "send" and f != "poll"):
                if p == HARNESS:  # the harness's own op: a fact about the history, not a client's
                    times.pop()
                    lats.pop()
                    self._harness_completion(t, f)
                    continue
                kinds.append(kind_index(f, t))
                if f == "send" or f == "poll" or f == "txn" or f == "assign" or f == "subscribe":
                    general(lineno, ev.index, t, p, f, ev, inv)
            elif f == "send":
                if kind_ok_send is None:
                    kind_ok_send = kind_index(f, t)
                kinds.append(kind_ok_send)
                # The common shape, checked by msgspec while decoding: an ok send
                # [["send", key, [offset, value]]] with an integer offset.
                try:
                    ((_, k, (o, v)),) = decode_ok_send(ev.value)
                except ValidationError:
                    general(lineno, ev.index, t, p, f, ev, inv)
                    continue
                fold_ok_send(ev.index, p, k, o, v, inv)
            else:
                if kind_ok_poll is None:
                    kind_ok_poll = kind_index(f, t)
                kinds.append(kind_ok_poll)
                value = ev.value
                if value == empty_poll:
                    continue  # nothing read: nothing to fold
                # The common shape: [["poll", {key: [[offset, value], ...]}]]
                # with integer offsets. Anything else takes the general path.
                try:
                    ((_, polled),) = decode_ok_poll(value)
                except ValidationError:
                    general(lineno, ev.index, t, p, f, ev, inv)
                    continue
                if polled:
                    try:
                        fold_poll(ev.index, p, polled, inv, ev, pread)
                    except (TypeError, ValueError, AttributeError, IndexError, KeyError) as e:
                        problems.append((lineno, f"malformed {f} value ({type(e).__name__}: {e}): "
                                                 f"{str(decode_value(value))[:120]}"))
        self.lines += len(events)
        if events:
            self.n_events = events[-1].index + 1
        self.next_sample = next_sample
        if times:
            self.stats.add_block(kinds, times, lats)
            self.last_time = times[-1]

    def _general_completion(self, lineno, idx, t, p, f, ev, inv, value=_UNSET):
        """A completion the fast path does not fold inline, exactly as _feed would."""
        inv = _inv_tuple(inv)
        if f == "poll" or f == "send" or f == "txn":
            if value is _UNSET:
                value = ev.get("value")
            if value is None:
                value = inv[3]
            if not value:
                return
            try:
                if t == "ok" and len(value) == 1 and not self.collect_txn:
                    if f == "poll":
                        self._poll_fast(idx, p, value[0], inv, ev)
                    elif f == "send":
                        self._send_one(idx, p, value[0], inv)
                    else:
                        self._client_op(idx, t, p, f, value, inv, ev)
                else:
                    self._client_op(idx, t, p, f, value, inv, ev)
            except (TypeError, ValueError, AttributeError, IndexError, KeyError) as e:
                self.problems.append((lineno, f"malformed {f} value ({type(e).__name__}: {e}): {str(value)[:120]}"))
        elif f == "assign" or f == "subscribe":
            if t != "fail":
                self._reassign(p, ev.get("value") or inv[3] or [], bool(ev.get("seek-to-beginning")))

    def _feed(self, items, raw=False):
        keys = self.keys
        pending = self.pending
        st = self.stats
        kind_index = st.kind_index
        kind_append = st.kind.append
        tdone_append = st.t_done.append
        lat_append = st.lat.append
        problems = self.problems
        next_index = self.n_events
        next_sample = self.next_sample
        last_time = self.last_time
        client_op = self._client_op
        role = self.role
        do_stats = role != "keys"
        send_one = {"all": self._send_one, "keys": self._send_keys, "procs": self._send_procs}[role]
        poll_fast = {"all": self._poll_fast, "keys": self._poll_keys, "procs": self._poll_procs}[role]
        collect_txn = self.collect_txn
        loads = orjson.loads
        JSONDecodeError = orjson.JSONDecodeError
        lineno = self.lines
        for ev in items:
            if raw:
                lineno += 1
                try:
                    ev = loads(ev)
                except JSONDecodeError as e:
                    if not ev.strip():
                        continue
                    problems.append((lineno, "truncated last line (the run probably crashed while writing it)"
                                     if not ev.endswith(b"\n") else f"not valid JSON: {e}"))
                    continue
                if type(ev) is not dict:
                    problems.append((lineno, f"expected a JSON object, got {type(ev).__name__}"))
                    continue
            else:
                lineno, ev = ev
            idx = ev.get("index")
            if idx is None:
                idx = next_index
            next_index = idx + 1
            try:
                t = ev["type"]
                p = ev["process"]
                f = ev["f"]
            except KeyError:
                problems.append((lineno, validate_event(ev) or "event lacks type, process or f"))
                continue
            time = ev.get("time")
            if t == "invoke":
                value = ev.get("value")
                pending[p] = (idx, time, f, value, None)
                continue
            if t not in _COMPLETIONS:
                problems.append((lineno, f"field type must be one of invoke, ok, fail, info (got {t!r})"))
                continue
            inv = pending.pop(p, None)
            if inv is None:
                if p != "nemesis":
                    problems.append((lineno, f"completion of process {p} has no invocation"))
                inv = (None, None, f, None, None)
            elif type(inv) is Event:  # invoked in a block the fast path folded
                inv = _inv_tuple(inv)
            if p == HARNESS:  # as the fast path: sampled, not counted
                self._harness_completion(t, f)
                if time is not None and time >= next_sample:
                    st.sample(time, keys)
                    next_sample = time + SAMPLE_NS
                continue
            if do_stats:
                kind_append(kind_index(f, t))
                if time is not None:
                    itime = inv[1]
                    tdone_append(time)
                    lat_append(time - itime if itime is not None else -1)
                else:
                    tdone_append(-1)
                    lat_append(-1)
            if time is not None:
                last_time = time
                if time >= next_sample:
                    st.sample(time, keys)
                    next_sample = time + SAMPLE_NS
            if f == "poll" or f == "send" or f == "txn":
                value = ev.get("value")
                if value is None:
                    value = inv[3]
                if not value:
                    continue
                try:
                    if t == "ok" and len(value) == 1 and not collect_txn:
                        if f == "poll":
                            poll_fast(idx, p, value[0], inv, ev)
                        elif f == "send":
                            send_one(idx, p, value[0], inv)
                        else:
                            client_op(idx, t, p, f, value, inv, ev)
                    else:
                        client_op(idx, t, p, f, value, inv, ev)
                except (TypeError, ValueError, AttributeError, IndexError, KeyError) as e:
                    problems.append((lineno, f"malformed {f} value ({type(e).__name__}: {e}): {str(value)[:120]}"))
            elif f == "assign" or f == "subscribe":
                if t != "fail":
                    self._reassign(p, ev.get("value") or inv[3] or [], bool(ev.get("seek-to-beginning")))
        self.lines = lineno
        self.n_events = next_index
        self.next_sample = next_sample
        self.last_time = last_time

    def _harness_completion(self, t, f):
        if f == RUN_F and self.run_done != "ok":
            self.run_done = t

    def history_cut(self) -> bool:
        """Whether this is a history of acked's runner (it holds the run op) that ends before the final drain
        completed (the run op has no ok completion). Foreign histories have no run op: never cut."""
        if self.run_done == "ok":
            return False
        if self.run_done is not None:
            return True
        inv = self.pending.get(HARNESS)
        return inv is not None and _inv_tuple(inv)[2] == RUN_F

    def _poll_fast(self, idx, p, mop, inv, ev):
        """The common case: an ok poll of one micro-op whose records per key sit
        at consecutive offsets continuing this process's last read."""
        if mop[0] != "poll":
            raise ValueError(f"a poll op holds micro-op {mop[0]!r}")
        if len(mop) < 2:
            return
        polled = mop[1]
        if polled:
            self._fold_poll(idx, p, polled, inv, ev, self.pread)

    def _poll_keys(self, idx, p, mop, inv, ev):
        """_poll_fast's per-key half: version order, reads, unseen, highest read."""
        if mop[0] != "poll":
            raise ValueError(f"a poll op holds micro-op {mop[0]!r}")
        if len(mop) < 2 or not mop[1]:
            return
        self._fold_poll(idx, p, mop[1], inv, ev, None)

    def _fold_poll(self, idx, p, polled, inv, ev, pread):
        """Fold an ok poll's records {key: [[offset, value], ...]}: version
        order, reads, unseen, highest read and, unless pread is None (the
        "keys" half of a two-process check), this process's read position.
        A key whose offsets are not consecutive integers goes to _client_op."""
        keys = self.keys
        if pread is not None:
            pr = pread.get(p)
            if pr is None:
                pr = pread[p] = {}
        for k, pairs in polled.items():
            n = len(pairs)
            if not n:
                continue
            ks = keys.get(k)
            if ks is None:
                ks = keys[k] = _Key()
            first = pairs[0]
            o0 = first[0]
            if n == 1:
                ol, lv = first
                if type(o0) is not int:
                    self._client_op(idx, "ok", p, "poll", [["poll", {k: pairs}]], _inv_tuple(inv), ev)
                    continue
                cur = ks.log.get(o0)
                if cur is None or cur != lv:
                    self._place(ks, k, o0, lv, idx)
                ks.read[lv] = idx
                if ks.unseen:
                    ks.unseen.discard(lv)
            else:
                offs, vals = zip(*pairs)
                if type(o0) is not int or offs != tuple(range(o0, o0 + n)):
                    self._client_op(idx, "ok", p, "poll", [["poll", {k: pairs}]], _inv_tuple(inv), ev)
                    continue
                got = tuple(map(ks.log.get, offs))
                if got != vals:
                    for i, cur in enumerate(got):
                        if cur is None or cur != vals[i]:
                            self._place(ks, k, offs[i], vals[i], idx)
                ks.read.update(dict.fromkeys(vals, idx))
                if ks.unseen:
                    ks.unseen.difference_update(vals)
                ol = offs[-1]
                lv = vals[-1]
            if ol > ks.maxread:
                ks.maxread = ol
                ks.maxread_op = idx
            if pread is not None:
                prev = pr.get(k)
                if prev is not None and o0 != prev[0] + 1:
                    self._poll_step(p, k, prev, o0, idx)
                pr[k] = (ol, idx, lv)
        self.any_ok_read = True

    def _poll_procs(self, idx, p, mop, inv, ev):
        """_poll_fast's per-process half: consumer positions, highest read."""
        if mop[0] != "poll":
            raise ValueError(f"a poll op holds micro-op {mop[0]!r}")
        if len(mop) < 2 or not mop[1]:
            return
        keys = self.keys
        pr = self.pread.get(p)
        if pr is None:
            pr = self.pread[p] = {}
        for k, pairs in mop[1].items():
            n = len(pairs)
            if not n:
                continue
            ks = keys.get(k)
            if ks is None:
                ks = keys[k] = _Key()
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
        self.any_ok_read = True

    def _send_keys(self, idx, p, mop, inv):
        """_send_one's per-key half (for the "keys" process of --jobs 2)."""
        k, o, v = _ok_send_parts(mop)
        ks = self._acked(k, v, idx)
        if o is not None:
            self._log_ok_send(ks, k, o, v, idx)

    def _send_procs(self, idx, p, mop, inv):
        """_send_one's per-process half: offset order and this process's send order."""
        k, o, v = _ok_send_parts(mop)
        if o is not None:
            ks = self.keys.get(k)
            if ks is None:
                ks = self.keys[k] = _Key()
            self._order_ok_send(ks, idx, p, k, o, v, inv)

    def _send_one(self, idx, p, mop, inv):
        """The common case, kept lean: an ok send of a single record."""
        k, o, v = _ok_send_parts(mop)
        if o is None:
            self._acked(k, v, idx)
        else:
            self._fold_ok_send(idx, p, k, o, v, inv)

    def _acked(self, k, v, idx):
        """Value v of key k was acknowledged by op idx: known committed, unseen until read."""
        ks = self.keys.get(k)
        if ks is None:
            ks = self.keys[k] = _Key()
        ks.acked[v] = idx
        if v not in ks.read:
            ks.unseen.add(v)
        return ks

    def _fold_ok_send(self, idx, p, k, o, v, inv):
        """An ok send of value v to key k acknowledged at integer offset o (the fast path's and
        _send_one's common case): acked, unseen, version order, offset order, process order."""
        ks = self._acked(k, v, idx)
        self._log_ok_send(ks, k, o, v, idx)
        self._order_ok_send(ks, idx, p, k, o, v, inv)

    def _log_ok_send(self, ks, k, o, v, idx):
        log = ks.log
        cur = log.get(o)
        if cur is None:
            log[o] = v
        elif cur != v:
            self._place(ks, k, o, v, idx)

    def _order_ok_send(self, ks, idx, p, k, o, v, inv):
        am = ks.acked_max
        if am is None or o > am[0]:
            ks.acked_max = am = (o, idx, v)
            ks.am_hist.append(am)
        elif o < am[0]:
            self._check_offset_order(ks, k, o, v, idx, _inv_tuple(inv)[0])
        ps = self.psend.get(p)
        if ps is None:
            ps = self.psend[p] = {}
        prev = ps.get(k)
        if prev is not None and o <= prev[0]:
            self._nonmonotonic_send(k, p, prev, o, v, idx)
        ps[k] = (o, idx, v)

    def _nonmonotonic_send(self, k, p, prev, o, v, idx):
        self._add("nonmonotonic-send", {
            "key": k, "values": [prev[2], v], "offsets": [prev[0], o],
            "process": p, "ops": [prev[1], idx],
            "explanation": f"process {p} sent {prev[2]!r} to key {k} at offset {prev[0]} "
                           f"(op {prev[1]}), then its later op {idx} sent {v!r} which landed "
                           f"at offset {o}, not after it."})

    def _check_offset_order(self, ks, k, o, v, idx, inv_idx):
        """o is below the key's highest acknowledged offset: was that one
        acknowledged before this send was invoked (offset-order-realtime)?"""
        if inv_idx is None:
            return
        i = bisect_left(ks.am_hist, inv_idx, key=_op_of)
        if i and o < ks.am_hist[i - 1][0]:
            self._offset_order(k, o, v, idx, inv_idx, ks.am_hist[i - 1])

    def _reassign(self, p, value, seek):
        keep = set(map(str, value))
        for table in (self.pread, self.psend):
            d = table.get(p)
            if d:
                if seek:
                    d.clear()
                else:
                    for k in [k for k in d if k not in keep]:
                        del d[k]

    def _client_op(self, idx, t, p, f, value, inv, ev):
        keys = self.keys
        ok = t == "ok"
        writes = None   # k -> [values], for txn analysis
        reads = None
        last_send = None  # k -> offset of previous send in this op
        txn_on = self.collect_txn or f == "txn"
        for mop in value:
            mf = mop[0]
            if mf == "send":
                k = mop[1]
                if type(k) is not str:
                    k = str(k)
                x = mop[2]
                if type(x) is list:
                    o, v = x
                    if type(o) is not int and o is not None:
                        raise TypeError(f"offset {o!r} of key {k} is not an integer")
                else:
                    o, v = None, x
                ks = keys.get(k)
                if ks is None:
                    ks = keys[k] = _Key()
                if self.collect_txn or f == "txn":
                    if writes is None:
                        writes = {}
                    writes.setdefault(k, []).append(v)
                if t == "fail":
                    ks.failed[v] = idx
                    continue
                if ok:
                    ks.acked[v] = idx
                    if v not in ks.read:
                        ks.unseen.add(v)
                    if o is not None:
                        self._place(ks, k, o, v, idx)
                        am = ks.acked_max
                        if am is None or o > am[0]:
                            ks.acked_max = am = (o, idx, v)
                            ks.am_hist.append(am)
                        elif o < am[0]:
                            self._check_offset_order(ks, k, o, v, idx, inv[0])
                else:  # info: committed only if a read proves it; decided at the end
                    ks.info[v] = idx
                    self._info_pending(idx, k, o, v)
                if o is not None:
                    # Order of this process's sends (ok and info), across and inside ops.
                    if last_send is None:
                        last_send = {}
                    lo = last_send.get(k)
                    if lo is not None:
                        if o <= lo[0]:
                            self._add("int-nonmonotonic-send", {
                                "key": k, "values": [lo[1], v], "offsets": [lo[0], o], "ops": [idx],
                                "explanation": f"op {idx} sent {lo[1]!r} then {v!r} to key {k}, but they "
                                               f"landed at offsets {lo[0]} then {o}: the second send is not "
                                               "after the first in the log."})
                        elif o > lo[0] + 1:
                            self.skip_cands.append(("int-send-skip", k, lo[0], o, (idx,), (lo[1], v)))
                    else:
                        ps = self.psend.get(p)
                        if ps is None:
                            ps = self.psend[p] = {}
                        prev = ps.get(k)
                        if prev is not None and o <= prev[0]:
                            self._nonmonotonic_send(k, p, prev, o, v, idx)
                    last_send[k] = (o, v)
                    ps = self.psend.get(p)
                    if ps is None:
                        ps = self.psend[p] = {}
                    ps[k] = (o, idx, v)
            elif mf == "poll":
                if len(mop) < 2:
                    continue  # an invocation's ["poll"]: nothing was returned
                polled = mop[1]
                if not polled:
                    continue
                for k, pairs in polled.items():
                    if not pairs:
                        continue
                    ks = keys.get(k)
                    if ks is None:
                        ks = keys[k] = _Key()
                    log = ks.log
                    if reads is None:
                        reads = {}
                    rk = reads.get(k)
                    prev_o = rk[1] if rk is not None else None
                    pv = rk[2] if rk is not None else None
                    first_o = None
                    hi = ks.maxread
                    rd = ks.read
                    unseen = ks.unseen
                    # Fast path: consecutive offsets, already in the version order.
                    offs, vals = zip(*pairs)
                    o0 = offs[0]
                    n = len(offs)
                    if type(o0) is int and (prev_o is None or o0 == prev_o + 1) \
                            and offs == tuple(range(o0, o0 + n)):
                        got = list(map(log.get, offs))
                        if got != list(vals):
                            for i, cur in enumerate(got):
                                if cur is None or cur != vals[i]:
                                    self._place(ks, k, offs[i], vals[i], idx)
                        last = offs[-1]
                        if ok:
                            rd.update(zip(vals, repeat(idx)))
                            if unseen:
                                unseen.difference_update(vals)
                            if last > ks.maxread:
                                ks.maxread = last
                                ks.maxread_op = idx
                            self.any_ok_read = True
                        if rk is None:
                            reads[k] = [o0, last, vals[-1], list(vals) if txn_on else None]
                        else:
                            rk[1] = last
                            rk[2] = vals[-1]
                            if rk[3] is not None:
                                rk[3].extend(vals)
                        continue
                    for o, v in pairs:
                        if type(o) is not int and o is not None:
                            raise TypeError(f"offset {o!r} of key {k} is not an integer")
                        if o is None:
                            if ok and v not in rd:
                                rd[v] = idx
                                unseen.discard(v)
                            continue
                        cur = log.get(o)
                        if cur is None or cur != v:
                            self._place(ks, k, o, v, idx)
                        if ok:
                            if v not in rd:
                                rd[v] = idx
                                if v in unseen:
                                    unseen.discard(v)
                            if o > hi:
                                hi = o
                        if first_o is None:
                            first_o = o
                            if prev_o is not None:
                                self._int_poll_pair(k, prev_o, o, rk[2], v, idx, ev)
                        elif o != prev_o + 1:
                            self._int_poll_pair(k, prev_o, o, pv, v, idx, ev)
                        prev_o = o
                        pv = v
                    if ok:
                        if hi > ks.maxread:
                            ks.maxread = hi
                            ks.maxread_op = idx
                        self.any_ok_read = True
                    if rk is None:
                        reads[k] = [first_o, prev_o, pv, list(vals) if txn_on else None]
                    else:
                        rk[1] = prev_o
                        rk[2] = pv
                        if rk[3] is not None:
                            rk[3].extend(v for _, v in pairs)
            else:
                raise ValueError(f"unknown micro-op {mf!r}")
        if reads is not None and ok:
            self._poll_order(p, idx, reads)
        if self.collect_txn or f == "txn":
            if self._txn_on(f) and (writes or reads):
                self.txn_ops.append((idx, p, inv[0], t, writes or {},
                                     {k: r[3] for k, r in (reads or {}).items() if r[3] is not None}))

    def _txn_on(self, f):
        return self.collect_txn or f == "txn"

    def _info_pending(self, idx, k, o, v):
        lst = self.info_sends
        if lst and lst[-1][0] == idx:
            lst[-1][1].append((k, o, v))
        else:
            lst.append((idx, [(k, o, v)]))

    def _int_poll_pair(self, k, o1, o2, v1, v2, idx, ev):
        if o1 is None or o2 is None:
            return
        rl = ev.get("rebalance-log")
        if rl:
            try:
                if any(str(x) == k for r in rl for x in (r.get("keys") or [])):
                    return
            except AttributeError:
                pass
        if o2 <= o1:
            self._add("int-nonmonotonic-poll", {
                "key": k, "values": [v1, v2], "offsets": [o1, o2], "ops": [idx],
                "explanation": f"op {idx} read {v1!r} at offset {o1} of key {k} and then {v2!r} at offset {o2}: "
                               "inside one poll the consumer went backwards (or repeated an offset)."})
        elif o2 > o1 + 1:
            self.skip_cands.append(("int-poll-skip", k, o1, o2, (idx,), (v1, v2)))

    def _poll_order(self, p, idx, reads):
        pr = self.pread.get(p)
        if pr is None:
            pr = self.pread[p] = {}
        for k, (first_o, last_o, last_v, _) in reads.items():
            if first_o is None:
                continue
            prev = pr.get(k)
            if prev is not None:
                self._poll_step(p, k, prev, first_o, idx)
            pr[k] = (last_o, idx, last_v)

    def _poll_step(self, p, k, prev, first_o, idx):
        """Compare a poll's first offset of k with where this process's last poll of k ended."""
        o1, op1, v1 = prev
        if first_o <= o1:
            self._add("nonmonotonic-poll", {
                "key": k, "offsets": [o1, first_o], "process": p, "ops": [op1, idx],
                "explanation": f"process {p} read key {k} up to offset {o1} ({v1!r}) in op {op1}; its "
                               f"next poll, op {idx}, started at offset {first_o}: the consumer went "
                               "backwards without an assign or subscribe in between."})
        elif first_o > o1 + 1:
            self.skip_cands.append(("poll-skip", k, o1, first_o, (op1, idx), (v1, None)))

    def _offset_order(self, k, o, v, idx, inv_idx, prior):
        po, pop, pvv = prior
        self._add("offset-order-realtime", {
            "key": k, "values": [pvv, v], "offsets": [po, o], "ops": [pop, idx],
            "explanation": f"op {pop} sent {pvv!r} to key {k} and was acknowledged at offset {po} before op {idx} "
                           f"was invoked (event {inv_idx}); yet op {idx}'s value {v!r} was acknowledged at the lower "
                           f"offset {o}. A log must order a send after every send acknowledged before it began."})

    # -- the analysis ------------------------------------------------------
    def finish(self) -> dict:
        with _no_gc():
            self.finish_keys()
            self._resolve_skips()
            for raw in self.lost_raw:
                self._lost_write(*raw)
            self.lost_raw = []
            return self._results()

    def finish_keys(self):
        """Everything that needs the per-key value state (the "keys" half)."""
        keys = self.keys
        # Ops still running when the history ended are indeterminate (info).
        for p, inv in list(self.pending.items()):
            iidx, itime, f, value, _ = _inv_tuple(inv)
            if f in ("send", "txn") and value:
                for mop in value:
                    try:
                        if mop[0] == "send":
                            k = str(mop[1])
                            x = mop[2]
                            v = x[1] if type(x) is list else x
                            ks = self._key(k)
                            if v not in ks.acked and v not in ks.failed:
                                ks.info.setdefault(v, iidx)
                    except (TypeError, IndexError):
                        pass
        # Info sends join the version order when a read proves they committed.
        committed_info = {}
        for idx, sends in self.info_sends:
            if any(v in keys[k].read for k, _, v in sends):
                for k, o, v in sends:
                    ks = keys[k]
                    committed_info.setdefault(k, {})[v] = idx
                    if o is not None:
                        self._place(ks, k, o, v, idx)
        if self.last_time is not None:
            self.stats.sample(self.last_time, keys)
        role, self.role = self.role, "keys"  # lost writes wait for the skip candidates
        try:
            for k, ks in keys.items():
                self._index_values(ks)
                self._key_anomalies(k, ks, committed_info.get(k, {}))
        finally:
            self.role = role
        if self._txn_present():
            from .txn import analyse_txns
            for kind, rec in analyse_txns(self):
                self._add(kind, rec)

    def _txn_present(self):
        return bool(self.txn_ops)

    def writer_of(self, k, v):
        ks = self.keys.get(k)
        if ks is None:
            return None
        for d in (ks.acked, ks.info, ks.failed):
            w = d.get(v)
            if w is not None:
                return w
        return None

    def _resolve_skips(self):
        sorted_offsets = {}
        for kind, k, o1, o2, ops, vals in self.skip_cands:
            so = sorted_offsets.get(k)
            if so is None:
                so = sorted_offsets[k] = sorted(self.keys[k].log)
            lo = bisect_right(so, o1)
            hi = bisect_left(so, o2)
            if hi <= lo:
                continue  # nothing known between: a gap (aborted write, txn marker)
            skipped = so[lo:hi]
            log = self.keys[k].log
            shown = ", ".join(f"{log[o]!r}@{o}" for o in skipped[:8]) + (" ..." if len(skipped) > 8 else "")
            rec = {"key": k, "offsets": [o1, o2], "skipped-offsets": skipped[:32],
                   "skipped-values": [log[o] for o in skipped[:32]], "delta": hi - lo + 1, "ops": list(ops)}
            if kind == "poll-skip":
                rec["explanation"] = (f"op {ops[0]} read key {k} up to offset {o1}; the same process's next poll, "
                                      f"op {ops[1]}, started at offset {o2}, skipping {len(skipped)} known "
                                      f"record(s): {shown}.")
            elif kind == "int-poll-skip":
                rec["explanation"] = (f"op {ops[0]} read offset {o1} of key {k} and then offset {o2}, skipping "
                                      f"{len(skipped)} known record(s) in between: {shown}.")
            else:
                rec["values"] = list(vals)
                rec["explanation"] = (f"op {ops[0]} sent {vals[0]!r} then {vals[1]!r} to key {k}; they landed at "
                                      f"offsets {o1} and {o2} with {len(skipped)} other record(s) in between: "
                                      f"{shown}.")
            self._add(kind, rec)

    def _covering_read(self, k, o):
        """An op whose read of key k jumped over offset o, for explanations."""
        for kind, kk, o1, o2, ops, _ in self.skip_cands:
            if kk == k and o1 < o < o2 and kind != "int-send-skip":
                return ops[-1], o1, o2
        return None

    def _key_anomalies(self, k, ks, committed_info):
        add = self._add
        if ks.conflicts:
            for o in sorted(ks.conflicts):
                vals = ks.conflicts[o]
                parts, ops = [], []
                for v, op in vals.items():
                    w = self.writer_of(k, v)
                    src = op if op is not None else (ks.acked.get(v) if ks.acked.get(v) is not None
                                                    else ks.read.get(v))
                    if src is not None:
                        ops.append(src)
                    parts.append(f"{v!r} (op {src})" + ("" if w is None or w == src else f", sent by op {w}"))
                add("inconsistent-offsets", {
                    "key": k, "offset": o, "values": list(vals), "ops": sorted(set(ops)),
                    "explanation": f"offset {o} of key {k} holds {len(vals)} different values: "
                                   + "; ".join(parts) + ". A log offset can hold only one record."})
        if ks.dups:
            for v, osorted in ks.dups.items():
                w = self.writer_of(k, v)
                ops = sorted({x for x in (w, ks.read.get(v)) if x is not None})
                add("duplicate", {
                    "key": k, "value": v, "offsets": osorted, "count": len(osorted), "ops": ops,
                    "explanation": f"value {v!r} of key {k} appears at {len(osorted)} offsets "
                                   f"({', '.join(map(str, osorted))})"
                                   + (f"; op {w} sent it" if w is not None else "")
                                   + (f", op {ks.read[v]} read it" if v in ks.read else "")
                                   + ": it was stored more than once."})
        rd = ks.read
        if ks.failed:
            for v in ks.failed.keys() & rd.keys():
                add("G1a", {
                    "key": k, "value": v, "ops": [ks.failed[v], rd[v]],
                    "explanation": f"op {ks.failed[v]} sent {v!r} to key {k} and failed (certainly not written), "
                                   f"yet op {rd[v]} polled {v!r}: an aborted write was read."})
        unexpected = rd.keys() - ks.acked.keys() - ks.info.keys() - ks.failed.keys()
        for v in unexpected:
            add("unexpected-value", {
                "key": k, "value": v, "offset": ks.voff.get(v), "ops": [rd[v]],
                "explanation": f"op {rd[v]} polled {v!r} from key {k}"
                               + (f" at offset {ks.voff[v]}" if v in ks.voff else "")
                               + ", but no op ever sent that value to that key."})
        # lost-write: committed, placed at or below the highest offset any ok read reached, never read.
        if ks.maxread >= 0:
            bound = ks.maxread
            cands = list(ks.unseen) + [v for v in committed_info if v not in rd]
            for v in cands:
                o = ks.voff.get(v)
                if o is None or o > bound:
                    continue
                w = ks.acked.get(v)
                how = "acknowledged" if w is not None else "sent (info) and proven committed"
                if w is None:
                    w = committed_info.get(v)
                raw = (k, v, o, how, w, bound, ks.maxread_op)
                if self.role == "keys":
                    self.lost_raw.append(raw)  # the other half knows which reads jumped over it
                else:
                    self._lost_write(*raw)
        if ks.unseen:
            vals = sorted(ks.unseen, key=_sort_key)
            add("unseen", {
                "key": k, "count": len(vals), "values": vals[:32],
                "ops": sorted(ks.acked[v] for v in vals[:32]),
                "explanation": f"{len(vals)} value(s) acknowledged to key {k} were never read by the end of "
                               f"the history (for example {', '.join(repr(v) for v in vals[:5])}; op "
                               f"{ks.acked[vals[0]]} acknowledged {vals[0]!r})."})

    def _lost_write(self, k, v, o, how, w, bound, maxread_op):
        cover = self._covering_read(k, o)
        ops = [w]
        text = f"value {v!r} was {how} at offset {o} of key {k} (op {w}); "
        if cover is not None:
            ops.append(cover[0])
            text += f"op {cover[0]} read offsets {cover[1]} to {cover[2]} of key {k} without it; "
        if cover is None or cover[0] != maxread_op:
            ops.append(maxread_op)
            text += f"op {maxread_op} read key {k} up to offset {bound}; "
        text += "no read ever returned it."
        self._add("lost-write", {"key": k, "value": v, "offset": o, "max-read-offset": bound,
                                 "ops": ops, "explanation": text})

    def allowed_types(self) -> set:
        return set(self.allowed_reasons())

    def allowed_reasons(self) -> dict[str, str]:
        """Anomaly types that do not make the run invalid, each with the setting that allows it. They are
        still counted and listed: a finding the user declared acceptable is shown, never dropped."""
        why = dict.fromkeys(ALWAYS_ALLOWED, "not an anomaly of Kafka's model (Jepsen reports it for reference)")
        if self.opts["sub-via"] == "subscribe":
            why.update(dict.fromkeys(("poll-skip", "nonmonotonic-poll"),
                                     "sub-via=subscribe: a rebalance may move a consumer's position"))
        if self.opts["ww-deps"]:
            why.update(dict.fromkeys(("G1c", "G1c-process", "G1c-realtime"), "ww-deps: write-write edges are inferred"))
        if self.opts["delivery"] == "at-least-once":
            why["duplicate"] = "delivery=at-least-once was declared for this run"
        if self.history_cut():
            why["unseen"] = CUT_REASON
        return why

    def _results(self, totals=None) -> dict:
        if totals is None:
            totals = _totals(self)
        types = sorted(self.counts)
        reasons = self.allowed_reasons()
        bad = [t for t in types if t not in reasons]
        unknown_reason = None
        if bad:
            valid = False
        elif not self.any_ok_read:
            valid = "unknown"
            unknown_reason = "no poll completed ok with any record, so nothing could be verified"
        elif "unseen" in self.counts and self.history_cut():
            valid = "unknown"
            n = totals["acknowledged-but-never-read"]
            unknown_reason = (f"the history ends before the final drain completed, so the {n} unseen value(s) "
                              "may only not have been read yet (every other anomaly type was checked: none makes the "
                              "history invalid)")
        else:
            valid = True
        stats = self.stats.summary()
        stats["events"] = self.n_events
        stats.update(totals)
        res = {
            "valid": valid,
            "anomaly-types": types,
            "bad-anomaly-types": bad,
            "allowed-anomalies": {t: r for t, r in reasons.items() if t in self.counts},
            "anomaly-counts": dict(sorted(self.counts.items())),
            "anomalies": {t: self.anoms[t] for t in types},
            "options": dict(self.opts),
            "history-problems": [{"line": ln, "message": m} for ln, m in self.problems[:100]],
            "history-problem-count": len(self.problems),
            "stats": stats,
            "perf": self.stats.series(),
        }
        if self.history_cut():
            res["history-cut"] = True
        if unknown_reason is not None:
            res["unknown-reason"] = unknown_reason
        return res


def totals(chk) -> dict:
    """Kafka system-test style totals: acknowledged, read, acknowledged-but-never-read."""
    acked = read_acked = 0
    for ks in chk.keys.values():
        acked += len(ks.acked)
        read_acked += len(ks.acked) - len(ks.unseen)
    return {
        "keys": len(chk.keys),
        "acknowledged": acked,
        "read": sum(len(ks.read) for ks in chk.keys.values()),
        "acknowledged-and-read": read_acked,
        "acknowledged-but-never-read": acked - read_acked,
        "unseen-by-key": {k: len(ks.unseen) for k, ks in sorted(chk.keys.items()) if ks.unseen},
    }


_totals = totals


def _sort_key(v):
    return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))
