"""Broker configuration: a Kafka-style properties file plus ``--override key=value``.

Key names are Kafka's, verbatim.  Every known key has a type and a default; an
unknown key is kept (and warned about) so a config written for real Kafka still
starts; an invalid value raises ConfigError with one line naming the key and
what it accepts.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

LONG_MAX = 2**63 - 1


class ConfigError(ValueError):
    """An invalid config value; str() is the one-line message for the user."""


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    raise ValueError("true or false")


def _int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"an integer in [{lo}, {hi}]") from None
        if not lo <= value <= hi:
            raise ValueError(f"an integer in [{lo}, {hi}]")
        return value
    return parse


def _str(text: str) -> str:
    return text.strip()


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


_LISTENER = re.compile(r"^(?:([A-Za-z_][A-Za-z0-9_]*)://)?(\[[0-9a-fA-F:]*\]|[^:\s]*):(\d+)$")


def parse_listener(text: str) -> tuple[str, str, int]:
    """'PLAINTEXT://host:port' -> (name, host, port); empty host means all interfaces."""
    m = _LISTENER.match(text.strip())
    if not m or not 0 <= int(m.group(3)) <= 65535:
        raise ValueError("a comma-separated list of NAME://host:port (e.g. PLAINTEXT://127.0.0.1:9092)")
    return (m.group(1) or "PLAINTEXT"), m.group(2).strip("[]"), int(m.group(3))


def _listeners(text: str) -> list[str]:
    items = _list(text)
    if not items:
        raise ValueError("a comma-separated list of NAME://host:port (e.g. PLAINTEXT://127.0.0.1:9092)")
    for item in items:
        parse_listener(item)
    return items


@dataclasses.dataclass(frozen=True)
class Key:
    name: str
    parse: Callable[[str], Any]
    default: str | None           # as it would be written in the file; None = unset
    doc: str
    topic_key: str | None = None  # the topic-level config this key is the default of


I32 = 2**31 - 1
KEYS: dict[str, Key] = {k.name: k for k in [
    Key("broker.id", _int_range(0, I32), "0", "Id of this broker."),
    Key("listeners", _listeners, "PLAINTEXT://127.0.0.1:9092", "Where to listen: NAME://host:port, comma separated; port 0 picks a free port."),
    Key("advertised.listeners", _listeners, None, "What Metadata tells clients (default: listeners)."),
    Key("log.dirs", _list, "/tmp/acked-broker-logs", "Data directory (only the first entry is used)."),
    Key("log.dir", _list, None, "Fallback for log.dirs."),
    Key("num.partitions", _int_range(1, 100000), "1", "Partitions of an auto-created topic."),
    Key("default.replication.factor", _int_range(1, 32767), "1", "Replication factor of an auto-created topic."),
    Key("min.insync.replicas", _int_range(1, I32), "1", "Topic default: fewest in-sync replicas for an acks=all write.", "min.insync.replicas"),
    Key("unclean.leader.election.enable", _bool, "false", "Topic default: may an out-of-sync replica become leader.", "unclean.leader.election.enable"),
    Key("auto.create.topics.enable", _bool, "true", "Create a topic when Metadata asks for an unknown one."),
    Key("log.segment.bytes", _int_range(14, I32), "1073741824", "Topic default: roll a segment at this size.", "segment.bytes"),
    Key("log.index.interval.bytes", _int_range(0, I32), "4096", "Bytes between sparse index entries.", "index.interval.bytes"),
    Key("log.flush.interval.messages", _int_range(1, LONG_MAX), str(LONG_MAX), "Topic default: fsync after this many messages.", "flush.messages"),
    Key("log.flush.interval.ms", _int_range(0, LONG_MAX), None, "Topic default: fsync when the oldest unflushed message is this old (unset: never).", "flush.ms"),
    Key("message.max.bytes", _int_range(0, I32), "1048588", "Topic default: largest record batch accepted.", "max.message.bytes"),
    Key("socket.request.max.bytes", _int_range(1, I32), "104857600", "Largest request frame; a bigger one closes the connection."),
    Key("replica.high.watermark.checkpoint.interval.ms", _int_range(1, LONG_MAX), "5000", "How often the high-watermark checkpoint file is written."),
    # Replication and ZooKeeper (used by broker/replication.py and broker/controller.py).
    Key("zookeeper.connect", _str, None, "ZooKeeper connect string; unset = standalone (metadata kept in log.dirs)."),
    Key("zookeeper.session.timeout.ms", _int_range(1, I32), "18000", "ZooKeeper session timeout."),
    Key("replica.lag.time.max.ms", _int_range(1, LONG_MAX), "30000", "A follower this far behind leaves the ISR."),
    Key("replica.fetch.wait.max.ms", _int_range(0, I32), "500", "Follower fetch long-poll time."),
    Key("replica.fetch.min.bytes", _int_range(1, I32), "1", "Follower fetch: bytes the leader waits for, up to replica.fetch.wait.max.ms."),
    Key("max.incremental.fetch.session.cache.slots", _int_range(0, I32), "1000", "Incremental fetch sessions (KIP-227) the broker keeps; 0 disables them."),
    Key("replica.fetch.max.bytes", _int_range(0, I32), "1048576", "Follower fetch size per partition."),
    Key("request.timeout.ms", _int_range(0, I32), "30000", "acks=all wait limit and inter-broker request timeout."),
    Key("controlled.shutdown.enable", _bool, "true", "Move leadership away before shutting down."),
    # Consumer groups (broker/groups.py).
    Key("offsets.topic.replication.factor", _int_range(1, 32767), "3", "Replication factor of __consumer_offsets."),
    Key("offsets.topic.num.partitions", _int_range(1, 100000), "50", "Partitions of __consumer_offsets."),
    Key("group.initial.rebalance.delay.ms", _int_range(0, I32), "3000", "Delay of the first rebalance of an empty group."),
    Key("group.min.session.timeout.ms", _int_range(0, I32), "6000", "Smallest session.timeout.ms a member may ask for."),
    Key("group.max.session.timeout.ms", _int_range(0, I32), "1800000", "Largest session.timeout.ms a member may ask for."),
    # Consumer groups, continued (broker/group_api.py).
    Key("group.max.size", _int_range(1, I32), str(I32), "Most members a group may have."),
    Key("offsets.commit.timeout.ms", _int_range(1, I32), "5000", "How long an offset commit waits to be committed in __consumer_offsets."),
    Key("offset.metadata.max.bytes", _int_range(0, I32), "4096", "Longest metadata string of an offset commit."),
]}

# Topic-level configs: name -> (parser, broker key holding the default, or a literal default).
TOPIC_KEYS: dict[str, tuple[Callable[[str], Any], str | None, str | None]] = {
    "min.insync.replicas": (_int_range(1, I32), "min.insync.replicas", None),
    "unclean.leader.election.enable": (_bool, "unclean.leader.election.enable", None),
    "segment.bytes": (_int_range(14, I32), "log.segment.bytes", None),
    "index.interval.bytes": (_int_range(0, I32), "log.index.interval.bytes", None),
    "flush.messages": (_int_range(1, LONG_MAX), "log.flush.interval.messages", None),
    "flush.ms": (_int_range(0, LONG_MAX), "log.flush.interval.ms", str(LONG_MAX)),
    "max.message.bytes": (_int_range(0, I32), "message.max.bytes", None),
    "cleanup.policy": (lambda t: _choice(t, ("delete",)), None, "delete"),
    "retention.ms": (_int_range(-1, LONG_MAX), None, "604800000"),
    "retention.bytes": (_int_range(-1, LONG_MAX), None, "-1"),
    "message.timestamp.type": (lambda t: _choice(t, ("CreateTime",)), None, "CreateTime"),
}


def _choice(text: str, allowed: tuple[str, ...]) -> str:
    if text.strip() not in allowed:
        raise ValueError("one of " + ", ".join(allowed))
    return text.strip()


def parse_properties(text: str) -> dict[str, str]:
    """Java .properties, the subset Kafka configs use: key=value or key:value, # and ! comments."""
    out: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        while line.endswith("\\") and i < len(lines):  # continuation line
            line = line[:-1] + lines[i].strip()
            i += 1
        if not line or line[0] in "#!":
            continue
        m = re.match(r"^([^=:\s]+)\s*[=:\s]\s*(.*)$", line)
        if not m:
            raise ConfigError(f"config line {line!r} is not key=value")
        out[m.group(1)] = m.group(2)
    return out


