"""The partition log on disk: segment files, a sparse offset index, recovery.

One directory per partition (``<log.dirs>/<topic>-<partition>``) holding
``<baseOffset:020d>.log`` segment files of v2 record batches exactly as they
travel on the wire (baseOffset rewritten), and ``<baseOffset:020d>.index``
files of 8-byte entries (offset - baseOffset: u32, file position: u32), one
per ``index.interval.bytes`` of log.  Recovery at open validates every batch of
the last segment (length, magic, CRC-32C, offsets contiguous) and truncates the
file at the first bad one: a torn or corrupt tail is cut, never served.

The log knows nothing about leaders or high watermarks: ``append``,
``read(from_offset, max_bytes, max_offset)``, ``truncate_to(offset)`` and
``log_end_offset`` are the whole interface the partition roles use.

An I/O error of the log (EIO from a failing disk, ENOSPC) is not an error of
one request: as Kafka's ``LogDirFailureChannel`` does, it is reported once for
the log directory to the handlers registered with ``on_log_dir_failure`` (the
broker halts, as Kafka does when its last live log directory fails) and raised
as ``LogDirFailure``, which no network error handler mistakes for a lost socket.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import logging
import mmap
import os
import struct
import time
from array import array
from typing import Iterator

from . import records
from .records import HEADER_SIZE, LOG_OVERHEAD, BatchHeader

log = logging.getLogger("acked.broker.log")
_INDEX_ENTRY = struct.Struct(">II")
_PEEK = struct.Struct(">qiibIhi")  # up to lastOffsetDelta: 27 bytes
_PEEK_SIZE = _PEEK.size


class OffsetOutOfRange(Exception):
    pass


class LogDirFailure(Exception):
    """An I/O error in a log directory (Kafka: KafkaStorageException, error code 56)."""

    def __init__(self, directory: str, what: str, cause: OSError):
        super().__init__(f"error while {what} in dir {directory}: {cause}")
        self.directory, self.what, self.cause = directory, what, cause


#: called with (directory, what, OSError) on each log I/O error, before LogDirFailure is raised
_failure_handlers: list = []


def on_log_dir_failure(handler) -> None:
    _failure_handlers.append(handler)


@contextlib.contextmanager
def log_dir_io(directory: str, what: str):
    """Turn an OSError of the block into a reported LogDirFailure of `directory`."""
    try:
        yield
    except OSError as e:
        for handler in list(_failure_handlers):
            handler(directory, what, e)
        raise LogDirFailure(directory, what, e) from e


def _guard(what: str):
    def wrap(method):
        @functools.wraps(method)
        def guarded(self, *args, **kwargs):
            with log_dir_io(os.path.dirname(self.dir.rstrip("/")) or self.dir, what):
                return method(self, *args, **kwargs)
        return guarded
    return wrap


def segment_bases(directory: str) -> list[int]:
    """Base offsets of a partition directory's segment files (``<baseOffset:020d>.log``), ascending."""
    return sorted(int(name[:-4]) for name in os.listdir(directory)
                  if name.endswith(".log") and name[:-4].isdigit())


def segment_path(directory: str, base_offset: int) -> str:
    return os.path.join(directory, f"{base_offset:020d}.log")


