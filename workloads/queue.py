"""The queue workload: real Kafka producers and consumers executing generator ops, behind the workload interface.

Jepsen's counterpart is jepsen.tests.kafka: its `workload` map ({:client
:generator :final-generator :checker}) is `QueueWorkload` (workloads/base.py
says when the runner calls what), its client is `Client` here, its generator
workloads/generator.py, its checker checkers/queue.py.

Each logical process owns its own clients (created lazily: a process that only
sends never opens a consumer). `invoke(op)` runs one op synchronously and
returns its completion {type, value, error?} in the history format of
ARCHITECTURE.md:

- send: ok with the acknowledged offsets; `fail` only for errors that prove
  the broker never appended the record (rejected locally, or rejected by the
  broker on the one and only attempt); everything else -- timeouts, lost
  connections, NOT_ENOUGH_REPLICAS_AFTER_APPEND, rejections after retries
  that may have followed an appended attempt -- is `info`.
- poll: ok with the records read per key.
- assign: ok; keys kept keep their position, new keys start at the beginning.
- subscribe: ok; the consumer joins the run's group for the keys' topics.
- crash: info; the clients are abandoned.

After an `info` the runner retires the process and this client is closed.
The workload tracks the highest offset seen per key (acknowledged sends and
polls); its final phase, the drain, reads every key from its beginning up to
that offset, so that a write never read is a finding, not a drain cut short.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from workloads.base import Workload
from workloads.kafka_topics import OFFSETS_TOPIC, KafkaRoles, KeyMap, Topics  # noqa: F401 -- this module's names too

#: librdkafka error names that prove a record was never appended, whatever the retries
_LOCAL_REJECTIONS = {
    "MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE", "INVALID_TOPIC_EXCEPTION", "TOPIC_AUTHORIZATION_FAILED",
    "INVALID_REQUIRED_ACKS", "UNSUPPORTED_FOR_MESSAGE_FORMAT", "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION",
    "_INVALID_ARG", "_QUEUE_FULL", "_MSG_SIZE_TOO_LARGE", "INVALID_RECORD", "CORRUPT_MESSAGE", "INVALID_MSG",
}
#: broker rejections made before the append: definite only when the producer made a single attempt
_BROKER_REJECTIONS = {
    "NOT_ENOUGH_REPLICAS", "NOT_LEADER_FOR_PARTITION", "NOT_LEADER_OR_FOLLOWER", "UNKNOWN_TOPIC_OR_PART",
    "UNKNOWN_TOPIC_OR_PARTITION", "FENCED_LEADER_EPOCH", "LEADER_NOT_AVAILABLE",
}


#: seconds between the sends of one op. Each then leaves in its own ProduceRequest without waiting for the
#: previous one's response, so several are in flight to one partition at once. Measured (librdkafka
#: statistics, linger.ms=0, 200 ops of 4 sends to one partition, local broker): 1.6 requests per op
#: back to back, 4.0 with a 1 ms gap.
SEND_GAP = 0.001


def classify_send_error(name: str, retries: int) -> str:
    """`fail` when the error proves the record was never appended, else `info`."""
    name = name.upper()
    if name in _LOCAL_REJECTIONS:
        return "fail"
    if name in _BROKER_REJECTIONS and retries == 0:
        return "fail"
    return "info"


def confluent_producer(bootstrap: str, producer_config: dict[str, str], client_id: str, logger=None):
    from confluent_kafka import Producer
    conf = {"linger.ms": "0", **producer_config, "bootstrap.servers": bootstrap, "client.id": client_id}
    if logger is not None:
        conf["logger"] = logger  # librdkafka's log lines go to the run's clients.log
    return Producer(conf)


class ProducerPool:
    """Fresh confluent-kafka producers, opened ahead of the processes that will use them.

    An idempotent librdkafka producer holds its first record until it has a producer id, and the
    first time it asks for one no broker connection is up yet, so it asks again 500 ms later: a
    new process's first send took ~510 ms (measured against acked-broker and against librdkafka's
    own mock cluster alike), and with a client crash every 50 ops per process that wait was over
    half of all the time processes spent in ops.  Jepsen opens a process's client before its first
    op; here spare producers are opened in the background, and each goes to exactly one process,
    never used before.  `take` never waits: with no spare ready the process opens its own."""

    def __init__(self, bootstrap: str, producer_config: dict[str, str], size: int, logger=None):
        self.bootstrap = bootstrap
        self.producer_config = dict(producer_config)
        self.size = size
        self.logger = logger
        self._spares: list = []
        self._cond = threading.Condition()
        self._closed = False
        self._made = 0
        self._thread = threading.Thread(target=self._fill, name="producer-pool", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        while True:
            with self._cond:
                while not self._closed and len(self._spares) >= self.size:
                    self._cond.wait()
                if self._closed:
                    return
                self._made += 1
                client_id = f"acked-spare-p{self._made}"
            try:
                producer = confluent_producer(self.bootstrap, self.producer_config, client_id, self.logger)
            except Exception as e:  # noqa: BLE001 -- processes then open their own producers
                if self.logger is not None:
                    self.logger.warning("producer pool: cannot open a producer: %s", e)
                time.sleep(1.0)
                continue
            with self._cond:
                if self._closed:
                    _close_producer(producer)
                    return
                self._spares.append((producer, client_id))

    def take(self):
        """(producer, client.id) of the oldest spare, or None if none is ready."""
        with self._cond:
            if not self._spares:
                return None
            spare = self._spares.pop(0)
            self._cond.notify()
            return spare

    def close(self) -> None:
        with self._cond:
            self._closed = True
            spares, self._spares = self._spares, []
            self._cond.notify_all()
        for producer, _ in spares:
            _close_producer(producer)
        self._thread.join(timeout=10)


def _close_producer(producer) -> None:
    try:
        producer.purge()
        producer.flush(0)
    except Exception:  # noqa: BLE001
        pass


class Client:
    """One logical process's clients. Subclasses implement the op functions for one client library."""

    def __init__(self, process: int, bootstrap: str, keymap: KeyMap, topics: Topics | None,
                 producer_config: dict[str, str], consumer_config: dict[str, str], group_id: str,
                 op_timeout: float = 10.0, poll_timeout: float = 0.1, max_poll_records: int = 500,
                 sub_via: str = "assign", logger=None, producer_pool: ProducerPool | None = None):
        self.logger = logger
        self.producer_pool = producer_pool
        self.process = process
        self.bootstrap = bootstrap
        self.keymap = keymap
        self.topics = topics
        self.producer_config = dict(producer_config)
        self.consumer_config = dict(consumer_config)
        self.group_id = group_id
        self.op_timeout = op_timeout
        self.poll_timeout = poll_timeout
        self.max_poll_records = max_poll_records
        self.sub_via = sub_via
        self.retries = int(self.producer_config.get("retries", "2147483647"))
        self.auto_commit = self.consumer_config.get("enable.auto.commit", "true").lower() == "true"

    def invoke(self, op: dict[str, Any]) -> dict[str, Any]:
        """Execute an op; returns {type, value, [error]}. Unexpected exceptions are indeterminate: info."""
        f = op["f"]
        try:
            if f == "send":
                for _, key, _ in op["value"]:
                    if self.topics:
                        self.topics.ensure(key)
                return self.send(op["value"])
            if f == "poll":
                return {"type": "ok", "value": [["poll", self.poll()]]}
            if f == "assign":
                for key in op["value"]:
                    if self.topics:
                        self.topics.ensure(key)
                self.assign(op["value"])
                return {"type": "ok", "value": op["value"]}
            if f == "subscribe":
                for key in op["value"]:
                    if self.topics:
                        self.topics.ensure(key)
                self.subscribe(op["value"])
                return {"type": "ok", "value": op["value"]}
            if f == "crash":
                self.crash()
                return {"type": "info", "value": None, "error": "client crashed on purpose"}
        except Exception as e:  # noqa: BLE001 -- anything unexpected may or may not have happened
            return {"type": "info", "value": _indeterminate_value(op), "error": f"{type(e).__name__}: {e}"}
        raise ValueError(f"unknown op {f!r}")

    def _decode(self, raw: bytes | None) -> Any:
        if raw is None:
            return None
        if raw.isdigit():               # the harness's own values: ASCII digits
            return int(raw)
        s = raw.decode("utf-8", "replace")
        return int(s) if s.lstrip("-").isdigit() else s

    # implemented per client library
    def send(self, sends: list) -> dict[str, Any]: raise NotImplementedError
    def poll(self) -> dict[str, list]: raise NotImplementedError
    def assign(self, keys: list[str]) -> None: raise NotImplementedError
    def subscribe(self, keys: list[str]) -> None: raise NotImplementedError
    def close(self) -> None: raise NotImplementedError

    def crash(self) -> None:
        """Abandon the clients: unsent records purged, nothing waited for (what close does)."""
        self.close()


