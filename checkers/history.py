"""The history model: history.jsonl written by the harness, read by the checkers.

One JSON object per line (see docs/history-format.md). Writing flushes every
event so a killed harness loses nothing it recorded; reading reports bad lines
(with their line number) as problems instead of failing, because a crashed run
leaves a truncated last line and the rest is still worth checking.
"""
from __future__ import annotations

import io
import os
import threading
import time as _time
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

import msgspec
import orjson

TYPES = frozenset(("invoke", "ok", "fail", "info"))
CLIENT_FS = frozenset(("send", "poll", "txn"))

#: The harness's own op (docs/history-format.md, "The run op"): process HARNESS, f RUN_F. acked's runner
#: invokes it as the history's first event (RUN_INVOKE) and completes it ok when the final drain has finished
#: (run_completion). A history with the invocation and no ok completion was cut before the final drain ended.
HARNESS = "harness"
RUN_F = "run"
RUN_INVOKE = {"process": HARNESS, "type": "invoke", "f": RUN_F, "value": {"writer": "acked", "final-drain": True}}


#: the client functions of the history format (docs/history-format.md); every other function in the checker's
#: stats.by-f is a fault's (the nemesis process)
CLIENT_FUNCTIONS = ("send", "poll", "txn", "assign", "subscribe", "crash", "process", "stop")


def client_ops(by_f: dict) -> dict[str, int]:
    """A run's totals, one definition for `acked check`, the terminal's verdict line, results.json's `client-ops`,
    the report's "client ops completed" and the runs index: client ops completed per outcome (ok; fail: certainly
    not done; info: may or may not have happened), summed over the checker's stats.by-f for the client functions --
    every op of the client processes, the final drain's included; not the faults' ops, and not the harness's run
    op (the checker does not count it). The live status line counts the main phase as it goes, and may differ."""
    return {t: sum(int((by_f.get(f) or {}).get(t, 0)) for f in CLIENT_FUNCTIONS) for t in ("ok", "fail", "info")}


def client_ops_text(ops: dict[str, int]) -> str:
    """"1207 ok, 0 fail, 6 info": how every command and page writes the totals."""
    return f"{ops['ok']} ok, {ops['fail']} fail, {ops['info']} info"


def run_completion(stopped: str, keys: int) -> dict:
    """The run op's completion, written when the final drain ended.

    stopped: why the drain ended: "read-everything" (every key read up to the highest offset seen),
    "log-end" (the logs ended below that for a while), "nothing-written" (no key was ever written): the drain
    is complete, the completion `ok`; "time-limit" (final-time-limit passed with keys short of their highest
    offset while their logs went on): the drain is incomplete, the completion `info`, and the history counts as
    cut -- what it did not read may be there (a nightly run's drain could not read a partition left without a
    leader; the record sat on all three replicas)."""
    complete = stopped != "time-limit"
    return {"process": HARNESS, "type": "ok" if complete else "info", "f": RUN_F,
            "value": {"final-drain": "complete" if complete else "incomplete", "stopped": stopped, "keys": keys}}


class Event(msgspec.Struct, gc=False, kw_only=True):
    """One history line as the checker's fast path decodes it.

    `value` stays undecoded JSON (msgspec.Raw) until the checker needs it:
    most invocations carry nothing the checker uses beyond pairing. gc=False:
    decoded JSON holds no reference cycles, and a million tracked objects
    would make every garbage collection crawl.

    The fast path takes only what the harness writes: a known type and an
    integer time and index on every line. A block with any other line fails
    to decode and goes through the general path, so the fast loop needs no
    checks for them.
    """

    # In the order HistoryWriter writes them: msgspec matches keys faster so.
    process: Any
    type: Literal["invoke", "ok", "fail", "info"]
    f: str
    value: msgspec.Raw = msgspec.Raw(b"null")
    index: int
    time: int
    rebalance_log: Any = msgspec.field(default=None, name="rebalance-log")
    seek_to_beginning: Any = msgspec.field(default=None, name="seek-to-beginning")

    def get(self, name, default=None):
        """dict-style access, so explanations and rare paths can treat it as an event dict."""
        if name == "value":
            return decode_value(self.value)
        attr = _EVENT_ATTRS.get(name)
        if attr is None:
            return default
        v = getattr(self, attr)
        return default if v is None else v


_EVENT_ATTRS = {"type": "type", "f": "f", "process": "process", "time": "time", "index": "index",
                "rebalance-log": "rebalance_log", "seek-to-beginning": "seek_to_beginning"}
decode_value = msgspec.json.Decoder().decode
_decode_event_lines = msgspec.json.Decoder(Event).decode_lines

BATCH_BYTES = 1 << 22


