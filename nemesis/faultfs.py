#!/usr/bin/env python3
"""faultfs: a FUSE passthrough filesystem under the broker's log.dirs that stalls, fails and loses writes.

Role. The disk nemeses (nemesis/disk.py) need a disk that hangs, returns EIO, or loses what was written but
not fsynced when the power goes. faultfs is mounted over log.dirs (/var/lib/acked/broker) with its backing
directory beside it (/var/lib/acked/broker.backing) before the broker first starts, and every operation
passes through to the backing directory unless a fault says otherwise. It runs on the node as

    python3 faultfs.py mount BACKING MOUNTPOINT [--control SOCKET] [--allow-other]

in the foreground (the caller daemonizes it), prints ``mounted MOUNTPOINT`` once the mount answers, and
unmounts on SIGTERM, SIGINT or SIGHUP. Its only dependency outside the standard library is mfusepy (a ctypes
binding of libfuse3). Counterparts: Kafka's Kibosh (the Trogdor fault injector: a FUSE passthrough that
fails reads and writes of chosen paths with an errno), Jepsen's LazyFS (a FUSE filesystem with its own page
cache that loses unfsynced writes: "clear-cache"/"lose-unfsynced") and Scylla's CharybdeFS (a Thrift-driven
FUSE layer that injects errors and delays into chosen syscalls).

Faults, set over a unix socket (one JSON request per line, one JSON reply per line, ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``; ``python3 faultfs.py ctl SOCKET '{"cmd": "status"}'`` sends one, prints
the reply and exits 0 if ok, 1 if not). Operation classes: read (read), write (write, truncate), fsync
(fsync, fsyncdir), meta (everything else but flush and release, which are never held nor failed, so a
killed process always closes its files); "all" is the four.

- ``status``: mount, backing, frozen, stalled classes, error rule, ops, errors_injected, blocked (ops now
  waiting), inflight, pending_bytes (bytes a power loss would cut or restore now), files_tracked (files with
  unfsynced changes), open_handles, power_losses.
- ``stall`` {"ops": "all"|"read"|"write"|"fsync"|"meta" or a list}: new ops of those classes block;
  ``release`` (optionally {"ops": ...}) lets them and all later ones go on normally.
- ``errors`` {"ops": class(es), "p": 0..1, "seed": int, "path": "/prefix"}: each matching op (its path
  under the mount starts with the prefix) fails with EIO with probability p, drawn from random.Random(seed).
  It replaces the previous rule; p=0 removes it.
- ``freeze`` {"timeout": s}: every new op blocks; the reply waits until the ops in flight have finished
  ("drained"). ``thaw`` lets the blocked ops go on.
- ``lose-unfsynced`` {"timeout": s, "thaw": bool}: power loss. Freezes (unless frozen), puts every file back
  to its durable state and answers files, bytes_cut, bytes_restored, bytes, paths, aborted_ops. Ops that were
  blocked (by freeze or stall) when the power went fail with EIO: they never land. It thaws afterwards only
  if the fs was not frozen before (or as "thaw" says), so the caller's sequence is freeze, SIGKILL the
  broker, lose-unfsynced, thaw. A killed process whose write is blocked in faultfs stays in D state until
  that op is answered, which lose-unfsynced does at once. Before replying it opens and closes each restored
  file through the mount ("refreshed"), which makes the kernel drop the file's cached pages.
- ``clear``: no stall, no error rule, thawed.

What lose-unfsynced models. An undo log, not a write cache, so passthrough stays fast: writes go straight
to the backing file. Per file (followed across renames) faultfs keeps the durable size and, for every byte
below it that a write or truncate changes, the byte's durable value, read before the change (only the
first change of a byte is saved; appends past the durable size cost nothing). fsync of any handle of a file
makes its current state durable. A file created and never fsynced has durable size 0. A power loss writes
the saved bytes back and truncates each file to its durable size. Metadata (create, mkdir, rename, unlink,
rmdir, symlink, chmod) is durable at once, like a journaled filesystem in data=ordered mode without
auto_da_alloc: a file created, written and renamed but never fsynced survives under its new name, empty
(or as it was at its last fsync). A handle opened O_SYNC or O_DSYNC makes each of its writes durable.
Limits: durability is per file, not per block device (a real disk may lose a later write of another file
and keep an earlier one, or persist part of a write; here an fsync'ed file keeps exactly what was fsynced
and unfsynced bytes vanish whole); directory fsync is passed through but never needed; hard links are not
offered; pages of a shared writable mmap reach faultfs only when the kernel writes them back (the broker
maps read-only); ops by faultfs's own refresh bypass freeze and stall. The undo log lives in faultfs's memory:
truncating or overwriting large durable regions without fsync costs that much memory.

Mount choices (so no stale kernel state outlives a power loss, and reads stay fast): entry_timeout,
negative_timeout and attr_timeout 0 (every lookup and stat asks us, so a size cut by a power loss is seen
at once, and a size change seen drops the file's cached pages); no writeback cache (the want bit is
cleared: every write() reaches faultfs before it returns, so the undo log sees every byte); no
kernel_cache/auto_cache, so no keep_cache on open: the kernel drops a file's cached pages at every open (the
restarted broker, and the refresh after a power loss, rely on that); auto_inval_data off: with it the
kernel asks for attributes before every read(), which cost 50x in read throughput, and the refresh covers
what it would; no direct_io, so mmap(ACCESS_READ) works; hard_remove, so unlinking an open file removes it
at once (no .fuse_hidden files in the log dir); use_ino passes the backing inode numbers through;
max_threads=64: libfuse's worker threads are capped, so once 64 ops are held by a stall every other op
waits too (libfuse 3.14 prints "Ignoring invalid max threads value 4294967295" at start: harmless).
"""
from __future__ import annotations

