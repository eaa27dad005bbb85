"""The test description: what one run does, loadable from TOML and overridable by CLI flags.

Settings for the producer, consumer, topics and brokers are dicts keyed by
Kafka's own config names verbatim (librdkafka / Apache Kafka spelling), so a
user can paste settings from their application. A profile is a named bundle
of such settings taken from KAFKA-RELIABILITY.md, together with the delivery
guarantee the checker should judge the run by.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

from clusters import BACKENDS  # the one list of backends


class ConfigError(ValueError):
    """A test description is wrong; the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    summary: str
    producer: dict[str, str]
    consumer: dict[str, str]
    topic: dict[str, str]
    broker: dict[str, str]
    #: what the checker judges by. Every profile is judged by what `safe` promises ("exactly-once": no loss, no
    #: duplicates, order kept): a deviation's findings are the point of running it, so none is allowed away
    #: here. A user who accepts duplicates says so for a run (`--delivery at-least-once`), and the run still
    #: lists them (checkers/queue.py `allowed-anomalies`).
    delivery: str = "exactly-once"
    #: how consumers get partitions: "assign" (explicit assignment and seeks) or "subscribe" (a consumer group)
    sub_via: str = "assign"


# "Be safe, not sorry" (KAFKA-RELIABILITY.md): every other profile is one deviation from it.
_SAFE_PRODUCER = {
    "acks": "all",
    "enable.idempotence": "true",
    "retries": "2147483647",
    "max.in.flight.requests.per.connection": "5",  # the idempotent producer keeps order with up to 5
}
_SAFE_CONSUMER = {"enable.auto.commit": "false", "auto.offset.reset": "earliest"}
_SAFE_TOPIC = {
    "replication.factor": "3",
    "min.insync.replicas": "2",
    "unclean.leader.election.enable": "false",
}
_SAFE_BROKER = {
    "default.replication.factor": "3",
    "min.insync.replicas": "2",
    "unclean.leader.election.enable": "false",
}


#: Broker settings of every run, under the profile's: a killed broker's ZooKeeper session expires after
#: zookeeper.session.timeout.ms, and only then does the controller move its partitions. Kafka's 18 s default
#: would leave a short run stalled for most of every kill; 6 s (ZooKeeper's floor is 2 ticks, 4 s) keeps
#: failover inside one nemesis interval. Overridable with --broker zookeeper.session.timeout.ms=18000.
#: replica.lag.time.max.ms: Kafka's 30 s default outlasts every fault of a short run (measured with the old
#: nemesis, 16 runs of 60 s: faults healed after 3-9 s and no ISR ever shrank below two), so the talk's path --
#: the ISR shrinks to the leader alone, then the leader dies -- never happened. 5 s, under the nemesis interval,
#: lets a cut or paused follower leave the ISR within one fault, as it would within one 30 s fault in production.
#: replica.high.watermark.checkpoint.interval.ms: the replicas phase compares the brokers' logs below the high
#: watermarks of their checkpoints (checkers/divergence.py); with Kafka's 5 s a broker restarted by the last
#: heal often had no checkpoint yet, and the phase waits up to one interval for checkpoints that trail.
HARNESS_BROKER = {"zookeeper.session.timeout.ms": "6000", "replica.lag.time.max.ms": "5000",
                  "replica.high.watermark.checkpoint.interval.ms": "1000"}


def _profile(name, summary, producer=None, consumer=None, topic=None, broker=None, **kw) -> Profile:
    return Profile(
        name=name, summary=summary,
        producer={**_SAFE_PRODUCER, **(producer or {})},
        consumer={**_SAFE_CONSUMER, **(consumer or {})},
        topic={**_SAFE_TOPIC, **(topic or {})},
        broker={**_SAFE_BROKER, **(broker or {})},
        **kw,
    )