def _indeterminate_value(op: dict[str, Any]) -> Any:
    if op["f"] == "send":
        return [["send", k, [None, v]] for _, k, v in op["value"]]
    if op["f"] == "poll":
        return [["poll"]]
    return op["value"]


def _send_completion(sends: list, outcomes: list) -> dict[str, Any]:
    """outcomes[i]: ("ok", offset) | ("fail", error) | ("info", error)."""
    value = [["send", k, [out[1] if out[0] == "ok" else None, v]] for (_, k, v), out in zip(sends, outcomes)]
    kinds = {out[0] for out in outcomes}
    errors = sorted({str(out[1]) for out in outcomes if out[0] != "ok"})
    if kinds == {"ok"}:
        return {"type": "ok", "value": value}
    result = {"type": "fail" if kinds == {"fail"} else "info", "value": value, "error": "; ".join(errors)}
    return result


class ConfluentClient(Client):
    """confluent-kafka (librdkafka) Producer and Consumer."""

    _producer = None
    _consumer = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        #: (topic, partition) -> next offset to read, for the assigned partitions
        self._positions: dict[tuple[str, int], int] = {}

    def _get_producer(self):
        if self._producer is None:
            spare = self.producer_pool.take() if self.producer_pool is not None else None
            if spare is not None:
                self._producer, client_id = spare
                if self.logger is not None:
                    self.logger.info("process %s: producer %s", self.process, client_id)
            else:
                self._producer = confluent_producer(self.bootstrap, self.producer_config,
                                                    f"acked-p{self.process}", self.logger)
        return self._producer

    def _get_consumer(self):
        if self._consumer is None:
            from confluent_kafka import Consumer
            conf = {"auto.offset.reset": "earliest", "enable.partition.eof": "false", **self.consumer_config,
                    "bootstrap.servers": self.bootstrap, "group.id": self.group_id,
                    "client.id": f"acked-c{self.process}"}
            if self.logger is not None:
                conf["logger"] = self.logger
            self._consumer = Consumer(conf)
        return self._consumer

    def send(self, sends: list) -> dict[str, Any]:
        producer = self._get_producer()
        outcomes: list = [None] * len(sends)

        def on_delivery(i):
            def cb(err, msg):
                if err is None:
                    off = msg.offset()
                    outcomes[i] = ("ok", off if off is not None and off >= 0 else None)
                else:
                    outcomes[i] = (classify_send_error(err.name(), self.retries), err.name())
            return cb

        from confluent_kafka import KafkaException
        for i, (_, key, value) in enumerate(sends):
            topic, partition = self.keymap.topic_partition(key)
            if i:
                time.sleep(SEND_GAP)
            try:
                producer.produce(topic, value=str(value).encode(), key=key.encode(), partition=partition,
                                 on_delivery=on_delivery(i))
            except BufferError:
                outcomes[i] = ("fail", "_QUEUE_FULL")
            except KafkaException as e:
                outcomes[i] = (classify_send_error(e.args[0].name(), 0), e.args[0].name())
        deadline = time.monotonic() + self.op_timeout
        while any(o is None for o in outcomes):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            producer.flush(min(remaining, 1.0))
        for i, o in enumerate(outcomes):
            if o is None:  # still queued or in flight when the op timed out: it may land later
                outcomes[i] = ("info", "timeout")
        return _send_completion(sends, outcomes)

    def poll(self) -> dict[str, list]:
        consumer = self._get_consumer()
        msgs = []
        first = consumer.poll(self.poll_timeout)
        if first is not None:
            msgs.append(first)
            msgs.extend(consumer.consume(self.max_poll_records - 1, 0))
        records: dict[str, list] = {}
        positions, key_of, decode = self._positions, self.keymap.key_of, self._decode
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise RuntimeError(f"consumer fatal error {err.name()}: {err.str()}")
                if self.logger is not None:
                    self.logger.warning("process %s: consumer event %s: %s", self.process, err.name(), err.str())
                continue  # transient events (a broker went down, EOF): records still arrive in order
            tp = (m.topic(), m.partition())
            key = key_of(*tp)
            if key is not None:
                offset = m.offset()
                records.setdefault(key, []).append([offset, decode(m.value())])
                positions[tp] = offset + 1
        if self.sub_via == "subscribe" and not self.auto_commit and msgs:
            # commit after processing: the records are "processed" once they are in the history,
            # which they will be as this op completes ok
            try:
                consumer.commit(asynchronous=False)
            except Exception:
                pass  # a failed commit re-delivers later: allowed under at-least-once, seen by the checker
        return records

    def assign(self, keys: list[str]) -> None:
        # librdkafka's position() is unset until a partition has been consumed from, so this client
        # tracks the next offset of every assigned partition itself: kept keys keep their position
        # New keys start at offset 0, not the logical OFFSET_BEGINNING: keys are fresh partitions (their
        # log starts at 0), and with OFFSET_BEGINNING librdkafka 2.16 against acked-broker was seen to
        # deliver a partition from 0 twice in a row (a nonmonotonic-poll that no seek explains).
        from confluent_kafka import TopicPartition
        consumer = self._get_consumer()
        positions = {}
        for key in keys:
            tp = self.keymap.topic_partition(key)
            positions[tp] = self._positions.get(tp, 0)
        consumer.assign([TopicPartition(t, p, off) for (t, p), off in positions.items()])
        self._positions = positions

    def subscribe(self, keys: list[str]) -> None:
        consumer = self._get_consumer()
        topics = sorted({self.keymap.topic_partition(k)[0] for k in keys})

        def on_revoke(c, partitions):
            if not self.auto_commit:
                try:  # commit what this process has processed before another member takes over
                    c.commit(asynchronous=False)
                except Exception:
                    pass

        consumer.subscribe(topics, on_revoke=on_revoke)

    def close(self) -> None:
        if self._producer is not None:
            _close_producer(self._producer)
            self._producer = None
        if self._consumer is not None:
            try:
                self._consumer.close()
            except Exception:
                pass
            self._consumer = None