import argparse
import bisect
import ctypes
import errno
import functools
import itertools
import json
import os
import random
import signal
import socket
import socketserver
import stat
import sys
import threading
import time

CLASSES = ("read", "write", "fsync", "meta")
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
FUSE_CAP_AUTO_INVAL_DATA, FUSE_CAP_WRITEBACK_CACHE = 1 << 12, 1 << 16
_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def _classes(value) -> set[str]:
    if value is None or value == "all":
        return set(CLASSES)
    names = value.split(",") if isinstance(value, str) else list(value)
    out: set[str] = set()
    for name in (str(n).strip() for n in names):
        if name == "all":
            out |= set(CLASSES)
        elif name in CLASSES:
            out.add(name)
        else:
            raise ValueError(f"unknown op class {name!r} (one of all, {', '.join(CLASSES)})")
    return out


class FileState:
    """One file's durable state since its last fsync: what a power loss puts back."""
    __slots__ = ("path", "durable", "size", "saved", "saved_bytes", "refs", "lock", "dirtied")

    def __init__(self, path: str, durable: int, size: int):
        self.path, self.durable, self.size = path, durable, size
        self.dirtied: float | None = None           # monotonic time of the first change since durable
        self.saved: list[tuple[int, bytes]] = []   # (offset, durable bytes), sorted and disjoint
        self.saved_bytes = 0
        self.refs = 0
        self.lock = threading.Lock()

    def dirty(self) -> bool:
        return bool(self.saved) or self.size != self.durable

    def pending(self) -> int:
        return max(0, self.size - self.durable) + self.saved_bytes

    def save(self, fd: int, start: int, end: int) -> None:
        """Keep the durable bytes of [start, end) not saved yet (call with lock held, before changing them)."""
        pos, gaps = start, []
        for off, data in self.saved:
            if off + len(data) <= pos:
                continue
            if off >= end:
                break
            if off > pos:
                gaps.append((pos, off))
            pos = max(pos, off + len(data))
            if pos >= end:
                break
        if pos < end:
            gaps.append((pos, end))
        for a, b in gaps:
            data = os.pread(fd, b - a, a)
            if data:
                bisect.insort(self.saved, (a, data), key=lambda s: s[0])
                self.saved_bytes += len(data)

    def make_durable(self) -> None:
        self.durable, self.saved, self.saved_bytes, self.dirtied = self.size, [], 0, None

    def touched(self) -> None:
        """Note the first change since the file was last durable (call with lock held, after the change)."""
        if self.dirtied is None and self.dirty():
            self.dirtied = time.monotonic()