PROFILES: dict[str, Profile] = {p.name: p for p in [
    _profile("safe", "acks=all, idempotent producer, unbounded retries, RF 3, min.insync.replicas=2, "
             "no unclean election, manual commits after processing"),
    # Followers here fetch in batches (up to replica.fetch.wait.max.ms=500 ms apart, as a busy cluster's
    # followers do, instead of long-polling each record), so an acks=1 write stays on the leader alone for a
    # realistic while: the window in which a leader kill loses it. See docs/running.md.
    _profile("acks-1", "the leader alone acknowledges (acks=1): a leader crash loses acknowledged writes "
             "(followers fetch in batches, up to 500 ms apart)",
             producer={"acks": "1", "enable.idempotence": "false"},
             broker={"replica.fetch.min.bytes": "1048576", "replica.fetch.wait.max.ms": "500"}),
    _profile("acks-0", "fire and forget (acks=0): acknowledged when written to the socket",
             producer={"acks": "0", "enable.idempotence": "false"}),
    _profile("unclean-election", "an out-of-sync replica may become leader (unclean.leader.election.enable=true, "
             "min.insync.replicas=1)",
             topic={"unclean.leader.election.enable": "true", "min.insync.replicas": "1"},
             broker={"unclean.leader.election.enable": "true", "min.insync.replicas": "1"}),
    _profile("min-isr-1", "writes are acknowledged by an ISR of one (min.insync.replicas=1)",
             topic={"min.insync.replicas": "1"}, broker={"min.insync.replicas": "1"}),
    _profile("no-idempotence", "retries with 5 requests in flight and no idempotence: retries reorder and duplicate",
             producer={"enable.idempotence": "false", "max.in.flight.requests.per.connection": "5"}),
    _profile("auto-commit", "consumers in a group commit on a timer (enable.auto.commit=true), not after processing",
             consumer={"enable.auto.commit": "true", "auto.commit.interval.ms": "100"},
             sub_via="subscribe"),
]}

CLIENTS = ("confluent-kafka", "kafka-python")
#: the pipeline workload's commit modes (KAFKA-RELIABILITY.md, "Consumers"; workloads/pipeline.py)
COMMIT_MODES = ("auto-commit", "commit-each", "commit-every-n", "at-least-once", "exactly-once-store")


