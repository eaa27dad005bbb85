"""asyncio TCP server: frames in, responses out in request order, pipelined.

Each connection is an asyncio Protocol: bytes arrive in `data_received`, every
complete frame in them is decoded and handled at once in arrival order (so
pipelined produces append in order), and responses leave in request order: a
response that is ready while nothing is ahead of it is written immediately, one
that waits (a long-polling Fetch, an acks=all Produce, a group request) is a
future, and what follows it waits behind it.  (Streams, a queue and a writer
task per connection were a good part of each request's cost.)  A frame that is
too large or cannot be decoded closes that connection only.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Callable

from . import handlers, protocol
from .group_api import API_KEYS as GROUP_API_KEYS, GroupRuntime  # consumer groups
from .core import Broker
from .protocol import MalformedRequest, UnsupportedVersion

log = logging.getLogger("acked.broker.server")
MAX_QUEUED_RESPONSES = 1000  # per connection; the reader pauses beyond it
REQUEST_REPORT_INTERVAL = 60  # seconds between the log lines counting requests per API
FOLLOWER_FETCH = "Fetch from followers"  # counted apart from (and also within) Fetch


class BrokerServer:
    def __init__(self, broker: Broker):
        self.broker = broker
        self.max_frame = broker.config["socket.request.max.bytes"]
        #: long-polling fetches by partition: followers' (woken by appends) and consumers' (woken only
        #: when the high watermark moves, since they read below it), so an append wakes only those it may serve
        #: fetches in a fetch session wait on the session instead (FetchSessionCache.touch wakes them);
        #: the sets hold each waiting fetch's wake-up (_LongPoll.wake)
        self._waiters: dict[tuple[str, int], set[Callable[[], None]]] = {}
        self._committed_waiters: dict[tuple[str, int], set[Callable[[], None]]] = {}
        #: high watermark of each partition when its listeners last ran
        self._notified_hw: dict[tuple[str, int], int] = {}
        self._connections: set[_Connection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._ticker: asyncio.Task | None = None
        broker.append_listeners.append(self._wake_fetchers)
        self.groups = GroupRuntime(broker)  # consumer groups (broker/group_api.py)
        #: requests received per API name since start (Kafka's RequestsPerSec); logged every minute
        self.request_counts: collections.Counter = collections.Counter()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host or None, port, reuse_address=True)
        sock = self._server.sockets[0].getsockname()
        self.broker.set_bound_address(host, sock[1])
        self._ticker = asyncio.create_task(self._tick_loop())
        self.groups.start(asyncio.get_running_loop())  # consumer groups
        return sock[0], sock[1]

    async def stop(self) -> None:
        self.groups.stop()  # consumer groups: answer parked requests before connections close
        if self._server is not None:
            self._server.close()
        if self._ticker is not None:
            self._ticker.cancel()
        for conn in list(self._connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_report, reported = loop.time() + REQUEST_REPORT_INTERVAL, collections.Counter()
        while True:
            await asyncio.sleep(0.05)
            try:
                self.broker.tick()
            except Exception:
                log.exception("periodic work failed")
            if loop.time() >= next_report:
                next_report += REQUEST_REPORT_INTERVAL
                reported = self._report_requests(reported)

    def _report_requests(self, before: collections.Counter) -> collections.Counter:
        now = self.request_counts.copy()
        delta = now - before
        if delta:
            log.info("requests in the last %ds: %s", REQUEST_REPORT_INTERVAL, ", ".join(
                f"{protocol.API_NAMES.get(key, key)} {n}" for key, n in delta.most_common()))
        return now

    def _wake_fetchers(self, partition) -> None:
        key = (partition.topic, partition.index)
        hw = partition.high_watermark
        committed = self._notified_hw.get(key) != hw or not partition.is_leader
        if key in self.broker.partitions:
            self._notified_hw[key] = hw
        else:
            self._notified_hw.pop(key, None)   # deleted
        _wake(self._waiters.pop(key, None))
        if committed and key in self._committed_waiters:
            _wake(self._committed_waiters.pop(key))
        self.broker.fetch_sessions.touch(key, committed)

    def _dispatch(self, req: protocol.Request, peer=None):
        """bytes to send, None for no response (acks=0), or a Future of the bytes."""
        if req.api_key in GROUP_API_KEYS:  # consumer groups (broker/group_api.py)
            return self.groups.dispatch(req, peer)
        if req.api_key == 1:
            if req.body.replica_id >= 0:
                self.request_counts[FOLLOWER_FETCH] += 1
            return self._fetch(req)
        body = handlers.HANDLERS[req.api_key](self.broker, req)
        if body is None:
            return None
        if isinstance(body, handlers.Deferred):
            return self._deferred(req, body)
        return _frame(req, body)

    def _deferred(self, req: protocol.Request, deferred: "handlers.Deferred") -> asyncio.Future:
        """acks=all: the answer waits until replication resolved every partition's wait (callbacks,
        not a task per produce: this is on every acknowledged send's path)."""
        result = asyncio.get_running_loop().create_future()
        waits = deferred.waits
        left = [len(waits)]

        def resolved(_):
            left[0] -= 1
            if left[0] or result.done():
                return
            if any(w.cancelled() for w in waits):
                result.cancel()
                return
            try:
                result.set_result(_frame(req, deferred.finish([w.result() for w in waits])))
            except BaseException as e:  # noqa: BLE001 -- the connection logs it and closes
                result.set_exception(e)
        for w in waits:
            w.add_done_callback(resolved)
        return result

    def _fetch(self, req: protocol.Request):
        """Answer now if there is enough to say, else a Future: a long poll (see _LongPoll)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(req.body.max_wait.total_seconds(), 0)
        ctx = handlers.fetch_context(self.broker, req)
        reply = handlers.fetch(self.broker, req, ctx, True)
        if _answerable(req, reply, deadline - loop.time()):
            ctx.sent(reply.included)
            return reply.encode(req)
        return _LongPoll(self, loop, req, ctx, deadline).result


def _frame(req: protocol.Request, body) -> bytes:
    """A handler's answer as a response frame: a kio body to encode, or a frame it wrote itself."""
    if isinstance(body, bytes):
        return body
    return protocol.encode_response(req.api_key, req.api_version, req.correlation_id, body)


