"""The hand-written encoders (Fetch and Produce responses, the follower's Fetch request) write exactly
the bytes kio's generic writer does, for every version the broker supports, and kio reads them back to
the same values."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from broker import protocol
from broker.protocol import SUPPORTED, build_response, encode_fetch_response, encode_response, response_class

VERSIONS = list(range(SUPPORTED[1][0], SUPPORTED[1][1] + 1))

i32 = st.integers(-2**31, 2**31 - 1)
i64 = st.integers(-2**63, 2**63 - 1)
# error codes kio knows (it maps them to an enum)
errors = st.sampled_from([0, 1, 3, 6, 70, 71, 74, 75])
partition = st.tuples(
    i32, errors, i64, i64, i64,
    st.one_of(st.none(), st.lists(st.tuples(i64, i64), max_size=3).map(tuple)),
    st.one_of(st.none(), st.binary(max_size=300)))
topics = st.lists(st.tuples(st.text(min_size=1, max_size=20), st.lists(partition, max_size=4)), max_size=4)


def _kio_frame(version: int, correlation: int, error: int, session: int, throttle: int, data) -> bytes:
    body = build_response(1, version, {
        "throttle_time": throttle, "error_code": error, "session_id": session,
        "responses": [{"topic": name, "partitions": [
            {"partition_index": p[0], "error_code": p[1], "high_watermark": p[2], "last_stable_offset": p[3],
             "log_start_offset": p[4], "preferred_read_replica": -1, "records": p[6],
             "aborted_transactions": None if p[5] is None else [
                 {"producer_id": a, "first_offset": b} for a, b in p[5]]}
            for p in parts]} for name, parts in data]})
    return encode_response(1, version, correlation, body)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VERSIONS), i32, errors, i32, st.integers(0, 2**31 - 1), topics)
def test_fetch_response_bytes_equal_kio(version, correlation, error, session, throttle, data):
    ours = encode_fetch_response(version, correlation, error, session, data, throttle_time_ms=throttle)
    assert ours == _kio_frame(version, correlation, error, session, throttle, data)


def test_fetch_response_reads_back_with_kio():
    data = [("orders", [(0, 0, 42, 42, 7, None, b"\x00" * 70), (3, 6, -1, -1, -1, None, None)]),
            ("t\u00e9", [(1, 0, 5, 5, 0, ((9, 3),), b"")])]
    for version in VERSIONS:
        frame = encode_fetch_response(version, 77, 0, 1234, data)
        assert int.from_bytes(frame[:4], "big") == len(frame) - 4
        correlation, body = protocol.decode_response(1, version, frame[4:]) if version < 12 else (None, None)
        if version >= 12:   # flexible: header v1 (one tagged-fields byte after the correlation id)
            from kio.serial import entity_reader
            correlation = int.from_bytes(frame[4:8], "big")
            body, _ = entity_reader(response_class(1, version))(frame, 9)
        assert correlation == 77
        got = [(t.topic, [(p.partition_index, p.error_code.value, p.high_watermark, p.records)
                          for p in t.partitions]) for t in body.responses]
        assert got == [("orders", [(0, 0, 42, b"\x00" * 70), (3, 6, -1, None)]), ("t\u00e9", [(1, 0, 5, b"")])]
        if version >= 7:
            assert body.session_id == 1234


fetch_partition = st.tuples(i32, i32, i64, i64, i32)
names = st.text(min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(i32, st.text(max_size=30), i32, i32, i32, i32, st.sampled_from([0, 1]), i32, i32,
       st.lists(st.tuples(names, st.lists(fetch_partition, max_size=4)), max_size=4),
       st.lists(st.tuples(names, st.lists(i32, max_size=4)), max_size=3), st.text(max_size=10))
def test_follower_fetch_request_bytes_equal_kio(correlation, client_id, replica, max_wait, min_bytes, max_bytes,
                                                 isolation, session, epoch, data, forgotten, rack):
    ours = protocol.encode_follower_fetch(correlation, client_id, replica, max_wait, min_bytes, max_bytes,
                                          isolation, session, epoch, data, forgotten, rack)
    kio_frame = protocol.encode_request(1, protocol.FETCH_REQUEST_VERSION, correlation, client_id, {
        "replica_id": replica, "max_wait": max_wait, "min_bytes": min_bytes, "max_bytes": max_bytes,
        "isolation_level": isolation, "session_id": session, "session_epoch": epoch,
        "topics": [{"topic": t, "partitions": [
            {"partition": p[0], "current_leader_epoch": p[1], "fetch_offset": p[2], "log_start_offset": p[3],
             "partition_max_bytes": p[4]} for p in ps]} for t, ps in data],
        "forgotten_topics_data": [{"topic": t, "partitions": ps} for t, ps in forgotten],
        "rack_id": rack})
    assert ours == kio_frame
    request = protocol.decode_request(ours[4:])
    assert request.body.session_epoch == epoch and len(request.body.topics) == len(data)


# log_append_time is a timestamp to kio: -1 (CreateTime, what the broker sends) or a date it can represent
append_time = st.one_of(st.just(-1), st.integers(0, 253402300799999))
produce_partition = st.tuples(i32, errors, i64, append_time, i64, st.one_of(st.none(), st.text(max_size=40)))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(range(SUPPORTED[0][0], SUPPORTED[0][1] + 1))), i32, st.integers(0, 2**31 - 1),
       st.lists(st.tuples(names, st.lists(produce_partition, max_size=4)), max_size=4))
def test_produce_response_bytes_equal_kio(version, correlation, throttle, data):
    ours = protocol.encode_produce_response(version, correlation, data, throttle_time_ms=throttle)
    body = build_response(0, version, {"throttle_time": throttle, "responses": [
        {"name": name, "partition_responses": [
            {"index": p[0], "error_code": p[1], "base_offset": p[2], "log_append_time": p[3],
             "log_start_offset": p[4], "record_errors": (), "error_message": p[5]} for p in parts]}
        for name, parts in data]})
    assert ours == encode_response(0, version, correlation, body)