def kafka_python_config(conf: dict[str, str]) -> dict[str, Any]:
    """Kafka's dotted names to kafka-python's keyword arguments (the same names with underscores)."""
    out: dict[str, Any] = {}
    for k, v in conf.items():
        if isinstance(v, str) and v.lower() in ("true", "false"):
            v = v.lower() == "true"
        elif isinstance(v, str) and v.lstrip("-").isdigit() and k != "acks":
            v = int(v)
        elif k == "acks" and v != "all":
            v = int(v)
        out[k.replace(".", "_")] = v
    return out


class KafkaPythonClient(Client):
    """kafka-python KafkaProducer and KafkaConsumer."""

    _producer = None
    _consumer = None

    def _get_producer(self):
        if self._producer is None:
            from kafka import KafkaProducer
            conf = {"linger_ms": 0, **kafka_python_config(self.producer_config)}
            self._producer = KafkaProducer(bootstrap_servers=self.bootstrap, client_id=f"acked-p{self.process}", **conf)
        return self._producer

    def _get_consumer(self):
        if self._consumer is None:
            from kafka import KafkaConsumer
            conf = {"auto_offset_reset": "earliest", **kafka_python_config(self.consumer_config)}
            # in assign mode no group: kafka-python would otherwise look for a coordinator on every poll
            group = self.group_id if self.sub_via == "subscribe" else None
            self._consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=group,
                                           client_id=f"acked-c{self.process}", **conf)
        return self._consumer

    def send(self, sends: list) -> dict[str, Any]:
        import kafka.errors as ke
        producer = self._get_producer()
        futures = []
        for i, (_, key, value) in enumerate(sends):
            topic, partition = self.keymap.topic_partition(key)
            if i:
                time.sleep(SEND_GAP)
            futures.append(producer.send(topic, value=str(value).encode(), key=key.encode(), partition=partition))
        deadline = time.monotonic() + self.op_timeout
        outcomes = []
        for fut in futures:
            try:
                md = fut.get(timeout=max(0.0, deadline - time.monotonic()))
                outcomes.append(("ok", md.offset if md.offset is not None and md.offset >= 0 else None))
            except ke.KafkaTimeoutError:
                outcomes.append(("info", "timeout"))
            except ke.KafkaError as e:
                name = getattr(e, "message", type(e).__name__)
                outcomes.append((classify_send_error(str(name), self.retries), str(name)))
        return _send_completion(sends, outcomes)

    def poll(self) -> dict[str, list]:
        batches = self._get_consumer().poll(timeout_ms=int(self.poll_timeout * 1000), max_records=self.max_poll_records)
        records: dict[str, list] = {}
        n = 0
        for tp, msgs in batches.items():
            key = self.keymap.key_of(tp.topic, tp.partition)
            if key is None:
                continue
            for m in msgs:
                records.setdefault(key, []).append([m.offset, self._decode(m.value)])
                n += 1
        if self.sub_via == "subscribe" and not self.auto_commit and n:
            try:
                self._consumer.commit()
            except Exception:
                pass
        return records

    def assign(self, keys: list[str]) -> None:
        from kafka import TopicPartition
        consumer = self._get_consumer()
        current = set(consumer.assignment())
        positions = {}
        for tp in current:
            try:
                positions[tp] = consumer.position(tp, timeout_ms=2000)
            except Exception:
                pass
        tps = [TopicPartition(*self.keymap.topic_partition(k)) for k in keys]
        consumer.assign(tps)
        for tp in tps:
            if positions.get(tp) is not None:
                consumer.seek(tp, positions[tp])
            else:
                consumer.seek_to_beginning(tp)

    def subscribe(self, keys: list[str]) -> None:
        self._get_consumer().subscribe(sorted({self.keymap.topic_partition(k)[0] for k in keys}))

    def close(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=0)
            except Exception:
                pass
            self._producer = None
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except Exception:
                pass
            self._consumer = None


