"""One consumer process of the pipeline workload: a real OS process, so a crash is a SIGKILL of it.

Run as `python -m workloads.pipeline_consumer SPEC_JSON` by workloads/pipeline.py. It joins the run's
consumer group (subscribe: real rebalances), and for each record a poll returns it "processes" it
(sleeps `process_ms`), stores it in the shared SQLite store, and commits as its commit mode says
(docs/workloads.md, "The pipeline workload"):

- auto-commit: enable.auto.commit=true; librdkafka stores each record's offset as `consume` returns it,
  and its timer commits what is stored -- records returned but not yet processed included.
- commit-each: a synchronous commit of offset+1 after every stored record.
- commit-every-n: a synchronous commit of every partition's next offset after each N stored records.
- at-least-once: auto-commit off; after each batch, the next offsets of what was stored; and in the revoke
  callback, those of the partitions taken away.
- exactly-once-store: no Kafka commit at all: the record and its partition's next offset go into the store
  in one SQLite transaction, which succeeds only if the stored offset is not past the record (a member that
  has not yet heard it was revoked cannot store a record a newer owner stored); on assignment every
  partition is positioned at the offset stored for it.

It tells its parent what it did, one JSON line per event on stdout, written after the fact:
{"e": "stored", "k": key, "o": offset, "v": value, "id": rowid} once the store's transaction committed,
{"e": "polled", "k", "o", "v"} for each record as `consume` returns it,
{"e": "assigned"|"revoked", "keys": [...]}, {"e": "rejected", "k", "o", "next"} (exactly-once-store: a
record the store refused), {"e": "stopped"}. A line "stop" on stdin stops it after the record in hand
(the batch in hand is processed first) with its mode's last commit.
"""
from __future__ import annotations

import json
import sqlite3
import sys
import threading
import time

SCHEMA = """
CREATE TABLE IF NOT EXISTS processed (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    "offset" INTEGER NOT NULL,
    value TEXT NOT NULL,
    process INTEGER NOT NULL,
    stored_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS offsets (key TEXT PRIMARY KEY, next INTEGER NOT NULL);
"""


def open_store(path: str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), waiting for other writers' locks."""
    db = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA busy_timeout = 60000")
    # WAL: a SIGKILLed writer's transaction is rolled back by the next opener; NORMAL sync survives a
    # process crash (the OS still has the pages), which is the only crash here
    db.execute("PRAGMA synchronous = NORMAL")
    return db


def create_store(path: str, keys: list[str]) -> None:
    """The shared store: the processed records, and each partition's next offset (exactly-once-store)."""
    db = open_store(path)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.executescript(SCHEMA)
        db.executemany("INSERT OR IGNORE INTO offsets (key, next) VALUES (?, 0)", [(k,) for k in keys])
    finally:
        db.close()


def decode(raw: bytes | None):
    if raw is None:
        return None
    s = raw.decode("utf-8", "replace")
    return int(s) if s.lstrip("-").isdigit() else s


