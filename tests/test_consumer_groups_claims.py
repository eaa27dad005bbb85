"""The talk's consumer claims, each shown with confluent-kafka against a real acked-broker.

* auto-commit, consumer killed after a commit and before processing: records are skipped;
* auto-commit, consumer killed after processing and before the next commit: re-delivered;
* committing only processed offsets never skips, wherever the consumer is killed;
* committing in the revoke callback avoids re-processing after a rebalance.

"Killed" is SIGKILL of a consumer subprocess (this file run as a script, see `child`):
it dies without closing, so its group membership ends only with session.timeout.ms.
The child appends "offset" lines to a received file (when poll returns a record) and
a processed file (when it has handled it); both are appended with O_APPEND writes, so
they survive the kill.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

STALL_FOREVER = 3600.0


def child(args: dict) -> None:
    """A consumer of one group and topic; commit policy and stall point from args."""
    from confluent_kafka import Consumer

    conf = {"bootstrap.servers": args["bootstrap"], "group.id": args["group"],
            "auto.offset.reset": "earliest", "session.timeout.ms": 2000,
            "heartbeat.interval.ms": 300, "fetch.wait.max.ms": 50,
            "enable.auto.commit": args["commit"] == "auto"}
    if args["commit"] == "auto":
        conf["auto.commit.interval.ms"] = args["interval_ms"]
    c = Consumer(conf)
    c.subscribe([args["topic"]])
    received = os.open(args["received"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    processed = os.open(args["processed"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    stall_at = args.get("stall_at")
    while True:
        for m in c.consume(100, 0.2):
            if m.error():
                continue
            os.write(received, f"{m.offset()}\n".encode())
            if stall_at is not None and m.offset() >= stall_at:
                time.sleep(STALL_FOREVER)  # "processing" that never finishes: the kill comes first
            time.sleep(args.get("work_s", 0))
            os.write(processed, f"{m.offset()}\n".encode())
            if args["commit"] == "after":
                c.commit(message=m, asynchronous=False)  # offset + 1 of the processed record


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "child":
    child(json.loads(sys.argv[2]))
    sys.exit(0)


import pytest  # noqa: E402
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from broker_fixtures import broker_factory, gbroker  # noqa: E402,F401
from conftest import wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(240)



def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the result is in
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(15)


def produce(bootstrap: str, topic: str, n: int) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2})
    for i in range(n):
        p.produce(topic, str(i).encode(), partition=0)
    assert p.flush(30) == 0


def committed_offset(bootstrap: str, group: str, topic: str, partition: int = 0) -> int:
    """OffsetFetch from a client that does not join the group."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return c.committed([TopicPartition(topic, partition)], timeout=10)[0].offset
    finally:
        c.close()


