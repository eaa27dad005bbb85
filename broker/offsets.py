"""The __consumer_offsets topic: which partition holds a group, and its record format.

Records are written exactly as Kafka writes them, so a dump of our offsets
topic reads like Kafka's:

* key version 0 or 1: an offset commit, key = (group, topic, partition);
  value = OffsetCommitValue v0..v3 (v4 flexible is decoded too).
* key version 2: group metadata, key = (group,); value = GroupMetadataValue
  v0..v3 (v4 decoded).
* a record with a null value is a tombstone: it deletes what its key names.

`rebuild(records)` replays a partition in log order, so the last record of a
key wins; that is how a new coordinator recovers groups and committed offsets.
Pure functions only: no IO.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterable

import crc32c

from .records import varint

OFFSETS_TOPIC = "__consumer_offsets"

OFFSET_KEY_VERSION = 1  # what Kafka writes for offset commits
GROUP_KEY_VERSION = 2
OFFSET_VALUE_VERSION = 3  # with leader epoch; v1 when an expire timestamp is set
GROUP_VALUE_VERSION = 3  # with group.instance.id per member


class OffsetsFormatError(ValueError):
    """A record of the offsets topic that cannot be decoded."""


# --- partition of a group ----------------------------------------------------


def java_string_hashcode(s: str) -> int:
    """Java's String.hashCode: s[0]*31^(n-1) + ... + s[n-1] over UTF-16 code
    units, in 32-bit two's-complement arithmetic."""
    data = s.encode("utf-16-be", "surrogatepass")
    h = 0
    for i in range(0, len(data), 2):
        h = (31 * h + ((data[i] << 8) | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h >= (1 << 31) else h


def kafka_abs(n: int) -> int:
    """Kafka's Utils.abs: |n|, except Integer.MIN_VALUE maps to 0 (not to itself)."""
    return 0 if n == -(1 << 31) else abs(n)


def partition_for(group_id: str, num_partitions: int) -> int:
    """The __consumer_offsets partition of a group, as Kafka computes it."""
    if num_partitions <= 0:
        raise ValueError(f"offsets.topic.num.partitions must be positive, got {num_partitions}")
    return kafka_abs(java_string_hashcode(group_id)) % num_partitions


# --- record values -----------------------------------------------------------


@dataclass(frozen=True)
class OffsetKey:
    group: str
    topic: str
    partition: int


@dataclass(frozen=True)
class GroupMetadataKey:
    group: str


@dataclass(frozen=True)
class OffsetValue:
    offset: int
    metadata: str = ""
    commit_timestamp: int = -1
    leader_epoch: int = -1  # written from v3
    expire_timestamp: int = -1  # only in v1


@dataclass(frozen=True)
class MemberMetadata:
    member_id: str
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    subscription: bytes
    assignment: bytes
    group_instance_id: str | None = None


@dataclass(frozen=True)
class GroupMetadataValue:
    protocol_type: str
    generation: int
    protocol: str | None
    leader: str | None
    members: tuple[MemberMetadata, ...] = ()
    current_state_timestamp: int = -1


# --- primitive encoding --------------------------------------------------------


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 0x7FFF:
        raise OffsetsFormatError(f"string of {len(b)} bytes is longer than 32767")
    return struct.pack(">h", len(b)) + b


def _nullable_string(s: str | None) -> bytes:
    return struct.pack(">h", -1) if s is None else _string(s)


def _bytes(b: bytes) -> bytes:
    return struct.pack(">i", len(b)) + bytes(b)


class _Reader:
    """Reads the classic (non-flexible) and the flexible (compact, tagged) forms."""

    def __init__(self, data: bytes, what: str):
        self.data = memoryview(bytes(data))
        self.pos = 0
        self.what = what

    def _take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise OffsetsFormatError(f"{self.what}: truncated at byte {self.pos} (wanted {n} more)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int16(self) -> int:
        return struct.unpack(">h", self._take(2))[0]

    def int32(self) -> int:
        return struct.unpack(">i", self._take(4))[0]

    def int64(self) -> int:
        return struct.unpack(">q", self._take(8))[0]

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            b = self._take(1)[0]
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 35:
                raise OffsetsFormatError(f"{self.what}: varint too long")

    def string(self, compact: bool = False, nullable: bool = False) -> str | None:
        n = self.uvarint() - 1 if compact else self.int16()
        if n < 0:
            if nullable:
                return None
            raise OffsetsFormatError(f"{self.what}: null string where one is required")
        try:
            return bytes(self._take(n)).decode("utf-8")
        except UnicodeDecodeError as e:
            raise OffsetsFormatError(f"{self.what}: invalid UTF-8 ({e})") from None

    def bytes_(self, compact: bool = False) -> bytes:
        n = self.uvarint() - 1 if compact else self.int32()
        if n < 0:
            raise OffsetsFormatError(f"{self.what}: null bytes where bytes are required")
        return bytes(self._take(n))

    def array_len(self, compact: bool = False) -> int:
        n = self.uvarint() - 1 if compact else self.int32()
        if n < 0:
            raise OffsetsFormatError(f"{self.what}: null array")
        return n

    def skip_tagged_fields(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self._take(self.uvarint())

    def end(self) -> None:
        # Kafka ignores trailing bytes of newer minor additions only via tagged
        # fields; anything else left over means we misread the record.
        if self.pos != len(self.data):
            raise OffsetsFormatError(f"{self.what}: {len(self.data) - self.pos} unexpected trailing bytes")


# --- keys ----------------------------------------------------------------------


def encode_key(key: OffsetKey | GroupMetadataKey, version: int | None = None) -> bytes:
    if isinstance(key, OffsetKey):
        version = OFFSET_KEY_VERSION if version is None else version
        if version not in (0, 1):
            raise ValueError(f"offset commit keys are version 0 or 1, not {version}")
        return struct.pack(">h", version) + _string(key.group) + _string(key.topic) + struct.pack(">i", key.partition)
    if isinstance(key, GroupMetadataKey):
        if version not in (None, GROUP_KEY_VERSION):
            raise ValueError(f"group metadata keys are version 2, not {version}")
        return struct.pack(">h", GROUP_KEY_VERSION) + _string(key.group)
    raise TypeError(f"not an offsets topic key: {key!r}")


def decode_key(data: bytes) -> OffsetKey | GroupMetadataKey:
    r = _Reader(data, "offsets topic key")
    version = r.int16()
    if version in (0, 1):
        key = OffsetKey(r.string(), r.string(), r.int32())
    elif version == 2:
        key = GroupMetadataKey(r.string())
    else:
        raise OffsetsFormatError(f"offsets topic key: unknown key version {version} (known: 0, 1, 2)")
    r.end()
    return key


# --- offset commit values ---------------------------------------------------------


def encode_offset_value(v: OffsetValue, version: int | None = None) -> bytes:
    if version is None:
        version = 1 if v.expire_timestamp >= 0 else OFFSET_VALUE_VERSION
    if version not in (0, 1, 2, 3):
        raise ValueError(f"offset commit values are written as version 0..3, not {version}")
    out = [struct.pack(">hq", version, v.offset)]
    if version >= 3:
        out.append(struct.pack(">i", v.leader_epoch))
    out.append(_string(v.metadata))
    out.append(struct.pack(">q", v.commit_timestamp))
    if version == 1:
        out.append(struct.pack(">q", v.expire_timestamp))
    return b"".join(out)


def decode_offset_value(data: bytes) -> OffsetValue:
    r = _Reader(data, "offset commit value")
    version = r.int16()
    if not 0 <= version <= 4:
        raise OffsetsFormatError(f"offset commit value: unknown version {version} (known: 0..4)")
    flexible = version >= 4
    offset = r.int64()
    leader_epoch = r.int32() if version >= 3 else -1
    metadata = r.string(compact=flexible)
    commit_ts = r.int64()
    expire_ts = r.int64() if version == 1 else -1
    if flexible:
        r.skip_tagged_fields()
    r.end()
    return OffsetValue(offset, metadata, commit_ts, leader_epoch, expire_ts)


# --- group metadata values ----------------------------------------------------------


def encode_group_value(v: GroupMetadataValue, version: int = GROUP_VALUE_VERSION) -> bytes:
    if version not in (0, 1, 2, 3):
        raise ValueError(f"group metadata values are written as version 0..3, not {version}")
    out = [struct.pack(">h", version), _string(v.protocol_type), struct.pack(">i", v.generation),
           _nullable_string(v.protocol), _nullable_string(v.leader)]
    if version >= 2:
        out.append(struct.pack(">q", v.current_state_timestamp))
    out.append(struct.pack(">i", len(v.members)))
    for m in v.members:
        out.append(_string(m.member_id))
        if version >= 3:
            out.append(_nullable_string(m.group_instance_id))
        out.append(_string(m.client_id))
        out.append(_string(m.client_host))
        if version >= 1:
            out.append(struct.pack(">i", m.rebalance_timeout_ms))
        out.append(struct.pack(">i", m.session_timeout_ms))
        out.append(_bytes(m.subscription))
        out.append(_bytes(m.assignment))
    return b"".join(out)


def decode_group_value(data: bytes) -> GroupMetadataValue:
    r = _Reader(data, "group metadata value")
    version = r.int16()
    if not 0 <= version <= 4:
        raise OffsetsFormatError(f"group metadata value: unknown version {version} (known: 0..4)")
    c = version >= 4
    protocol_type = r.string(compact=c)
    generation = r.int32()
    protocol = r.string(compact=c, nullable=True)
    leader = r.string(compact=c, nullable=True)
    state_ts = r.int64() if version >= 2 else -1
    members = []
    for _ in range(r.array_len(compact=c)):
        member_id = r.string(compact=c)
        instance_id = r.string(compact=c, nullable=True) if version >= 3 else None
        client_id = r.string(compact=c)
        client_host = r.string(compact=c)
        session_timeout = None
        rebalance_timeout = r.int32() if version >= 1 else None
        session_timeout = r.int32()
        if rebalance_timeout is None:  # v0 had only the session timeout
            rebalance_timeout = session_timeout
        subscription = r.bytes_(compact=c)
        assignment = r.bytes_(compact=c)
        if c:
            r.skip_tagged_fields()
        members.append(MemberMetadata(member_id, client_id, client_host, session_timeout,
                                      rebalance_timeout, subscription, assignment, instance_id))
    if c:
        r.skip_tagged_fields()
    r.end()
    return GroupMetadataValue(protocol_type, generation, protocol, leader, tuple(members), state_ts)


# --- records and replay ------------------------------------------------------------


@dataclass(frozen=True)
class OffsetsRecord:
    """One record of __consumer_offsets: key and value bytes (value None = tombstone)."""
    key: bytes
    value: bytes | None


def offset_commit_record(group: str, topic: str, partition: int, value: OffsetValue) -> OffsetsRecord:
    return OffsetsRecord(encode_key(OffsetKey(group, topic, partition)), encode_offset_value(value))


def offset_tombstone(group: str, topic: str, partition: int) -> OffsetsRecord:
    return OffsetsRecord(encode_key(OffsetKey(group, topic, partition)), None)


def group_metadata_record(group: str, value: GroupMetadataValue) -> OffsetsRecord:
    return OffsetsRecord(encode_key(GroupMetadataKey(group)), encode_group_value(value))


def group_tombstone(group: str) -> OffsetsRecord:
    return OffsetsRecord(encode_key(GroupMetadataKey(group)), None)


def decode_record(key: bytes, value: bytes | None):
    """-> (OffsetKey, OffsetValue | None) or (GroupMetadataKey, GroupMetadataValue | None)."""
    k = decode_key(key)
    if value is None:
        return k, None
    if isinstance(k, OffsetKey):
        return k, decode_offset_value(value)
    return k, decode_group_value(value)


@dataclass
class OffsetsState:
    """What a partition of __consumer_offsets says once replayed."""
    offsets: dict[str, dict[tuple[str, int], OffsetValue]] = field(default_factory=dict)
    groups: dict[str, GroupMetadataValue] = field(default_factory=dict)

    def group_ids(self) -> set[str]:
        return set(self.offsets) | set(self.groups)


def rebuild(records: Iterable[tuple[bytes, bytes | None] | OffsetsRecord]) -> OffsetsState:
    """Replay records in log order: the last record of each key wins, tombstones delete.

    `records` are (key, value) pairs or OffsetsRecord; a record without a key
    is not ours (Kafka never writes one) and is an error.
    """
    state = OffsetsState()
    for i, rec in enumerate(records):
        key, value = (rec.key, rec.value) if isinstance(rec, OffsetsRecord) else rec
        if key is None:
            raise OffsetsFormatError(f"record {i} of the offsets topic has no key")
        k, v = decode_record(key, value)
        if isinstance(k, OffsetKey):
            tp = (k.topic, k.partition)
            if v is None:
                group_offsets = state.offsets.get(k.group)
                if group_offsets is not None:
                    group_offsets.pop(tp, None)
                    if not group_offsets:
                        del state.offsets[k.group]
            else:
                state.offsets.setdefault(k.group, {})[tp] = v
        elif v is None:
            state.groups.pop(k.group, None)
        else:
            state.groups[k.group] = v
    return state


# --- record batches of the offsets topic ------------------------------------------------
# The coordinator writes small uncompressed magic-2 batches; tombstones need null values,
# so it builds them itself rather than through a producer-facing helper.


def encode_batch(records: list[OffsetsRecord], timestamp_ms: int, base_offset: int = 0) -> bytes:
    """An uncompressed magic-2 record batch holding `records` (producer id -1: not idempotent)."""
    if not records:
        raise ValueError("a record batch needs at least one record")
    body = bytearray()
    for i, rec in enumerate(records):
        r = bytearray(b"\x00")  # attributes
        r += varint(0)  # timestamp delta
        r += varint(i)  # offset delta
        r += varint(len(rec.key)) + rec.key
        r += varint(-1) if rec.value is None else varint(len(rec.value)) + rec.value
        r += varint(0)  # no headers
        body += varint(len(r)) + r
    after_crc = struct.pack(">hiqqqhii", 0, len(records) - 1, timestamp_ms, timestamp_ms,
                            -1, -1, -1, len(records)) + bytes(body)
    batch_length = 4 + 1 + 4 + len(after_crc)  # leader epoch, magic, crc, rest
    return struct.pack(">qiibI", base_offset, batch_length, -1, 2, crc32c.crc32c(after_crc)) + after_crc


def _read_zigzag(buf: memoryview, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if pos >= len(buf):
            raise OffsetsFormatError("record batch: truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return (value >> 1) ^ -(value & 1), pos
        shift += 7
        if shift > 63:
            raise OffsetsFormatError("record batch: varint too long")


def decode_batches(data: bytes) -> list[tuple[int, OffsetsRecord]]:
    """(offset, record) for every record in a run of uncompressed magic-2 batches, as read from the log.

    Control batches (transaction markers) are skipped; a compressed batch is an
    error, since the coordinator never writes one.
    """
    buf = memoryview(bytes(data))
    out: list[tuple[int, OffsetsRecord]] = []
    pos = 0
    while pos + 12 <= len(buf):
        base_offset, batch_length = struct.unpack_from(">qi", buf, pos)
        end = pos + 12 + batch_length
        if end > len(buf):
            raise OffsetsFormatError(f"record batch at byte {pos}: truncated")
        magic = buf[pos + 16]
        if magic != 2:
            raise OffsetsFormatError(f"record batch at byte {pos}: magic {magic}, only 2 is supported")
        attributes, = struct.unpack_from(">h", buf, pos + 21)
        if attributes & 0x07:
            raise OffsetsFormatError(f"record batch at byte {pos}: compressed, the offsets topic is written uncompressed")
        count, = struct.unpack_from(">i", buf, pos + 57)
        if attributes & 0x20:  # control batch
            pos = end
            continue
        p = pos + 61
        for _ in range(count):
            length, p = _read_zigzag(buf, p)
            rec_end = p + length
            p += 1  # attributes
            _, p = _read_zigzag(buf, p)  # timestamp delta
            offset_delta, p = _read_zigzag(buf, p)
            klen, p = _read_zigzag(buf, p)
            key = None if klen < 0 else bytes(buf[p:p + klen])
            p += max(klen, 0)
            vlen, p = _read_zigzag(buf, p)
            value = None if vlen < 0 else bytes(buf[p:p + vlen])
            if key is None:
                raise OffsetsFormatError(f"record at offset {base_offset + offset_delta} has no key")
            out.append((base_offset + offset_delta, OffsetsRecord(key, value)))
            p = rec_end
        pos = end
    if pos != len(buf):
        raise OffsetsFormatError(f"record batches: {len(buf) - pos} trailing bytes")
    return out