def _answerable(req: protocol.Request, reply, remaining: float) -> bool:
    min_bytes = req.body.min_bytes
    return reply.found >= min_bytes or bool(reply.found and min_bytes <= 0) or reply.error or remaining <= 0


class _LongPoll:
    """A Fetch waiting for data: woken by its partitions (or its fetch session), it looks again in a
    callback of its own, and answers once there is enough or max_wait is over.  Callbacks and one
    timer rather than a task per fetch: followers and consumers long-poll on nearly every fetch."""

    __slots__ = ("server", "loop", "req", "ctx", "deadline", "result", "timer", "keys", "waiters", "scheduled",
                 "expired")

    def __init__(self, server: BrokerServer, loop, req: protocol.Request, ctx, deadline: float):
        self.server, self.loop, self.req, self.ctx, self.deadline = server, loop, req, ctx, deadline
        self.result = loop.create_future()
        self.scheduled = self.expired = False
        if ctx.session is not None:
            self.keys, self.waiters = (), None
        else:
            self.keys = list(ctx.partitions)
            self.waiters = server._waiters if req.body.replica_id >= 0 else server._committed_waiters
        self.timer = loop.call_at(deadline, self._expire)
        self._arm()

    def _expire(self) -> None:
        self.expired = True   # answer now, even if the timer fired a hair before the deadline
        self.wake()

    def _arm(self) -> None:
        session = self.ctx.session
        if session is not None:
            session.waiter = self.wake
            return
        waiters = self.waiters
        for key in self.keys:
            waiting = waiters.get(key)
            if waiting is None:
                waiters[key] = {self.wake}
            else:
                waiting.add(self.wake)

    def _disarm(self) -> None:
        session = self.ctx.session
        if session is not None:
            if session.waiter == self.wake:
                session.waiter = None
            return
        waiters = self.waiters
        for key in self.keys:
            waiting = waiters.get(key)
            if waiting is not None:
                waiting.discard(self.wake)
                if not waiting:
                    del waiters[key]

    def wake(self) -> None:
        """A partition changed or the time is up: look again after the current callback is done."""
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._look)

    def _look(self) -> None:
        self.scheduled = False
        self._disarm()
        if self.result.done():          # the connection went away
            self.timer.cancel()
            return
        try:
            reply = handlers.fetch(self.server.broker, self.req, self.ctx, False)
            if not self.expired and not _answerable(self.req, reply, self.deadline - self.loop.time()):
                self._arm()
                return
            self.timer.cancel()
            self.ctx.sent(reply.included)
            self.result.set_result(reply.encode(self.req))
        except BaseException as e:  # noqa: BLE001 -- the connection logs it and closes
            self.timer.cancel()
            self.result.set_exception(e)