@dataclasses.dataclass
class TestDescription:
    """One run of the harness. Every field can come from a TOML file and be overridden on the command line."""

    __test__ = False  # not a pytest test class, despite the name

    name: str = "queue"
    profile: str = "safe"
    backend: str = "docker"
    nodes: int = 3
    #: seconds of the main phase (workload and nemesis together)
    time_limit: float = 60.0
    #: target invocations per second over all processes (0: as fast as the processes go)
    rate: float = 100.0
    #: number of logical client processes: an integer ("6") or a multiple of the node count ("2n")
    concurrency: str = "2n"
    #: which workload runs (workloads.WORKLOADS): its clients, generator, final phase and checker
    workload: str = "queue"
    #: fault packages (nemesis/packages.py), each optionally pinned to one choice: "kill", "partition:leader"
    nemeses: list[str] = dataclasses.field(default_factory=list)
    #: seconds between fault start and stop, and between faults (about as long as the brokers'
    #: zookeeper.session.timeout.ms, so a killed leader is usually replaced before it comes back)
    nemesis_interval: float = 6.0
    #: "mix" (faults of different packages may overlap) or "alternate" (one at a time)
    nemesis_schedule: str = "mix"
    #: kill: "leader" (the leader of a random active key, found via metadata) or "random"
    kill_target: str = "leader"
    #: Kafka settings verbatim; merged over the profile's settings
    producer: dict[str, str] = dataclasses.field(default_factory=dict)
    consumer: dict[str, str] = dataclasses.field(default_factory=dict)
    topic: dict[str, str] = dataclasses.field(default_factory=dict)
    broker: dict[str, str] = dataclasses.field(default_factory=dict)
    #: None: the profile's choice
    sub_via: str | None = None
    delivery: str | None = None
    client: str = "confluent-kafka"
    seed: int | None = None
    results_dir: str = "results"
    #: seconds the final drain may take to read every key up to the highest offset seen
    final_time_limit: float = 60.0
    #: seconds to wait after healing for every partition to have a leader
    recovery_time: float = 15.0
    #: generator shape: number of keys written at once; each key's write count is Zipf over 1..max_writes_per_key
    key_count: int = 8
    max_writes_per_key: int = 1024
    zipf_exponent: float = 1.0
    partitions_per_topic: int = 8
    #: sends per send op, uniform over 1..max_sends_per_op, all to one key and produced without waiting for
    #: each other's acknowledgement (Jepsen's queue workload writes several values per op): a producer then has
    #: several ProduceRequests in flight to one partition, so `max.in.flight.requests.per.connection` and
    #: retries can reorder and duplicate (KAFKA-RELIABILITY.md, "in-flight requests")
    max_sends_per_op: int = 4
    #: seconds a single send or poll may take before it is recorded as info
    op_timeout: float = 10.0
    #: roughly how many seconds a single client runs before a crash op abandons it (Jepsen's
    #: --crash-client-interval); 0: clients are never crashed on purpose
    crash_client_interval: float = 10.0
    #: a run directory whose realized fault schedule (nemesis.json) this run plays again
    replay: str | None = None
    #: the pipeline workload (docs/workloads.md): how its consumers commit -- auto-commit, commit-each,
    #: commit-every-n, at-least-once or exactly-once-store
    commit_mode: str = "at-least-once"
    #: the pipeline workload: milliseconds a consumer spends "processing" one record before it stores it
    process_ms: float = 20.0
    #: the pipeline workload's commit-every-n: records processed between commits
    commit_every: int = 10

    # ---- derived -----------------------------------------------------------------

    def profile_obj(self) -> Profile:
        try:
            return PROFILES[self.profile]
        except KeyError:
            raise ConfigError(f"unknown profile {self.profile!r}; choose one of: {', '.join(PROFILES)}") from None

    def concurrency_count(self) -> int:
        return parse_concurrency(self.concurrency, self.nodes)

    def producer_config(self) -> dict[str, str]:
        return {**self.profile_obj().producer, **_strs(self.producer)}

    def consumer_config(self) -> dict[str, str]:
        return {**self.profile_obj().consumer, **_strs(self.consumer)}

    def topic_config(self) -> dict[str, str]:
        return {**self.profile_obj().topic, **_strs(self.topic)}

    def broker_config(self) -> dict[str, str]:
        return {**HARNESS_BROKER, **self.profile_obj().broker, **_strs(self.broker)}

    def effective_sub_via(self) -> str:
        return self.sub_via or self.profile_obj().sub_via

    def effective_delivery(self) -> str:
        return self.delivery or self.profile_obj().delivery

    def replication_factor(self) -> int:
        topic, broker = self.topic_config(), self.broker_config()
        text = topic.get("replication.factor", broker.get("default.replication.factor", "1"))
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"replication factor must be a positive integer, not {text!r}") from None

    def validate(self) -> "TestDescription":
        self.profile_obj()
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; choose one of: {', '.join(BACKENDS)}")
        if self.nodes < 1:
            raise ConfigError(f"nodes must be at least 1, not {self.nodes}")
        self.concurrency_count()
        if self.client not in CLIENTS:
            raise ConfigError(f"unknown client {self.client!r}; choose one of: {', '.join(CLIENTS)}")
        from workloads import WORKLOADS
        if self.workload not in WORKLOADS:
            raise ConfigError(f"unknown workload {self.workload!r}; choose one of: {', '.join(WORKLOADS)}")
        for pkg, _ in self.packages():
            if self.backend not in pkg.backends:
                raise ConfigError(f"the {pkg.name} nemesis does not run on the {self.backend} backend "
                                  f"(it needs {', '.join(sorted(pkg.capabilities)) or 'its nodes'}): use --backend "
                                  f"{' or '.join(sorted(pkg.backends))}")
        from nemesis.schedule import SCHEDULES
        if self.nemesis_schedule not in SCHEDULES:
            raise ConfigError(f"nemesis-schedule must be one of {', '.join(SCHEDULES)}, not {self.nemesis_schedule!r}")
        if self.replay is not None and not (Path(self.replay) / "nemesis.json").is_file():
            raise ConfigError(f"--replay {self.replay}: no nemesis.json there; give a run directory of a run "
                              f"that had a nemesis (results/<name>/<timestamp>)")
        if self.commit_mode not in COMMIT_MODES:
            raise ConfigError(f"commit_mode must be one of {', '.join(COMMIT_MODES)}, not {self.commit_mode!r}")
        if self.process_ms < 0 or self.commit_every < 1:
            raise ConfigError(f"process_ms must be 0 or more and commit_every at least 1, not {self.process_ms} "
                              f"and {self.commit_every}")
        if self.kill_target not in ("leader", "random"):
            raise ConfigError(f"kill_target must be 'leader' or 'random', not {self.kill_target!r}")
        if self.effective_sub_via() not in ("assign", "subscribe"):
            raise ConfigError(f"sub_via must be 'assign' or 'subscribe', not {self.sub_via!r}")
        if self.effective_delivery() not in ("exactly-once", "at-least-once"):
            raise ConfigError(f"delivery must be 'exactly-once' or 'at-least-once', not {self.delivery!r}")
        for field in ("time_limit", "final_time_limit", "nemesis_interval", "op_timeout"):
            if getattr(self, field) <= 0:
                raise ConfigError(f"{field} must be positive, not {getattr(self, field)}")
        if self.rate < 0:
            raise ConfigError(f"rate must be 0 (unlimited) or positive, not {self.rate}")
        if self.crash_client_interval < 0:
            raise ConfigError(f"crash_client_interval must be 0 (no client crashes) or positive seconds, "
                              f"not {self.crash_client_interval}")
        if min(self.key_count, self.max_writes_per_key, self.partitions_per_topic, self.max_sends_per_op) < 1:
            raise ConfigError("key_count, max_writes_per_key, partitions_per_topic and max_sends_per_op must be at "
                              "least 1")
        self.validate_kafka_settings()
        return self

    def validate_kafka_settings(self) -> None:
        """The Kafka settings, before any cluster starts: topic and broker settings against the keys acked-broker
        knows and the cluster's shape (min.insync.replicas <= replication factor <= nodes), producer and consumer
        settings by the client library itself, offline. ConfigError names the first bad setting."""
        from broker import config as bc
        for k, v in self.broker_config().items():
            if k in CLUSTER_OWNED_BROKER_KEYS:
                raise ConfigError(f"broker setting {k} is set by the harness for each node; leave it out")
            if k not in bc.KEYS:
                raise ConfigError(f"broker setting {k}={v}: acked-broker has no such setting "
                                  f"(known: {', '.join(sorted(set(bc.KEYS) - CLUSTER_OWNED_BROKER_KEYS))})")
            try:
                bc.KEYS[k].parse(v)
            except ValueError as e:
                raise ConfigError(f"broker setting {k}={v}: expected {e}") from None
        for k, v in self.topic_config().items():
            if k == "replication.factor":
                if not re.fullmatch(r"\d+", v.strip()) or int(v) < 1:
                    raise ConfigError(f"topic setting replication.factor={v}: expected a positive integer")
                continue
            if k not in bc.TOPIC_KEYS:
                raise ConfigError(f"topic setting {k}={v}: acked-broker has no such topic setting "
                                  f"(known: {', '.join(sorted({'replication.factor', *bc.TOPIC_KEYS}))})")
            try:
                bc.TOPIC_KEYS[k][0](v)
            except ValueError as e:
                raise ConfigError(f"topic setting {k}={v}: expected {e}") from None
        rf = self.replication_factor()
        if rf > self.nodes:
            raise ConfigError(f"replication factor {rf} needs at least {rf} nodes, the test has {self.nodes}: "
                              f"use --nodes {rf} or set topic replication.factor")
        min_isr = int(self.topic_config().get("min.insync.replicas",
                                              self.broker_config().get("min.insync.replicas", "1")))
        if min_isr > rf:
            raise ConfigError(f"min.insync.replicas={min_isr} exceeds the replication factor {rf}: every acks=all "
                              f"write would fail; set topic min.insync.replicas to at most {rf}")
        for kind, owned in (("producer", CLIENT_OWNED_KEYS["producer"]), ("consumer", CLIENT_OWNED_KEYS["consumer"])):
            conf = self.producer_config() if kind == "producer" else self.consumer_config()
            for k in conf:
                if k in owned:
                    raise ConfigError(f"{kind} setting {k} is set by the harness; leave it out")
            if self.client == "kafka-python":
                _check_kafka_python(kind, conf)
            else:
                _check_librdkafka(kind, conf)

    def packages(self) -> list:
        """The nemesis packages with their pins; ConfigError on an unknown one. kill_target=random pins kill to one."""
        from nemesis import packages
        out = []
        for spec in self.nemeses:
            try:
                pkg, pin = packages.parse(spec)
            except ValueError as e:
                raise ConfigError(str(e)) from None
            if pkg.name == "kill" and pin is None and self.kill_target == "random":
                pin = "one"
            out.append((pkg, pin))
        names = [p.name for p, _ in out]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"nemesis {dup[0]} is named twice; name each package once (pin it as {dup[0]}:CHOICE)")
        return out

    def capabilities(self) -> frozenset[str]:
        """What the enabled faults need on the nodes (net, clock, disk)."""
        return frozenset(c for pkg, _ in self.packages() for c in pkg.capabilities)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["effective"] = {
            "concurrency": self.concurrency_count(),
            "producer": self.producer_config(), "consumer": self.consumer_config(),
            "topic": self.topic_config(), "broker": self.broker_config(),
            "sub_via": self.effective_sub_via(), "delivery": self.effective_delivery(),
        }
        return d


