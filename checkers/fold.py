"""The queue checker's single pass: it folds a history into per-key and per-process indexes.

Jepsen's Kafka checker (jepsen.tests.kafka `analysis`) first derives indexes from the history -- op-reads,
writer-of, readers-of, version-orders, by-process -- and then runs one small function per anomaly type over
them. This module is acked's first half: one pass over the events fills a `Fold` (a million events fold in
seconds); checkers/cases.py holds the functions of it, checkers/queue.py turns their findings into results.

The pass keeps per-key dictionaries (offset -> value, value -> op index) and, per process, where its last
poll and send of each key ended. It does not judge: where two consecutive reads (or sends) of a key do not
continue each other it records the step, and the analyses decide at the end, with the whole version order
known, whether the step skipped something or went backwards.

"read" below means returned by a poll (or txn) that completed ok; the version order (which value sits at
which offset) is built from ok sends, info sends proven committed (one of their values was read), and every
poll whatever its outcome, exactly as Jepsen does.

`HistoryPass` folds everything, with a fast path for well-formed history.jsonl blocks. (A two-process split of
it, `acked check --jobs 2`, was removed in issue 16 part 2: both processes decoded the whole file, and it was
slower than one.)
"""
from __future__ import annotations

import gc
import io
from bisect import bisect_left
from collections import Counter
from contextlib import contextmanager
from itertools import filterfalse, repeat
from operator import itemgetter
from typing import Literal

import msgspec
import orjson

from .history import BATCH_BYTES, HARNESS, RUN_F, Event, decode_value, iter_event_batches, validate_event
from .stats import StatsCollector

SAMPLE_NS = 250_000_000  # unseen/offset progress sampled every 250 ms of history time
#: A key's canonical prefix (KeyIndex.recs, canon) is extended once the records re-read outside it outnumber the
#: records to add this many times: values read once or twice stay cheaper decoded.
REREAD_FACTOR = 2
_COMPLETIONS = frozenset(("ok", "fail", "info"))
_MALFORMED = (TypeError, ValueError, AttributeError, IndexError, KeyError)

_UNSET = object()
_NO_READS: dict = {}  # shared, never changed: the reads of a graph vertex that polled nothing
# An ok poll with each key's records left as raw JSON, and one key's records.
_decode_ok_poll = msgspec.json.Decoder(tuple[tuple[Literal["poll"], dict[str, msgspec.Raw]]]).decode
_decode_pairs = msgspec.json.Decoder(list[tuple[int, int | str]]).decode
_decode_ok_poll_full = msgspec.json.Decoder(
    tuple[tuple[Literal["poll"], dict[str, list[tuple[int, int | str]]]]]).decode
_decode_ok_send = msgspec.json.Decoder(tuple[tuple[Literal["send"], str, tuple[int, int | str]]]).decode
_op_of = itemgetter(1)
_EMPTY_POLL = msgspec.Raw(b'[["poll",{}]]')