def iter_event_batches(fh, batch_bytes: int = BATCH_BYTES):
    """Read a binary history file in blocks of whole lines.

    Yields (lines, events, block): events is the list of Event for the block's
    `lines` lines when every line is a well-formed event, else None (the caller
    then folds the block line by line and reports what is wrong, with line
    numbers). A final line without a newline comes alone, always with None.
    """
    rest = b""
    while True:
        data = fh.read(batch_bytes)
        if not data:
            break
        if rest:
            data = rest + data
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            rest = data
            continue
        if cut == len(data):
            block, rest = data, b""
        else:
            block, rest = data[:cut], data[cut:]
        lines = block.count(b"\n")
        try:
            events = _decode_event_lines(block)
        except (msgspec.DecodeError, msgspec.ValidationError):
            events = None
        if events is not None and len(events) != lines:  # blank lines: keep line numbers exact
            events = None
        yield lines, events, block
    if rest:
        yield 1, None, rest



class HistoryError(Exception):
    """The file is missing or is not a history at all (one-line message)."""


@dataclass
class Problem:
    line: int
    message: str

    def to_json(self) -> dict:
        return {"line": self.line, "message": self.message}

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class History:
    """Parsed events in index order, plus what was wrong with the file."""

    events: list[dict]
    problems: list[Problem] = field(default_factory=list)
    path: str | None = None
    # completion index -> its invocation's index (per-process pairing)
    invocation_of: dict[int, int] = field(default_factory=dict)

    def __iter__(self):
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def invocation(self, completion: dict) -> dict | None:
        i = self.invocation_of.get(completion.get("index"))
        if i is None:
            return None
        return self._by_index().get(i)

    def _by_index(self) -> dict[int, dict]:
        m = getattr(self, "_index_map", None)
        if m is None:
            m = {e["index"]: e for e in self.events}
            self._index_map = m
        return m


