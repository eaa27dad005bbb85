"""Record batch v2 (magic 2): parse and patch the 61-byte header; the rest stays bytes.

Layout (big endian): baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 |
magic i8 | crc u32 | attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 |
maxTimestamp i64 | producerId i64 | producerEpoch i16 | baseSequence i32 |
recordCount i32 | records...  The CRC-32C covers attributes..end, so baseOffset
and partitionLeaderEpoch can be rewritten without recomputing it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import crc32c

from .errors import CORRUPT_MESSAGE, INVALID_RECORD, UNSUPPORTED_FOR_MESSAGE_FORMAT

HEADER_SIZE = 61
LOG_OVERHEAD = 12  # baseOffset + batchLength: the bytes not counted in batchLength
_HEADER = struct.Struct(">qiibIhiqqqhii")
_OFFSET_LENGTH = struct.Struct(">qi")
_I64 = struct.Struct(">q")
_I32 = struct.Struct(">i")
CRC_START = 21
TRANSACTIONAL_FLAG = 0x10
CONTROL_FLAG = 0x20
NO_PRODUCER_ID = -1


class InvalidBatch(ValueError):
    """A batch that must not be stored; ``error_code`` is the Kafka error for it."""

    def __init__(self, message: str, error_code: int):
        super().__init__(message)
        self.error_code = error_code


@dataclass(frozen=True, slots=True)
class BatchHeader:
    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def size(self) -> int:
        return self.batch_length + LOG_OVERHEAD

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def last_sequence(self) -> int:
        if self.base_sequence < 0:
            return -1
        return (self.base_sequence + self.last_offset_delta) % 2**31

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & TRANSACTIONAL_FLAG)


def parse_header(buf, pos: int = 0) -> BatchHeader:
    return BatchHeader(*_HEADER.unpack_from(buf, pos))


def peek_offset_length(buf, pos: int = 0) -> tuple[int, int]:
    """(baseOffset, batchLength) of the batch at pos."""
    return _OFFSET_LENGTH.unpack_from(buf, pos)


def crc_ok(buf, pos: int, header: BatchHeader) -> bool:
    end = pos + header.size
    return crc32c.crc32c(memoryview(buf)[pos + CRC_START:end]) == header.crc


def split_batches(data: bytes) -> list[tuple[int, BatchHeader]]:
    """Validate a produce request's records field: whole v2 batches with good CRCs.

    Returns (position, header) per batch; raises InvalidBatch otherwise.
    """
    out = []
    pos = 0
    n = len(data)
    if n == 0:
        raise InvalidBatch("empty record set", INVALID_RECORD)
    while pos < n:
        if n - pos < HEADER_SIZE:
            if n - pos >= 17 and data[pos + 16] < 2:
                raise InvalidBatch("message format older than v2", UNSUPPORTED_FOR_MESSAGE_FORMAT)
            raise InvalidBatch("truncated record batch", CORRUPT_MESSAGE)
        h = parse_header(data, pos)
        if h.magic != 2:
            code = UNSUPPORTED_FOR_MESSAGE_FORMAT if 0 <= h.magic < 2 else CORRUPT_MESSAGE
            raise InvalidBatch(f"record batch magic {h.magic}, only 2 is supported", code)
        if h.batch_length < HEADER_SIZE - LOG_OVERHEAD or pos + h.size > n:
            raise InvalidBatch("record batch length does not match the data", CORRUPT_MESSAGE)
        if not crc_ok(data, pos, h):
            raise InvalidBatch("record batch CRC-32C mismatch", CORRUPT_MESSAGE)
        if h.record_count <= 0 or h.last_offset_delta != h.record_count - 1:
            raise InvalidBatch("record count does not match lastOffsetDelta", INVALID_RECORD)
        out.append((pos, h))
        pos += h.size
    return out


def stamp(batch: bytearray, pos: int, base_offset: int, leader_epoch: int) -> None:
    """Assign the batch its offsets and the leader epoch, in place (outside the CRC)."""
    _I64.pack_into(batch, pos, base_offset)
    _I32.pack_into(batch, pos + 12, leader_epoch)


def scan_batches(buf, start: int = 0):
    """Yield (position, header, crc_good) for each complete v2 batch from start, stopping at the
    first torn or malformed one (a short tail, another magic, a length outside the buffer).  A batch
    whose CRC-32C does not match its bytes is yielded with crc_good False and the walk goes on
    (used by broker/dump_log.py, which shows corruption instead of cutting it)."""
    pos = start
    n = len(buf)
    while n - pos >= HEADER_SIZE:
        h = parse_header(buf, pos)
        if h.magic != 2 or h.batch_length < HEADER_SIZE - LOG_OVERHEAD or pos + h.size > n:
            return
        yield pos, h, crc_ok(buf, pos, h)
        pos += h.size


def scan_valid(buf, start: int = 0):
    """Yield (position, header) for each complete, CRC-valid v2 batch from start,
    stopping at the first torn or corrupt one (used by log recovery)."""
    for pos, h, good in scan_batches(buf, start):
        if not good:
            return
        yield pos, h


# --- building batches (used by tests and tools; uncompressed only) ---------------

def varint(n: int) -> bytes:
    """A record field's zigzag varint (the v2 record format)."""
    n = (n << 1) ^ (n >> 63)  # zigzag
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def build_batch(values: list[bytes], *, base_offset: int = 0, timestamp: int = 0,
                producer_id: int = -1, producer_epoch: int = -1, base_sequence: int = -1,
                keys: list[bytes | None] | None = None) -> bytes:
    """An uncompressed v2 batch holding values (no headers)."""
    records = bytearray()
    for i, value in enumerate(values):
        key = keys[i] if keys else None
        body = bytearray(b"\x00")  # attributes
        body += varint(0)  # timestamp delta
        body += varint(i)  # offset delta
        if key is None:
            body += varint(-1)
        else:
            body += varint(len(key)) + key
        body += varint(len(value)) + value
        body += varint(0)  # headers
        records += varint(len(body)) + body
    after_crc = struct.pack(">hiqqqhii", 0, len(values) - 1, timestamp, timestamp,
                            producer_id, producer_epoch, base_sequence, len(values)) + bytes(records)
    crc = crc32c.crc32c(after_crc)
    batch_length = 4 + 1 + 4 + len(after_crc)
    return struct.pack(">qiibI", base_offset, batch_length, -1, 2, crc) + after_crc