class Pipeline:
    def __init__(self, spec: dict):
        from confluent_kafka import Consumer
        self.spec = spec
        self.mode = spec["mode"]
        self.process = spec["process"]
        self.process_s = spec["process_ms"] / 1000.0
        self.every = spec["commit_every"]
        self.ppt, self.prefix = spec["partitions_per_topic"], spec["prefix"]
        self.db = open_store(spec["store"])
        self.stop = threading.Event()
        self.out_lock = threading.Lock()
        #: (topic, partition) -> the next offset after the last record this process stored (commits come from it)
        self.processed: dict[tuple[str, int], int] = {}
        self.since_commit = 0
        conf = {"auto.offset.reset": "earliest", "enable.partition.eof": "false",
                **spec["consumer_config"], "bootstrap.servers": spec["bootstrap"], "group.id": spec["group"],
                "client.id": f"acked-pipeline-c{self.process}"}
        conf["enable.auto.commit"] = "true" if self.mode == "auto-commit" else "false"
        if self.mode != "auto-commit":
            conf.pop("auto.commit.interval.ms", None)
        self.consumer = Consumer(conf)

    # ---- reporting -------------------------------------------------------------

    def emit(self, event: dict) -> None:
        line = json.dumps(event) + "\n"
        with self.out_lock:
            sys.stdout.write(line)
            sys.stdout.flush()

    def key_of(self, topic: str, partition: int) -> str | None:
        if not topic.startswith(self.prefix):
            return None
        return str(int(topic[len(self.prefix):]) * self.ppt + partition)

    def tp_of(self, key: str):
        from confluent_kafka import TopicPartition
        k = int(key)
        return TopicPartition(f"{self.prefix}{k // self.ppt}", k % self.ppt)

    # ---- the store -------------------------------------------------------------

    def stored_offsets(self, keys: list[str]) -> dict[str, int]:
        rows = self.db.execute(f"SELECT key, next FROM offsets WHERE key IN ({','.join('?' * len(keys))})",
                               keys).fetchall() if keys else []
        return dict(rows)

    def store(self, key: str, offset: int, value) -> int | None:
        """One transaction: the record (and in exactly-once-store its partition's next offset). The rowid, or
        None when exactly-once-store refused it (the stored offset is past it)."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            if self.mode == "exactly-once-store":
                cur = db.execute("UPDATE offsets SET next = ? WHERE key = ? AND next <= ?", (offset + 1, key, offset))
                if cur.rowcount != 1:
                    db.execute("ROLLBACK")
                    return None
            cur = db.execute('INSERT INTO processed (key, "offset", value, process, stored_ns) VALUES (?, ?, ?, ?, ?)',
                             (key, offset, json.dumps(value), self.process, time.time_ns()))
            rowid = cur.lastrowid
            db.execute("COMMIT")
            return rowid
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise

    # ---- commits ---------------------------------------------------------------

    def commit(self, tps=None) -> None:
        """Commit the next offsets of what this process stored (all partitions, or those of `tps`)."""
        from confluent_kafka import TopicPartition
        wanted = None if tps is None else {(tp.topic, tp.partition) for tp in tps}
        offsets = [TopicPartition(t, p, off) for (t, p), off in self.processed.items()
                   if wanted is None or (t, p) in wanted]
        self.since_commit = 0
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as e:  # noqa: BLE001 -- a failed commit re-delivers: a duplicate, never a loss
            print(f"commit failed: {e}", file=sys.stderr, flush=True)

    # ---- rebalances ------------------------------------------------------------

    def on_assign(self, consumer, partitions) -> None:
        keys = [self.key_of(p.topic, p.partition) for p in partitions]
        if self.mode == "exactly-once-store":
            stored = self.stored_offsets([k for k in keys if k is not None])
            for p, k in zip(partitions, keys):
                p.offset = stored.get(k, 0)
            consumer.assign(partitions)
        self.emit({"e": "assigned", "keys": keys,
                   **({"offsets": [p.offset for p in partitions]} if self.mode == "exactly-once-store" else {})})

    def on_revoke(self, consumer, partitions) -> None:
        if self.mode == "at-least-once":
            self.commit(partitions)   # what this process did, before another member takes the partitions over
        for p in partitions:
            self.processed.pop((p.topic, p.partition), None)
        self.emit({"e": "revoked", "keys": [self.key_of(p.topic, p.partition) for p in partitions]})

    # ---- the loop --------------------------------------------------------------

    def run(self) -> None:
        self.consumer.subscribe(self.spec["topics"], on_assign=self.on_assign, on_revoke=self.on_revoke)
        batch = self.spec.get("batch", 10)
        while not self.stop.is_set():
            msgs = self.consumer.consume(batch, 0.1)
            refused: set[tuple[str, int]] = set()
            for m in msgs:   # what poll returned, before any of it is processed (auto-commit may commit it now)
                if m.error() is None and (key := self.key_of(m.topic(), m.partition())) is not None:
                    self.emit({"e": "polled", "k": key, "o": m.offset(), "v": decode(m.value())})
            for m in msgs:
                if m.error() is not None:
                    if m.error().fatal():
                        raise RuntimeError(f"consumer fatal error: {m.error()}")
                    continue
                tp = (m.topic(), m.partition())
                key = self.key_of(*tp)
                if key is None or tp in refused:
                    continue
                offset, value = m.offset(), decode(m.value())
                time.sleep(self.process_s)              # processing: a crash lands here
                rowid = self.store(key, offset, value)
                if rowid is None:                       # exactly-once-store: another member stored past it
                    refused.add(tp)
                    nxt = self.stored_offsets([key]).get(key, 0)
                    self.emit({"e": "rejected", "k": key, "o": offset, "next": nxt})
                    try:
                        from confluent_kafka import TopicPartition
                        self.consumer.seek(TopicPartition(tp[0], tp[1], nxt))
                    except Exception:  # noqa: BLE001 -- no longer assigned: the new owner reads it
                        pass
                    continue
                self.emit({"e": "stored", "k": key, "o": offset, "v": value, "id": rowid})
                self.processed[tp] = offset + 1
                self.since_commit += 1
                if self.mode == "commit-each":
                    self.commit([self.tp_of(key)])
                elif self.mode == "commit-every-n" and self.since_commit >= self.every:
                    self.commit()
            if msgs and self.mode == "at-least-once":
                self.commit()
        # a clean stop: the mode's last commit, then leave the group
        if self.mode in ("at-least-once", "commit-each", "commit-every-n"):
            self.commit()
        self.consumer.close()
        self.emit({"e": "stopped"})


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    pipeline = Pipeline(spec)

    def watch_stdin():
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        pipeline.stop.set()   # "stop", or the parent went away
    threading.Thread(target=watch_stdin, daemon=True).start()
    pipeline.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