class HistoryWriter:
    """Append-only JSON Lines writer: one flushed line per event, thread-safe.

    `index` (0, 1, 2, ...) and `time` (ns since the writer was created, from
    the monotonic clock) are filled in when the event lacks them.
    """

    def __init__(self, path, *, fsync: bool = False):
        self.path = os.fspath(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._start = _time.monotonic_ns()
        # Appending to an existing history continues its numbering.
        self._next = _count_lines(self.path) if os.path.exists(self.path) else 0
        self._file = open(self.path, "ab")

    def append(self, event: dict) -> int:
        with self._lock:
            if self._file is None:
                raise ValueError(f"history {self.path} is closed")
            ev = dict(event)
            idx = ev.get("index")
            if idx is None:
                idx = self._next
                ev["index"] = idx
            self._next = max(self._next, idx + 1)
            if ev.get("time") is None:
                ev["time"] = _time.monotonic_ns() - self._start
            line = orjson.dumps(ev, option=orjson.OPT_NON_STR_KEYS) + b"\n"
            self._file.write(line)
            self._file.flush()
            if self._fsync:
                os.fsync(self._file.fileno())
            return idx

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _count_lines(path: str) -> int:
    n = 0
    with open(path, "rb") as f:
        for _ in f:
            n += 1
    return n


def validate_event(ev) -> str | None:
    """What is wrong with one parsed line, or None. Cheap: top-level fields."""
    if not isinstance(ev, dict):
        return f"expected a JSON object, got {type(ev).__name__}"
    t = ev.get("type")
    if t not in TYPES:
        return f"field type must be one of invoke, ok, fail, info (got {t!r})"
    if "process" not in ev:
        return "missing field process"
    f = ev.get("f")
    if not isinstance(f, str):
        return f"field f must be a string (got {f!r})"
    if f in CLIENT_FS:
        v = ev.get("value")
        if v is not None and not isinstance(v, list):
            return f"value of a {f} must be a list of micro-operations (got {type(v).__name__})"
    idx = ev.get("index")
    if idx is not None and (not isinstance(idx, int) or idx < 0):
        return f"field index must be a non-negative integer (got {idx!r})"
    return None


def _open_jsonl(path):
    path = os.fspath(path)
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise HistoryError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise HistoryError(f"{path}: is a directory, expected a history.jsonl file") from None
    except OSError as e:
        raise HistoryError(f"{path}: cannot open: {e.strerror}") from None


def _judge_lines(raws, path, problems: list[Problem], state: list) -> Iterator[tuple[int, dict]]:
    """iter_jsonl's judgement of raw lines; state: [line number of the line before, no event seen yet]."""
    loads = orjson.loads
    JSONDecodeError = orjson.JSONDecodeError
    lineno, first = state
    try:
        for raw in raws:
            lineno += 1
            try:
                ev = loads(raw)
            except JSONDecodeError as e:
                if not raw.strip():
                    continue
                if first:
                    raise HistoryError(
                        f"{path}: not a history: line {lineno} is not JSON ({e}); "
                        "a history has one JSON event per line") from None
                if not raw.endswith(b"\n"):
                    problems.append(Problem(lineno, "truncated last line (the run probably crashed while "
                                                    "writing it); the lines before it were checked"))
                else:
                    problems.append(Problem(lineno, f"not valid JSON: {e}"))
                continue
            if type(ev) is dict and ev.get("type") in TYPES and "process" in ev and type(ev.get("f")) is str:
                first = False
                yield lineno, ev
                continue
            if first:
                if not isinstance(ev, dict) or ("type" not in ev and "f" not in ev):
                    raise HistoryError(
                        f"{path}: not a history: line {lineno} is not an event object "
                        "(expected fields type, f, process, value)")
                first = False
            problems.append(Problem(lineno, validate_event(ev) or "invalid event"))
    finally:
        state[0], state[1] = lineno, first


def iter_jsonl(path, problems: list[Problem]) -> Iterator[tuple[int, dict]]:
    """Yield (line number, event) for each valid line; bad lines go to problems.

    Raises HistoryError when the file is missing or its first line is not a
    JSON object (then it is not a history at all).
    """
    path = os.fspath(path)
    fh = _open_jsonl(path)
    with fh:
        yield from _judge_lines(fh, path, problems, [0, True])


class EventBlock:
    """A block of whole history lines that all decoded as `Event`s (iter_jsonl_blocks): events[i] is line
    first_line + i, at byte `offset` of the file; `line(i)` is that line as iter_jsonl yields it (a dict)."""

    __slots__ = ("first_line", "events", "offset", "size", "_block", "_lines")

    def __init__(self, first_line: int, events: list, offset: int, block: bytes):
        self.first_line = first_line
        self.events = events
        self.offset = offset
        self.size = len(block)
        self._block = block
        self._lines = None

    def line(self, i: int) -> dict:
        if self._lines is None:
            self._lines = self._block.split(b"\n")
        try:
            return orjson.loads(self._lines[i])
        except orjson.JSONDecodeError:  # JSON msgspec takes and orjson does not (an integer past 64 bits)
            return decode_value(self._lines[i])


def iter_jsonl_blocks(path, problems: list[Problem], batch_bytes: int = BATCH_BYTES):
    """iter_jsonl by blocks of whole lines, for a reader that needs little of most lines: an `EventBlock` for
    each block whose lines all decode as `Event`s (what the harness writes: the checker's fast path), else the
    list of (line number, event) iter_jsonl yields for the block's lines, with the same problems and the same
    HistoryError."""
    path = os.fspath(path)
    fh = _open_jsonl(path)
    state = [0, True]
    offset = 0
    with fh:
        for n, events, block in iter_event_batches(fh, batch_bytes):
            if events is not None:
                yield EventBlock(state[0] + 1, events, offset, block)
                state[0] += n
                state[1] = False
            else:
                yield list(_judge_lines(io.BytesIO(block), path, problems, state))
            offset += len(block)


def read_block_lines(path, offset: int, size: int, lines) -> dict[int, dict]:
    """{i: line i as iter_jsonl yields it} of the block of an EventBlock (offset, size), read again."""
    with _open_jsonl(path) as fh:
        fh.seek(offset)
        block = EventBlock(0, [], offset, fh.read(size))
    return {i: block.line(i) for i in lines}


def read_history(path, format: str = "jsonl") -> History:
    """Parse a whole history into memory (events in index order)."""
    problems: list[Problem] = []
    if format == "edn":
        from .edn import iter_edn
        it = iter_edn(path, problems)
    elif format == "jsonl":
        it = iter_jsonl(path, problems)
    else:
        raise HistoryError(f"unknown history format {format!r}; use jsonl or edn")
    events: list[dict] = []
    invocation_of: dict[int, int] = {}
    pending: dict = {}
    used: set = set()
    next_index = 0
    needs_sort = False
    last = -1
    for lineno, ev in it:
        idx = ev.get("index")
        if idx is None:
            idx = next_index
            ev["index"] = idx
        if idx in used:
            problems.append(Problem(lineno, f"index {idx} appears twice"))
            continue
        used.add(idx)
        next_index = max(next_index, idx + 1)
        if idx < last:
            needs_sort = True
        last = idx
        p = ev["process"]
        if ev["type"] == "invoke":
            if p in pending:
                problems.append(Problem(lineno, f"process {p} invoked a new op while op {pending[p]} "
                                        "was still running"))
            pending[p] = idx
        else:
            inv = pending.pop(p, None)
            if inv is None:
                problems.append(Problem(lineno, f"completion of process {p} has no invocation"))
            else:
                invocation_of[idx] = inv
        events.append(ev)
    if needs_sort:
        events.sort(key=lambda e: e["index"])
    return History(events=events, problems=problems, path=os.fspath(path), invocation_of=invocation_of)