class Segment:
    def __init__(self, directory: str, base_offset: int):
        self.base_offset = base_offset
        self.log_path = segment_path(directory, base_offset)
        self.index_path = os.path.join(directory, f"{base_offset:020d}.index")
        self.fd = os.open(self.log_path, os.O_RDWR | os.O_CREAT, 0o644)
        self.size = os.fstat(self.fd).st_size
        self.next_offset = base_offset
        self.index_offsets = array("q")   # absolute offsets
        self.index_positions = array("q")
        self.bytes_since_index = 0
        self.index_file = None

    # -- recovery / loading -------------------------------------------------------
    def recover(self, index_interval: int) -> int:
        """Validate every batch; truncate at the first bad one; rebuild the index.
        Returns the number of bytes cut."""
        self.index_offsets = array("q")
        self.index_positions = array("q")
        self.bytes_since_index = 0
        end = 0
        expected = self.base_offset
        if self.size:
            with mmap.mmap(self.fd, self.size, access=mmap.ACCESS_READ) as m:
                for pos, h in records.scan_valid(m):
                    if h.base_offset != expected or h.last_offset_delta < 0:
                        break
                    self._note_batch(h.base_offset, pos, h.size, index_interval)
                    expected = h.last_offset + 1
                    end = pos + h.size
        cut = self.size - end
        if cut:
            os.ftruncate(self.fd, end)
            self.size = end
        self.next_offset = expected
        self._write_whole_index()
        return cut

    def load(self, index_interval: int) -> None:
        """Open a sealed (not last) segment: trust its index if sane, else rebuild it."""
        try:
            with open(self.index_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        ok = len(data) % 8 == 0 and len(data) > 0
        offs, poss = array("q"), array("q")
        if ok:
            prev = (-1, -1)
            for rel, pos in _INDEX_ENTRY.iter_unpack(data):
                if rel <= prev[0] or pos <= prev[1] and prev[1] >= 0 or pos >= self.size:
                    ok = False
                    break
                offs.append(self.base_offset + rel)
                poss.append(pos)
                prev = (rel, pos)
        if ok:
            self.index_offsets, self.index_positions = offs, poss
            self.next_offset = self._offset_after_last_batch()
        else:
            log.warning("rebuilding index %s", self.index_path)
            self.recover(index_interval)

    def _offset_after_last_batch(self) -> int:
        pos = self.index_positions[-1] if self.index_positions else 0
        last = self.base_offset
        while pos < self.size:
            base, length, last_delta = self._peek(pos)
            last = base + last_delta + 1
            pos += length + LOG_OVERHEAD
        return last

    def _write_whole_index(self) -> None:
        if self.index_file:
            self.index_file.close()
        with open(self.index_path, "wb") as f:
            for o, p in zip(self.index_offsets, self.index_positions):
                f.write(_INDEX_ENTRY.pack(o - self.base_offset, p))
        self.index_file = None

    # -- writing -----------------------------------------------------------------
    def _note_batch(self, base_offset: int, pos: int, size: int, index_interval: int) -> None:
        if not self.index_offsets or self.bytes_since_index >= index_interval:
            self.index_offsets.append(base_offset)
            self.index_positions.append(pos)
            self.bytes_since_index = 0
            if self.index_file is not None:
                self.index_file.write(_INDEX_ENTRY.pack(base_offset - self.base_offset, pos))
        self.bytes_since_index += size

    def append(self, data, base_offset: int, next_offset: int, index_interval: int,
               batch_positions: list[tuple[int, int]]) -> None:
        if self.index_file is None:
            self.index_file = open(self.index_path, "ab")
        pos = self.size
        written = os.pwrite(self.fd, data, pos)
        if written != len(data):
            raise OSError(f"short write to {self.log_path}")
        for rel_pos, offset, size in batch_positions:
            self._note_batch(offset, pos + rel_pos, size, index_interval)
        self.size += len(data)
        self.next_offset = next_offset

    def flush(self) -> None:
        if self.index_file is not None:
            self.index_file.flush()
        os.fsync(self.fd)

    def close(self) -> None:
        if self.index_file is not None:
            self.index_file.close()
            self.index_file = None
        os.close(self.fd)

    # -- reading -----------------------------------------------------------------
    def _peek(self, pos: int) -> tuple[int, int, int]:
        raw = os.pread(self.fd, _PEEK_SIZE, pos)
        base, length, _epoch, _magic, _crc, _attr, last_delta = _PEEK.unpack(raw)
        return base, length, last_delta

    def position_of(self, offset: int) -> int | None:
        """File position of the batch containing offset (or the first after it)."""
        i = bisect.bisect_right(self.index_offsets, offset) - 1
        pos = self.index_positions[i] if i >= 0 else 0
        while pos < self.size:
            base, length, last_delta = self._peek(pos)
            if base + last_delta >= offset:
                return pos
            pos += length + LOG_OVERHEAD
        return None

    def read_from(self, pos: int, max_bytes: int, max_offset: int, must_return_one: bool) -> bytes:
        """Whole batches from pos: at most max_bytes (but at least one batch if
        must_return_one), none starting at or after max_offset."""
        want = min(max(max_bytes, 0), self.size - pos)
        chunk = os.pread(self.fd, want, pos) if want > 0 else b""
        end = 0
        n = len(chunk)
        while True:
            if n - end < LOG_OVERHEAD:
                break
            base, length = records.peek_offset_length(chunk, end)
            if base >= max_offset or end + length + LOG_OVERHEAD > n:
                break
            end += length + LOG_OVERHEAD
        if end == 0 and must_return_one and pos < self.size:
            base, length, _ = self._peek(pos)
            if base < max_offset:  # first batch is bigger than max_bytes: send it whole (KIP-74)
                return os.pread(self.fd, length + LOG_OVERHEAD, pos)
        return chunk[:end] if end < n else chunk

    def truncate_at(self, pos: int, next_offset: int) -> None:
        os.ftruncate(self.fd, pos)
        self.size = pos
        self.next_offset = next_offset
        keep = bisect.bisect_left(self.index_positions, pos)
        del self.index_offsets[keep:]
        del self.index_positions[keep:]
        self.bytes_since_index = 0
        self._write_whole_index()


class Log:
    """An append-only sequence of segments for one partition."""

    def __init__(self, directory: str, *, segment_bytes: int = 1 << 30,
                 index_interval_bytes: int = 4096, flush_messages: int = 2**63 - 1,
                 flush_ms: int | None = None):
        self.dir = directory
        self.segment_bytes = segment_bytes
        self.index_interval = index_interval_bytes
        self.flush_messages = flush_messages
        self.flush_ms = flush_ms
        self.unflushed_messages = 0
        self.first_unflushed_at: float | None = None
        self.recovered_bytes_cut = 0
        os.makedirs(directory, exist_ok=True)
        bases = segment_bases(directory)
        self.segments: list[Segment] = []
        for i, base in enumerate(bases):
            seg = Segment(directory, base)
            if i == len(bases) - 1:
                cut = seg.recover(self.index_interval)
                if cut:
                    log.warning("recovery: cut %d bytes of torn or corrupt tail from %s; log end offset now %d",
                                cut, seg.log_path, seg.next_offset)
                self.recovered_bytes_cut = cut
            else:
                seg.load(self.index_interval)
            self.segments.append(seg)
        if not self.segments:
            self.segments.append(Segment(directory, 0))
        self._bases = [s.base_offset for s in self.segments]

    # -- state ---------------------------------------------------------------------
    @property
    def log_end_offset(self) -> int:
        return self.segments[-1].next_offset

    @property
    def log_start_offset(self) -> int:
        return self.segments[0].base_offset

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    # -- append ----------------------------------------------------------------------
    @_guard("appending to the log")
    def append(self, data, next_offset: int, batch_positions: list[tuple[int, int, int]],
               message_count: int) -> None:
        """Append already-stamped batches.  batch_positions: (position in data,
        base offset, size) per batch; next_offset: the log end offset after them."""
        active = self.segments[-1]
        if active.size and active.size + len(data) > self.segment_bytes:
            active = self.roll(batch_positions[0][1])
        active.append(data, batch_positions[0][1], next_offset, self.index_interval, batch_positions)
        self.unflushed_messages += message_count
        if self.first_unflushed_at is None:
            self.first_unflushed_at = time.monotonic()
        if self.unflushed_messages >= self.flush_messages:
            self.flush()

    @_guard("rolling a segment")
    def roll(self, base_offset: int) -> Segment:
        old = self.segments[-1]
        old.flush()  # a sealed segment and its index are durable, like Kafka's roll
        if old.index_file is not None:
            old.index_file.close()
            old.index_file = None
        seg = Segment(self.dir, base_offset)
        seg.next_offset = base_offset
        self.segments.append(seg)
        self._bases.append(base_offset)
        return seg

    @_guard("flushing the log")
    def flush(self) -> None:
        self.segments[-1].flush()
        self.unflushed_messages = 0
        self.first_unflushed_at = None

    def maybe_flush_on_time(self, now: float | None = None) -> bool:
        if self.flush_ms is None or self.first_unflushed_at is None:
            return False
        now = time.monotonic() if now is None else now
        if (now - self.first_unflushed_at) * 1000 >= self.flush_ms:
            self.flush()
            return True
        return False

    # -- read ------------------------------------------------------------------------
    @_guard("reading the log")
    def read(self, from_offset: int, max_bytes: int, max_offset: int | None = None,
             must_return_one: bool = True) -> bytes:
        """Whole batches starting with the one that holds from_offset, up to max_bytes
        (one batch at least when must_return_one), none at or beyond max_offset."""
        leo = self.log_end_offset
        if max_offset is None or max_offset > leo:
            max_offset = leo
        if from_offset < self.log_start_offset or from_offset > leo:
            raise OffsetOutOfRange(from_offset)
        if from_offset >= max_offset:
            return b""
        i = bisect.bisect_right(self._bases, from_offset) - 1
        while i < len(self.segments):
            seg = self.segments[i]
            pos = seg.position_of(from_offset)
            if pos is not None:
                return seg.read_from(pos, max_bytes, max_offset, must_return_one)
            i += 1
        return b""

    def batch_headers(self) -> Iterator[BatchHeader]:
        """Every batch header in offset order (for rebuilding producer state)."""
        for seg in self.segments:
            if not seg.size:
                continue
            with mmap.mmap(seg.fd, seg.size, access=mmap.ACCESS_READ) as m:
                pos = 0
                while seg.size - pos >= HEADER_SIZE:
                    h = records.parse_header(m, pos)
                    yield h
                    pos += h.size

    def offset_for_timestamp(self, timestamp: int) -> tuple[int, int] | None:
        """First batch whose max timestamp >= timestamp: (its base offset, its max timestamp)."""
        for h in self.batch_headers():
            if h.max_timestamp >= timestamp:
                return h.base_offset, h.max_timestamp
        return None

    def max_timestamp(self) -> tuple[int, int] | None:
        best = None
        for h in self.batch_headers():
            if best is None or h.max_timestamp > best[1]:
                best = (h.last_offset, h.max_timestamp)
        return best

    # -- truncation (for the follower role) -------------------------------------------
    @_guard("truncating the log")
    def truncate_to(self, offset: int) -> int:
        """Remove every batch that holds an offset >= offset.  A batch straddling
        offset is removed whole.  Returns the new log end offset."""
        if offset >= self.log_end_offset:
            return self.log_end_offset
        while len(self.segments) > 1 and self.segments[-1].base_offset >= offset:
            seg = self.segments.pop()
            self._bases.pop()
            seg.close()
            for p in (seg.log_path, seg.index_path):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
        seg = self.segments[-1]
        pos = seg.position_of(offset)
        if pos is not None:
            base, _length, _ = seg._peek(pos)
            seg.truncate_at(pos, base)
        if offset < seg.base_offset:  # truncating the only segment below its base
            seg.truncate_at(0, seg.base_offset)
        self.unflushed_messages = 0
        return self.log_end_offset

    def close(self) -> None:
        self.flush()
        for seg in self.segments:
            seg.close()


# -- checkpoint files (Kafka's format: version, count, then "topic partition offset") ---

def write_checkpoint(path: str, entries: dict[tuple[str, int], int]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"0\n{len(entries)}\n")
        for (topic, part), off in sorted(entries.items()):
            f.write(f"{topic} {part} {off}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_checkpoint(path: str) -> dict[tuple[str, int], int]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}
    out = {}
    try:
        for line in lines[2:2 + int(lines[1])]:
            topic, part, off = line.split()
            out[(topic, int(part))] = int(off)
    except (IndexError, ValueError):
        log.warning("ignoring malformed checkpoint file %s", path)
        return {}
    return out
