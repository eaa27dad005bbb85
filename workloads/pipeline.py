"""The pipeline workload: producers, a consumer group that processes each record into SQLite, and commit modes.

Issue 15 and the "Consumers" part of KAFKA-RELIABILITY.md: what a consumer's commit policy does to a
pipeline when its processes crash and its group rebalances. Producer slots send unique values as the queue
workload does (its `ConfluentClient`); consumer slots each drive one consumer *process*
(workloads/pipeline_consumer.py: a real OS process in the run's consumer group, subscribed, which processes
each record by storing it in the run's SQLite store and commits by `--commit-mode`). A `crash` op SIGKILLs
that process mid-processing (when its committed and stored offsets disagree, `ConsumerProcess.aim`), and the slot's
next process starts a new one, which joins the group: a real rebalance.

History ops of a consumer slot (docs/history-format.md):

- `process`: invoke `[["process"]]`; ok `[["poll", {key: [[offset, value], ...]}], ["process", {key:
  [[offset, value], ...]}]]`: the records its polls returned and the records it stored (each after its
  store transaction committed) since its previous op; `rebalance-log` lists the assignments and
  revocations it saw.
- `crash`: info, with the records the killed process had stored and not yet reported, read from the store
  after its death: every stored record is in the history.
- `stop` (the final phase's last op): ok, the records stored until the process left the group.

The final phase reads through the group: one more consumer process of the same mode joins it and processes
from the group's own positions (committed offsets, or the store's offsets in exactly-once-store) until
every partition's position reaches its log's end -- never from offset 0, which would hide what the group
skipped. `collect` dumps the store into pipeline-store.json; checkers/pipeline.py judges.
"""
from __future__ import annotations

import json
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from workloads.base import Workload
from workloads.kafka_topics import KafkaRoles, KeyMap, Topics
from workloads.pipeline_consumer import create_store

REPO_ROOT = Path(__file__).resolve().parent.parent
CONSUMER_SCRIPT = Path(__file__).resolve().parent / "pipeline_consumer.py"
#: seconds a `process` op waits for the first record its consumer process stores
PROCESS_WAIT = 0.5
#: seconds a crash waits for its consumer process's committed and stored offsets to disagree mid-batch (else
#: it kills it where it is)
CRASH_AIM_WAIT = 3.0
#: records a consumer process takes from one `consume` call: auto-commit commits them all when they are returned
BATCH = 10
#: auto.commit.interval.ms of auto-commit mode when the test sets none: about one batch's processing (10 x 40 ms),
#: so a kill often lands after a commit covered records not yet stored (loss) and after records were stored
#: that no commit covers yet (re-delivery)
AUTO_COMMIT_INTERVAL_MS = "500"
#: group settings when the test sets none: a killed member's partitions move after session.timeout.ms
CONSUMER_DEFAULTS = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500", "max.poll.interval.ms": "20000",
                     "fetch.wait.max.ms": "100"}


class PipelineGenerator:
    """Slots 0..consumers-1 drive consumer processes (`process`, and `crash` every crash_client_interval /
    consumers seconds, staggered as the queue's); the others send unique increasing values to random keys."""

    def __init__(self, seed: int, concurrency: int, consumers: int, keys: list[str], rate: float,
                 max_sends_per_op: int, crash_client_interval: float):
        self._rng = random.Random(seed)
        self.concurrency, self.consumers, self.keys = concurrency, consumers, keys
        self.rate, self.max_sends, self.crash_interval = rate, max_sends_per_op, crash_client_interval
        self.processes = list(range(concurrency))
        self._next_value = 0
        self._next_crash = self._crash_gap() if crash_client_interval > 0 else float("inf")

    def _crash_gap(self) -> float:
        return self._rng.uniform(0.0, 2.0 * self.crash_interval / self.consumers)

    def is_consumer(self, slot: int) -> bool:
        return slot < self.consumers

    def next_delay(self) -> float:
        return 0.0 if self.rate <= 0 else self._rng.uniform(0.0, 2.0 / self.rate)

    def next_op(self, slot: int, now: float = 0.0) -> dict[str, Any]:
        process = self.processes[slot]
        if self.is_consumer(slot):
            if now >= self._next_crash:
                self._next_crash = max(self._next_crash, now - 1.0) + self._crash_gap()
                return {"process": process, "f": "crash", "value": None}
            return {"process": process, "f": "process", "value": [["process"]]}
        key = self._rng.choice(self.keys)
        sends = []
        for _ in range(self._rng.randint(1, self.max_sends)):
            sends.append(["send", key, self._next_value])
            self._next_value += 1
        return {"process": process, "f": "send", "value": sends}

    def complete(self, slot: int, op: dict[str, Any], type_: str) -> int:
        if type_ == "info" or op["f"] == "crash":
            self.processes[slot] += self.concurrency
        return self.processes[slot]


