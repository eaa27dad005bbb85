"""asyncio TCP server: frames in, responses out in request order, pipelined.

Each connection has a reader loop and a writer loop joined by a queue of
pending responses: requests are decoded and handled in arrival order (so
pipelined produces append in order), a Fetch that long-polls becomes a task,
and the writer sends each response only when everything before it has gone.
A frame that is too large or cannot be decoded closes that connection only.
"""

from __future__ import annotations

import asyncio
import logging

from . import handlers, protocol
from .group_api import API_KEYS as GROUP_API_KEYS, GroupRuntime  # consumer groups
from .core import Broker
from .protocol import MalformedRequest, UnsupportedVersion

log = logging.getLogger("acked.broker.server")
_CLOSE = object()
MAX_QUEUED_RESPONSES = 1000  # per connection; the reader pauses beyond it


class BrokerServer:
    def __init__(self, broker: Broker):
        self.broker = broker
        self.max_frame = broker.config["socket.request.max.bytes"]
        #: long-polling fetches by partition: followers' (woken by appends) and consumers' (woken only
        #: when the high watermark moves, since they read below it), so an append wakes only those it may serve
        self._waiters: dict[tuple[str, int], set[asyncio.Future]] = {}
        self._committed_waiters: dict[tuple[str, int], set[asyncio.Future]] = {}
        self._woken_at_hw: dict[tuple[str, int], int] = {}
        self._connections: set[asyncio.Task] = set()
        self._server: asyncio.base_events.Server | None = None
        self._ticker: asyncio.Task | None = None
        broker.append_listeners.append(self._wake_fetchers)
        self.groups = GroupRuntime(broker)  # consumer groups (broker/group_api.py)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._on_connection, host or None, port,
                                                  reuse_address=True, limit=1 << 20)
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
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            try:
                self.broker.tick()
            except Exception:
                log.exception("periodic work failed")

    def _wake_fetchers(self, partition) -> None:
        key = (partition.topic, partition.index)
        _wake(self._waiters.pop(key, None))
        if key in self._committed_waiters:
            hw = partition.high_watermark
            if self._woken_at_hw.get(key) != hw or not partition.is_leader:
                self._woken_at_hw[key] = hw
                _wake(self._committed_waiters.pop(key))

    # -- one connection -----------------------------------------------------------------
    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        queue: asyncio.Queue = asyncio.Queue(MAX_QUEUED_RESPONSES)
        send_task = asyncio.create_task(self._send_loop(queue, writer))
        pending: set[asyncio.Task] = set()
        try:
            while True:
                try:
                    head = await reader.readexactly(4)
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                size = int.from_bytes(head, "big", signed=True)
                if size < 0 or size > self.max_frame:
                    log.warning("closing connection from %s: frame of %d bytes (socket.request.max.bytes=%d)",
                                peer, size, self.max_frame)
                    break
                try:
                    frame = await reader.readexactly(size)
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                try:
                    req = protocol.decode_request(frame)
                except UnsupportedVersion as e:
                    if e.api_key == protocol.API_VERSIONS:
                        await queue.put(protocol.unsupported_api_versions_response(e.correlation_id))
                        continue
                    log.warning("closing connection from %s: %s", peer, e)
                    break
                except MalformedRequest as e:
                    log.warning("closing connection from %s: malformed request: %s (frame starts %s)",
                                peer, e, frame[:64].hex())
                    break
                try:
                    item = self._dispatch(req, peer)
                except Exception:
                    log.exception("closing connection from %s: %s v%d failed", peer, req.name, req.api_version)
                    break
                if isinstance(item, asyncio.Task):
                    pending.add(item)
                    item.add_done_callback(pending.discard)
                if item is not None:
                    await queue.put(item)
        except asyncio.CancelledError:
            pass
        finally:
            for t in list(pending):
                t.cancel()
            try:
                queue.put_nowait(_CLOSE)
            except asyncio.QueueFull:
                send_task.cancel()
            try:
                await asyncio.wait_for(send_task, 5)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
                send_task.cancel()
            writer.close()
            self._connections.discard(task)

    async def _send_loop(self, queue: asyncio.Queue, writer: asyncio.StreamWriter) -> None:
        while True:
            item = await queue.get()
            if item is _CLOSE:
                return
            if isinstance(item, asyncio.Task):
                try:
                    item = await item
                except asyncio.CancelledError:
                    return
                except Exception:
                    log.exception("request failed; closing connection")
                    writer.close()
                    return
            try:
                writer.write(item)
                if queue.empty():
                    await writer.drain()
            except (ConnectionError, RuntimeError):
                return

    def _dispatch(self, req: protocol.Request, peer=None):
        """bytes to send, None for no response (acks=0), or a Task producing bytes."""
        if req.api_key in GROUP_API_KEYS:  # consumer groups (broker/group_api.py)
            return self.groups.dispatch(req, peer)
        if req.api_key == 1:
            return asyncio.create_task(self._fetch(req))
        body = handlers.HANDLERS[req.api_key](self.broker, req)
        if body is None:
            return None
        if isinstance(body, handlers.Deferred):
            return asyncio.create_task(self._deferred(req, body))
        return protocol.encode_response(req.api_key, req.api_version, req.correlation_id, body)

    async def _deferred(self, req: protocol.Request, deferred: "handlers.Deferred") -> bytes:
        """acks=all: the answer waits until replication resolved every partition's wait."""
        codes = list(await asyncio.gather(*deferred.waits))
        return protocol.encode_response(req.api_key, req.api_version, req.correlation_id, deferred.finish(codes))

    async def _fetch(self, req: protocol.Request) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(req.body.max_wait.total_seconds(), 0)
        min_bytes = req.body.min_bytes
        ctx = handlers.fetch_context(self.broker, req)
        first = True
        while True:
            reply = handlers.fetch(self.broker, req, ctx, first)
            first = False
            remaining = deadline - loop.time()
            if reply.found >= min_bytes or reply.found and min_bytes <= 0 or reply.error or remaining <= 0:
                ctx.sent(reply.included)
                return reply.encode(req)
            fut = loop.create_future()
            keys = list(ctx.partitions)
            waiters = self._waiters if req.body.replica_id >= 0 else self._committed_waiters
            if waiters is self._committed_waiters:
                for key in keys:
                    p = self.broker.partitions.get(key)
                    if p is not None:
                        self._woken_at_hw[key] = p.high_watermark
            for key in keys:
                waiters.setdefault(key, set()).add(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except asyncio.TimeoutError:
                pass
            finally:
                for key in keys:
                    waiting = waiters.get(key)
                    if waiting is not None:
                        waiting.discard(fut)
                        if not waiting:
                            del waiters[key]


def _wake(futures) -> None:
    for fut in futures or ():
        if not fut.done():
            fut.set_result(None)