#: broker settings each node's server.properties gets from the cluster (clusters/services.py)
CLUSTER_OWNED_BROKER_KEYS = frozenset({"broker.id", "listeners", "advertised.listeners", "log.dirs", "log.dir",
                                       "zookeeper.connect"})
#: client settings the harness sets itself (workloads/queue.py)
CLIENT_OWNED_KEYS = {"producer": frozenset({"bootstrap.servers", "client.id"}),
                     "consumer": frozenset({"bootstrap.servers", "client.id", "group.id"})}


def _check_librdkafka(kind: str, conf: dict[str, str]) -> None:
    """Build the client with the merged settings, offline (nothing listens on 127.0.0.1:1 and it is closed at
    once); librdkafka refuses unknown properties and bad values at construction."""
    import logging
    from confluent_kafka import Consumer, KafkaException, Producer
    quiet = logging.getLogger("acked.validate")
    quiet.propagate = False
    quiet.disabled = True   # connection refused to 127.0.0.1:1 is the point, not news (pytest showed it as ERROR)
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    base = {"bootstrap.servers": "127.0.0.1:1", "client.id": "acked-validate", "logger": quiet}
    if kind == "consumer":
        base["group.id"] = "acked-validate"

    def build(settings: dict[str, str]) -> str | None:
        try:
            client = (Producer if kind == "producer" else Consumer)({**settings, **base})
        except KafkaException as e:
            return e.args[0].str()
        if kind == "producer":
            client.flush(0)
        else:
            client.close()
        return None

    error = build(conf)
    if error is None:
        return
    for k, v in conf.items():   # name the setting: the library may name an alias (acks: request.required.acks)
        alone = build({k: v})
        if alone is not None:
            raise ConfigError(f"{kind} setting {k}={v}: {alone}")
    raise ConfigError(f"{kind} settings rejected by librdkafka: {error.removeprefix('Failed to create producer: ')} "
                      f"(your settings are merged over the profile's: see `acked profiles`)")