class ConsumerProcess:
    """The parent's side of one consumer process: starts it, reads its event lines, kills or stops it.

    What the process reported accumulates here until an op takes it (`take`): the records its polls returned
    (`polled`), the records it stored (`stored`), its rebalance events (`log`); `held` is what its polls
    returned that it has not stored yet (the batch in hand)."""

    def __init__(self, workload: "PipelineWorkload", process: int, **overrides):
        self.workload, self.process, self.overrides = workload, process, overrides
        self.proc: subprocess.Popen | None = None
        self.events: queue.Queue = queue.Queue()
        self.reader: threading.Thread | None = None
        self.max_id = 0   # the highest store rowid reported
        self.polled: dict[str, list] = {}
        self.stored: dict[str, list] = {}
        self.log: list = []
        self.held: set = set()
        #: key -> the offset after the last record it stored
        self.positions: dict[str, int] = {}
        self.ended = False

    def start(self) -> None:
        w = self.workload
        spec = {**w.consumer_spec(), "process": self.process, **self.overrides}
        log = open(w.run_dir / "logs" / f"consumer-{self.process}.log", "ab")
        # the script by its path: the child imports confluent-kafka and sqlite3, not the workloads package
        self.proc = subprocess.Popen([sys.executable, str(CONSUMER_SCRIPT), json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=str(REPO_ROOT))
        log.close()
        self.reader = threading.Thread(target=self._read, name=f"consumer-{self.process}", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                pass
        self.events.put(None)   # EOF: the process is gone

    def pump(self, timeout: float) -> bool:
        """Take one reported event (waiting up to `timeout` seconds; 0: only one already there); False if none."""
        if self.ended:
            return False
        try:
            ev = self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
        except queue.Empty:
            return False
        if ev is None:
            self.ended = True
            return False
        e = ev.get("e")
        if e == "polled":
            self.polled.setdefault(ev["k"], []).append([ev["o"], ev["v"]])
            self.held.add((ev["k"], ev["o"]))
        elif e == "stored":
            self.stored.setdefault(ev["k"], []).append([ev["o"], ev["v"]])
            self.max_id = max(self.max_id, ev["id"])
            self.held.discard((ev["k"], ev["o"]))
            self.positions[ev["k"]] = max(self.positions.get(ev["k"], 0), ev["o"] + 1)
        elif e in ("assigned", "revoked", "rejected"):
            self.log.append(ev)
        return True

    def take(self, wait: float) -> tuple[dict, dict, list]:
        """(polled, stored, rebalance events) since the last take, after waiting up to `wait` seconds for a
        stored record."""
        deadline = time.monotonic() + wait
        while not self.stored and (remaining := deadline - time.monotonic()) > 0 and self.pump(remaining):
            pass
        while self.pump(0):
            pass
        out = (self.polled, self.stored, self.log)
        self.polled, self.stored, self.log = {}, {}, []
        return out

    def aim(self, wait: float, rng: random.Random) -> None:
        """Before a crash: wait up to `wait` seconds until the process is processing a batch (it holds records its
        poll returned and it has not stored) while the group's committed offsets and what it stored disagree --
        either committed past a record it holds ("ahead": a kill now loses it) or behind a record it stored
        ("behind": a kill now re-delivers it), which of the two chosen at random. That is where a commit mode's
        weakness lives; a mode without it never shows the disagreement and its process is killed where it is
        when the wait ends."""
        want = rng.choice(("ahead", "behind"))
        deadline = time.monotonic() + wait
        while (remaining := deadline - time.monotonic()) > 0 and not self.ended:
            self.pump(min(remaining, 0.02))
            while self.pump(0):
                pass
            if not self.held:
                continue
            committed = self.workload.committed_offsets()
            if want == "ahead":
                if any(committed.get(k, -1) > o for k, o in self.held):
                    return
            elif any(pos > committed.get(k, 0) for k, pos in self.positions.items()):
                return

    def unreported(self, records: dict) -> dict:
        """`records` with what the (dead) process stored and never reported, read from the store."""
        db = sqlite3.connect(self.workload.store_path, timeout=60)
        try:
            rows = db.execute('SELECT id, key, "offset", value FROM processed WHERE process = ? AND id > ? ORDER BY id',
                              (self.process, self.max_id)).fetchall()
        finally:
            db.close()
        for rowid, key, offset, value in rows:
            records.setdefault(key, []).append([offset, json.loads(value)])
            self.max_id = rowid
        return records

    def _finish(self) -> tuple[dict, dict, list]:
        """After the process ended: everything it reported, and what it stored beyond that."""
        if self.reader is not None:
            self.reader.join(10)
        while self.pump(0.5 if self.reader is not None and self.reader.is_alive() else 0):
            pass
        polled, stored, log = self.take(0)
        return polled, self.unreported(stored), log

    def kill(self) -> tuple[dict, dict, list]:
        if self.proc is None:
            return self.take(0)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        return self._finish()

    def stop(self, timeout: float = 20.0) -> tuple[dict, dict, list]:
        if self.proc is None:
            return self.take(0)
        try:
            self.proc.stdin.write(b"stop\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        return self._finish()


class ConsumerClient:
    """A consumer slot's client: `process`, `crash` and `stop` ops on its consumer process (started by the
    first op)."""

    def __init__(self, workload: "PipelineWorkload", process: int, **overrides):
        self.workload, self.process = workload, process
        self.child = ConsumerProcess(workload, process, **overrides)
        self.rng = random.Random(f"{workload.test.seed}-{process}")
        self.closed = False

    @staticmethod
    def _value(polled: dict, stored: dict) -> list:
        """[["poll", what its polls returned], ["process", what it stored]] since the previous op."""
        return [["poll", polled], ["process", stored]]

    def invoke(self, op: dict[str, Any]) -> dict[str, Any]:
        f = op["f"]
        try:
            if f == "crash":
                if self.child.proc is not None:
                    self.child.aim(CRASH_AIM_WAIT, self.rng)
                polled, stored, log = self.child.kill()
                return {"type": "info", "value": self._value(polled, stored), "rebalance-log": log,
                        "error": "consumer process killed on purpose (SIGKILL)"}
            if f == "stop":
                polled, stored, log = self.child.stop()
                return {"type": "ok", "value": self._value(polled, stored), "rebalance-log": log}
            if f == "process":
                if self.child.proc is None:
                    self.child.start()
                polled, stored, log = self.child.take(PROCESS_WAIT)
                if self.child.ended:
                    more_polled, more, more_log = self.child.kill()
                    for into, extra in ((polled, more_polled), (stored, more)):
                        for k, recs in extra.items():
                            into.setdefault(k, []).extend(recs)
                    return {"type": "info", "value": self._value(polled, stored), "rebalance-log": log + more_log,
                            "error": f"consumer process exited ({self.child.proc.returncode}): see "
                                     f"logs/consumer-{self.process}.log"}
                completion = {"type": "ok", "value": self._value(polled, stored)}
                if log:
                    completion["rebalance-log"] = log
                return completion
        except Exception as e:  # noqa: BLE001
            return {"type": "info", "value": self._value({}, {}), "error": f"{type(e).__name__}: {e}"}
        raise ValueError(f"unknown op {f!r}")

    def close(self) -> None:
        """Stop the process cleanly; what it stored after its last op is recorded at the final phase's start."""
        if self.closed:
            return
        self.closed = True
        if self.child.proc is not None and self.child.proc.returncode is None:
            value = self._value(*self.child.stop()[:2])
            if any(mop[1] for mop in value):
                self.workload.unrecorded(self.process, value)


class PipelineWorkload(Workload):
    """Issue 15's pipeline: see the module docstring and docs/workloads.md."""

    name = "pipeline"

    def __init__(self, test, log=None):
        super().__init__(test, log)
        self.cluster = None
        self.topics: Topics | None = None
        self.run_dir: Path | None = None
        self.store_path: str | None = None
        self.client_logger = None
        self.keys = [str(k) for k in range(test.key_count)]
        self._max_acked: dict[str, int] = {}
        self._unrecorded: list[tuple[int, dict]] = []
        self._lock = threading.Lock()
        self._reader = None
        self._reader_lock = threading.Lock()

    @property
    def group_id(self) -> str:
        return f"acked-pipeline-{self.test.name}"

    def versions(self) -> dict[str, str]:
        try:
            import confluent_kafka
            ver, lib = confluent_kafka.version(), confluent_kafka.libversion()
            return {"confluent-kafka": ver if isinstance(ver, str) else ver[0],
                    "librdkafka": lib if isinstance(lib, str) else lib[0], "sqlite": sqlite3.sqlite_version}
        except Exception:
            return {"sqlite": sqlite3.sqlite_version}

    def consumers(self) -> int:
        return max(1, self.test.concurrency_count() // 2)

    def consumer_spec(self) -> dict:
        d = self.test
        conf = {**CONSUMER_DEFAULTS, **d.consumer_config()}
        if d.commit_mode == "auto-commit":
            conf.setdefault("auto.commit.interval.ms", AUTO_COMMIT_INTERVAL_MS)
        km = self.topics.keymap
        return {"bootstrap": self.cluster.bootstrap_servers(), "group": self.group_id, "mode": d.commit_mode,
                "process_ms": d.process_ms, "commit_every": d.commit_every, "partitions_per_topic": km.ppt,
                "prefix": km.prefix, "topics": sorted({km.topic_partition(k)[0] for k in self.keys}),
                "consumer_config": conf, "store": self.store_path, "batch": BATCH}

    def setup(self, cluster, run_dir, logger) -> None:
        d = self.test
        if d.client != "confluent-kafka":
            raise ValueError("the pipeline workload's consumers are confluent-kafka processes: use --client "
                             "confluent-kafka")
        self.cluster, self.run_dir, self.client_logger = cluster, Path(run_dir), logger
        self.store_path = str(self.run_dir / "pipeline.sqlite")
        create_store(self.store_path, self.keys)
        self.topics = Topics(cluster.bootstrap_servers(), KeyMap(d.partitions_per_topic, prefix="acked-pipeline-"),
                             d.replication_factor(), d.topic_config(), logger=logger)
        for key in self.keys:
            self.topics.ensure(key)
        if self.test.concurrency_count() < 2:
            raise ValueError("the pipeline workload needs a concurrency of at least 2 (producers and consumers)")
        self.generator = PipelineGenerator(d.seed, d.concurrency_count(), self.consumers(), self.keys, d.rate,
                                           d.max_sends_per_op, d.crash_client_interval)

    def roles(self):
        return KafkaRoles(self.topics, self.group_id, lambda: list(self.keys))

    def client(self, process: int):
        slot = process % self.test.concurrency_count()
        if slot < self.consumers():
            return ConsumerClient(self, process)
        from workloads.queue import ConfluentClient
        d = self.test
        return ConfluentClient(process=process, bootstrap=self.cluster.bootstrap_servers(), keymap=self.topics.keymap,
                               topics=self.topics, producer_config=d.producer_config(), consumer_config={},
                               group_id=self.group_id, op_timeout=d.op_timeout, logger=self.client_logger)

    def on_completion(self, op, completion) -> None:
        if op["f"] != "send" or not isinstance(completion.get("value"), list):
            return
        with self._lock:
            for mop in completion["value"]:
                if isinstance(mop[2], list) and mop[2][0] is not None:
                    self._max_acked[mop[1]] = max(self._max_acked.get(mop[1], -1), mop[2][0])

    def committed_offsets(self) -> dict[str, int]:
        """The group's committed offsets now (the store's in exactly-once-store), for aiming crashes; {} if they
        cannot be read. One non-member consumer of the group, shared by the worker threads."""
        with self._reader_lock:
            if self._reader is None and self.test.commit_mode != "exactly-once-store":
                from confluent_kafka import Consumer
                self._reader = Consumer({"bootstrap.servers": self.cluster.bootstrap_servers(),
                                         "group.id": self.group_id, "enable.auto.commit": "false",
                                         "client.id": "acked-pipeline-aim", "logger": self.client_logger})
            return self._group_positions(self._reader, timeout=2)

    def unrecorded(self, process: int, value: list) -> None:
        with self._lock:
            self._unrecorded.append((process, value))

    def recover(self, seconds: float) -> None:
        if self.topics and not self.topics.wait_for_leaders(self.topics.created_topics(), seconds):
            self.log(f"some partitions still had no leader after {seconds}s")

    # ---- the final phase -----------------------------------------------------------

    def _group_positions(self, committed_reader, timeout: float = 5) -> dict[str, int]:
        """Where the group stands per key: its committed offsets, or the store's in exactly-once-store."""
        if self.test.commit_mode == "exactly-once-store":
            db = sqlite3.connect(self.store_path, timeout=60)
            try:
                return dict(db.execute("SELECT key, next FROM offsets").fetchall())
            finally:
                db.close()
        from confluent_kafka import TopicPartition
        tps = [TopicPartition(*self.topics.keymap.topic_partition(k)) for k in self.keys]
        try:
            got = committed_reader.committed(tps, timeout=timeout)
        except Exception:  # noqa: BLE001 -- asked again at the next round
            return {}
        return {self.topics.keymap.key_of(tp.topic, tp.partition): tp.offset for tp in got if tp.offset >= 0}

    def final(self, append) -> tuple[str, int]:
        """Record what closed processes stored after their last op; then one more consumer process joins the
        group and processes until every key's position (the group's, or this process's) reaches the log's end."""
        with self._lock:
            tails, self._unrecorded = self._unrecorded, []
        for process, value in tails:
            append({"process": process, "type": "invoke", "f": "process", "value": [["process"]]})
            append({"process": process, "type": "ok", "f": "process", "value": value, "closed": True})
        with self._lock:
            acked = dict(self._max_acked)
        with self.lock:
            process = max(self.generator.processes) + 1
        deadline = time.monotonic() + self.test.final_time_limit
        from confluent_kafka import Consumer
        committed_reader = Consumer({"bootstrap.servers": self.cluster.bootstrap_servers(), "group.id": self.group_id,
                                     "enable.auto.commit": "false", "client.id": "acked-pipeline-final-reader"})
        # no processing delay in the final phase: nothing crashes there, and the backlog is read sooner
        client = ConsumerClient(self, process, process_ms=0)
        mine: dict[str, int] = {}
        stopped = "time-limit"
        try:
            targets: dict[str, int] = {}
            checked = 0.0
            while time.monotonic() < deadline:
                if time.monotonic() - checked > 1.0:
                    checked = time.monotonic()
                    try:
                        ends = self.topics.high_watermarks(self.keys, timeout=5)
                    except Exception:  # noqa: BLE001
                        ends = {}
                    targets = {k: max(ends.get(k, 0), acked.get(k, -1) + 1, targets.get(k, 0)) for k in self.keys}
                    group = self._group_positions(committed_reader)
                    if all(max(group.get(k, 0), mine.get(k, 0)) >= targets[k] for k in self.keys):
                        stopped = "read-everything" if any(targets.values()) else "nothing-written"
                        break
                op = {"process": process, "f": "process", "value": [["process"]]}
                append({"process": process, "type": "invoke", "f": "process", "value": op["value"]})
                completion = client.invoke(op)
                append({"process": process, "f": "process", **completion})
                if completion["type"] != "ok":
                    raise RuntimeError(f"the final consumer failed: {completion.get('error')}")
                for k, recs in completion["value"][-1][1].items():
                    mine[k] = max(mine.get(k, 0), max(r[0] for r in recs) + 1)
            if stopped == "time-limit":
                self.log("the final consumer stopped at its time limit short of the logs' ends")
        finally:
            try:
                if client.child.proc is not None:
                    append({"process": process, "type": "invoke", "f": "stop", "value": [["process"]]})
                    append({"process": process, "f": "stop", **client.invoke({"process": process, "f": "stop"})})
                client.closed = True
            finally:
                committed_reader.close()
        return stopped, len(self.keys)

    def collect(self, cluster, run_dir) -> list[str]:
        """The store's final contents, pipeline-store.json, for the checker (the SQLite file stays beside it)."""
        if self.store_path is None:
            return []
        try:
            db = sqlite3.connect(self.store_path, timeout=60)
            try:
                rows = db.execute('SELECT id, key, "offset", value, process FROM processed ORDER BY id').fetchall()
                offsets = dict(db.execute("SELECT key, next FROM offsets").fetchall())
            finally:
                db.close()
        except sqlite3.Error as e:
            return [f"reading the pipeline store: {e}"]
        data = {"commit-mode": self.test.commit_mode, "columns": ["id", "key", "offset", "value", "process"],
                "rows": [[i, k, o, json.loads(v), p] for i, k, o, v, p in rows], "offsets": offsets}
        (Path(run_dir) / "pipeline-store.json").write_text(json.dumps(data))
        return []

    def teardown(self) -> None:
        try:
            if self._reader is not None:
                self._reader.close()
        finally:
            if self.topics is not None:
                self.topics.close()

    def check(self, history, run_dir, test) -> dict[str, Any]:
        from checkers import pipeline
        store = Path(run_dir) / "pipeline-store.json"
        return pipeline.check_path(history, store if store.exists() else None, commit_mode=test.commit_mode)
