"""The __consumer_offsets format and the group -> partition mapping (broker.offsets)."""
from __future__ import annotations

import shutil
import subprocess
import textwrap

import pytest
from hypothesis import given, strategies as st

from broker.offsets import (
    GroupMetadataKey,
    GroupMetadataValue,
    MemberMetadata,
    OffsetKey,
    OffsetsFormatError,
    OffsetValue,
    decode_group_value,
    decode_key,
    decode_offset_value,
    encode_group_value,
    encode_key,
    encode_offset_value,
    group_metadata_record,
    group_tombstone,
    java_string_hashcode,
    kafka_abs,
    offset_commit_record,
    offset_tombstone,
    partition_for,
    rebuild,
)

INT_MIN = -(2**31)


def hashcode_by_definition(s: str) -> int:
    """s[0]*31^(n-1) + ... + s[n-1] with big integers, then reduced to a signed 32-bit int."""
    units = [int.from_bytes(s.encode("utf-16-be", "surrogatepass")[i:i + 2], "big")
             for i in range(0, len(s.encode("utf-16-be", "surrogatepass")), 2)]
    n = len(units)
    total = sum(u * 31 ** (n - 1 - i) for i, u in enumerate(units)) % 2**32
    return total - 2**32 if total >= 2**31 else total


def test_hashcode_of_known_java_values():
    assert java_string_hashcode("") == 0
    assert java_string_hashcode("a") == 97
    assert java_string_hashcode("ab") == 97 * 31 + 98 == 3105
    assert java_string_hashcode("Aa") == java_string_hashcode("BB") == 2112  # the textbook collision
    # "hello": 104*31^4 + 101*31^3 + 108*31^2 + 108*31 + 111, no overflow yet
    assert java_string_hashcode("hello") == 104 * 923521 + 101 * 29791 + 108 * 961 + 108 * 31 + 111 == 99162322
    # overflows 32 bits: 4-byte arithmetic wraps, as in Java
    assert java_string_hashcode("consumer-group-1") == hashcode_by_definition("consumer-group-1")
    assert java_string_hashcode("polygenelubricants") == INT_MIN
    # a character outside the BMP counts as two UTF-16 units (surrogates), as in Java
    assert java_string_hashcode("\U0001F600") == 0xD83D * 31 + 0xDE00


def test_partition_of_a_group_uses_kafkas_abs():
    assert kafka_abs(INT_MIN) == 0 and kafka_abs(-5) == 5 and kafka_abs(7) == 7
    # Integer.MIN_VALUE maps to partition 0, not to a negative partition
    assert partition_for("polygenelubricants", 50) == 0
    assert partition_for("my-group", 50) == 12  # the value kafka-cp/jshell prints for Kafka's formula
    assert partition_for("a", 50) == 97 % 50
    negative = "consumer-group-1" if java_string_hashcode("consumer-group-1") < 0 else "zzzzzzzzzz"
    assert java_string_hashcode(negative) < 0
    assert partition_for(negative, 50) == abs(java_string_hashcode(negative)) % 50
    with pytest.raises(ValueError, match="offsets.topic.num.partitions"):
        partition_for("g", 0)


@given(st.text(max_size=40))
def test_hashcode_matches_its_definition(s):
    assert java_string_hashcode(s) == hashcode_by_definition(s)
    assert 0 <= partition_for(s, 50) < 50


JAVA_PROGRAM = textwrap.dedent("""
    import java.io.*;
    import java.nio.charset.StandardCharsets;
    public class HashCodes {
        public static void main(String[] args) throws Exception {
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
            String line;
            while ((line = in.readLine()) != null) {
                int h = line.hashCode();
                int abs = (h == Integer.MIN_VALUE) ? 0 : Math.abs(h);
                System.out.println(h + " " + (abs % 50));
            }
        }
    }
""")


@pytest.mark.skipif(shutil.which("java") is None, reason="needs a JDK's java launcher")
def test_hashcode_and_partition_match_real_java(tmp_path):
    """Java itself (the host's JDK) computes String.hashCode and Kafka's partition formula."""
    src = tmp_path / "HashCodes.java"
    src.write_text(JAVA_PROGRAM)
    names = ["", "a", "my-group", "polygenelubricants", "consumer-group-1", "acked-test-group-42",
             "Ünïcödé-grüppe", "組-グループ", "emoji-\U0001F600-group", "x" * 200, "GydZG_", "DESIGNING WORKHOUSES"]
    out = subprocess.run(["java", str(src)], input="\n".join(names) + "\n", capture_output=True,
                         text=True, encoding="utf-8", timeout=120, check=True).stdout.split("\n")
    for name, line in zip(names, out):
        h, p = map(int, line.split())
        assert (java_string_hashcode(name), partition_for(name, 50)) == (h, p), name


# --- record format ------------------------------------------------------------------------------


def test_offset_key_bytes_by_hand():
    # int16 version 1, string "g", string "t", int32 partition 3
    assert encode_key(OffsetKey("g", "t", 3)) == bytes.fromhex("0001 0001 67 0001 74 00000003")
    assert decode_key(bytes.fromhex("0000 0001 67 0001 74 00000003")) == OffsetKey("g", "t", 3)  # version 0
    assert encode_key(GroupMetadataKey("g")) == bytes.fromhex("0002 0001 67")