class Handle:
    __slots__ = ("fd", "state", "sync")

    def __init__(self, fd: int, state: FileState, sync: bool):
        self.fd, self.state, self.sync = fd, state, sync


def _op(cls: str | None, fh_arg: int | None = None):
    """Run a FUSE operation through the gate: stall/freeze, error injection, in-flight count."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self, *args):
            if cls is None:
                with self._cv:
                    self._ops += 1
                return fn(self, *args)
            self._enter(cls, args, fh_arg)
            try:
                return fn(self, *args)
            finally:
                with self._cv:
                    self._inflight -= 1
                    if self._frozen and self._inflight == 0:
                        self._cv.notify_all()
        return wrapper
    return deco


class FaultFS:
    """The mfusepy Operations object (duck-typed: no method or attribute name may shadow a FUSE callback)."""
    use_ns = True

    def __init__(self, backing: str, mountpoint: str, control: str, writeback: float = 0.0):
        self._root, self._mnt, self._control = backing.rstrip("/") or "/", mountpoint, control
        #: seconds after its first change that a file's data becomes durable without fsync, as the kernel's
        #: writeback makes dirty pages older than vm.dirty_expire_centisecs durable; 0: only fsync does
        self._writeback = writeback
        self._written_back = 0
        self._cv = threading.Condition()
        self._frozen, self._stalled, self._rule = False, set(), None
        self._epoch = self._ops = self._errors = self._inflight = self._blocked = self._losses = 0
        self._reg = threading.Lock()
        self._files: dict[str, FileState] = {}      # mount-relative path -> state, while open or dirty
        self._handles: dict[int, Handle] = {}
        self._fh = itertools.count(1)
        self._session = None                        # libfuse session pointer, to notice shutdown
        self._libfuse = None
        self._own_tids: set[int] = set()            # our own threads' ops pass the gate

    # ---- the gate -----------------------------------------------------------------------------------
    def _path_of(self, args, fh_arg) -> str:
        path = args[0] if args and isinstance(args[0], str) else None
        if path is None and fh_arg is not None and len(args) > fh_arg:
            h = self._handles.get(args[fh_arg])
            path = h.state.path if h else None
        return path or ""

    def _holds(self, cls: str) -> bool:
        return self._frozen or cls in self._stalled

    def _own(self) -> bool:
        return bool(self._own_tids) and self._libfuse.fuse_get_context().contents.pid in self._own_tids

    def _exiting(self) -> bool:
        return bool(self._session and self._libfuse.fuse_session_exited(self._session))

    def _enter(self, cls: str, args, fh_arg) -> None:
        with self._cv:
            self._ops += 1
            if self._holds(cls) and not self._own():
                epoch = self._epoch
                self._blocked += 1
                try:
                    while self._holds(cls) and self._epoch == epoch and not self._exiting():
                        self._cv.wait(0.2)
                finally:
                    self._blocked -= 1
                if self._epoch != epoch:
                    raise OSError(errno.EIO, "faultfs: the power was lost while this op was blocked")
            rule = self._rule
            if rule and cls in rule["classes"] and self._path_of(args, fh_arg).startswith(rule["path"]) \
                    and rule["rng"].random() < rule["p"]:
                self._errors += 1
                raise OSError(errno.EIO, "faultfs: injected error")
            self._inflight += 1

    # ---- files and handles ----------------------------------------------------------------------------
    def _b(self, path: str) -> str:
        if path is None:
            raise OSError(errno.ENOENT, "faultfs: no path (file removed)")
        return self._root + path if path != "/" else self._root

    def _state(self, path: str, size: int, created: bool) -> FileState:
        """The registered state of path (call with _reg held); a new one if none or the file is new."""
        st = self._files.get(path)
        if st is None or created:
            st = self._files[path] = FileState(path, 0 if created else size, size)
        return st

    def _forget(self, st: FileState) -> None:
        """Unregister a state nobody holds that has nothing to lose (call with _reg held)."""
        if st.refs == 0 and not st.dirty() and self._files.get(st.path) is st:
            del self._files[st.path]

    def _new_handle(self, path: str, fd: int, flags: int, created: bool) -> int:
        try:
            size = os.fstat(fd).st_size
            with self._reg:
                st = self._state(path, size, created)
                st.refs += 1
                fh = next(self._fh)
                self._handles[fh] = Handle(fd, st, bool(flags & (os.O_SYNC | os.O_DSYNC)))
        except BaseException:
            os.close(fd)
            raise
        if flags & os.O_TRUNC:
            try:
                self._truncate(st, fd, 0)
            except BaseException:
                self._close(fh)
                raise
        return fh

    def _truncate(self, st: FileState, fd: int, length: int) -> None:
        with st.lock:
            if length < st.durable:
                st.save(fd, length, st.durable)
            os.ftruncate(fd, length)
            st.size = length
            st.touched()

    @staticmethod
    def _open_flags(flags: int) -> int:
        strip = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_APPEND | getattr(os, "O_DIRECT", 0) | os.O_NOCTTY
        out = flags & ~strip
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:   # writers read what they overwrite
            out = (out & ~os.O_ACCMODE) | os.O_RDWR
        return out | os.O_CLOEXEC

    # ---- FUSE operations ---------------------------------------------------------------------------------
    def init_with_config(self, conn, config) -> None:
        import mfusepy
        lib = mfusepy._libfuse
        lib.fuse_get_session.restype = ctypes.c_void_p
        lib.fuse_get_session.argtypes = [ctypes.c_void_p]
        lib.fuse_session_exited.argtypes = [ctypes.c_void_p]
        self._libfuse = lib
        self._session = lib.fuse_get_session(lib.fuse_get_context().contents.fuse)
        if config is not None:
            config.entry_timeout = config.negative_timeout = config.attr_timeout = 0.0
            config.hard_remove = config.use_ino = 1
            config.kernel_cache = config.auto_cache = config.direct_io = 0
        if conn is not None:
            conn.want &= ~(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_AUTO_INVAL_DATA)
        threading.Thread(target=self._announce, name="faultfs-announce", daemon=True).start()

    def _announce(self) -> None:
        deadline = time.monotonic() + 30
        while not os.path.ismount(self._mnt):
            if time.monotonic() > deadline:
                print(f"faultfs: error: {self._mnt} is still not a mount point 30 s after init", file=sys.stderr)
                return
            time.sleep(0.01)
        print(f"mounted {self._mnt}", flush=True)

    @_op("meta", 1)
    def getattr(self, path, fh=None):
        h = self._handles.get(fh) if fh is not None else None
        s = os.fstat(h.fd) if h else os.lstat(self._b(path))
        return {"st_mode": s.st_mode, "st_ino": s.st_ino, "st_nlink": s.st_nlink, "st_uid": s.st_uid,
                "st_gid": s.st_gid, "st_size": s.st_size, "st_blocks": s.st_blocks, "st_blksize": s.st_blksize,
                "st_rdev": s.st_rdev, "st_atime": s.st_atime_ns, "st_mtime": s.st_mtime_ns,
                "st_ctime": s.st_ctime_ns}

    @_op("meta")
    def readdir(self, path, fh):
        b = self._b(path)
        out = [(name, {"st_mode": stat.S_IFDIR, "st_ino": os.stat(d).st_ino}, 0)
               for name, d in ((".", b), ("..", os.path.dirname(b)))]
        with os.scandir(b) as it:
            for e in it:
                mode = stat.S_IFLNK if e.is_symlink() else stat.S_IFDIR if e.is_dir(follow_symlinks=False) \
                    else stat.S_IFREG
                out.append((e.name, {"st_mode": mode, "st_ino": e.inode()}, 0))
        return out

    @_op("meta")
    def access(self, path, amode):
        if not os.access(self._b(path), amode):
            raise OSError(errno.EACCES, "access")
        return 0

    @_op("meta")
    def statfs(self, path):
        s = os.statvfs(self._b(path))
        return {k: getattr(s, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                                           "f_ffree", "f_favail", "f_flag", "f_namemax")}

    @_op("meta")
    def mkdir(self, path, mode):
        os.mkdir(self._b(path), mode)
        return 0

    @_op("meta")
    def rmdir(self, path):
        with self._reg:
            os.rmdir(self._b(path))
            self._drop(path)
        return 0

    @_op("meta")
    def unlink(self, path):
        with self._reg:
            os.unlink(self._b(path))
            self._drop(path)
        return 0

    @_op("meta")
    def rename(self, old, new):
        with self._reg:
            os.rename(self._b(old), self._b(new))
            if old == new:
                return 0
            self._drop(new)                          # the replaced file (or empty dir) is gone
            for key in [k for k in self._files if k == old or k.startswith(old + "/")]:
                st = self._files.pop(key)
                st.path = new + key[len(old):]
                self._files[st.path] = st
        return 0

    def _drop(self, path: str) -> None:
        for key in [k for k in self._files if k == path or k.startswith(path + "/")]:
            del self._files[key]

    @_op("meta")
    def symlink(self, target, source):
        os.symlink(source, self._b(target))
        return 0

    @_op("meta")
    def readlink(self, path):
        return os.readlink(self._b(path))

    @_op("meta")
    def chmod(self, path, mode):
        os.chmod(self._b(path), mode)
        return 0

    @_op("meta")
    def chown(self, path, uid, gid):
        os.chown(self._b(path), uid, gid, follow_symlinks=False)
        return 0

    @_op("meta")
    def utimens(self, path, times=None):
        b = self._b(path)
        if times is None:
            os.utime(b)
            return 0
        s, now = os.lstat(b), time.time_ns()
        old = (s.st_atime_ns, s.st_mtime_ns)
        ns = tuple(now if t == UTIME_NOW else old[i] if t == UTIME_OMIT else int(t) for i, t in enumerate(times))
        os.utime(b, ns=ns, follow_symlinks=False)
        return 0

    @_op("meta")
    def create(self, path, mode, flags=os.O_WRONLY):
        b, oflags = self._b(path), self._open_flags(flags)
        try:
            fd, created = os.open(b, oflags | os.O_CREAT | os.O_EXCL, mode), True
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            fd, created = os.open(b, oflags), False
        return self._new_handle(path, fd, flags if not created else flags & ~os.O_TRUNC, created)

    @_op("meta")
    def open(self, path, flags):
        return self._new_handle(path, os.open(self._b(path), self._open_flags(flags)), flags, False)

    @_op("read", 3)
    def read(self, path, size, offset, fh):
        return os.pread(self._handles[fh].fd, size, offset)

    @_op("write", 3)
    def write(self, path, data, offset, fh):
        h = self._handles[fh]
        st = h.state
        with st.lock:
            if offset < st.durable:
                st.save(h.fd, offset, min(offset + len(data), st.durable))
            n = os.pwrite(h.fd, data, offset)
            if offset + n > st.size:
                st.size = offset + n
            if h.sync:
                st.make_durable()
            else:
                st.touched()
        return n

    @_op("write")
    def truncate(self, path, length, fh=None):
        b = self._b(path)
        fd = os.open(b, os.O_RDWR | os.O_CLOEXEC)
        try:
            with self._reg:
                st = self._state(path, os.fstat(fd).st_size, False)
                st.refs += 1
            try:
                self._truncate(st, fd, length)
            finally:
                with self._reg:
                    st.refs -= 1
                    self._forget(st)
        finally:
            os.close(fd)
        return 0

    @_op("fsync", 2)
    def fsync(self, path, datasync, fh):
        h = self._handles[fh]
        with h.state.lock:                       # durable: what was written before the fsync began
            h.state.make_durable()
        (os.fdatasync if datasync else os.fsync)(h.fd)
        return 0

    @_op("fsync")
    def fsyncdir(self, path, datasync, fh):
        if path is None:
            return 0
        fd = os.open(self._b(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return 0

    @_op(None)
    def flush(self, path, fh):
        return 0

    @_op(None)
    def release(self, path, fh):
        return self._close(fh)

    def _close(self, fh: int) -> int:
        with self._reg:
            h = self._handles.pop(fh, None)
            if h is None:
                return 0
            h.state.refs -= 1
            self._forget(h.state)
        os.close(h.fd)
        return 0

    # ---- writeback -------------------------------------------------------------------------------------
    def writeback_loop(self) -> None:
        """The flusher thread: every period (a fifth of the expiry, as dirty_writeback_centisecs is a sixth of
        dirty_expire_centisecs by default), files changed longer ago than the expiry become durable. Never while
        frozen: a power loss in progress decides what survived."""
        period = max(0.1, self._writeback / 5)
        while True:
            time.sleep(period)
            with self._cv:
                if self._frozen:
                    continue
                now = time.monotonic()
                with self._reg:
                    for st in list(self._files.values()):
                        with st.lock:
                            if st.dirtied is not None and now - st.dirtied >= self._writeback:
                                st.make_durable()
                                self._written_back += 1
                        self._forget(st)

    # ---- power loss ----------------------------------------------------------------------------------
    def _restore(self) -> dict:
        files = cut = restored = 0
        paths = []
        with self._reg:
            for path, st in list(self._files.items()):
                with st.lock:
                    if not st.dirty():
                        continue
                    try:
                        fd = os.open(self._b(path), os.O_WRONLY | os.O_CLOEXEC)
                    except FileNotFoundError:      # removed behind our back: nothing to put back
                        del self._files[path]
                        continue
                    try:
                        for off, data in st.saved:
                            os.pwrite(fd, data, off)
                        os.ftruncate(fd, st.durable)
                    finally:
                        os.close(fd)
                    files += 1
                    cut += max(0, st.size - st.durable)
                    restored += st.saved_bytes
                    paths.append(path)
                    st.size = st.durable
                    st.saved, st.saved_bytes, st.dirtied = [], 0, None
                self._forget(st)
        return {"files": files, "bytes_cut": cut, "bytes_restored": restored, "bytes": cut + restored,
                "paths": sorted(paths)}

    def _refresh(self, paths: list[str]) -> None:
        """Open and close each restored file through the mount (passing the gate): the kernel drops the file's
        cached pages at open, so a process that lived through the power loss reads what survived."""
        tid = threading.get_native_id()
        self._own_tids.add(tid)
        try:
            for path in paths:
                try:
                    os.close(os.open(self._mnt + path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
                except OSError:
                    pass
        finally:
            self._own_tids.discard(tid)

    # ---- control -------------------------------------------------------------------------------------------
    def command(self, line: bytes | str) -> dict:
        try:
            req = json.loads(line)
            if isinstance(req, str):
                req = {"cmd": req}
            if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                raise ValueError('a request is a JSON object with a "cmd"')
            fn = getattr(self, "_cmd_" + req["cmd"].replace("-", "_"), None)
            if fn is None:
                raise ValueError(f"unknown cmd {req['cmd']!r} (status, stall, release, errors, clear, freeze, "
                                 "thaw, lose-unfsynced)")
            return {"ok": True, **fn(req)}
        except Exception as e:  # noqa: BLE001 -- every failure is a reply, never a dead control channel
            return {"ok": False, "error": f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)}

    @staticmethod
    def _ops_of(req) -> set[str]:
        return _classes(req.get("ops", req.get("class", "all")))

    def _cmd_status(self, req) -> dict:
        with self._reg:
            pending = sum(st.pending() for st in self._files.values())
            tracked = sum(1 for st in self._files.values() if st.dirty())
            handles = len(self._handles)
        with self._cv:
            rule = None
            if self._rule:
                rule = {"ops": sorted(self._rule["classes"]), "p": self._rule["p"], "path": self._rule["path"],
                        "seed": self._rule["seed"]}
            return {"mount": self._mnt, "backing": self._root, "control": self._control, "frozen": self._frozen,
                    "stalled": sorted(self._stalled), "errors": rule, "ops": self._ops,
                    "errors_injected": self._errors, "blocked": self._blocked, "inflight": self._inflight,
                    "pending_bytes": pending, "files_tracked": tracked, "open_handles": handles,
                    "power_losses": self._losses, "writeback_s": self._writeback,
                    "written_back": self._written_back}

    def _cmd_stall(self, req) -> dict:
        classes = self._ops_of(req)
        with self._cv:
            self._stalled |= classes
            return {"stalled": sorted(self._stalled)}

    def _cmd_release(self, req) -> dict:
        classes = self._ops_of(req)
        with self._cv:
            self._stalled -= classes
            self._cv.notify_all()
            return {"stalled": sorted(self._stalled), "blocked": self._blocked}

    def _cmd_errors(self, req) -> dict:
        p = float(req.get("p", 1.0))
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], not {p}")
        classes, prefix, seed = self._ops_of(req), str(req.get("path", "")), req.get("seed")
        with self._cv:
            self._rule = None if p == 0 else {"classes": classes, "p": p, "path": prefix, "seed": seed,
                                              "rng": random.Random(seed)}
        return {"errors": None if p == 0 else {"ops": sorted(classes), "p": p, "path": prefix, "seed": seed}}

    def _cmd_clear(self, req) -> dict:
        with self._cv:
            self._stalled, self._rule, self._frozen = set(), None, False
            self._cv.notify_all()
            return {"errors_injected": self._errors}

    def _freeze(self, timeout: float) -> bool:
        """Hold every new op and wait for the ones in flight (call with _cv held)."""
        self._frozen = True
        return self._cv.wait_for(lambda: self._inflight == 0, timeout)

    def _cmd_freeze(self, req) -> dict:
        with self._cv:
            drained = self._freeze(float(req.get("timeout", 10)))
            return {"frozen": True, "drained": drained, "inflight": self._inflight}

    def _cmd_thaw(self, req) -> dict:
        with self._cv:
            self._frozen = False
            self._cv.notify_all()
            return {"frozen": False}

    def _cmd_lose_unfsynced(self, req) -> dict:
        with self._cv:
            was_frozen = self._frozen
            if not self._freeze(float(req.get("timeout", 10))):
                if not was_frozen:
                    self._frozen = False
                    self._cv.notify_all()
                raise RuntimeError(f"{self._inflight} ops still in flight; nothing was lost")
            lost = self._restore()
            aborted = self._blocked
            self._epoch += 1                     # ops blocked across the power loss fail, never land
            self._losses += 1
            if req.get("thaw", not was_frozen):
                self._frozen = False
            self._cv.notify_all()
        refresher = threading.Thread(target=self._refresh, args=(lost["paths"],), name="faultfs-refresh",
                                     daemon=True)
        refresher.start()
        refresher.join(5)
        return {**lost, "paths": lost["paths"][:100], "aborted_ops": aborted, "frozen": self._frozen,
                "refreshed": not refresher.is_alive()}


# ---- daemon and client ---------------------------------------------------------------------------------

class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            if line.strip():
                reply = self.server.fs.command(line)
                self.wfile.write(json.dumps(reply).encode() + b"\n")
                self.wfile.flush()


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _serve(server: _Server) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)   # signals go to the main thread, i.e. libfuse
    server.serve_forever(poll_interval=0.1)


def _bind(path: str, fs: FaultFS) -> _Server:
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)
            raise SystemExit(f"faultfs: error: something already listens on {path}")
        except OSError:
            os.unlink(path)                          # a dead daemon's socket
        finally:
            probe.close()
    server = _Server(path, _Handler)
    server.fs = fs
    return server


def mount(args) -> int:
    backing, mnt = os.path.abspath(args.backing), os.path.abspath(args.mountpoint)
    for what, d in (("backing directory", backing), ("mountpoint", mnt)):
        if not os.path.isdir(d):
            raise SystemExit(f"faultfs: error: {what} {d} is not a directory")
    if backing == mnt or backing.startswith(mnt + "/") or mnt.startswith(backing + "/"):
        raise SystemExit(f"faultfs: error: backing {backing} and mountpoint {mnt} must not contain each other")
    try:
        import mfusepy
    except ImportError:
        raise SystemExit("faultfs: error: mfusepy is not installed (pip install mfusepy)") from None
    except OSError as e:                              # mfusepy found no libfuse
        raise SystemExit(f"faultfs: error: {e}") from None
    control = args.control or backing + ".ctl.sock"
    fs = FaultFS(backing, mnt, control, writeback=args.writeback)
    try:
        server = _bind(control, fs)
    except OSError as e:
        raise SystemExit(f"faultfs: error: cannot listen on {control}: {e}") from None
    threading.Thread(target=_serve, args=(server,), name="faultfs-control", daemon=True).start()
    if args.writeback > 0:
        threading.Thread(target=fs.writeback_loop, name="faultfs-writeback", daemon=True).start()
    opts = {"foreground": True, "fsname": f"faultfs:{backing}", "subtype": "faultfs", "debug": args.debug,
            "max_threads": 64}
    if args.allow_other:
        opts["allow_other"] = True
    try:
        mfusepy.FUSE(fs, mnt, **opts)
    except RuntimeError as e:
        # libfuse 3.14's fuse_main_real says 8 when its loop ended, also when a signal ended it
        if e.args != (8,) or os.path.ismount(mnt):
            print(f"faultfs: error: the mount of {mnt} failed or ended with an error ({e})", file=sys.stderr)
            return 1
    finally:
        server.shutdown()
        server.server_close()
        if os.path.exists(control):
            os.unlink(control)
    print(f"unmounted {mnt}", flush=True)
    return 0


def ctl(args) -> int:
    request = args.request
    try:
        req = json.loads(request)
    except ValueError:
        req = {"cmd": request}                         # a bare command name: `ctl SOCK status`
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(args.timeout)
            s.connect(args.socket)
            s.sendall(json.dumps(req).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        reply = json.loads(buf)
    except (OSError, ValueError) as e:
        reply = {"ok": False, "error": f"no reply from {args.socket}: {e}"}
    print(json.dumps(reply), flush=True)
    return 0 if reply.get("ok") else 1


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv=None) -> int:
    p = _Parser(prog="faultfs.py", description="FUSE passthrough filesystem that stalls, fails (EIO) and "
                "loses unfsynced writes on command; see the module docstring for the control API.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    m = sub.add_parser("mount", help="mount BACKING at MOUNTPOINT in the foreground until SIGTERM")
    m.add_argument("backing", help="the directory that holds the data")
    m.add_argument("mountpoint", help="the directory to mount over")
    m.add_argument("--control", help="the control socket (default: BACKING.ctl.sock)")
    m.add_argument("--allow-other", action="store_true", help="let other users than the mounting one in")
    m.add_argument("--debug", action="store_true", help="libfuse debug output on stderr")
    m.add_argument("--writeback", type=float, default=0.0, metavar="SECONDS",
                   help="a file's writes become durable this long after its first unsynced change, as the page "
                        "cache's writeback does (Linux: vm.dirty_expire_centisecs=3000, 30 s); 0 (default): "
                        "only fsync makes them durable, as LazyFS")
    c = sub.add_parser("ctl", help="send one JSON request to a control socket, print the reply; exit 0 if ok")
    c.add_argument("socket")
    c.add_argument("request", help='e.g. \'{"cmd": "status"}\' or just status')
    c.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the reply (default 60)")
    args = p.parse_args(argv)
    return mount(args) if args.command == "mount" else ctl(args)


if __name__ == "__main__":
    sys.exit(main())
