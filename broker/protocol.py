"""Kafka wire protocol: frames, request headers, and kio (de)serialisation.

Sans-IO: bytes in, entities out, and back.  ``SUPPORTED`` is the single list of
APIs and versions this broker implements; ApiVersions advertises exactly it.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import struct
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import kio.index
from kio.schema.errors import ErrorCode as KioErrorCode  # kio's entities want its own enum; ours is broker/errors.py
from kio.serial import entity_reader, entity_writer
from kio.static.constants import EntityType

from .errors import UNSUPPORTED_VERSION

API_NAMES = {
    0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 18: "ApiVersions",
    19: "CreateTopics", 20: "DeleteTopics", 22: "InitProducerId", 32: "DescribeConfigs",
    44: "IncrementalAlterConfigs", 23: "OffsetForLeaderEpoch",
    # consumer groups (broker/group_api.py)
    8: "OffsetCommit", 9: "OffsetFetch", 10: "FindCoordinator", 11: "JoinGroup", 12: "Heartbeat",
    13: "LeaveGroup", 14: "SyncGroup", 15: "DescribeGroups", 16: "ListGroups", 42: "DeleteGroups",
}
# api key -> (min version, max version) implemented here.
SUPPORTED: dict[int, tuple[int, int]] = {
    0: (3, 9),     # Produce
    1: (4, 12),    # Fetch
    2: (1, 7),     # ListOffsets
    3: (0, 12),    # Metadata
    18: (0, 3),    # ApiVersions
    19: (2, 7),    # CreateTopics
    20: (1, 6),    # DeleteTopics
    22: (0, 4),    # InitProducerId
    23: (2, 4),    # OffsetForLeaderEpoch (v3+ carries replica_id: what followers send)
    32: (1, 4),    # DescribeConfigs
    44: (0, 1),    # IncrementalAlterConfigs
    # consumer groups (broker/group_api.py): what librdkafka 2.x and kafka-python 3.x send
    8: (2, 9),     # OffsetCommit
    9: (1, 9),     # OffsetFetch (v8+ batches groups)
    10: (0, 4),    # FindCoordinator (v4+ batches keys)
    11: (0, 9),    # JoinGroup
    12: (0, 4),    # Heartbeat
    13: (0, 5),    # LeaveGroup
    14: (0, 5),    # SyncGroup
    15: (0, 5),    # DescribeGroups
    16: (0, 5),    # ListGroups
    42: (0, 2),    # DeleteGroups
}
API_VERSIONS = 18
_I16 = struct.Struct(">h")
_HEAD = struct.Struct(">hhi")
_I32 = struct.Struct(">i")


class MalformedRequest(Exception):
    """The frame cannot be understood; the connection is closed."""


class UnsupportedVersion(Exception):
    def __init__(self, api_key: int, version: int, correlation_id: int):
        super().__init__(f"unsupported {API_NAMES.get(api_key, api_key)} version {version}")
        self.api_key = api_key
        self.version = version
        self.correlation_id = correlation_id


@dataclass(slots=True)
class Request:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    body: Any

    @property
    def name(self) -> str:
        return API_NAMES.get(self.api_key, str(self.api_key))


@lru_cache(maxsize=None)
def request_class(api_key: int, version: int):
    return kio.index.load_request_schema(api_key, version)


@lru_cache(maxsize=None)
def response_class(api_key: int, version: int):
    return kio.index.load_response_schema(api_key, version)


@lru_cache(maxsize=None)
def _reader(cls):
    return entity_reader(cls)


@lru_cache(maxsize=None)
def _writer(cls):
    return entity_writer(cls)


def _read_uvarint(buf, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if pos >= len(buf) or shift > 28:
            raise MalformedRequest("bad unsigned varint in header")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def decode_request(frame: bytes) -> Request:
    """Parse one request frame (without its 4-byte size prefix)."""
    if len(frame) < 10:
        raise MalformedRequest(f"request of {len(frame)} bytes is shorter than a header")
    api_key, version, correlation_id = _HEAD.unpack_from(frame, 0)
    (client_len,) = _I16.unpack_from(frame, 8)
    pos = 10
    client_id = None
    if client_len >= 0:
        if pos + client_len > len(frame):
            raise MalformedRequest("client_id runs past the end of the frame")
        try:
            client_id = frame[pos:pos + client_len].decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedRequest("client_id is not UTF-8") from None
        pos += client_len
    elif client_len != -1:
        raise MalformedRequest(f"bad client_id length {client_len}")
    lo_hi = SUPPORTED.get(api_key)
    if lo_hi is None:
        raise MalformedRequest(f"unknown API key {api_key}")
    if not lo_hi[0] <= version <= lo_hi[1]:
        raise UnsupportedVersion(api_key, version, correlation_id)
    cls = request_class(api_key, version)
    if cls.__flexible__:
        count, pos = _read_uvarint(frame, pos)
        for _ in range(count):
            _tag, pos = _read_uvarint(frame, pos)
            size, pos = _read_uvarint(frame, pos)
            pos += size
        if pos > len(frame):
            raise MalformedRequest("header tagged fields run past the end of the frame")
    try:
        body, size = _reader(cls)(frame, pos)
    except Exception as e:  # kio raises several kinds on garbage; all mean "malformed"
        raise MalformedRequest(f"cannot decode {API_NAMES[api_key]} v{version} body: {type(e).__name__}: {e}") from None
    # Trailing bytes are ignored, as Kafka does: librdkafka 2.x sends some after Metadata v12.
    return Request(api_key, version, correlation_id, client_id, body)


def encode_response(api_key: int, version: int, correlation_id: int, body) -> bytes:
    """A whole response frame, size prefix included."""
    buf = io.BytesIO()
    buf.write(b"\0\0\0\0")
    buf.write(_I32.pack(correlation_id))
    # Flexible responses use header v1 (tagged fields), except ApiVersions (always v0).
    if type(body).__flexible__ and api_key != API_VERSIONS:
        buf.write(b"\0")
    _writer(type(body))(buf, body)
    out = buf.getbuffer()
    _I32.pack_into(out, 0, len(out) - 4)
    data = bytes(out)
    del out
    return data


# -- building response entities from plain data ----------------------------------------

@lru_cache(maxsize=None)
def _field_plan(cls) -> tuple:
    hints = typing.get_type_hints(cls)
    plan = []
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        kind, inner = "plain", None
        origin = typing.get_origin(t)
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
            t = args[0]
            origin = typing.get_origin(t)
            args = list(typing.get_args(t))
        if origin is tuple and args and dataclasses.is_dataclass(args[0]):
            kind, inner = "entities", args[0]
        elif dataclasses.is_dataclass(t):
            kind, inner = "entity", t
        ktype = f.metadata.get("kafka_type", "")
        if ktype == "error_code":
            kind = "error"
        elif ktype.startswith("timedelta"):
            kind = "timedelta"
        elif ktype.startswith("datetime"):
            kind = "datetime"
        plan.append((f.name, kind, inner))
    return tuple(plan)


def build(cls, data: dict):
    """cls(**data), dropping keys the version lacks and converting nested dicts,
    error codes and milliseconds to what kio expects."""
    kwargs = {}
    for name, kind, inner in _field_plan(cls):
        if name not in data:
            continue
        v = data[name]
        if kind == "entities" and v is not None:
            v = tuple(x if dataclasses.is_dataclass(x) else build(inner, x) for x in v)
        elif kind == "entity" and isinstance(v, dict):
            v = build(inner, v)
        elif kind == "error":
            v = KioErrorCode(v)
        elif kind == "timedelta" and isinstance(v, int):
            v = datetime.timedelta(milliseconds=v)
        elif kind == "datetime" and isinstance(v, int):
            v = None if v < 0 else datetime.datetime.fromtimestamp(v / 1000, datetime.timezone.utc)
        kwargs[name] = v
    return cls(**kwargs)


def build_response(api_key: int, version: int, data: dict):
    return build(response_class(api_key, version), data)


def api_versions_body(version: int, error_code: int = 0):
    """The ApiVersions answer: exactly SUPPORTED."""
    return build_response(API_VERSIONS, version, {
        "error_code": error_code,
        "api_keys": [{"api_key": k, "min_version": lo, "max_version": hi}
                     for k, (lo, hi) in sorted(SUPPORTED.items())],
        "throttle_time": 0,
    })


def unsupported_api_versions_response(correlation_id: int) -> bytes:
    """KIP-511: a client asking ApiVersions at a version we do not know gets a v0
    answer with UNSUPPORTED_VERSION and our ranges, and retries at a version we do."""
    return encode_response(API_VERSIONS, 0, correlation_id,
                           api_versions_body(0, UNSUPPORTED_VERSION))


# -- the client side, for follower fetchers -------------------------------------------------

def encode_request(api_key: int, version: int, correlation_id: int, client_id: str, data: dict) -> bytes:
    """A whole request frame (size prefix included) for a non-flexible version (header v1)."""
    cls = request_class(api_key, version)
    if cls.__flexible__:
        raise ValueError(f"{API_NAMES.get(api_key, api_key)} v{version} is flexible; use a non-flexible version")
    body = build(cls, data)
    cid = client_id.encode()
    buf = io.BytesIO()
    buf.write(b"\0\0\0\0")
    buf.write(_HEAD.pack(api_key, version, correlation_id))
    buf.write(_I16.pack(len(cid)))
    buf.write(cid)
    _writer(cls)(buf, body)
    out = bytearray(buf.getvalue())
    _I32.pack_into(out, 0, len(out) - 4)
    return bytes(out)


def decode_response(api_key: int, version: int, frame: bytes):
    """(correlation id, body) of a response frame without its size prefix (non-flexible: header v0)."""
    (correlation_id,) = _I32.unpack_from(frame, 0)
    body, _size = _reader(response_class(api_key, version))(frame, 4)
    return correlation_id, body


# -- the Fetch response, by hand -------------------------------------------------------------
#
# Fetch is most of a broker's traffic (every consumer and follower long-polls it), and building
# kio entities then walking them with kio's generic writer cost more than everything else a
# fetch does.  This writes the same bytes directly (tests/test_protocol_fetch.py checks it
# against kio's own encoding, version by version).  A partition is the tuple
# (partition_index, error_code, high_watermark, last_stable_offset, log_start_offset,
#  aborted_transactions (None, or a tuple of (producer_id, first_offset)), records bytes).

_FETCH_HEAD = struct.Struct(">ihi")          # throttle_time_ms, error_code, session_id (v7+)
_FETCH_PART = struct.Struct(">ihqq")         # partition_index, error_code, high_watermark, last_stable_offset
_I64 = struct.Struct(">q")
_ABORTED = struct.Struct(">qq")
_NO_PREFERRED_REPLICA = _I32.pack(-1)


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _array_len(n: int, flexible: bool) -> bytes:
    return _uvarint(n + 1) if flexible else _I32.pack(n)


def _string(s: str, flexible: bool) -> bytes:
    raw = s.encode()
    return (_uvarint(len(raw) + 1) if flexible else _I16.pack(len(raw))) + raw


def encode_fetch_response(version: int, correlation_id: int, error_code: int, session_id: int,
                          topics: list[tuple[str, list[tuple]]], throttle_time_ms: int = 0) -> bytes:
    """A whole Fetch response frame (v4-v12), size prefix included."""
    flexible = version >= 12
    out = [b"", _I32.pack(correlation_id)]
    if flexible:
        out.append(b"\0")                                  # response header v1: no tagged fields
    if version >= 7:
        out.append(_FETCH_HEAD.pack(throttle_time_ms, error_code, session_id))
    else:
        out.append(_I32.pack(throttle_time_ms))
    out.append(_array_len(len(topics), flexible))
    for name, parts in topics:
        out.append(_string(name, flexible))
        out.append(_array_len(len(parts), flexible))
        for index, error, hw, lso, log_start, aborted, records in parts:
            out.append(_FETCH_PART.pack(index, error, hw, lso))
            if version >= 5:
                out.append(_I64.pack(log_start))
            if aborted is None:
                out.append(b"\0" if flexible else _I32.pack(-1))
            else:
                out.append(_uvarint(len(aborted) + 1) if flexible else _I32.pack(len(aborted)))
                for producer_id, first_offset in aborted:
                    out.append(_ABORTED.pack(producer_id, first_offset))
                    if flexible:
                        out.append(b"\0")
            if version >= 11:
                out.append(_NO_PREFERRED_REPLICA)
            if records is None:
                out.append(b"\0" if flexible else _I32.pack(-1))
            else:
                out.append(_uvarint(len(records) + 1) if flexible else _I32.pack(len(records)))
                out.append(records)
            if flexible:
                out.append(b"\0")                          # partition tagged fields
        if flexible:
            out.append(b"\0")                              # topic tagged fields
    if flexible:
        out.append(b"\0")                                  # response tagged fields
    size = sum(map(len, out))
    out[0] = _I32.pack(size)
    return b"".join(out)


# -- the follower's Fetch request, by hand ---------------------------------------------------
#
# A follower sends one of these per round trip; kio's generic writer cost it more than the rest of
# the round.  Fetch v11 only (the newest non-flexible version, what ReplicaFetcher speaks);
# tests/test_protocol_fetch.py checks the bytes against kio's.  topics: [(topic, [(partition,
# current_leader_epoch, fetch_offset, log_start_offset, partition_max_bytes)])]; forgotten:
# [(topic, [partition])].

_FETCH11_HEAD = struct.Struct(">iiiibii")      # replica_id, max_wait_ms, min_bytes, max_bytes, isolation, session id/epoch
_FETCH11_PART = struct.Struct(">iiqqi")
FETCH_REQUEST_VERSION = 11


def encode_follower_fetch(correlation_id: int, client_id: str, replica_id: int, max_wait_ms: int,
                          min_bytes: int, max_bytes: int, isolation_level: int, session_id: int,
                          session_epoch: int, topics: list, forgotten: list, rack_id: str = "") -> bytes:
    """A whole Fetch v11 request frame, size prefix included."""
    out = [b"", _HEAD.pack(1, FETCH_REQUEST_VERSION, correlation_id), _string(client_id, False),
           _FETCH11_HEAD.pack(replica_id, max_wait_ms, min_bytes, max_bytes, isolation_level, session_id,
                              session_epoch),
           _I32.pack(len(topics))]
    for name, parts in topics:
        out.append(_string(name, False))
        out.append(_I32.pack(len(parts)))
        for part in parts:
            out.append(_FETCH11_PART.pack(*part))
    out.append(_I32.pack(len(forgotten)))
    for name, parts in forgotten:
        out.append(_string(name, False))
        out.append(_I32.pack(len(parts)))
        out.extend(_I32.pack(p) for p in parts)
    out.append(_string(rack_id, False))
    out[0] = _I32.pack(sum(map(len, out)))
    return b"".join(out)


# -- the Produce response, by hand ------------------------------------------------------------
#
# One per acknowledged send; kio's entity building and generic writer were most of what answering
# it cost.  v3-v9 (what SUPPORTED accepts); tests/test_protocol_fetch.py checks the bytes against
# kio's.  topics: [(name, [(index, error_code, base_offset, log_append_time_ms, log_start_offset,
# error_message or None)])]; record_errors are always empty here.

_PRODUCE_PART = struct.Struct(">ihqq")       # index, error_code, base_offset, log_append_time_ms


def _nullable_str(s: str | None, flexible: bool) -> bytes:
    if s is None:
        return b"\0" if flexible else _I16.pack(-1)
    return _string(s, flexible)


def encode_produce_response(version: int, correlation_id: int, topics: list, throttle_time_ms: int = 0) -> bytes:
    """A whole Produce response frame (v3-v9), size prefix included."""
    flexible = version >= 9
    out = [b"", _I32.pack(correlation_id)]
    if flexible:
        out.append(b"\0")                                  # response header v1: no tagged fields
    out.append(_array_len(len(topics), flexible))
    for name, parts in topics:
        out.append(_string(name, flexible))
        out.append(_array_len(len(parts), flexible))
        for index, error, base_offset, append_time, log_start, message in parts:
            out.append(_PRODUCE_PART.pack(index, error, base_offset, append_time))
            if version >= 5:
                out.append(_I64.pack(log_start))
            if version >= 8:
                out.append(b"\x01" if flexible else _I32.pack(0))      # record_errors: none
                out.append(_nullable_str(message, flexible))
            if flexible:
                out.append(b"\0")                          # partition tagged fields
        if flexible:
            out.append(b"\0")                              # topic tagged fields
    out.append(_I32.pack(throttle_time_ms))
    if flexible:
        out.append(b"\0")                                  # response tagged fields
    out[0] = _I32.pack(sum(map(len, out)))
    return b"".join(out)