def _check_kafka_python(kind: str, conf: dict[str, str]) -> None:
    """kafka-python takes keyword arguments: each setting, renamed as workloads/queue.py renames it, must be one."""
    from kafka import KafkaConsumer, KafkaProducer
    from workloads.queue import kafka_python_config
    known = (KafkaProducer if kind == "producer" else KafkaConsumer).DEFAULT_CONFIG
    for k, v in conf.items():
        try:
            (name, _), = kafka_python_config({k: v}).items()
        except ValueError:
            raise ConfigError(f"{kind} setting {k}={v}: not a value kafka-python takes") from None
        if name not in known:
            raise ConfigError(f"{kind} setting {k}={v}: kafka-python's "
                              f"{'KafkaProducer' if kind == 'producer' else 'KafkaConsumer'} has no {name}")


def parse_concurrency(text: str | int, nodes: int) -> int:
    s = str(text).strip()
    m = re.fullmatch(r"(\d+)(n?)", s)
    if not m or int(m.group(1)) < 1:
        raise ConfigError(f"concurrency must be a positive integer like 6 or a multiple of the nodes like 2n, not {text!r}")
    return int(m.group(1)) * (nodes if m.group(2) else 1)


def _strs(d: dict) -> dict[str, str]:
    """Kafka settings as strings, as client config files have them (true/false lower-case)."""
    return {str(k): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in d.items()}