class BrokerConfig:
    """Typed broker config.  ``cfg["log.segment.bytes"]`` -> int; unknown keys in ``unknown``."""

    def __init__(self, raw: dict[str, str]):
        self.raw = dict(raw)
        self.unknown = sorted(k for k in raw if k not in KEYS)
        self.values: dict[str, Any] = {}
        for key in KEYS.values():
            text = raw.get(key.name, key.default)
            if text is None:
                self.values[key.name] = None
                continue
            try:
                self.values[key.name] = key.parse(text)
            except ValueError as e:
                raise ConfigError(f"invalid value {text!r} for {key.name}: expected {e}") from None
        if "log.dirs" not in raw and raw.get("log.dir"):
            self.values["log.dirs"] = self.values["log.dir"]
        if self.values["advertised.listeners"] is None:
            self.values["advertised.listeners"] = self.values["listeners"]
        if not self.values["log.dirs"]:
            raise ConfigError("invalid value for log.dirs: expected a directory path")

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def is_set(self, name: str) -> bool:
        return name in self.raw

    @property
    def log_dir(self) -> str:
        return self.values["log.dirs"][0]

    @property
    def standalone(self) -> bool:
        return not self.values["zookeeper.connect"]

    def topic_default(self, topic_key: str) -> tuple[str, bool]:
        """Default text of a topic config and whether it comes from a broker setting the user set."""
        _parse, broker_key, literal = TOPIC_KEYS[topic_key]
        if broker_key is not None:
            text = self.raw.get(broker_key, KEYS[broker_key].default)
            if text is None:
                text = literal
            return text, broker_key in self.raw
        return literal, False

    @classmethod
    def load(cls, path: str | None, overrides: list[str] = ()) -> "BrokerConfig":
        raw: dict[str, str] = {}
        if path is not None:
            try:
                with open(path, encoding="utf-8") as f:
                    raw = parse_properties(f.read())
            except OSError as e:
                raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"--override {item!r} is not key=value")
            k, v = item.split("=", 1)
            raw[k.strip()] = v
        return cls(raw)