class Children:
    """Consumer subprocesses of one scenario; all killed at the end, also when a test fails."""

    def __init__(self, tmp: Path, bootstrap: str, group: str, topic: str):
        self.tmp, self.base = tmp, {"bootstrap": bootstrap, "group": group, "topic": topic}
        self.received = tmp / "received"
        self.processed = tmp / "processed"
        self.procs: list[subprocess.Popen] = []

    def start(self, **args) -> subprocess.Popen:
        spec = {**self.base, "received": str(self.received), "processed": str(self.processed), **args}
        log = open(self.tmp / f"child{len(self.procs)}.log", "wb")
        proc = subprocess.Popen([sys.executable, __file__, "child", json.dumps(spec)],
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                self.kill(p)

    @staticmethod
    def _read(path: Path) -> list[int]:
        try:
            return [int(x) for x in path.read_text().split()]
        except FileNotFoundError:
            return []

    def received_offsets(self) -> list[int]:
        return self._read(self.received)

    def processed_offsets(self) -> list[int]:
        return self._read(self.processed)

    def wait(self, cond, timeout: float, what: str) -> None:
        """wait_until cond(), failing with what the children received and processed, and their logs."""
        if not wait_until(cond, timeout, 0.05):
            logs = "\n".join((self.tmp / f"child{i}.log").read_text(errors="replace")[-2000:]
                             for i in range(len(self.procs)))
            raise AssertionError(f"timed out waiting for {what}; received {self.received_offsets()}, "
                                 f"processed {self.processed_offsets()}\n{logs}")


@pytest.fixture
def children(tmp_path, gbroker):
    made: list[Children] = []

    def make(group: str, topic: str) -> Children:
        c = Children(tmp_path, gbroker.bootstrap, group, topic)
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.close()


N = 20
STALL = 10


def _killed_before_processing(gbroker, children, commit: str) -> tuple[int, list[int]]:
    """A consumer receives records 10.. but dies before processing them; a new one takes over.
    Returns (committed offset at the kill, processed offsets of both)."""
    bs = gbroker.bootstrap
    topic, group = f"skip-{commit}", f"skip-{commit}-group"
    create_topic(bs, topic)
    produce(bs, topic, N)
    ch = children(group, topic)
    first = ch.start(commit=commit, interval_ms=200, stall_at=STALL)
    ch.wait(lambda: STALL in ch.received_offsets(), 30, "the consumer to receive the record it stalls on")
    if commit == "auto":
        # let the timer commit what poll returned: past what was processed
        ch.wait(lambda: committed_offset(bs, group, topic) > STALL, 10, "auto-commit of the received records")
    else:
        time.sleep(1.0)  # several auto-commit intervals' worth: nothing more may be committed
    at_kill = committed_offset(bs, group, topic)
    ch.kill(first)
    ch.start(commit=commit, interval_ms=200)
    produce(bs, topic, 1)  # offset N: a marker that the second consumer has caught up
    ch.wait(lambda: N in ch.processed_offsets(), 60, "the second consumer to process the marker record")
    return at_kill, [o for o in ch.processed_offsets() if o < N]


def test_auto_commit_consumer_killed_after_commit_before_processing_skips_records(gbroker, children):
    at_kill, processed = _killed_before_processing(gbroker, children, "auto")
    assert at_kill > STALL, at_kill
    skipped = set(range(N)) - set(processed)
    # exactly what was committed but never processed is lost to the application
    assert skipped == set(range(STALL, at_kill)), (at_kill, processed)
    assert skipped


def test_commit_after_processing_killed_at_the_same_point_skips_nothing(gbroker, children):
    at_kill, processed = _killed_before_processing(gbroker, children, "after")
    assert at_kill == STALL  # only what was processed is committed
    assert set(processed) == set(range(N))
    assert sorted(processed) == list(range(N))  # and nothing was processed twice either


def test_auto_commit_consumer_killed_after_processing_before_next_commit_redelivers(gbroker, children):
    bs = gbroker.bootstrap
    topic, group = "redeliver", "redeliver-group"
    create_topic(bs, topic)
    produce(bs, topic, 10)
    ch = children(group, topic)
    first = ch.start(commit="auto", interval_ms=5000)
    ch.wait(lambda: 9 in ch.processed_offsets(), 30, "the first ten records to be processed")
    ch.wait(lambda: committed_offset(bs, group, topic) == 10, 15, "the timer's commit of offset 10")
    # the next timer commit is ~5 s away: produce, process and kill well before it
    produce(bs, topic, 10)
    ch.wait(lambda: 19 in ch.processed_offsets(), 4, "the next ten records to be processed")
    assert committed_offset(bs, group, topic) == 10, "the timer committed before the kill: too slow a machine"
    ch.kill(first)
    ch.start(commit="auto", interval_ms=5000)
    ch.wait(lambda: ch.processed_offsets().count(19) == 2, 60, "the second consumer to re-process record 19")
    processed = ch.processed_offsets()
    assert [processed.count(o) for o in range(10)] == [1] * 10
    # everything processed after the last commit is delivered and processed again
    assert [processed.count(o) for o in range(10, 20)] == [2] * 10


def test_committing_only_processed_offsets_never_skips_under_repeated_kills(gbroker, children):
    bs = gbroker.bootstrap
    topic, group = "atleastonce", "atleastonce-group"
    total = 150
    create_topic(bs, topic)
    produce(bs, topic, total)
    ch = children(group, topic)
    rng = random.Random(5)
    commits_seen = []
    for _round in range(3):
        proc = ch.start(commit="after", work_s=0.01)
        before = len(ch.processed_offsets())
        ch.wait(lambda: len(ch.processed_offsets()) > before, 60, "progress of the restarted consumer")
        time.sleep(rng.uniform(0.1, 0.5))
        ch.kill(proc)
        commits_seen.append(committed_offset(bs, group, topic))
    ch.start(commit="after")
    ch.wait(lambda: total - 1 in ch.processed_offsets(), 60, "the last record to be processed")
    processed = ch.processed_offsets()
    assert set(processed) == set(range(total)), "a record was skipped"
    assert commits_seen == sorted(commits_seen), f"a committed offset went backwards: {commits_seen}"
    # every restart resumed at or before the first record its predecessor had not processed
    assert len(processed) >= total


# -- rebalance: commit in the revoke callback ---------------------------------------------------

@pytest.mark.parametrize("commit_on_revoke", [False, True], ids=["no-commit-on-revoke", "commit-on-revoke"])
def test_commit_in_revoke_callback_avoids_reprocessing_after_rebalance(gbroker, commit_on_revoke):
    bs = gbroker.bootstrap
    topic, group = "revoke", f"revoke-{commit_on_revoke}"
    create_topic(bs, topic, 2)
    p = Producer({"bootstrap.servers": bs})
    for i in range(15):
        for part in (0, 1):
            p.produce(topic, f"{part}:{i}".encode(), partition=part)
    assert p.flush(30) == 0

    processed: list[tuple[int, int]] = []
    last_done: dict[int, int] = {}
    conf = {"bootstrap.servers": bs, "group.id": group, "auto.offset.reset": "earliest",
            "enable.auto.commit": False, "session.timeout.ms": 2000, "heartbeat.interval.ms": 300,
            "fetch.wait.max.ms": 50}

    def on_revoke(c, parts):
        if commit_on_revoke:
            done = [TopicPartition(topic, tp.partition, last_done[tp.partition] + 1)
                    for tp in parts if tp.partition in last_done]
            if done:
                c.commit(offsets=done, asynchronous=False)

    def consume(c, timeout=0.05):
        m = c.poll(timeout)
        if m is not None and not m.error():
            processed.append((m.partition(), m.offset()))
            last_done[m.partition()] = m.offset()
            # the usual compromise: commit every 10 records of a partition
            if (m.offset() + 1) % 10 == 0:
                c.commit(offsets=[TopicPartition(topic, m.partition(), m.offset() + 1)], asynchronous=False)
        elif m is not None:
            assert m.error().code() == KafkaError._PARTITION_EOF, m.error()

    c1 = Consumer(conf)
    c2 = None
    try:
        c1.subscribe([topic], on_revoke=on_revoke)
        assert wait_until(lambda: consume(c1) or len(processed) >= 30, 30, 0), processed
        # c1 processed all 30 but committed only up to 10 per partition
        assert committed_offset(bs, group, topic, 0) == 10 and committed_offset(bs, group, topic, 1) == 10
        c2 = Consumer(conf)
        c2.subscribe([topic], on_revoke=on_revoke)
        assert wait_until(lambda: consume(c1) or consume(c2) or (c1.assignment() and c2.assignment()), 30, 0), \
            "the second consumer never got a partition"
        quiet_until = time.monotonic() + 2.0  # let any re-delivery arrive
        while time.monotonic() < quiet_until:
            consume(c1)
            consume(c2)
    finally:
        c1.close()
        if c2 is not None:
            c2.close()
    duplicates = len(processed) - len(set(processed))
    assert set(processed) == {(p, o) for p in (0, 1) for o in range(15)}
    if commit_on_revoke:
        assert duplicates == 0, sorted(processed)
    else:
        # the partition(s) that changed hands restart at the last commit (10): 10..14 again
        assert duplicates >= 5, sorted(processed)
        assert all(o >= 10 for (p, o) in processed[30:]), processed[30:]
