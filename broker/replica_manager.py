"""The broker's replicated mode: the I/O around broker/replication.py and broker/controller.py.

Everything that changes partitions runs on the broker's asyncio loop.  ZooKeeper
events arrive on kazoo's threads and are handed over with call_soon_threadsafe;
ZooKeeper writes (the leader's ISR changes) run on one worker thread so they
never block the loop and stay in order.

- `ReplicaManager`: learns each partition's state from the controller's znodes
  (`role_for`), makes this broker leader (a `LeaderPartition` per partition) or
  follower (a `ReplicaFetcher` per leader broker), answers the produce and fetch
  paths' replication questions (min.insync.replicas, acks=all waits, follower
  positions), shrinks the ISR on its clock, and writes ISR changes with
  compare-and-set.
- `ReplicaFetcher`: one connection to one leader; truncates newly followed
  partitions with OffsetForLeaderEpoch (KIP-279) before fetching, then fetches
  with replica_id = this broker, appends what it gets with the leader's offsets
  and epochs, and takes the high watermark from the answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import time

from . import protocol
from .config import TopicConfig
from .controller import BROKER_IDS, BROKER_TOPICS, CONFIG_TOPICS, Role, VersionedState, ZkBroker, config_from_json, role_for
from .fetch_sessions import FetchParams, FetchSessionBuilder
from .records import InvalidBatch
from .errors import LEADER_NOT_AVAILABLE, NONE, NOT_ENOUGH_REPLICAS, NOT_LEADER_OR_FOLLOWER, OFFSET_OUT_OF_RANGE
from .replication import IsrChange, LeaderPartition, ReplicationError, follower_high_watermark, truncation_point

log = logging.getLogger("acked.broker.replication")

OFFSET_FOR_LEADER_EPOCH_VERSION = 3  # the first with replica_id, as Kafka's followers send


def _now_ms() -> int:
    return int(time.monotonic() * 1000)


class ReplicaManager:
    def __init__(self, broker, zk: ZkBroker, loop: asyncio.AbstractEventLoop):
        self.broker = broker
        self.zk = zk
        self.loop = loop
        self.me = broker.broker_id
        self.config = broker.config
        # (topic, partition) -> (state with znode version, replicas), for every partition of the cluster
        self.states: dict[tuple[str, int], tuple[VersionedState, tuple[int, ...]]] = {}
        self.leaders: dict[tuple[str, int], LeaderPartition] = {}
        self.following: dict[tuple[str, int], int] = {}
        self.fetchers: dict[int, ReplicaFetcher] = {}
        self.brokers: dict[int, tuple[str, int]] = {}
        self._config_watched: set[str] = set()
        self._lost_registration: int | None = None
        self._zk_writes = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="isr-write")
        zk.on_partition_state = self._state_from_zk
        zk.on_session_lost = self._session_lost_from_zk

    # -- start and stop -------------------------------------------------------------------
    def start(self) -> None:
        """Runs in a worker thread: connect, register, watch (states then arrive as events)."""
        self.zk.start()
        self.zk.zk.ChildrenWatch(BROKER_IDS, self._brokers_from_zk)
        self.zk.zk.ChildrenWatch(BROKER_TOPICS, self._topics_from_zk)

    async def controlled_shutdown(self) -> None:
        if not self.config["controlled.shutdown.enable"]:
            return
        left = await self.loop.run_in_executor(None, self.zk.controlled_shutdown,
                                               self.config["request.timeout.ms"] / 1000)
        if left:
            log.warning("controlled shutdown: still leading %s (no other in-sync replica)", left)
        else:
            log.info("controlled shutdown: leaderships moved away")

    def stop(self) -> None:
        for f in self.fetchers.values():
            f.stop()
        for key in list(self.leaders):
            self._stop_leading(key)
        self.zk.stop()
        self._zk_writes.shutdown(wait=False)

    # -- ZooKeeper events (kazoo threads) ----------------------------------------------------
    def _state_from_zk(self, topic: str, p: int, vs: VersionedState | None, replicas: tuple) -> None:
        info = None
        if vs is not None and self.me in replicas:
            try:
                info = self.broker.metadata.describe(topic)
            except Exception as e:    # ZooKeeper hiccup: the next event brings it again
                log.warning("%s-%d: cannot read topic metadata: %s", topic, p, e)
        self.loop.call_soon_threadsafe(self._apply_state, topic, p, vs, tuple(replicas), info)

    def _session_lost_from_zk(self) -> None:
        # Read the registration now, on the ZooKeeper worker thread: it re-registers right
        # after this returns, and the loop must not mistake the new registration for the lost one.
        self.loop.call_soon_threadsafe(self._session_lost, self.zk.registration_zxid)

    def _brokers_from_zk(self, children: list[str]) -> None:
        brokers = {}
        for child in children:
            try:
                data = json.loads(self.zk.zk.get(f"{BROKER_IDS}/{child}")[0])
                brokers[int(child)] = (data["host"], int(data["port"]))
            except Exception:
                continue
        self.loop.call_soon_threadsafe(self._set_brokers, brokers)

    def _topics_from_zk(self, topics: list[str]) -> None:
        # A deleted topic's state znodes go before the topic znode, so a state watch alone
        # can miss the deletion: the topic list is what says a topic is gone.
        self.loop.call_soon_threadsafe(self._drop_deleted_topics, set(topics))

    def _drop_deleted_topics(self, topics: set[str]) -> None:
        for topic, p in list(self.broker.partitions):
            if topic not in topics:
                self._apply_state(topic, p, None, (), None)
        for key in [k for k in self.states if k[0] not in topics]:
            self.states.pop(key, None)

    def _set_brokers(self, brokers: dict) -> None:
        self.brokers = brokers
        for f in self.fetchers.values():
            f.wake.set()

    def _watch_config(self, topic: str) -> None:
        if topic in self._config_watched:
            return
        self._config_watched.add(topic)

        def changed(data, stat):
            if data is None:
                self._config_watched.discard(topic)
                return False
            self.loop.call_soon_threadsafe(self._config_from_zk, topic, config_from_json(data))
            return None
        self.zk.zk.DataWatch(f"{CONFIG_TOPICS}/{topic}", changed)

    def _config_from_zk(self, topic: str, configs: dict) -> None:
        """An override changed in /config/topics (on whichever broker took the request)."""
        tc = TopicConfig(self.config, configs)
        for (t, _i), part in self.broker.partitions.items():
            if t == topic:
                self.broker.configure_partition(part, tc)
        self.config_changed(topic, tc)

    def config_changed(self, topic: str, tc: TopicConfig) -> None:
        for (t, _i), lp in self.leaders.items():
            if t == topic:
                lp.min_insync_replicas = tc["min.insync.replicas"]

    # -- roles ------------------------------------------------------------------------------
    def _role(self, vs: VersionedState, replicas) -> Role:
        role = role_for(self.me, vs, replicas, self.zk.registration_zxid)
        if role is Role.LEADER and self._lost_registration == self.zk.registration_zxid:
            return Role.NONE    # session lost and not yet registered again: never lead
        return role

    def _apply_state(self, topic: str, p: int, vs: VersionedState | None, replicas: tuple, info) -> None:
        key = (topic, p)
        if vs is None:
            self._stop_leading(key)
            self._stop_following(key)
            self.states.pop(key, None)
            if key in self.broker.partitions:
                self.broker.drop_partition(topic, p)
                log.info("%s-%d: topic deleted, replica removed", topic, p)
            return
        old = self.states.get(key)
        if old is not None and old[0].mzxid > vs.mzxid:
            return      # an older state delivered late
        self.states[key] = (vs, replicas)
        if self.me not in replicas:
            return
        part = self.broker.partitions.get(key)
        if part is None:
            if info is None:
                return
            part = self.broker.open_partition(info, p)
            self._watch_config(topic)
            log.info("%s-%d: opened replica (log end %d, high watermark %d, epochs %s)", topic, p,
                     part.log_end_offset, part.high_watermark, part.epoch_cache)
        st = vs.state
        role = self._role(vs, replicas)
        if role is Role.LEADER:
            lp = self.leaders.get(key)
            if lp is not None and lp.leader_epoch == st.leader_epoch:
                if st.isr != lp.isr:
                    try:
                        lp.isr_committed(st.isr)
                    except ReplicationError as e:
                        log.warning("%s-%d: ignoring ISR %s: %s", topic, p, list(st.isr), e)
                        return
                    log.info("%s-%d: ISR is now %s", topic, p, list(st.isr))
                    self._after_hw(key, wake=True)   # fetch sessions look at it again (in step or not)
                return
            self._become_leader(key, part, vs, replicas)
        elif role is Role.FOLLOWER:
            self._stop_leading(key)
            if self.following.get(key) != st.leader or part.leader_epoch != st.leader_epoch:
                part.leader_epoch = st.leader_epoch
                self._follow(key, st.leader, st.leader_epoch)
        else:
            self._stop_leading(key)
            self._stop_following(key)
            part.leader_epoch = st.leader_epoch

    def _become_leader(self, key, part, vs: VersionedState, replicas) -> None:
        self._stop_following(key)
        self._stop_leading(key)
        st = vs.state
        part.become_leader(st.leader_epoch)
        try:
            lp = LeaderPartition(self.me, replicas, st.isr, st.leader_epoch, part.log_end_offset,
                                 part.high_watermark, _now_ms(),
                                 replica_lag_time_max_ms=self.config["replica.lag.time.max.ms"],
                                 min_insync_replicas=part.config["min.insync.replicas"])
        except ReplicationError as e:
            part.is_leader = False
            log.error("%s-%d: cannot lead: %s", key[0], key[1], e)
            return
        self.leaders[key] = lp
        part.on_leader_append = functools.partial(self._on_leader_append, key)
        log.info("%s-%d: leader in epoch %d, ISR %s, log end %d, high watermark %d", key[0], key[1],
                 st.leader_epoch, list(st.isr), part.log_end_offset, part.high_watermark)
        lp.on_leader_append(part.log_end_offset)     # an ISR of one commits at once
        self._after_hw(key, wake=True)

    def _stop_leading(self, key) -> None:
        lp = self.leaders.pop(key, None)
        part = self.broker.partitions.get(key)
        if part is not None:
            part.is_leader = False
            part.__dict__.pop("on_leader_append", None)
        if lp is not None:
            self._resolve(lp.abandon_acks())
            log.info("%s-%d: no longer leader (epoch %d)", key[0], key[1], lp.leader_epoch)
            if part is not None:
                part.notify_listeners()   # long-polling fetches of it answer NOT_LEADER_OR_FOLLOWER now

    def _follow(self, key, leader: int, epoch: int) -> None:
        self._stop_following(key)
        self.following[key] = leader
        fetcher = self.fetchers.get(leader)
        if fetcher is None:
            fetcher = self.fetchers[leader] = ReplicaFetcher(self, leader)
        fetcher.add(key, epoch)
        log.info("%s-%d: follower of broker %d in epoch %d", key[0], key[1], leader, epoch)

    def _stop_following(self, key) -> None:
        leader = self.following.pop(key, None)
        if leader is not None and leader in self.fetchers:
            self.fetchers[leader].remove(key)

    def _session_lost(self, lost_registration: int) -> None:
        """A leader without its ZooKeeper session may already be replaced: stop taking writes."""
        self._lost_registration = lost_registration
        for key in list(self.leaders):
            self._stop_leading(key)
        log.warning("ZooKeeper session lost: stopped leading every partition until the controller says again")

    # -- leader: high watermark and acks ---------------------------------------------------
    def _on_leader_append(self, key) -> None:
        lp = self.leaders.get(key)
        part = self.broker.partitions.get(key)
        if lp is None or part is None:
            return
        lp.note_fetches(self.broker.fetch_sessions.follower_positions(key))
        lp.on_leader_append(part.log_end_offset)
        self._after_hw(key, wake=True)   # also wakes the followers' long-polling fetches

    def _after_hw(self, key, wake: bool = False) -> None:
        lp = self.leaders.get(key)
        part = self.broker.partitions.get(key)
        if lp is None or part is None:
            return
        if lp.high_watermark > part.high_watermark or wake:
            part.advance_high_watermark(lp.high_watermark)
        self._resolve(lp.poll_acks(_now_ms()))

    @staticmethod
    def _resolve(done) -> None:
        for fut, code in done:
            if not fut.done():
                fut.set_result(code)

    def check_produce(self, topic: str, p: int) -> tuple[int, str | None]:
        """acks=all, before the append: not leader, or ISR smaller than min.insync.replicas."""
        lp = self.leaders.get((topic, p))
        if lp is None:
            return NOT_LEADER_OR_FOLLOWER, "this broker does not lead the partition"
        error = lp.check_produce(-1)
        if error == NOT_ENOUGH_REPLICAS:
            return error, f"ISR {list(lp.isr)} is smaller than min.insync.replicas={lp.min_insync_replicas}"
        return error, None

    def wait_for_ack(self, topic: str, p: int, required_offset: int, timeout_ms: int):
        """An error code now, or a future resolving to one when the ISR has `required_offset`."""
        lp = self.leaders.get((topic, p))
        if lp is None:
            return NOT_LEADER_OR_FOLLOWER
        status = lp.ack_status(required_offset)
        if status is not None:
            return status
        fut = self.loop.create_future()
        lp.wait_for_ack(fut, required_offset, _now_ms() + timeout_ms)
        return fut

    def on_follower_fetch(self, topic: str, p: int, replica_id: int, fetch_offset: int,
                          named: bool = True) -> tuple[int, bool]:
        """A follower fetched at fetch_offset. Returns (error code, whether the follower is in step:
        at the log end and in the ISR, caught up by equality, so that an unchanged offset has nothing
        to update until the partition changes).  `named` False: a session partition the fetch did
        not name, so the offset is the one it last reported."""
        key = (topic, p)
        lp = self.leaders.get(key)
        if lp is None:
            return NOT_LEADER_OR_FOLLOWER, False
        in_step = fetch_offset == lp.log_end_offset and replica_id in lp.isr
        if in_step and not named:
            return NONE, True
        if fetch_offset > lp.log_end_offset:
            return OFFSET_OUT_OF_RANGE, False
        try:
            moved, expand = lp.on_follower_fetch(replica_id, fetch_offset, _now_ms())
        except ReplicationError as e:
            log.warning("%s-%d: fetch from broker %d refused: %s", topic, p, replica_id, e)
            return NOT_LEADER_OR_FOLLOWER, False
        if moved:
            self._after_hw(key)
        if expand is not None:
            self._write_isr(key, lp, expand)
        return NONE, in_step

    def tick(self) -> None:
        now = _now_ms()
        for key, lp in list(self.leaders.items()):
            change = lp.maybe_shrink_isr(now)
            if change is not None:
                self._write_isr(key, lp, change)
            self._resolve(lp.poll_acks(now))

    # -- ISR writes ---------------------------------------------------------------------------
    def _write_isr(self, key, lp: LeaderPartition, change: IsrChange) -> None:
        vs, replicas = self.states[key]
        log.info("%s-%d: proposing ISR %s (%s)", key[0], key[1], list(change.new_isr), change.reason)
        fut = self.loop.run_in_executor(self._zk_writes, self.zk.write_isr, key[0], key[1], vs, change.new_isr)
        fut.add_done_callback(lambda f: self._isr_written(key, lp, change, replicas, f))

    def _isr_written(self, key, lp: LeaderPartition, change: IsrChange, replicas, fut) -> None:
        if self.leaders.get(key) is not lp:
            return
        try:
            new_vs = fut.result()
        except Exception as e:
            log.warning("%s-%d: ISR write failed: %s", key[0], key[1], e)
            new_vs = None
        if new_vs is None:
            lp.isr_write_failed()
            log.info("%s-%d: ISR write lost a compare-and-set; following the newer state", *key)
            self.loop.run_in_executor(None, self._reread_state, key)
            return
        current = self.states.get(key)
        if current is None or current[0].mzxid <= new_vs.mzxid:
            self.states[key] = (new_vs, replicas)
        lp.isr_committed(change.new_isr)
        log.info("%s-%d: ISR is now %s (%s)", key[0], key[1], list(change.new_isr), change.reason)
        self._after_hw(key, wake=True)   # fetch sessions look at it again (in step or not)

    def _reread_state(self, key) -> None:
        vs = self.zk.partition_state(*key)
        if vs is not None:
            replicas = (self.zk.topic_assignment(key[0]) or {}).get(key[1], ())
            self._state_from_zk(key[0], key[1], vs, tuple(replicas))

    # -- cluster view for Metadata --------------------------------------------------------------
    def live_brokers(self) -> list[tuple[int, str, int]]:
        brokers = dict(self.brokers)
        if not brokers and self.zk.zk.connected:
            # Registered, but the /brokers/ids watch has not fired yet: a client must not get
            # an empty broker list (librdkafka would wait minutes for the next refresh).
            try:
                brokers = {i: (d["host"], int(d["port"])) for i, d in self.zk.live_brokers().items()}
            except Exception:
                brokers = {}
        brokers.setdefault(self.me, (self.broker.advertised_host, self.broker.advertised_port))
        return [(i, h, p) for i, (h, p) in sorted(brokers.items())]

    def controller_id(self) -> int:
        """From the watch on /controller, never a ZooKeeper read: this is on the request path."""
        c = self.zk.controller_id()
        return -1 if c is None else c

    def partition_metadata(self, info, i: int) -> dict:
        replicas = tuple((info.assignment or {}).get(i, ()))
        offline = tuple(r for r in replicas if r not in self.brokers)
        entry = self.states.get((info.name, i))
        if entry is None:
            return {"error_code": LEADER_NOT_AVAILABLE, "leader_id": -1, "leader_epoch": -1,
                    "replica_nodes": replicas, "isr_nodes": (), "offline_replicas": offline}
        st = entry[0].state
        return {"error_code": NONE if st.leader >= 0 else LEADER_NOT_AVAILABLE, "leader_id": st.leader,
                "leader_epoch": st.leader_epoch, "replica_nodes": replicas, "isr_nodes": st.isr,
                "offline_replicas": offline}


class ReplicaFetcher:
    """Fetches every partition this broker follows from one leader broker."""

    def __init__(self, manager: ReplicaManager, leader: int):
        self.m = manager
        self.leader = leader
        self.parts: dict[tuple[str, int], dict] = {}   # key -> {"epoch": e, "truncate": bool}
        self.truncating: set[tuple[str, int]] = set()  # the parts whose "truncate" is set
        #: what to ask of each fetchable part, kept current by `_changed` (see _fetch_once)
        self.wanted: dict[tuple[str, int], FetchParams] = {}
        self._changed: set[tuple[str, int]] = set()
        self.wake = asyncio.Event()
        self.session = FetchSessionBuilder()
        self._correlation = 0
        self._stopped = False
        self.task = manager.loop.create_task(self._run())

    def add(self, key, epoch: int) -> None:
        self.parts[key] = {"epoch": epoch, "truncate": True}
        self.truncating.add(key)
        self._changed.add(key)
        self.wake.set()

    def remove(self, key) -> None:
        self.parts.pop(key, None)
        self.truncating.discard(key)
        self._changed.add(key)

    def _truncate_again(self, key, state: dict) -> None:
        state["truncate"] = True
        self.truncating.add(key)
        self._changed.add(key)

    def stop(self) -> None:
        self._stopped = True
        self.task.cancel()

    async def _run(self) -> None:
        while not self._stopped:
            if not self.parts:
                self.wake.clear()
                await self.wake.wait()
                continue
            addr = self.m.brokers.get(self.leader)
            if addr is None:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
                continue
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(*addr), 2.0)
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.2)
                continue
            self.session.reset()   # a new connection may reach a restarted leader: open a new session
            try:
                while not self._stopped and self.parts and self.m.brokers.get(self.leader) == addr:
                    await self._truncate_pending(reader, writer)
                    await self._fetch_once(reader, writer)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, protocol.MalformedRequest) as e:
                log.info("fetcher from broker %d: %s: %s; reconnecting", self.leader, type(e).__name__, e)
                await asyncio.sleep(0.2)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fetcher from broker %d failed; reconnecting", self.leader)
                await asyncio.sleep(0.5)
            finally:
                writer.close()

    async def _request(self, reader, writer, api_key: int, version: int, data: dict, timeout: float):
        self._correlation += 1
        frame = protocol.encode_request(api_key, version, self._correlation, f"replica-fetcher-{self.m.me}", data)
        return await self._round_trip(reader, writer, api_key, version, frame, timeout)

    async def _round_trip(self, reader, writer, api_key: int, version: int, frame: bytes, timeout: float):
        writer.write(frame)
        await writer.drain()

        async with asyncio.timeout(timeout):   # not wait_for: that costs a task per round trip
            size = int.from_bytes(await reader.readexactly(4), "big")
            frame = await reader.readexactly(size)
        correlation, body = protocol.decode_response(api_key, version, frame)
        if correlation != self._correlation:
            raise OSError(f"response correlation {correlation} != {self._correlation}")
        return body

    def _by_topic(self, keys, make) -> list[dict]:
        topics: dict[str, list] = {}
        for key in keys:
            topics.setdefault(key[0], []).append(make(key))
        return [{"topic": t, "partitions": ps} for t, ps in topics.items()]

    async def _truncate_pending(self, reader, writer) -> None:
        """KIP-279: ask the leader where our latest epoch ends, cut there, repeat until agreed."""
        while True:
            pending = {k: dict(self.parts[k]) for k in self.truncating}
            if not pending:
                return
            parts = self.m.broker.partitions

            def entry(key):
                return {"partition": key[1], "current_leader_epoch": pending[key]["epoch"],
                        "leader_epoch": parts[key].epoch_cache.latest_epoch()}
            keys = [k for k in pending if k in parts]
            if not keys:
                return
            body = await self._request(reader, writer, 23, OFFSET_FOR_LEADER_EPOCH_VERSION,
                                       {"replica_id": self.m.me, "topics": self._by_topic(keys, entry)},
                                       self.m.config["request.timeout.ms"] / 1000)
            retry_later = False
            for t in body.topics:
                for r in t.partitions:
                    key = (t.topic, r.partition)
                    state = self.parts.get(key)
                    part = parts.get(key)
                    if state is None or part is None or state["epoch"] != pending[key]["epoch"]:
                        continue
                    if r.error_code.value != NONE:
                        retry_later = True   # the leader has not seen its new state yet, or lost it
                        continue
                    t_ = truncation_point(part.epoch_cache, part.log_end_offset, part.high_watermark,
                                          r.leader_epoch, r.end_offset)
                    if t_.offset < part.log_end_offset:
                        before = part.log_end_offset
                        part.truncate_to(t_.offset)
                        log.info("%s-%d: truncated from %d to %d (leader's epoch %d ends at %d)", key[0], key[1],
                                 before, part.log_end_offset, r.leader_epoch, r.end_offset)
                    self._changed.add(key)
                    if t_.complete:
                        state["truncate"] = False
                        self.truncating.discard(key)
            if retry_later:
                await asyncio.sleep(0.1)
                return

    def _update_wanted(self) -> set:
        """Bring `wanted` up to date for the parts changed since the last request (added, removed,
        truncated, appended to); a part whose replica does not exist yet is looked at every time."""
        parts = self.m.broker.partitions
        max_bytes = self.m.config["replica.fetch.max.bytes"]
        changed, self._changed = self._changed, set()
        for key in changed:
            state = self.parts.get(key)
            p = parts.get(key)
            if state is None or state["truncate"] or p is None:
                self.wanted.pop(key, None)
                if state is not None and p is None:
                    self._changed.add(key)
            else:
                self.wanted[key] = FetchParams(p.log_end_offset, p.log_start_offset, max_bytes, state["epoch"])
        return changed

    async def _fetch_once(self, reader, writer) -> None:
        parts = self.m.broker.partitions
        changed = self._update_wanted()
        if not self.wanted:
            self.session.note(changed)
            await asyncio.sleep(0.05)
            return
        # KIP-227: after the first full fetch only partitions whose offset or epoch moved are named,
        # and the leader answers only for partitions with news
        session_id, session_epoch, named, forgotten = self.session.request(self.wanted, changed)

        topics: dict[str, list] = {}
        for key, fp in named.items():
            topics.setdefault(key[0], []).append(
                (key[1], fp.current_leader_epoch, fp.fetch_offset, fp.log_start_offset, fp.max_bytes))
        gone: dict[str, list] = {}
        for key in forgotten:
            gone.setdefault(key[0], []).append(key[1])
        wait_ms = self.m.config["replica.fetch.wait.max.ms"]
        self._correlation += 1
        frame = protocol.encode_follower_fetch(
            self._correlation, f"replica-fetcher-{self.m.me}", self.m.me, wait_ms,
            self.m.config["replica.fetch.min.bytes"], 64 << 20, 0, session_id, session_epoch,
            list(topics.items()), list(gone.items()))
        body = await self._round_trip(reader, writer, 1, protocol.FETCH_REQUEST_VERSION, frame,
                                      wait_ms / 1000 + self.m.config["request.timeout.ms"] / 1000)
        self.session.on_response(body.error_code.value, body.session_id)
        if body.error_code.value != NONE:
            log.info("fetch from broker %d: error %s; starting a new fetch session", self.leader, body.error_code.name)
            return
        errors = answered = 0
        view = self.session.view       # what the leader answered from
        for t in body.responses:
            for r in t.partitions:
                key = (t.topic, r.partition_index)
                state = self.parts.get(key)
                part = parts.get(key)
                asked = view.get(key)
                if state is None or part is None or asked is None or state["epoch"] != asked.current_leader_epoch:
                    continue    # followed elsewhere or in a newer epoch since we asked
                answered += 1
                code = r.error_code.value
                if code == OFFSET_OUT_OF_RANGE:
                    self._truncate_again(key, state)
                    errors += 1
                    continue
                if code != NONE:
                    errors += 1
                    continue
                if r.records:
                    try:
                        part.append_as_follower(bytes(r.records))
                    except InvalidBatch as e:
                        log.warning("%s-%d: fetched batches do not continue the log (%s); truncating again", *key, e)
                        self._truncate_again(key, state)
                        continue
                    self._changed.add(key)   # the next request asks from the new log end
                hw = follower_high_watermark(part.high_watermark, r.high_watermark, part.log_end_offset)
                if hw > part.high_watermark:
                    part.high_watermark = hw
        if errors and errors == answered:
            await asyncio.sleep(0.1)   # the leader is changing; the new state will come
