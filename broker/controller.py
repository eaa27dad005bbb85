"""Cluster coordination through ZooKeeper (kazoo), laid out as Kafka's ZooKeeper mode.

ZooKeeper paths (JSON values as Kafka writes them):

    /brokers/ids/<id>                               ephemeral: host, port, endpoints
    /controller                                     ephemeral: {"version":1,"brokerid":..,"timestamp":..}
    /controller_epoch                               the controller epoch, an integer
    /brokers/topics/<topic>                         replica assignment {"version":1,"partitions":{"0":[1,2,3]}}
    /brokers/topics/<topic>/partitions/<p>/state    {"controller_epoch","leader","version":1,"leader_epoch","isr"}
    /config/topics/<topic>                          topic overrides {"version":1,"config":{...}}
    /controlled_shutdown/<id>                       ephemeral: broker <id> asks to lose its leaderships

Every partition-state write is version checked (compare-and-set on the znode version);
the controller's writes are also a transaction with a check on /controller_epoch, so a
controller that lost its office cannot overwrite anything. Brokers learn their role by
watching the partition-state znodes (see docs/broker.md, "Replication").

The controller's decisions are pure functions at the top of this file
(`decide_new_partitions`, `decide_elections`, `leaderships_to_move`, `role_for`); the
`ZkBroker` class below is the thin kazoo layer that reads ZooKeeper, calls them and
writes the results.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import logging
import queue
import threading
import time
from typing import Callable, Iterable, Mapping, Sequence

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError, ConnectionLoss, NodeExistsError, NoNodeError, RolledBackError, SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError

from .replication import ElectionKind, choose_leader

log = logging.getLogger("acked.broker.controller")
#: how long a starting broker waits for ZooKeeper to come back while it registers (faults last seconds;
#: a sequence of the nemesis up to a minute)
RECONNECT_WAIT = 120.0

BROKER_IDS = "/brokers/ids"
BROKER_TOPICS = "/brokers/topics"
CONTROLLER = "/controller"
CONTROLLER_EPOCH = "/controller_epoch"
CONFIG_TOPICS = "/config/topics"
CONTROLLED_SHUTDOWN = "/controlled_shutdown"


class ControllerError(RuntimeError):
    """A coordination step failed; the message says what to fix."""


def topic_path(topic: str) -> str:
    return f"{BROKER_TOPICS}/{topic}"


def state_path(topic: str, partition: int) -> str:
    return f"{BROKER_TOPICS}/{topic}/partitions/{partition}/state"


# --------------------------------------------------------------------------------------------
# Data as stored in ZooKeeper
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PartitionState:
    leader: int
    leader_epoch: int
    isr: tuple[int, ...]
    controller_epoch: int
    version: int = 1          # format version of the JSON, as Kafka's

    def to_json(self) -> bytes:
        return json.dumps({"controller_epoch": self.controller_epoch, "leader": self.leader,
                           "version": self.version, "leader_epoch": self.leader_epoch,
                           "isr": list(self.isr)}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "PartitionState":
        d = json.loads(data)
        return cls(int(d["leader"]), int(d["leader_epoch"]), tuple(int(r) for r in d["isr"]),
                   int(d["controller_epoch"]), int(d.get("version", 1)))


@dataclasses.dataclass(frozen=True)
class VersionedState:
    """A partition state with its znode version (for compare-and-set) and the zxid of its last write."""
    state: PartitionState
    zk_version: int
    mzxid: int


@dataclasses.dataclass(frozen=True)
class StateWrite:
    """One decision of the controller: write `state` if the znode is still at `expected_version` (None: create)."""
    topic: str
    partition: int
    state: PartitionState
    expected_version: int | None
    reason: str


def assignment_to_json(assignment: Mapping[int, Sequence[int]], topic_id: str | None = None) -> bytes:
    data = {"version": 1, "partitions": {str(p): list(r) for p, r in sorted(assignment.items())}}
    if topic_id is not None:
        data["topic_id"] = topic_id     # as Kafka 2.8+ keeps it in the same znode
    return json.dumps(data).encode()


def assignment_from_json(data: bytes) -> dict[int, tuple[int, ...]]:
    return {int(p): tuple(r) for p, r in json.loads(data)["partitions"].items()}


def config_to_json(config: Mapping[str, str]) -> bytes:
    return json.dumps({"version": 1, "config": dict(config)}).encode()


def config_from_json(data: bytes) -> dict[str, str]:
    return dict(json.loads(data).get("config", {}))


def unclean_election_enabled(topic_config: Mapping[str, str], broker_default: bool) -> bool:
    """The topic value of unclean.leader.election.enable, else the broker default."""
    value = topic_config.get("unclean.leader.election.enable")
    return broker_default if value is None else str(value).strip().lower() == "true"


# --------------------------------------------------------------------------------------------
# Pure decisions
# --------------------------------------------------------------------------------------------

TP = tuple[str, int]


def decide_new_partitions(assignments: Mapping[str, Mapping[int, Sequence[int]]],
                          states: Mapping[TP, VersionedState], live: Iterable[int],
                          controller_epoch: int) -> list[StateWrite]:
    """Initial state of partitions that have an assignment but no state yet: the first live
    replica leads, every live replica is in the ISR. A partition without a live replica waits."""
    live = set(live)
    writes = []
    for topic, parts in sorted(assignments.items()):
        for p, replicas in sorted(parts.items()):
            if (topic, p) in states:
                continue
            alive = tuple(r for r in replicas if r in live)
            if alive:
                writes.append(StateWrite(topic, p, PartitionState(alive[0], 0, alive, controller_epoch), None,
                                         "new partition"))
    return writes


def decide_elections(assignments: Mapping[str, Mapping[int, Sequence[int]]],
                     states: Mapping[TP, VersionedState], live: Mapping[int, int],
                     unclean_allowed: Callable[[str], bool], controller_epoch: int,
                     shutting_down: Iterable[int] = ()) -> list[StateWrite]:
    """What the controller writes after brokers came or went.

    `live` maps each registered broker to the zxid of its registration. A partition needs a
    new leader when its leader is gone, is shutting down (and another ISR member can take
    over), or registered again after the state was written (it restarted: it must not keep
    leading in the old epoch, its log may have lost an unflushed tail). Every leader change,
    also to "no leader" (-1), bumps the leader epoch. Where the leader stays, followers that
    are gone or shutting down leave the ISR (the ISR keeps at least the leader).
    """
    shutting_down = set(shutting_down)
    writes = []
    for (topic, p), vs in sorted(states.items()):
        replicas = assignments.get(topic, {}).get(p)
        if replicas is None:
            continue
        st = vs.state
        leader_ok = (st.leader in live and live[st.leader] < vs.mzxid and st.leader not in shutting_down)
        if leader_ok:
            isr = tuple(r for r in st.isr if r == st.leader or (r in live and r not in shutting_down))
            if isr != st.isr:
                writes.append(StateWrite(topic, p, dataclasses.replace(st, isr=isr, controller_epoch=controller_epoch),
                                         vs.zk_version, f"brokers {sorted(set(st.isr) - set(isr))} left the ISR"))
            continue
        e = choose_leader(replicas, st.isr, live.keys(), unclean_allowed(topic), exclude=shutting_down)
        if e.kind is ElectionKind.OFFLINE:
            if st.leader in live and st.leader in shutting_down:
                continue        # nobody can take over: the shutting-down leader keeps it until it goes
            if st.leader == -1 and e.isr == st.isr:
                continue        # already offline
            reason = f"no live in-sync replica of {list(st.isr)}: offline"
        elif e.kind is ElectionKind.UNCLEAN:
            reason = f"unclean election of broker {e.leader} (ISR {list(st.isr)} all gone)"
        else:
            reason = f"broker {e.leader} elected from the ISR {list(st.isr)}"
        new = PartitionState(e.leader, st.leader_epoch + 1, e.isr, controller_epoch)
        writes.append(StateWrite(topic, p, new, vs.zk_version, reason))
    return writes


def leaderships_to_move(broker_id: int, assignments: Mapping[str, Mapping[int, Sequence[int]]],
                        states: Mapping[TP, VersionedState], live: Iterable[int]) -> list[TP]:
    """Partitions `broker_id` leads that another live ISR member could lead: what controlled
    shutdown waits for (the rest have no one to move to)."""
    live = set(live) - {broker_id}
    return [tp for tp, vs in sorted(states.items())
            if vs.state.leader == broker_id and any(r in live for r in vs.state.isr if r != broker_id)
            and tp[0] in assignments]


class Role(enum.Enum):
    LEADER = "leader"
    FOLLOWER = "follower"
    NONE = "none"          # not a replica, or the partition is offline / leader unknown


def role_for(broker_id: int, vs: VersionedState | None, replicas: Sequence[int], registration_zxid: int) -> Role:
    """How a broker treats a partition-state it sees. It leads only in a state written after it
    registered (so a restarted broker never resumes an epoch it led before the crash)."""
    if vs is None or broker_id not in replicas:
        return Role.NONE
    if vs.state.leader == broker_id:
        return Role.LEADER if vs.mzxid > registration_zxid else Role.NONE
    return Role.FOLLOWER if vs.state.leader >= 0 else Role.NONE


# --------------------------------------------------------------------------------------------
# The kazoo layer
# --------------------------------------------------------------------------------------------

StateCallback = Callable[[str, int, "VersionedState | None", tuple], None]


class ZkBroker:
    """A broker's ZooKeeper session: registration, controller election (and the controller's
    work while elected), topic admin, partition-state watches and version-checked ISR writes.

    Callbacks (`on_partition_state(topic, partition, VersionedState | None, replicas)`,
    `on_session_lost()`) run on kazoo's or this object's threads; the broker hands them over
    to its event loop.
    """

    def __init__(self, connect: str, broker_id: int, host: str, port: int, *,
                 session_timeout_ms: int = 18000, unclean_default: bool = False,
                 on_partition_state: StateCallback | None = None,
                 on_session_lost: Callable[[], None] | None = None):
        self.broker_id = broker_id
        self.host, self.port = host, port
        self.unclean_default = unclean_default
        self.on_partition_state = on_partition_state
        self.on_session_lost = on_session_lost
        self.connect = connect
        self.zk = KazooClient(hosts=connect, timeout=session_timeout_ms / 1000.0,
                              connection_retry={"max_tries": -1, "delay": 0.1, "max_delay": 1.0},
                              command_retry={"max_tries": 3, "delay": 0.1, "max_delay": 1.0})
        self.registration_zxid = 0
        self.controller_epoch = 0                 # ours, while we are controller
        self._controller_epoch_version: int | None = None
        self._events: queue.Queue = queue.Queue()
        self._stopped = threading.Event()
        self._worker = threading.Thread(target=self._work, name=f"zk-broker-{broker_id}", daemon=True)
        self._controller_id: int | None = None
        #: topics whose partitions all have a state (controller only): new-topic rounds skip them
        self._settled: set[str] = set()
        self._watched_topics: set[str] = set()
        self._watched_partitions: set[TP] = set()
        #: partitions whose state change could not be delivered (ZooKeeper dropped mid-callback): re-read
        self._resync_pending: set[TP] = set()
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        try:
            self.zk.start(timeout=timeout)
        except KazooTimeoutError:
            raise ControllerError(f"cannot reach ZooKeeper at {self.connect} within {timeout:.0f}s; "
                                  "check zookeeper.connect") from None
        for path in (BROKER_IDS, BROKER_TOPICS, CONFIG_TOPICS, CONTROLLED_SHUTDOWN):
            self.zk.retry(self.zk.ensure_path, path)
        self.zk.add_listener(self._on_state_change)
        self.register(timeout)
        self._worker.start()
        self.zk.DataWatch(CONTROLLER, self._on_controller)
        for path in (BROKER_IDS, BROKER_TOPICS, CONTROLLED_SHUTDOWN):
            self.zk.ChildrenWatch(path, lambda children, p=path: self._events.put(p) or None)
        self.zk.ChildrenWatch(BROKER_TOPICS, self._on_topics)

    def stop(self) -> None:
        """Close the session (ephemeral nodes go at once) and stop the worker."""
        self._stopped.set()
        self._events.put("stop")
        try:
            self.zk.stop()
            self.zk.close()
        finally:
            if self._worker.is_alive():
                self._worker.join(timeout=5)

    def register(self, timeout: float) -> None:
        """Create /brokers/ids/<id>. A node left by this broker's previous (crashed) session is
        waited out until ZooKeeper expires it, as it still belongs to a live session. A connection or a
        session lost meanwhile (a stalled ZooKeeper member, a partition: found by the nemesis, which twice
        left a restarted broker dead and its partitions offline) is waited out too, for up to
        RECONNECT_WAIT seconds: kazoo reconnects, and a create that was applied before the loss shows up as
        a node this session owns."""
        path = f"{BROKER_IDS}/{self.broker_id}"
        data = json.dumps({"listener_security_protocol_map": {"PLAINTEXT": "PLAINTEXT"},
                           "endpoints": [f"PLAINTEXT://{self.host}:{self.port}"], "jmx_port": -1,
                           "host": self.host, "port": self.port, "timestamp": str(int(time.time() * 1000)),
                           "version": 4}).encode()
        deadline = time.monotonic() + timeout
        reconnect_deadline = time.monotonic() + max(timeout, RECONNECT_WAIT)
        while True:
            try:
                self.zk.create(path, data, ephemeral=True)
                break
            except (ConnectionLoss, SessionExpiredError):
                # kazoo reconnects, with a new session after an expiry (a restarted broker cut off while it
                # waited out its old session's node: seen under kill then partition); Kafka's broker waits too
                if time.monotonic() > reconnect_deadline:
                    raise ControllerError(f"lost the connection to ZooKeeper at {self.connect} while registering "
                                          f"and could not get it back within {RECONNECT_WAIT:.0f}s") from None
                time.sleep(0.2)
            except NodeExistsError:
                try:
                    _, stat = self.zk.get(path)
                except NoNodeError:
                    continue
                if stat.ephemeralOwner == self.zk.client_id[0]:
                    break
                if time.monotonic() > deadline:
                    raise ControllerError(f"{path} is held by another live session (broker.id {self.broker_id} "
                                          f"used twice?); stop that broker or wait for its session to expire") from None
                time.sleep(0.2)
        self.registration_zxid = self.zk.get(path)[1].czxid
        log.info("registered as broker %d at %s:%d", self.broker_id, self.host, self.port)

    def _on_state_change(self, state: str) -> None:
        if state == KazooState.LOST:
            self._events.put("session-lost")
        elif state == KazooState.CONNECTED:
            self._events.put("connected")

    # -- controller -----------------------------------------------------------------------------
    @property
    def is_controller(self) -> bool:
        return self._controller_epoch_version is not None

    def _try_elect(self) -> None:
        me = json.dumps({"version": 1, "brokerid": self.broker_id, "timestamp": str(int(time.time() * 1000))}).encode()
        try:
            self.zk.create(CONTROLLER, me, ephemeral=True)
        except NodeExistsError:
            data, stat = self.zk.get(CONTROLLER)
            if stat.ephemeralOwner != self.zk.client_id[0]:
                self._resign()
                return
            if self.is_controller:
                return
        while True:
            try:
                data, stat = self.zk.get(CONTROLLER_EPOCH)
                epoch = int(data or 0) + 1
                new_stat = self.zk.set(CONTROLLER_EPOCH, str(epoch).encode(), version=stat.version)
                break
            except NoNodeError:
                try:
                    self.zk.create(CONTROLLER_EPOCH, b"1")
                    epoch, new_stat = 1, self.zk.get(CONTROLLER_EPOCH)[1]
                    break
                except NodeExistsError:
                    continue
            except BadVersionError:
                continue
        self.controller_epoch, self._controller_epoch_version = epoch, new_stat.version
        log.info("broker %d is controller, epoch %d", self.broker_id, epoch)

    def _resign(self) -> None:
        if self.is_controller:
            log.info("broker %d is no longer controller", self.broker_id)
        self._controller_epoch_version = None

    def _work(self) -> None:
        """The one thread that elects, reconciles and re-registers, so those never race each other."""
        while not self._stopped.is_set():
            try:
                events = {self._events.get(timeout=5.0)}
            except queue.Empty:
                events = {"tick"}
            while True:
                try:
                    events.add(self._events.get_nowait())
                except queue.Empty:
                    break
            if "stop" in events or self._stopped.is_set():
                return
            try:
                if "session-lost" in events:
                    self._resign()
                    if self.on_session_lost:
                        self.on_session_lost()
                if "connected" in events and self.zk.exists(f"{BROKER_IDS}/{self.broker_id}") is None:
                    self.register(timeout=60)
                if self.zk.state == KazooState.CONNECTED:
                    if self._resync_pending:
                        self._resync()
                    self._try_elect()
                    if self.is_controller:
                        # Only new topics: their partitions need first states, nothing else changed.
                        # Anything else (brokers, shutdowns, a new controller, a retry, the idle tick)
                        # looks at every partition.
                        self.reconcile(new_topics_only=events == {BROKER_TOPICS})
                    else:
                        self._settled.clear()
            except Exception as exc:  # ZooKeeper hiccup: try again on the next event
                if self._stopped.is_set():
                    return
                log.warning("coordination step failed (%s: %s); retrying", type(exc).__name__, exc)
                time.sleep(0.2)
                self._events.put("retry")

    def read_cluster(self, only: Iterable[str] | None = None):
        """(assignments, states, live {id: registration czxid}, shutting_down, configs) as stored now;
        with `only`, assignments, states and configs of those topics alone."""
        live = {}
        for child in self.zk.get_children(BROKER_IDS):
            try:
                live[int(child)] = self.zk.get(f"{BROKER_IDS}/{child}")[1].czxid
            except NoNodeError:
                pass
        shutting_down = {int(c) for c in self.zk.get_children(CONTROLLED_SHUTDOWN)}
        assignments, states, configs = {}, {}, {}
        for topic in self.zk.get_children(BROKER_TOPICS) if only is None else only:
            try:
                assignments[topic] = assignment_from_json(self.zk.get(topic_path(topic))[0])
            except NoNodeError:
                continue
            configs[topic] = self.topic_config(topic)
            for p in assignments[topic]:
                vs = self.partition_state(topic, p)
                if vs is not None:
                    states[(topic, p)] = vs
        return assignments, states, live, shutting_down, configs

    def reconcile(self, new_topics_only: bool = False) -> list[StateWrite]:
        """One round of the controller: read, decide, write. Returns what was written.

        In full, every topic and partition is read (ten-odd ZooKeeper reads per topic); with
        `new_topics_only`, just the topics whose partitions did not all have a state yet: keys
        rotate, so a harness run creates a topic a second, and reading them all on each creation
        made the controller's work grow with the run's length."""
        only = None
        if new_topics_only:
            topics = set(self.zk.get_children(BROKER_TOPICS))
            self._settled &= topics            # deleted topics
            only = sorted(topics - self._settled)
            if not only:
                return []
        assignments, states, live, shutting_down, configs = self.read_cluster(only)
        writes = decide_new_partitions(assignments, states, live, self.controller_epoch)
        writes += decide_elections(assignments, states, live,
                                   lambda t: unclean_election_enabled(configs.get(t, {}), self.unclean_default),
                                   self.controller_epoch, shutting_down)
        done = []
        for w in writes:
            outcome = self.controller_write(w)
            if outcome == "fenced":
                self._resign()
                break
            if outcome == "ok":
                log.info("%s-%d: %s -> leader %d epoch %d isr %s", w.topic, w.partition, w.reason,
                         w.state.leader, w.state.leader_epoch, list(w.state.isr))
                done.append(w)
            else:
                self._events.put("retry")   # someone (the leader) wrote first: decide again on fresh state
        created = {(w.topic, w.partition) for w in done if w.expected_version is None}
        settled = {t for t, parts in assignments.items() if all((t, p) in states or (t, p) in created for p in parts)}
        if only is None:
            self._settled = settled
        else:
            self._settled |= settled
        return done

    def controller_write(self, w: StateWrite, epoch_version: int | None = None) -> str:
        """Write one decision in a transaction checked against /controller_epoch:
        "ok", "conflict" (the state changed meanwhile) or "fenced" (we are not controller)."""
        epoch_version = self._controller_epoch_version if epoch_version is None else epoch_version
        if epoch_version is None:
            return "fenced"
        path = state_path(w.topic, w.partition)
        if w.expected_version is None:
            self.zk.ensure_path(path.rsplit("/", 1)[0])
        tx = self.zk.transaction()
        tx.check(CONTROLLER_EPOCH, epoch_version)
        if w.expected_version is None:
            tx.create(path, w.state.to_json())
        else:
            tx.set_data(path, w.state.to_json(), version=w.expected_version)
        results = tx.commit()
        # A failed multi reports the failing op's error and RolledBackError for the others.
        if isinstance(results[0], Exception) and not isinstance(results[0], RolledBackError):
            return "fenced"
        if isinstance(results[1], Exception):
            return "conflict"
        return "ok"

    # -- topics ---------------------------------------------------------------------------------
    def create_topic(self, topic: str, assignment: Mapping[int, Sequence[int]], config: Mapping[str, str] = {},
                     topic_id: str | None = None) -> None:
        """Write the replica assignment and config overrides; the controller then creates the partition states."""
        tx = self.zk.transaction()
        tx.create(f"{CONFIG_TOPICS}/{topic}", config_to_json(config))
        tx.create(topic_path(topic), assignment_to_json(assignment, topic_id))
        results = tx.commit()
        if any(isinstance(r, NodeExistsError) for r in results):
            raise ControllerError(f"topic {topic!r} already exists")
        if any(isinstance(r, Exception) for r in results):
            raise ControllerError(f"creating topic {topic!r} failed: {results}")

    def delete_topic(self, topic: str) -> None:
        self.zk.delete(topic_path(topic), recursive=True)
        try:
            self.zk.delete(f"{CONFIG_TOPICS}/{topic}")
        except NoNodeError:
            pass

    def topic_assignment(self, topic: str) -> dict[int, tuple[int, ...]] | None:
        try:
            return assignment_from_json(self.zk.get(topic_path(topic))[0])
        except NoNodeError:
            return None

    def topic_config(self, topic: str) -> dict[str, str]:
        try:
            return config_from_json(self.zk.get(f"{CONFIG_TOPICS}/{topic}")[0])
        except NoNodeError:
            return {}

    def set_topic_config(self, topic: str, config: Mapping[str, str]) -> None:
        self.zk.set(f"{CONFIG_TOPICS}/{topic}", config_to_json(config))

    def partition_state(self, topic: str, partition: int) -> VersionedState | None:
        try:
            data, stat = self.zk.get(state_path(topic, partition))
        except NoNodeError:
            return None
        return VersionedState(PartitionState.from_json(data), stat.version, stat.mzxid)

    def live_brokers(self) -> dict[int, dict]:
        out = {}
        for child in self.zk.get_children(BROKER_IDS):
            try:
                out[int(child)] = json.loads(self.zk.get(f"{BROKER_IDS}/{child}")[0])
            except NoNodeError:
                pass
        return out

    def _on_controller(self, data, stat) -> None:
        try:
            self._controller_id = int(json.loads(data)["brokerid"]) if data else None
        except (ValueError, KeyError, TypeError):
            self._controller_id = None
        self._events.put("controller")

    def controller_id(self) -> int | None:
        """The controller's broker id as the watch on /controller last saw it (Metadata asks for it
        on every request: a ZooKeeper read each time would stall the event loop)."""
        return self._controller_id

    # -- leader's ISR writes ----------------------------------------------------------------------
    def write_isr(self, topic: str, partition: int, current: VersionedState, new_isr: Sequence[int]) -> VersionedState | None:
        """The leader's ISR change, compare-and-set on the znode version it last saw. None when the
        state changed meanwhile (a new leader, or the controller's write): re-read and obey it."""
        new = dataclasses.replace(current.state, isr=tuple(new_isr))
        try:
            stat = self.zk.set(state_path(topic, partition), new.to_json(), version=current.zk_version)
        except (BadVersionError, NoNodeError):
            return None
        return VersionedState(new, stat.version, stat.mzxid)

    # -- role learning: watches on partition states ---------------------------------------------
    def _on_topics(self, topics: list[str]) -> None:
        with self._lock:
            new = [t for t in topics if t not in self._watched_topics]
            self._watched_topics.update(new)
        for topic in new:
            self.zk.ensure_path(f"{topic_path(topic)}/partitions")
            self.zk.ChildrenWatch(f"{topic_path(topic)}/partitions", lambda ps, t=topic: self._on_partitions(t, ps))

    def _on_partitions(self, topic: str, partitions: list[str]) -> bool | None:
        if self.zk.exists(topic_path(topic)) is None:
            with self._lock:
                self._watched_topics.discard(topic)
            return False   # topic deleted: stop this watch
        for p in map(int, partitions):
            with self._lock:
                if (topic, p) in self._watched_partitions:
                    continue
                self._watched_partitions.add((topic, p))
            self.zk.DataWatch(state_path(topic, p), self._state_watcher(topic, p))
        return None

    def _state_watcher(self, topic: str, p: int):
        # kazoo passes the event too to a callback taking three arguments: take exactly two.
        def watcher(data, stat):
            return self._on_state(topic, p, data, stat)
        return watcher

    def _on_state(self, topic: str, p: int, data, stat) -> bool | None:
        """A partition's state changed (kazoo's DataWatch). This callback reads ZooKeeper too (does the topic
        still exist, its replicas): when the connection drops in between, the state must still reach the
        broker and the watch must live on. An exception escaping here lost both: a broker that the controller
        had just elected never learned it (a partition stayed leaderless for the rest of a run under
        partitions, its acknowledged record unreadable). So a failure queues the partition for a re-read by
        the worker thread once connected (`_resync`)."""
        try:
            return self._deliver_state(topic, p, data, stat)
        except Exception as exc:  # noqa: BLE001 -- ZooKeeper trouble: re-read the state when connected again
            log.warning("%s-%d: state change not delivered (%s: %s); re-reading it when connected",
                        topic, p, type(exc).__name__, exc)
            with self._lock:
                self._resync_pending.add((topic, p))
            self._events.put("resync")
            return None

    def _resync(self) -> None:
        """Deliver the states whose watch callback failed: read each again (the worker thread, connected)."""
        with self._lock:
            pending, self._resync_pending = self._resync_pending, set()
        for topic, p in sorted(pending):
            try:
                data, stat = self.zk.get(state_path(topic, p))
            except NoNodeError:
                data, stat = None, None
            except Exception:
                with self._lock:
                    self._resync_pending.add((topic, p))
                raise
            self._on_state(topic, p, data, stat)

    def _deliver_state(self, topic: str, p: int, data, stat) -> bool | None:
        if data is None and stat is None and self.zk.exists(topic_path(topic)) is None:
            with self._lock:
                self._watched_partitions.discard((topic, p))
            if self.on_partition_state:
                self.on_partition_state(topic, p, None, ())
            return False
        if data is None or self.on_partition_state is None:
            return None
        replicas = (self.topic_assignment(topic) or {}).get(p, ())
        self.on_partition_state(topic, p, VersionedState(PartitionState.from_json(data), stat.version, stat.mzxid),
                                tuple(replicas))
        return None

    # -- controlled shutdown --------------------------------------------------------------------
    def controlled_shutdown(self, timeout: float = 30.0) -> list[TP]:
        """Ask the controller to move this broker's leaderships away; wait until it did (or
        nothing is left that can move). Returns the partitions still led here at the end."""
        path = f"{CONTROLLED_SHUTDOWN}/{self.broker_id}"
        try:
            self.zk.create(path, b"", ephemeral=True)
        except NodeExistsError:
            pass
        deadline = time.monotonic() + timeout
        while True:
            assignments, states, live, _, _ = self.read_cluster()
            left = leaderships_to_move(self.broker_id, assignments, states, live)
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.05)