@contextmanager
def no_gc():
    """The checker allocates millions of small objects and frees none in
    cycles; the cyclic GC would rescan them over and over."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_first(rd, vals, idx):
    """Op idx read vals: rd[v] = idx for each v not read before (rd keeps each value's first reader)."""
    if rd.keys().isdisjoint(vals):
        rd.update(dict.fromkeys(vals, idx))
    else:
        rd.update(zip(filterfalse(rd.__contains__, vals), repeat(idx)))


def _read_run(ks, o0, end, idx):
    """Op idx read key ks's records o0 .. end - 1, recognised byte for byte as continuing its consumer's
    position: fold the reads of the values not read before (first reader, unseen, highest read) and return
    the consumer's new position (last offset, op, value)."""
    ol = end - 1
    rdone = ks.rdone
    if ol >= rdone:
        new = ks.vals[o0 if o0 > rdone else rdone:end]
        _read_first(ks.read, new, idx)
        if ks.unseen:
            ks.unseen.difference_update(new)
        if o0 <= rdone:
            ks.rdone = end
        if ol > ks.maxread:
            ks.maxread = ol
            ks.maxread_op = idx
    return (ol, idx, ks.vals[ol])


def _inv_tuple(inv):
    """A pending invocation as the general code takes it: (index, time, f, value, None)."""
    if type(inv) is Event:
        return (inv.index, inv.time, inv.f, decode_value(inv.value), None)
    return inv


def _send_parts(mop):
    """(key, offset or None, value) of a send micro-op: ["send", key, [offset, value]] or ["send", key, value]."""
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


def polled_records(mop):
    """The records {key: [[offset, value], ...]} of an ok poll's micro-op ["poll", records]; None if it
    returned nothing."""
    if mop[0] != "poll":
        raise ValueError(f"a poll op holds micro-op {mop[0]!r}")
    return mop[1] if len(mop) > 1 else None


def _malformed(lineno, f, e, value):
    """The problem a micro-op of the wrong shape makes."""
    return lineno, f"malformed {f} value ({type(e).__name__}: {e}): {str(value)[:120]}"


class KeyIndex:
    """Everything known about one key (one partition)."""

    __slots__ = ("log", "voff", "read", "acked", "failed", "info", "unseen",
                 "conflicts", "dups", "maxread", "maxread_op", "acked_max", "am_hist", "recs", "vals", "canon",
                 "cpos", "cend", "rdone", "rereads", "hot")

    def __init__(self):
        self.log = {}        # offset -> first value seen there
        self.voff = None     # value -> offset, built when the pass closes
        self.read = {}       # value -> first ok op that read it
        self.acked = {}      # value -> ok send completion index
        self.failed = {}     # value -> fail send completion index
        self.info = {}       # value -> info send completion index
        self.unseen = set()  # acked values not read (yet)
        self.conflicts = None  # offset -> {value: op}
        self.dups = None       # value -> [offsets]
        self.maxread = -1      # highest offset of any ok read
        self.maxread_op = None
        self.acked_max = None  # (offset, op, value) highest ok send offset so far
        # Every rise of acked_max, (offset, op, value) in history order. It
        # answers "the highest acknowledged offset when op X was invoked" at X's
        # completion, so invocations need no snapshot.
        self.am_hist = []
        # The version order's dense prefix, offsets 0, 1, ... as far as the log holds an int or str at each,
        # extended as the log grows (`extend_recs`); a log offset keeps its first value, so the prefix never
        # changes. recs: (offset, value) records; vals: the values; canon: the records as the harness writes
        # them, '[offset,value],' each; cpos: where each record starts in canon, and its end; cend: where each
        # record ends in canon -> the offset after it. Every value of an offset below rdone was read. Built
        # only for a key whose re-reads outnumbered its records (_fold_poll), which makes it `hot`.
        self.recs = []
        self.vals = []
        self.canon = bytearray()
        self.cpos = [0]
        self.cend = {}  # where in canon each record ends (with its comma) -> the offset after it
        self.rdone = 0
        self.rereads = 0  # records re-read outside the prefix since it was last extended
        self.hot = False  # re-read enough once: the prefix is extended whenever a poll reaches past it

    def extend_recs(self):
        """Extend the dense prefix over the offsets the log now holds."""
        log = self.log
        recs = self.recs
        vals = self.vals
        canon = self.canon
        cpos = self.cpos
        cend = self.cend
        o = len(recs)
        v = log.get(o)
        while v is not None:
            if type(v) is int:
                canon += b"[%d,%d]," % (o, v)
            elif type(v) is str:
                canon += orjson.dumps((o, v))
                canon += b","
            else:
                break
            recs.append((o, v))
            vals.append(v)
            o += 1
            cpos.append(len(canon))
            cend[len(canon)] = o
            v = log.get(o)

    def place(self, o, v, op):
        """Put value v at offset o in the version order; a second value there is a conflict."""
        cur = self.log.get(o)
        if cur is None:
            self.log[o] = v
        elif cur != v:
            if self.conflicts is None:
                self.conflicts = {}
            c = self.conflicts.get(o)
            if c is None:
                c = self.conflicts[o] = {cur: None}
            c.setdefault(v, op)

    def index_values(self):
        """value -> offset, and values stored at several offsets (duplicates).

        Done once at the end in C-speed bulk operations rather than per record."""
        log = self.log
        voff = dict(zip(log.values(), log.keys()))
        where = {}
        if len(voff) < len(log):
            counts = Counter(log.values())
            dset = {v for v, n in counts.items() if n > 1}
            for o, v in log.items():
                if v in dset:
                    where.setdefault(v, set()).add(o)
        if self.conflicts:
            for o, vals in self.conflicts.items():
                for v in vals:
                    prev = voff.get(v)
                    if prev is None:
                        voff[v] = o
                    elif prev != o:
                        where.setdefault(v, {prev}).add(o)
        for v, offs in where.items():
            voff[v] = min(offs)
        self.voff = voff
        self.dups = {v: sorted(offs) for v, offs in where.items()} or None

    def below_acked_max(self, o, op, v) -> bool:
        """Op `op` acknowledged value v at offset o: raise the highest acknowledged offset, or say whether o
        is below it (then the offset order in real time is to be checked)."""
        am = self.acked_max
        if am is None or o > am[0]:
            self.acked_max = am = (o, op, v)
            self.am_hist.append(am)
            return False
        return o < am[0]

    def writer(self, v):
        """The op that sent value v (ok, else info, else failed), or None."""
        for d in (self.acked, self.info, self.failed):
            w = d.get(v)
            if w is not None:
                return w
        return None


class Fold:
    """What one pass learned from a history: the indexes every analysis reads.

    Steps are tuples (scope, key, o1, o2, ops, v1, v2, process), kept in history order:
    scope "poll" (a process's poll of a key did not start right after where its last ok poll of the key
    ended), "int-poll" (consecutive records of a key in one op do not continue each other), "send" (a
    process's send landed at or before its previous send to the key) and "int-send" (two sends of one op).
    """

    def __init__(self, opts: dict):
        self.opts = opts
        self.keys: dict[str, KeyIndex] = {}
        self.read_pos = {}     # process -> {k: (last offset, op, value)} where its last ok poll of k ended
        self.send_pos = {}     # process -> {k: (offset, op, value)} its last send to k
        self.read_steps = []   # steps of scope "poll" and "int-poll"
        self.send_steps = []   # steps of scope "send" and "int-send"
        self.offset_order = []  # (k, offset, value, op, invocation index, (offset, op, value) acked before it)
        self.info_sends = []   # (op, [(k, offset, value)]): committed if a read proves it, decided at the end
        self.committed_info = {}  # k -> {value: op} of info sends proven committed, filled when the pass closes
        self.txn_ops = []      # (op, process, invocation index, type, writes, reads) for the dependency graph
        self.pending = {}      # process -> (index, time, f, value, None), or its Event (fast path)
        self.problems: list = []
        self.stats = StatsCollector()
        self.n_events = 0
        self.any_ok_read = False
        self.last_time = None  # time of the last completion; its state is sampled at the next one or at close
        self.run_done = None   # type of the harness's run op completion (None: not seen)
        self._sorted_offsets = {}

    def key(self, k) -> KeyIndex:
        ks = self.keys.get(k)
        if ks is None:
            ks = self.keys[k] = KeyIndex()
        return ks

    def acked(self, k, v, idx) -> KeyIndex:
        """Value v of key k was acknowledged by op idx: known committed, unseen until read."""
        ks = self.keys.get(k)
        if ks is None:
            ks = self.keys[k] = KeyIndex()
        ks.acked[v] = idx
        if v not in ks.read:
            ks.unseen.add(v)
        return ks

    def writer_of(self, k, v):
        ks = self.keys.get(k)
        return None if ks is None else ks.writer(v)

    def offset_of(self, k, v):
        """The offset where the version order holds value v of key k (its lowest), or None."""
        ks = self.keys.get(k)
        if ks is None:
            return None
        if ks.voff is None:  # before the pass closed: index the log on demand
            ks.index_values()
        return ks.voff.get(v)

    def sorted_offsets(self, k) -> list:
        """The known offsets of key k, sorted (computed once, after the pass)."""
        so = self._sorted_offsets.get(k)
        if so is None:
            so = self._sorted_offsets[k] = sorted(self.keys[k].log)
        return so

    def history_cut(self) -> bool:
        """Whether this is a history of acked's runner (it holds the run op) that ends before the final drain
        completed (the run op has no ok completion). Foreign histories have no run op: never cut."""
        if self.run_done == "ok":
            return False
        if self.run_done is not None:
            return True
        inv = self.pending.get(HARNESS)
        return inv is not None and _inv_tuple(inv)[2] == RUN_F


class HistoryPass:
    """The pass that fills a Fold: per-key facts (version order, reads, acknowledgements) and per-process
    facts (positions, steps, stats) together. A subclass that folds only part of it overrides `_send_one` and
    `_poll_one`, the two common completions, and turns off what it does not need."""

    #: well-formed history.jsonl blocks go through _feed_events (else line by line through _feed)
    fast_path = True
    #: completions are counted for stats and latency series
    counts_stats = True

    def __init__(self, fold: Fold, collect_txn: bool):
        self.fold = fold
        self.collect_txn = collect_txn
        self.lines = 0
        self.next_sample = 0
        self._poll_mode = (0, 0)  # the fast path's polls with nothing recognised in a row, polls to decode whole

    # -- feeding -----------------------------------------------------------
    def feed(self, items):
        """items: iterable of (line number, event dict)."""
        with no_gc():
            self._feed(items)

    def feed_lines(self, lines):
        """Fold raw JSON Lines (bytes) directly. Bad lines become problems."""
        with no_gc():
            self._feed(lines, raw=True)

    def feed_file(self, fh, batch_bytes=BATCH_BYTES):
        """Fold a binary history.jsonl file: blocks of well-formed lines go
        through the fast path (msgspec-decoded Events, values decoded only for
        completions); any block with a bad line is folded line by line, which
        reports each problem with its line number."""
        with no_gc():
            fast = self.fast_path and not self.collect_txn
            for _lines, events, block in iter_event_batches(fh, batch_bytes):
                if events is not None and fast:
                    self._feed_events(events)
                else:
                    self._feed(io.BytesIO(block), raw=True)

    def _feed_events(self, events):
        """The fast path of _feed for one block of Events (no --txn).

        The same decisions as _feed + _poll_one + _send_one, in one loop with
        everything bound to locals: invocations are only remembered (their
        value stays undecoded unless the completion lacks one), the common
        completions (an ok poll or an ok single-record send) are folded
        inline, and the stats of the block's completions are added in bulk
        at its end. Anything unusual goes through the general code.
        """
        fold = self.fold
        keys = fold.keys
        pending = fold.pending
        pop = pending.pop
        read_pos = fold.read_pos
        problems = fold.problems
        stats = fold.stats
        sample = stats.sample
        next_sample = self.next_sample
        # The last completion's time: its state is sampled when the next completion comes (or at close).
        due = fold.last_time if fold.last_time is not None else -1
        fold_poll = self._fold_poll
        fold_poll_raw = self._fold_poll_raw
        decode_ok_poll_full = _decode_ok_poll_full
        misses, whole_left = self._poll_mode
        fold_ok_send = self._fold_ok_send
        general = self._general_completion
        decode_ok_poll = _decode_ok_poll
        decode_ok_send = _decode_ok_send
        empty_poll = _EMPTY_POLL
        ValidationError = msgspec.ValidationError
        kind_index = stats.kind_index
        # Kinds of the two common completions, looked up once they are seen
        # (kinds are numbered in order of first appearance).
        kind_ok_send = stats.kind_of.get("send", {}).get("ok")
        kind_ok_poll = stats.kind_of.get("poll", {}).get("ok")
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
            if due >= next_sample:
                sample(due, keys)
                next_sample = due + SAMPLE_NS
            due = time
            times.append(time)
            if t != "ok" or (f != "send" and f != "poll"):
                self._other_completion(lineno, ev, t, p, f, inv, kinds, times, lats)
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
                # Records a poll re-reads are recognised undecoded where they can be (_fold_poll_raw); after
                # a run of polls with nothing recognised, the next `whole_left` are decoded whole at once, which
                # is cheaper for those (the two ways decide the same).
                try:
                    if whole_left:
                        whole_left -= 1
                        ((_, polled),) = decode_ok_poll_full(value)
                        if polled:
                            fold_poll(ev.index, p, polled, inv, ev, read_pos)
                    else:
                        ((_, polled),) = decode_ok_poll(value)
                        if polled:
                            if fold_poll_raw(ev.index, p, polled, inv, ev, read_pos, value):
                                misses = 0
                            else:
                                misses += 1
                                if misses == 8:
                                    misses = 0
                                    whole_left = 256
                except ValidationError:  # raised before anything was folded
                    general(lineno, ev.index, t, p, f, ev, inv)
                except _MALFORMED as e:
                    problems.append(_malformed(lineno, f, e, decode_value(value)))
        self._poll_mode = misses, whole_left
        self.lines += len(events)
        if events:
            fold.n_events = events[-1].index + 1
        self.next_sample = next_sample
        if due != -1:
            fold.last_time = due
        if times:
            stats.add_block(kinds, times, lats)

    def _other_completion(self, lineno, ev, t, p, f, inv, kinds, times, lats):
        """The fast path's rarer completions: fail, info, assign, crash, nemesis and the harness's run op."""
        if p == HARNESS:  # the harness's own op: a fact about the history, not a client's
            times.pop()
            lats.pop()
            self._harness_completion(t, f)
            return
        kinds.append(self.fold.stats.kind_index(f, t))
        if f == "send" or f == "poll" or f == "txn" or f == "assign" or f == "subscribe":
            self._general_completion(lineno, ev.index, t, p, f, ev, inv)

    def _feed(self, items, raw=False):
        """The general path: event dicts (or raw lines), every field checked."""
        fold = self.fold
        keys = fold.keys
        pending = fold.pending
        st = fold.stats
        kind_index = st.kind_index
        kind_append = st.kind.append
        tdone_append = st.t_done.append
        lat_append = st.lat.append
        problems = fold.problems
        next_index = fold.n_events
        next_sample = self.next_sample
        last_time = fold.last_time
        completion = self._general_completion
        poll_one = self._poll_one
        send_one = self._send_one
        single = not self.collect_txn  # an ok poll or send of one micro-op takes the short way
        counts_stats = self.counts_stats
        lineno = self.lines
        loads = orjson.loads
        JSONDecodeError = orjson.JSONDecodeError
        for ev in items:
            if raw:
                lineno += 1
                try:
                    ev = loads(ev)
                except JSONDecodeError as e:
                    if ev.strip():
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
                pending[p] = (idx, time, f, ev.get("value"), None)
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
            if time is not None:  # the previous completion's state is sampled now, after it was folded
                if last_time is not None and last_time >= next_sample:
                    st.sample(last_time, keys)
                    next_sample = last_time + SAMPLE_NS
                last_time = time
            if p == HARNESS:  # as the fast path: sampled, not counted
                self._harness_completion(t, f)
                continue
            if counts_stats:
                kind_append(kind_index(f, t))
                tdone_append(-1 if time is None else time)
                lat_append(-1 if time is None or inv[1] is None else time - inv[1])
            if f == "poll" or f == "send":
                value = ev.get("value")
                if value is None:
                    value = inv[3]
                if single and t == "ok" and value and len(value) == 1:
                    try:
                        if f == "poll":
                            poll_one(idx, p, value[0], inv, ev)
                        else:
                            send_one(idx, p, value[0], inv)
                    except _MALFORMED as e:
                        problems.append(_malformed(lineno, f, e, value))
                    continue
                completion(lineno, idx, t, p, f, ev, inv, value)
            elif f == "txn" or f == "assign" or f == "subscribe":
                completion(lineno, idx, t, p, f, ev, inv)
        self.lines = lineno
        fold.n_events = next_index
        self.next_sample = next_sample
        fold.last_time = last_time

    def _general_completion(self, lineno, idx, t, p, f, ev, inv, value=_UNSET):
        """Fold one completion of a client op (send, poll, txn, assign, subscribe); others are only counted."""
        if type(inv) is Event:
            inv = _inv_tuple(inv)
        if f == "poll" or f == "send" or f == "txn":
            if value is _UNSET:
                value = ev.get("value")
                if value is None:
                    value = inv[3]
            if not value:
                return
            try:
                if t == "ok" and len(value) == 1 and not self.collect_txn and f != "txn":
                    if f == "poll":
                        self._poll_one(idx, p, value[0], inv, ev)
                    else:
                        self._send_one(idx, p, value[0], inv)
                else:
                    self._client_op(idx, t, p, f, value, inv, ev)
            except _MALFORMED as e:
                self.fold.problems.append(_malformed(lineno, f, e, value))
        elif f == "assign" or f == "subscribe":
            if t != "fail":
                self._reassign(p, ev.get("value") or inv[3] or [], bool(ev.get("seek-to-beginning")))

    def _harness_completion(self, t, f):
        if f == RUN_F and self.fold.run_done != "ok":
            self.fold.run_done = t

    # -- the two common completions ------------------------------------------
    def _poll_one(self, idx, p, mop, inv, ev):
        """An ok poll of one micro-op."""
        polled = polled_records(mop)
        if polled:
            self._fold_poll(idx, p, polled, inv, ev, self.fold.read_pos)

    def _send_one(self, idx, p, mop, inv):
        """An ok send of a single record."""
        k, o, v = _send_parts(mop)
        if o is None:  # no offset reported: its place in the process's send order is inferred at the end
            self._order_ok_send(self.fold.acked(k, v, idx), idx, p, k, o, v, inv)
        else:
            self._fold_ok_send(idx, p, k, o, v, inv)

    def _fold_poll_raw(self, idx, p, polled, inv, ev, read_pos, value):
        """The fast path's ok poll, {key: raw JSON of its records}; value: the whole op's raw value.

        Records of a key that continue where this process's last poll of it ended and hold the values the
        version order has there are byte for byte a slice of the key's `canon` (its canonical prefix, built
        once re-reads of the key outweigh it: _fold_poll): recognised without decoding them. The other keys'
        records are decoded (all before anything is folded: a shape msgspec rejects raises ValidationError, and
        the whole op takes the general path) and folded by _fold_poll, key by key in order; a poll with nothing
        recognised is decoded and folded whole. Decides exactly what _fold_poll decides. Returns whether any
        key's records were recognised."""
        keys = self.fold.keys
        pr = read_pos.get(p)
        if pr is None:
            ((_, polled),) = _decode_ok_poll_full(value)
            self._fold_poll(idx, p, polled, inv, ev, read_pos)
            return False
        # Keys recognised before the first that is not are folded at once (undo: their positions, should a
        # later key fail to decode: everything else they did the general path does again alike); from the
        # first key not recognised on, keys are planned and folded in order once all of them decoded.
        undo = None
        plan = None
        matched = False
        for k, raw in polled.items():
            prev = pr.get(k)
            how = None
            if prev is not None:
                o0 = prev[0]
                if type(o0) is int:
                    o0 += 1
                    ks = keys[k]
                    cpos = ks.cpos
                    end = None
                    if 0 <= o0 < len(cpos) - 1:
                        s = cpos[o0]
                        e = s + len(raw) - 1  # where the record after the last starts
                        end = ks.cend.get(e)
                        if end is None and e > cpos[-1] and ks.hot:
                            ks.extend_recs()
                            end = ks.cend.get(e)
                    elif o0 >= 0 and ks.hot:
                        ks.extend_recs()
                        if o0 < len(cpos) - 1:
                            s = cpos[o0]
                            end = ks.cend.get(s + len(raw) - 1)
                    if end is not None:
                        if ks.canon.startswith(bytes(raw)[1:-1], s):
                            if plan is None:  # records o0 .. end - 1, continuing the position: fold now
                                pr[k] = _read_run(ks, o0, end, idx)
                                if undo is None:
                                    undo = [(k, prev)]
                                else:
                                    undo.append((k, prev))
                                continue
                            how = (ks, o0, end)
                            matched = True
            if plan is None:
                plan = [(k, raw, how)]
            else:
                plan.append((k, raw, how))
        if plan is not None:
            if undo is None and not matched:  # nothing recognised: decoded whole
                ((_, polled),) = _decode_ok_poll_full(value)
                self._fold_poll(idx, p, polled, inv, ev, read_pos)
                return False
            try:
                plan = [(k, _decode_pairs(raw) if how is None else how) for k, raw, how in plan]
            except msgspec.ValidationError:
                for k, prev in undo or ():
                    pr[k] = prev
                raise
            for k, how in plan:
                if type(how) is not tuple:
                    if how:
                        self._fold_poll(idx, p, {k: how}, inv, ev, read_pos)
                    continue
                ks, o0, end = how
                pr[k] = _read_run(ks, o0, end, idx)
        self.fold.any_ok_read = True
        return True

    def _fold_poll(self, idx, p, polled, inv, ev, read_pos):
        """Fold an ok poll's records {key: [[offset, value], ...]}: version
        order, reads, unseen, highest read and, unless read_pos is None (the
        per-key half of a two-process check), this process's read position.
        A key whose offsets are not consecutive integers goes to _client_op."""
        keys = self.fold.keys
        if read_pos is not None:
            pr = read_pos.get(p)
            if pr is None:
                pr = read_pos[p] = {}
        for k, pairs in polled.items():
            n = len(pairs)
            if not n:
                continue
            ks = keys.get(k)
            if ks is None:
                ks = keys[k] = KeyIndex()
            first = pairs[0]
            o0 = first[0]
            # Records at consecutive offsets of the key's canonical prefix that hold the values the version
            # order has there (a re-read the fast path decoded: its tuples equal a slice of `recs`; the general
            # path's lists never do and take the branches below, which decide the same). Nothing to place; a
            # re-read below `rdone` leaves reads and unseen alone.
            recs = ks.recs
            if recs and type(o0) is int and o0 >= 0:
                end = o0 + n
                if end <= len(recs) and recs[o0:end] == pairs:
                    pos = _read_run(ks, o0, end, idx)   # reads, unseen, highest read of what was not read before
                    if read_pos is not None:
                        prev = pr.get(k)
                        if prev is not None and o0 != prev[0] + 1:
                            self._poll_step(p, k, prev, o0, idx)
                        pr[k] = pos
                    continue
            if type(o0) is int and o0 <= ks.maxread:  # a re-read outside the canonical prefix
                ks.rereads += n
                if ks.rereads > REREAD_FACTOR * (len(ks.log) - len(recs)):
                    ks.rereads = 0
                    ks.hot = True
                    ks.extend_recs()
            if n == 1:
                ol, lv = first
                if type(o0) is not int:
                    self._client_op(idx, "ok", p, "poll", [["poll", {k: pairs}]], _inv_tuple(inv), ev)
                    continue
                cur = ks.log.get(o0)
                if cur is None or cur != lv:
                    ks.place(o0, lv, idx)
                ks.read.setdefault(lv, idx)
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
                            ks.place(offs[i], vals[i], idx)
                _read_first(ks.read, vals, idx)
                if ks.unseen:
                    ks.unseen.difference_update(vals)
                ol = offs[-1]
                lv = vals[-1]
            if ol > ks.maxread:
                ks.maxread = ol
                ks.maxread_op = idx
            if read_pos is not None:
                prev = pr.get(k)
                if prev is not None and o0 != prev[0] + 1:
                    self._poll_step(p, k, prev, o0, idx)
                pr[k] = (ol, idx, lv)
        self.fold.any_ok_read = True

    def _fold_ok_send(self, idx, p, k, o, v, inv):
        """An ok send of value v to key k acknowledged at integer offset o: acked, unseen, version order,
        offset order, process order. The commonest completion: everything inline (KeyIndex.below_acked_max
        and _send_position as one piece; calls cost 4% of a whole check)."""
        keys = self.fold.keys
        ks = keys.get(k)
        if ks is None:
            ks = keys[k] = KeyIndex()
        ks.acked[v] = idx
        if v not in ks.read:
            ks.unseen.add(v)
        cur = ks.log.get(o)
        if cur is None:
            ks.log[o] = v
        elif cur != v:
            ks.place(o, v, idx)
        am = ks.acked_max
        if am is None or o > am[0]:
            ks.acked_max = am = (o, idx, v)
            ks.am_hist.append(am)
        elif o < am[0]:
            self._below_acked_max(ks, k, o, v, idx, inv)
        send_pos = self.fold.send_pos
        ps = send_pos.get(p)
        if ps is None:
            ps = send_pos[p] = {}
        prev = ps.get(k)
        if prev is not None:
            po = prev[0]
            if po is None or o <= po:
                self._send_step("send", k, po, o, (prev[1], idx), prev[2], v, p)
        ps[k] = (o, idx, v)

    def _order_ok_send(self, ks, idx, p, k, o, v, inv):
        """An ok single-record send in the key's offset order and in its process's send order."""
        if o is not None and ks.below_acked_max(o, idx, v):
            self._below_acked_max(ks, k, o, v, idx, inv)
        self._send_position(idx, p, k, o, v)

    def _send_position(self, idx, p, k, o, v):
        """This send against the process's previous send to key k: a step unless it is known to land after it
        (an offset not reported is inferred at the end, from where a poll returned the value)."""
        ps = self.fold.send_pos.setdefault(p, {})
        prev, ps[k] = ps.get(k), (o, idx, v)
        if prev is not None and (o is None or prev[0] is None or o <= prev[0]):
            self._send_step("send", k, prev[0], o, (prev[1], idx), prev[2], v, p)

    def _below_acked_max(self, ks, k, o, v, idx, inv):
        """An ok send at o, below the key's highest acknowledged offset: was that one acknowledged before
        this send was invoked (offset-order-realtime)?"""
        inv_idx = _inv_tuple(inv)[0]
        if inv_idx is None:
            return
        i = bisect_left(ks.am_hist, inv_idx, key=_op_of)
        if i and o < ks.am_hist[i - 1][0]:
            self.fold.offset_order.append((k, o, v, idx, inv_idx, ks.am_hist[i - 1]))

    # -- everything else: ops of several micro-ops, odd shapes, fail and info ----
    def _client_op(self, idx, t, p, f, value, inv, ev):
        # Dependency graph vertices (checkers/txn.py): with --txn every op; else the ops that can close a
        # cycle by themselves: txns and ops of several micro-ops. Only a txn's own writes are kept
        # (precommitted-read); the graph's edges come from the key indexes.
        txn = self.collect_txn or f == "txn"
        txn_on = txn or len(value) > 1
        writes = {} if txn else None  # k -> [values]
        reads = {}       # k -> [first offset, last offset, last value, values (for the graph) or None]
        last_send = {}   # k -> (offset, value) of this op's previous send to k
        if f == "send":  # sends only (a micro-op of another kind is malformed, found by _send_parts)
            self._op_sends(idx, t, p, value, inv, writes, last_send)
            value = ()
        for mop in value:
            mf = mop[0]
            if mf == "send":
                self._op_sends(idx, t, p, (mop,), inv, writes, last_send)
            elif mf == "poll":
                if len(mop) >= 2 and mop[1]:  # an invocation's ["poll"] returned nothing
                    self._op_poll(idx, t == "ok", mop[1], ev, reads, txn_on)
            else:
                raise ValueError(f"unknown micro-op {mf!r}")
        if reads:
            self._poll_order(p, idx, reads, t == "ok")
        if txn_on and (writes or reads or last_send):
            self.fold.txn_ops.append((idx, p, inv[0], t, writes,
                                      {k: r[3] for k, r in reads.items() if r[3] is not None} if reads else _NO_READS))

    def _op_sends(self, idx, t, p, mops, inv, writes, last_send):
        """Send micro-ops of an op (all of a send op's at once): acknowledged, failed or indeterminate;
        version order; the order of this process's sends to each key (ok and info): the op's first send to
        a key against the process's previous one, each later one against the op's previous send to it. A
        send without an offset takes part too: its offset is inferred at the end from the reads (Jepsen's
        version order)."""
        keys = self.fold.keys
        ok = t == "ok"
        for mop in mops:
            k, o, v = _send_parts(mop)
            ks = keys.get(k)
            if ks is None:
                ks = keys[k] = KeyIndex()
            if writes is not None:
                writes.setdefault(k, []).append(v)
            if t == "fail":
                ks.failed[v] = idx
                continue
            if ok:
                ks.acked[v] = idx
                if v not in ks.read:
                    ks.unseen.add(v)
                if o is not None:
                    ks.place(o, v, idx)
                    if ks.below_acked_max(o, idx, v):
                        self._below_acked_max(ks, k, o, v, idx, inv)
            else:  # info: committed only if a read proves it; decided at the end
                ks.info[v] = idx
                self._info_pending(idx, k, o, v)
            lo = last_send.get(k)
            last_send[k] = (o, v)
            if lo is None:
                self._send_position(idx, p, k, o, v)
                continue
            lo_o = lo[0]
            if o is None or lo_o is None or o <= lo_o or o > lo_o + 1:
                self._send_step("int-send", k, lo_o, o, (idx,), lo[1], v, p)
            self.fold.send_pos[p][k] = (o, idx, v)

    def _send_step(self, scope, k, o1, o2, ops, v1, v2, p):
        self.fold.send_steps.append((scope, k, o1, o2, ops, v1, v2, p))

    def _op_poll(self, idx, ok, polled, ev, reads, txn_on):
        """Fold the records of one poll micro-op into the version order (and, when ok, the reads)."""
        for k, pairs in polled.items():
            if not pairs:
                continue
            ks = self.fold.key(k)
            rk = reads.get(k)
            prev_o = rk[1] if rk is not None else None
            offs, vals = zip(*pairs)
            o0 = offs[0]
            if type(o0) is int and (prev_o is None or o0 == prev_o + 1) \
                    and offs == tuple(range(o0, o0 + len(offs))):
                self._read_run(ks, idx, ok, offs, vals)
                first_o, last_o, last_v = o0, offs[-1], vals[-1]
            else:
                first_o, last_o, last_v = self._read_pairs(ks, k, idx, ok, pairs, rk, ev)
            if rk is None:
                reads[k] = [first_o, last_o, last_v, list(vals) if txn_on else None]
            else:
                rk[1] = last_o
                rk[2] = last_v
                if rk[3] is not None:
                    rk[3].extend(vals)

    def _read_run(self, ks, idx, ok, offs, vals):
        """Records at consecutive offsets continuing the op's previous read of the key."""
        got = list(map(ks.log.get, offs))
        if got != list(vals):
            for i, cur in enumerate(got):
                if cur is None or cur != vals[i]:
                    ks.place(offs[i], vals[i], idx)
        if ok:
            _read_first(ks.read, vals, idx)
            if ks.unseen:
                ks.unseen.difference_update(vals)
            if offs[-1] > ks.maxread:
                ks.maxread = offs[-1]
                ks.maxread_op = idx
            self.fold.any_ok_read = True

    def _read_pairs(self, ks, k, idx, ok, pairs, rk, ev):
        """Records one by one: offsets may be missing, repeat, go back or jump. Returns (first offset,
        last offset, last value) of the run."""
        prev_o = rk[1] if rk is not None else None
        pv = rk[2] if rk is not None else None
        first_o = None
        hi = ks.maxread
        rd = ks.read
        unseen = ks.unseen
        for o, v in pairs:
            if type(o) is not int and o is not None:
                raise TypeError(f"offset {o!r} of key {k} is not an integer")
            if o is None:
                if ok and v not in rd:
                    rd[v] = idx
                    unseen.discard(v)
                continue
            cur = ks.log.get(o)
            if cur is None or cur != v:
                ks.place(o, v, idx)
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
            self.fold.any_ok_read = True
        return first_o, prev_o, pv

    def _info_pending(self, idx, k, o, v):
        lst = self.fold.info_sends
        if lst and lst[-1][0] == idx:
            lst[-1][1].append((k, o, v))
        else:
            lst.append((idx, [(k, o, v)]))

    def _int_poll_pair(self, k, o1, o2, v1, v2, idx, ev):
        """Two consecutive records of key k in one op that do not continue each other (keys named in the
        op's rebalance-log are exempt)."""
        if o1 is None or o2 is None:
            return
        rl = ev.get("rebalance-log")
        if rl:
            try:
                if any(str(x) == k for r in rl for x in (r.get("keys") or [])):
                    return
            except AttributeError:
                pass
        if o2 <= o1 or o2 > o1 + 1:
            self.fold.read_steps.append(("int-poll", k, o1, o2, (idx,), v1, v2, None))

    def _poll_order(self, p, idx, reads, moves):
        """Where this op's reads of each key start, against where the process's last ok poll of the key
        ended. Only an ok poll moves that position: the reads of a failed or crashed poll are rolled back,
        yet they must continue from it too (Jepsen's poll-skip+nonmonotonic-cases)."""
        rp = self.fold.read_pos
        pr = rp.get(p)
        if pr is None:
            if not moves:
                return
            pr = rp[p] = {}
        for k, (first_o, last_o, last_v, _) in reads.items():
            if first_o is None:
                continue
            prev = pr.get(k)
            if prev is not None:
                self._poll_step(p, k, prev, first_o, idx)
            if moves:
                pr[k] = (last_o, idx, last_v)

    def _poll_step(self, p, k, prev, first_o, idx):
        """A poll's first offset of k against where this process's last poll of k ended."""
        o1, op1, v1 = prev
        if first_o <= o1 or first_o > o1 + 1:
            self.fold.read_steps.append(("poll", k, o1, first_o, (op1, idx), v1, None, p))

    def _reassign(self, p, value, seek):
        keep = set(map(str, value))
        for table in (self.fold.read_pos, self.fold.send_pos):
            d = table.get(p)
            if d:
                if seek:
                    d.clear()
                else:
                    for k in [k for k in d if k not in keep]:
                        del d[k]

    # -- closing -----------------------------------------------------------
    def close(self) -> Fold:
        """Finish the fold: ops still running at the end are indeterminate, info sends a read proved
        committed join the version order, the last progress sample is taken, values get their offsets."""
        fold = self.fold
        for inv in list(fold.pending.values()):
            iidx, _, f, value, _ = _inv_tuple(inv)
            if f in ("send", "txn") and value:
                self._pending_sends(iidx, value)
        for idx, sends in fold.info_sends:
            if any(v in fold.keys[k].read for k, _, v in sends):
                for k, o, v in sends:
                    fold.committed_info.setdefault(k, {})[v] = idx
                    if o is not None:
                        fold.keys[k].place(o, v, idx)
        if fold.last_time is not None:
            fold.stats.sample(fold.last_time, fold.keys)
        for ks in fold.keys.values():
            ks.index_values()
        return fold

    def _pending_sends(self, iidx, value):
        """The sends of an op that never completed: indeterminate, like info."""
        for mop in value:
            try:
                if mop[0] == "send":
                    k = str(mop[1])
                    x = mop[2]
                    v = x[1] if type(x) is list else x
                    ks = self.fold.key(k)
                    if v not in ks.acked and v not in ks.failed:
                        ks.info.setdefault(v, iidx)
            except (TypeError, IndexError):
                pass