def test_offset_value_bytes_by_hand():
    v = OffsetValue(offset=5, metadata="m", commit_timestamp=1000, leader_epoch=2)
    # v3: version, offset int64, leader epoch int32, metadata string, commit timestamp int64
    assert encode_offset_value(v) == bytes.fromhex("0003 0000000000000005 00000002 0001 6d 00000000000003e8")
    # v1: version, offset, metadata, commit timestamp, expire timestamp
    v1 = OffsetValue(5, "m", 1000, -1, 2000)
    assert encode_offset_value(v1) == bytes.fromhex("0001 0000000000000005 0001 6d 00000000000003e8 00000000000007d0")
    assert decode_offset_value(encode_offset_value(v1)) == v1
    assert decode_offset_value(encode_offset_value(v, version=0)) == OffsetValue(5, "m", 1000)


def test_flexible_v4_values_decode():
    # OffsetCommitValue v4: offset, leader epoch, compact string, commit ts, tagged fields (none)
    raw = bytes.fromhex("0004 0000000000000007 00000001 02 6d 00000000000003e8 00")
    assert decode_offset_value(raw) == OffsetValue(7, "m", 1000, 1)
    # GroupMetadataValue v4 with one member and a tagged field to skip at the end
    raw = (bytes.fromhex("0004") + b"\x09consumer" + bytes.fromhex("00000003") + b"\x06range" + b"\x02m"
           + bytes.fromhex("0000000000000010") + b"\x02"  # one member
           + b"\x02m" + b"\x00" + b"\x02c" + b"\x02h" + bytes.fromhex("00007530 00002710")
           + b"\x02s" + b"\x02a" + b"\x00" + bytes.fromhex("01 05 02 abcd"))
    v = decode_group_value(raw)
    assert (v.protocol_type, v.generation, v.protocol, v.leader, v.current_state_timestamp) == ("consumer", 3, "range", "m", 16)
    assert v.members == (MemberMetadata("m", "c", "h", 10000, 30000, b"s", b"a", None),)


def test_bad_records_are_clear_errors():
    with pytest.raises(OffsetsFormatError, match="unknown key version 9"):
        decode_key(bytes.fromhex("0009 0001 67"))
    with pytest.raises(OffsetsFormatError, match="truncated"):
        decode_key(bytes.fromhex("0001 0005 67"))
    with pytest.raises(OffsetsFormatError, match="trailing"):
        decode_key(encode_key(GroupMetadataKey("g")) + b"\x00")
    with pytest.raises(OffsetsFormatError, match="unknown version 7"):
        decode_offset_value(bytes.fromhex("0007"))
    with pytest.raises(OffsetsFormatError, match="no key"):
        rebuild([(None, b"")])


members = st.builds(MemberMetadata, st.text(max_size=10), st.text(max_size=5), st.text(max_size=5),
                    st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1), st.binary(max_size=20),
                    st.binary(max_size=20), st.none() | st.text(max_size=5))
group_values = st.builds(GroupMetadataValue, st.text(max_size=8), st.integers(-1, 2**31 - 1),
                         st.none() | st.text(max_size=8), st.none() | st.text(max_size=8),
                         st.lists(members, max_size=4).map(tuple), st.integers(-1, 2**62))


@given(group_values)
def test_group_value_round_trip_v3(v):
    assert decode_group_value(encode_group_value(v)) == v


@given(st.builds(OffsetValue, st.integers(-1, 2**62), st.text(max_size=20), st.integers(-1, 2**62),
                 st.integers(-1, 2**31 - 1)))
def test_offset_value_round_trip_v3(v):
    assert decode_offset_value(encode_offset_value(v)) == v


def test_rebuild_last_record_wins_and_tombstones_delete():
    gv = GroupMetadataValue("consumer", 4, "range", "m", (), 7)
    records = [
        offset_commit_record("g", "t", 0, OffsetValue(5)),
        offset_commit_record("g", "t", 1, OffsetValue(1)),
        offset_commit_record("g", "t", 0, OffsetValue(9)),
        offset_commit_record("h", "t", 0, OffsetValue(3)),
        offset_tombstone("g", "t", 1),
        group_metadata_record("g", gv),
        group_metadata_record("h", gv),
        group_tombstone("h"),
        offset_tombstone("h", "t", 0),
        offset_tombstone("zz", "t", 0),  # a tombstone for nothing is harmless
    ]
    state = rebuild(records)
    assert {g: {tp: v.offset for tp, v in o.items()} for g, o in state.offsets.items()} == {"g": {("t", 0): 9}}
    assert state.groups == {"g": gv}
    # plain (key, value) pairs work the same
    assert rebuild([(r.key, r.value) for r in records]) == state


def test_batches_round_trip_and_parse_as_the_broker_stores_them():
    from broker import records as broker_records
    from broker.offsets import decode_batches, encode_batch
    recs = [offset_commit_record("g", "t", 0, OffsetValue(5, "", 1000)), group_tombstone("g"),
            offset_tombstone("g", "t", 1)]
    batch = encode_batch(recs, timestamp_ms=1000, base_offset=40)
    # the broker's own batch code accepts it: valid header and CRC-32C
    header = broker_records.parse_header(batch, 0)
    assert broker_records.crc_ok(batch, 0, header)
    assert header.last_offset == 42
    second = encode_batch(recs[:1], timestamp_ms=2000, base_offset=43)
    assert decode_batches(batch + second) == [(40, recs[0]), (41, recs[1]), (42, recs[2]), (43, recs[0])]
    assert rebuild(r for _, r in decode_batches(batch + second)).offsets == {"g": {("t", 0): OffsetValue(5, "", 1000)}}
    with pytest.raises(OffsetsFormatError, match="truncated"):
        decode_batches(batch[:-3])