_FIELDS = {f.name: f for f in dataclasses.fields(TestDescription)}
_DICT_FIELDS = ("producer", "consumer", "topic", "broker")


def from_dict(data: dict[str, Any], base: TestDescription | None = None, where: str = "test description") -> TestDescription:
    """Build a description from a dict (TOML tables: [producer], [consumer], [topic], [broker]); unknown keys are errors."""
    desc = copy.deepcopy(base) if base else TestDescription()
    for key, value in data.items():
        name = key.replace("-", "_")
        if name == "nemesis":
            name = "nemeses"
        if name not in _FIELDS:
            raise ConfigError(f"{where}: unknown setting {key!r}; known: {', '.join(sorted(_FIELDS))}")
        if name in _DICT_FIELDS:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{name}] must be a table of Kafka settings")
            getattr(desc, name).update(_strs(value))
        elif name == "nemeses":
            desc.nemeses = parse_list(value)
        elif name == "concurrency":
            desc.concurrency = str(value)
        else:
            setattr(desc, name, _coerce(name, value, where))
    return desc


def _coerce(name: str, value: Any, where: str) -> Any:
    ftype = str(_FIELDS[name].type)
    try:
        if ftype.startswith("int"):
            return None if value is None else int(value)
        if ftype.startswith("float"):
            return float(value)
        if ftype.startswith("str | None"):
            return None if value is None else str(value)
        if ftype == "str":
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {name} must be a {ftype}, not {value!r}") from None
    return value


def parse_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [s.strip() for s in value.split(",") if s.strip()]
    return [str(v) for v in value]


def load_toml(path: str | Path, base: TestDescription | None = None) -> TestDescription:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"test file {p} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML ({e})") from None
    return from_dict(data, base, where=str(p))


def parse_setting(text: str) -> tuple[str, str]:
    """`name=value` from the command line (e.g. --producer acks=1)."""
    if "=" not in text:
        raise ConfigError(f"expected NAME=VALUE with a Kafka config name, not {text!r}")
    k, v = text.split("=", 1)
    if not k.strip():
        raise ConfigError(f"expected NAME=VALUE with a Kafka config name, not {text!r}")
    return k.strip(), v.strip()