CLIENT_CLASSES: dict[str, Callable[..., Client]] = {
    "confluent-kafka": ConfluentClient,
    "kafka-python": KafkaPythonClient,
}


#: seconds of empty polls, with every short key's high watermark at or below what was read, before the final
#: drain stops short of its targets. Not less: right after a leader change the new leader's high watermark
#: can trail the old one's until its followers fetch again (seen: 5 s was too short after a kill at the end
#: of the main phase, and an acknowledged acks=all write was reported unseen).
DRAIN_GIVE_UP = 15.0


class QueueWorkload(Workload):
    """The queue workload (Jepsen's jepsen.tests.kafka `workload` with its :client, :generator,
    :final-generator and :checker): processes send to and poll from keys, each key one partition; the
    final phase reads every key from its beginning; the queue checker (checkers/queue.py) judges the history,
    and the brokers' logs collected after the drain (replicas.json) beside it."""

    name = "queue"

    def __init__(self, test, log=None):
        super().__init__(test, log)
        self.cluster = None
        self.topics: Topics | None = None
        self.producer_pool: ProducerPool | None = None
        self.client_logger = None
        #: key -> highest offset any op saw (an acknowledged send or a poll): what the final drain reads up to
        self._max_offset: dict[str, int] = {}
        #: key -> monotonic time of its latest acknowledged send (the kill nemesis aims at keys being written)
        self._last_acked: dict[str, float] = {}
        self._offset_lock = threading.Lock()

    def versions(self) -> dict[str, str]:
        out: dict[str, str] = {}
        try:
            from importlib.metadata import version
            out["kafka-python"] = version("kafka-python")
        except Exception:
            pass
        try:
            import confluent_kafka
            # version() is a (str, int) tuple in older releases and a plain string in newer ones
            ver, lib = confluent_kafka.version(), confluent_kafka.libversion()
            out["confluent-kafka"] = ver if isinstance(ver, str) else ver[0]
            out["librdkafka"] = lib if isinstance(lib, str) else lib[0]
        except Exception:
            pass
        return out

    @property
    def group_id(self) -> str:
        return f"acked-{self.test.name}"

    # ---- setup and the main phase -------------------------------------------------

    def setup(self, cluster, run_dir, logger) -> None:
        from workloads.generator import GeneratorSpec, QueueGenerator
        d = self.test
        self.cluster = cluster
        self.client_logger = logger
        self.topics = Topics(cluster.bootstrap_servers(), KeyMap(d.partitions_per_topic),
                             d.replication_factor(), d.topic_config(), logger=logger)
        if d.client == "confluent-kafka":
            # new processes' producers, opened ahead (see ProducerPool); a fault can retire every process
            # at once, but idle spares cost threads and connections, so at most 8
            self.producer_pool = ProducerPool(cluster.bootstrap_servers(), d.producer_config(),
                                              size=min(d.concurrency_count(), 8), logger=logger)
        self.generator = QueueGenerator(GeneratorSpec(
            seed=d.seed, concurrency=d.concurrency_count(), rate=d.rate, key_count=d.key_count,
            max_writes_per_key=d.max_writes_per_key, zipf_exponent=d.zipf_exponent, sub_via=d.effective_sub_via(),
            max_sends_per_op=d.max_sends_per_op, crash_client_interval=d.crash_client_interval))
        for key in list(self.generator.active):
            self.topics.ensure(key)

    def roles(self) -> KafkaRoles:
        return KafkaRoles(self.topics, self.group_id, self.hot_keys)

    def hot_keys(self) -> list[str]:
        """Keys acknowledged within the last second first: their leader has fresh writes that a fault may
        catch before the followers fetch them (the acks=1 loss window); else every active key."""
        with self.lock:
            active = list(self.generator.active)
        now = time.monotonic()
        with self._offset_lock:
            hot = [k for k in active if now - self._last_acked.get(k, -1e9) < 1.0]
        return hot or active

    def client(self, process: int) -> Client:
        d = self.test
        return CLIENT_CLASSES[d.client](
            process=process, bootstrap=self.cluster.bootstrap_servers(), keymap=self.topics.keymap,
            topics=self.topics, producer_config=d.producer_config(), consumer_config=d.consumer_config(),
            group_id=self.group_id, op_timeout=d.op_timeout, sub_via=d.effective_sub_via(),
            logger=self.client_logger, producer_pool=self.producer_pool)

    def prepare(self, op: dict[str, Any]) -> None:
        # the key's topic before the invocation is written: a topic creation is not the send's latency
        if op["f"] == "send":
            for _, key, _ in op["value"]:
                self.topics.ensure(key)

    def on_completion(self, op: dict[str, Any], completion: dict[str, Any]) -> None:
        value = completion.get("value")
        if not isinstance(value, list):
            return
        with self._offset_lock:
            for mop in value:
                if mop[0] == "send" and isinstance(mop[2], list) and mop[2][0] is not None:
                    k, off = mop[1], mop[2][0]
                    self._last_acked[k] = time.monotonic()
                    if off > self._max_offset.get(k, -1):
                        self._max_offset[k] = off
                elif mop[0] == "poll" and len(mop) > 1:
                    for k, records in mop[1].items():
                        if records:
                            off = max(r[0] for r in records)
                            if off > self._max_offset.get(k, -1):
                                self._max_offset[k] = off

    # ---- after the main phase -----------------------------------------------------

    def recover(self, seconds: float) -> None:
        if self.topics:
            if not self.topics.wait_for_leaders(self.topics.created_topics(), seconds):
                self.log(f"some partitions still had no leader after {seconds}s")

    def final(self, append) -> tuple[str, int]:
        """Read every key from its beginning until the reads reach the highest offset seen anywhere.
        Returns why it stopped and how many keys it read."""
        with self.lock:
            keys = list(self.generator.all_keys)
            process = max(self.generator.processes) + 1
        with self._offset_lock:
            targets = {k: self._max_offset.get(k, -1) for k in keys}
        keys = [k for k in keys if targets[k] >= 0]
        if not keys:
            return "nothing-written", 0
        deadline = time.monotonic() + self.test.final_time_limit
        client = self.client(process)
        read: dict[str, int] = {}
        try:
            append({"process": process, "type": "invoke", "f": "assign", "value": keys})
            completion = client.invoke({"process": process, "f": "assign", "value": keys})
            append({"process": process, "f": "assign", **completion})
            if completion["type"] != "ok":
                raise RuntimeError(f"final drain could not assign its keys: {completion.get('error')}")
            empty_since = time.monotonic()
            while time.monotonic() < deadline:
                pending = [k for k in keys if read.get(k, -1) < targets[k]]
                if not pending:
                    return "read-everything", len(keys)
                op = {"process": process, "f": "poll", "value": [["poll"]]}
                append({"process": process, "type": "invoke", "f": "poll", "value": op["value"]})
                completion = client.invoke(op)
                append({"process": process, "f": "poll", **completion})
                if completion["type"] != "ok":
                    raise RuntimeError(f"final drain poll failed: {completion.get('error')}")
                got = completion["value"][0][1]
                for k, records in got.items():
                    if records:
                        read[k] = max(read.get(k, -1), max(r[0] for r in records))
                if got:
                    empty_since = time.monotonic()
                elif time.monotonic() - empty_since > DRAIN_GIVE_UP and self._drained_to_end(pending, read):
                    # the logs have ended below the targets for a while: what is missing was lost (or never
                    # became readable), the checker says so
                    return "log-end", len(keys)
            self.log(f"final drain stopped at its time limit with {len(pending)} keys short of their highest offset")
            return "time-limit", len(keys)
        finally:
            client.close()

    def _drained_to_end(self, pending: list[str], read: dict[str, int]) -> bool:
        """Whether every pending key's log now ends at or below what the drain has read (high watermarks)."""
        try:
            ends = self.topics.high_watermarks(pending, timeout=5)
        except Exception:
            return False
        return all(end - 1 <= read.get(key, -1) for key, end in ends.items())

    def collect(self, cluster, run_dir) -> list[str]:
        """Every broker's log of the workload's topics, batch by batch, into replicas.json, for the check to
        compare the replicas directly (checkers/divergence.py). The cluster reads them (clusters/replicas.py);
        what cannot be read is a harness error line, never a failed run: the history is checked anyway."""
        from clusters.replicas import to_json
        if self.topics is None:
            return []
        try:
            data = cluster.collect_replicas(self.topics.created_topics())
        except Exception as e:  # noqa: BLE001 -- a finding-less phase must not cost the run its verdict
            msg = f"collecting the replicas' logs: {type(e).__name__}: {e}"
            self.log(msg)
            return [msg]
        (run_dir / "replicas.json").write_bytes(to_json(data))
        return [f"collecting the replicas' logs: {err}" for err in data.get("errors") or []]

    def teardown(self) -> None:
        try:
            if self.producer_pool is not None:
                self.producer_pool.close()
        finally:
            if self.topics is not None:
                self.topics.close()

    def check(self, history, run_dir, test) -> dict[str, Any]:
        import checkers
        # check_path streams the file through the checker's fast path; same results as check().
        replicas = run_dir / "replicas.json"
        return checkers.check_path(history, sub_via=test.effective_sub_via(), delivery=test.effective_delivery(),
                                   replicas=replicas if replicas.exists() else None)