def validate_topic_config(name: str, value: str | None) -> Any:
    """Parse one topic config value; raises ConfigError with a one-line reason."""
    if name not in TOPIC_KEYS:
        raise ConfigError(f"unknown topic config {name}; known: {', '.join(sorted(TOPIC_KEYS))}")
    if value is None:
        raise ConfigError(f"topic config {name} needs a value")
    try:
        return TOPIC_KEYS[name][0](value)
    except ValueError as e:
        raise ConfigError(f"invalid value {value!r} for {name}: expected {e}") from None


class TopicConfig:
    """Effective config of one topic: its overrides over the broker defaults."""

    def __init__(self, broker: BrokerConfig, overrides: dict[str, str]):
        self.broker = broker
        self.overrides = dict(overrides)
        self.values: dict[str, Any] = {}
        for name, (parse, _bk, _lit) in TOPIC_KEYS.items():
            text = overrides.get(name)
            if text is None:
                text, _ = broker.topic_default(name)
            self.values[name] = parse(text)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def describe(self) -> list[tuple[str, str, int]]:
        """(name, value text, Kafka ConfigSource) for every topic config."""
        out = []
        for name in sorted(TOPIC_KEYS):
            if name in self.overrides:
                out.append((name, self.overrides[name], 1))  # DYNAMIC_TOPIC_CONFIG
            else:
                text, from_broker = self.broker.topic_default(name)
                out.append((name, text, 4 if from_broker else 5))  # STATIC_BROKER_CONFIG / DEFAULT_CONFIG
        return out