def _wake(wakers) -> None:
    for wake in wakers or ():
        wake()


class _Connection(asyncio.Protocol):
    """One client connection (see the module docstring)."""

    def __init__(self, server: BrokerServer):
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = None
        self._buf = bytearray()
        self._pending: collections.deque = collections.deque()   # bytes or futures, in request order
        self._closed = False
        self._reading_paused = False
        self._writing_paused = False

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        self.server._connections.add(self)

    def connection_lost(self, exc) -> None:
        self._closed = True
        self.server._connections.discard(self)
        for item in self._pending:
            if isinstance(item, asyncio.Future):
                item.cancel()
        self._pending.clear()

    def pause_writing(self) -> None:      # the client does not read its responses: stop reading requests
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        max_frame = self.server.max_frame
        pos = 0
        while not self._closed and len(buf) - pos >= 4:
            size = int.from_bytes(buf[pos:pos + 4], "big", signed=True)
            if size < 0 or size > max_frame:
                log.warning("closing connection from %s: frame of %d bytes (socket.request.max.bytes=%d)",
                            self.peer, size, max_frame)
                self.close()
                return
            end = pos + 4 + size
            if len(buf) < end:
                break
            frame = bytes(buf[pos + 4:end])
            pos = end
            self._on_frame(frame)
        del buf[:pos]
        self._update_reading()

    # -- requests and responses ----------------------------------------------------------
    def _on_frame(self, frame: bytes) -> None:
        try:
            req = protocol.decode_request(frame)
        except UnsupportedVersion as e:
            if e.api_key == protocol.API_VERSIONS:
                self._push(protocol.unsupported_api_versions_response(e.correlation_id))
                return
            log.warning("closing connection from %s: %s", self.peer, e)
            self.close()
            return
        except MalformedRequest as e:
            log.warning("closing connection from %s: malformed request: %s (frame starts %s)",
                        self.peer, e, frame[:64].hex())
            self.close()
            return
        self.server.request_counts[req.api_key] += 1
        try:
            item = self.server._dispatch(req, self.peer)
        except Exception:
            log.exception("closing connection from %s: %s v%d failed", self.peer, req.name, req.api_version)
            self.close()
            return
        if item is not None:
            self._push(item)

    def _push(self, item) -> None:
        if not self._pending and not isinstance(item, asyncio.Future):
            self.transport.write(item)      # nothing ahead of it: the common case
            return
        self._pending.append(item)
        if isinstance(item, asyncio.Future):
            item.add_done_callback(self._flush)
        self._flush()

    def _flush(self, _done=None) -> None:
        pending = self._pending
        while pending and not self._closed:
            head = pending[0]
            if isinstance(head, asyncio.Future):
                if not head.done():
                    break
                pending.popleft()
                if head.cancelled():
                    self.close()
                    return
                exc = head.exception()
                if exc is not None:
                    log.error("request failed; closing connection from %s", self.peer, exc_info=exc)
                    self.close()
                    return
                head = head.result()
            else:
                pending.popleft()
            self.transport.write(head)
        self._update_reading()

    def _update_reading(self) -> None:
        if self._closed or self.transport is None:
            return
        pause = self._writing_paused or len(self._pending) >= MAX_QUEUED_RESPONSES
        if pause and not self._reading_paused:
            self.transport.pause_reading()
            self._reading_paused = True
        elif not pause and self._reading_paused:
            self.transport.resume_reading()
            self._reading_paused = False

    def close(self) -> None:
        """Close after writing the responses ready at the head of the queue; abandon what waits."""
        if self._closed:
            return
        self._closed = True
        pending = self._pending
        while pending and self.transport is not None:
            head = pending[0]
            if isinstance(head, asyncio.Future):
                if not head.done() or head.cancelled() or head.exception() is not None:
                    break
                head = head.result()
            pending.popleft()
            self.transport.write(head)
        for item in pending:
            if isinstance(item, asyncio.Future):
                item.cancel()
        pending.clear()
        if self.transport is not None:
            self.transport.close()
