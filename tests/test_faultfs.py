"""nemesis/faultfs.py on real FUSE mounts under tmp_path: passthrough, power loss, stalls, errors, control.

The filesystem runs as its own process, as on a node (`faultfs.py mount BACKING MNT --control SOCK`); the
tests talk to its control socket and read through the mount with plain os calls, as the broker does.
"""
from __future__ import annotations

import errno
import json
import mmap
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import wait_until

SCRIPT = str(Path(__file__).resolve().parent.parent / "nemesis" / "faultfs.py")


def _why_no_fuse() -> str | None:
    if not os.path.exists("/dev/fuse") or not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "no usable /dev/fuse on this host"
    if not shutil.which("fusermount3"):
        return "fusermount3 is not installed (apt-get install fuse3)"
    try:
        import mfusepy  # noqa: F401
    except ImportError:
        return "mfusepy is not installed (the test extra)"
    except OSError as e:
        return f"libfuse3 is missing: {e}"
    return None


pytestmark = pytest.mark.skipif(_why_no_fuse() is not None, reason=str(_why_no_fuse()))


class FaultFs:
    """faultfs.py as a subprocess over tmp_path/backing at tmp_path/mnt."""

    def __init__(self, tmp_path: Path, *extra: str):
        self.backing, self.mnt = tmp_path / "backing", tmp_path / "mnt"
        self.backing.mkdir()
        self.mnt.mkdir()
        self.sockdir = tempfile.mkdtemp(prefix="faultfs-", dir="/tmp")   # unix socket paths are short
        self.sock = os.path.join(self.sockdir, "ctl.sock")
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, SCRIPT, "mount", str(self.backing), str(self.mnt),
                                      "--control", self.sock, *extra], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def ctl(self, cmd: str, **fields) -> dict:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(self.sock)
            s.sendall(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                assert chunk, "the control socket closed without a reply"
                buf += chunk
        return json.loads(buf)

    def ok(self, cmd: str, **fields) -> dict:
        reply = self.ctl(cmd, **fields)
        assert reply["ok"], reply
        return reply

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ctl("clear")
            except OSError:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        shutil.rmtree(self.sockdir, ignore_errors=True)


@pytest.fixture
def faultfs(tmp_path, request):
    fs = FaultFs(tmp_path, *getattr(request, "param", ()))
    try:
        wait_until(lambda: f"mounted {fs.mnt}" in fs.lines or fs.proc.poll() is not None, timeout=20)
        assert f"mounted {fs.mnt}" in fs.lines and fs.proc.poll() is None, "\n".join(fs.lines)
        assert os.path.ismount(fs.mnt)
        yield fs
    finally:
        fs.stop()


def write_file(path: Path, data: bytes, fsync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def in_thread(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 -- the test looks at it
            out["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_reads_writes_renames_unlinks_and_mmap_reads_pass_through_to_the_backing_directory(faultfs):
    m, b = faultfs.mnt, faultfs.backing
    (m / "p-0").mkdir()
    fd = os.open(m / "p-0" / "0.log", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert os.pwrite(fd, b"a" * 5000, 0) == 5000
        assert os.pwrite(fd, b"b" * 100, 5000) == 100
        assert os.pread(fd, 10, 4995) == b"aaaaabbbbb"
        assert os.fstat(fd).st_size == 5100
        with mmap.mmap(fd, 5100, access=mmap.ACCESS_READ) as mm:
            assert mm[4999:5001] == b"ab" and mm[:3] == b"aaa"
        os.ftruncate(fd, 5050)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert (b / "p-0" / "0.log").read_bytes() == b"a" * 5000 + b"b" * 50
    for chunk in (b"12345678", b"9"):
        with open(m / "p-0" / "0.index", "ab") as f:
            f.write(chunk)
    assert (b / "p-0" / "0.index").read_bytes() == b"123456789"
    write_file(m / "p-0" / "cp.tmp", b"new", fsync=True)
    write_file(m / "p-0" / "cp", b"old", fsync=True)
    os.replace(m / "p-0" / "cp.tmp", m / "p-0" / "cp")
    os.rename(m / "p-0" / "0.index", m / "p-0" / "0.idx")
    assert sorted(os.listdir(m / "p-0")) == ["0.idx", "0.log", "cp"]
    assert sorted(os.listdir(b / "p-0")) == ["0.idx", "0.log", "cp"]
    assert (m / "p-0" / "cp").read_bytes() == b"new" and (m / "p-0" / "0.idx").read_bytes() == b"123456789"
    os.unlink(m / "p-0" / "0.idx")
    assert not (b / "p-0" / "0.idx").exists()
    os.rename(m / "p-0", m / "p-1")
    assert (b / "p-1" / "0.log").stat().st_size == 5050
    os.symlink("p-1", m / "link")
    assert os.readlink(m / "link") == "p-1" and (m / "link" / "cp").read_bytes() == b"new"
    assert os.statvfs(m).f_bsize > 0
    shutil.rmtree(m / "p-1")
    os.unlink(m / "link")
    assert os.listdir(b) == [] and os.listdir(m) == []


def test_appends_after_the_last_fsync_are_cut_and_overwrites_below_the_durable_size_are_restored(faultfs):
    m = faultfs.mnt
    durable = bytes(range(256)) * 12                       # 3072 bytes
    fd = os.open(m / "0.log", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, durable, 0)
        os.fsync(fd)
        os.pwrite(fd, b"A" * 1000, len(durable))             # appended, never fsynced
        os.pwrite(fd, b"X" * 100, 100)                       # overwrites durable bytes
        os.pwrite(fd, b"Y" * 50, 120)                        # overwrites some of them again
    finally:
        os.close(fd)
    assert (faultfs.backing / "0.log").stat().st_size == 4072
    reply = faultfs.ok("lose-unfsynced")
    assert (reply["files"], reply["bytes_cut"], reply["bytes_restored"]) == (1, 1000, 100)
    assert reply["paths"] == ["/0.log"] and reply["frozen"] is False
    assert (m / "0.log").read_bytes() == durable
    assert (faultfs.backing / "0.log").read_bytes() == durable


def test_a_truncate_below_the_durable_size_is_undone_by_lose_unfsynced(faultfs):
    m = faultfs.mnt
    write_file(m / "0.log", b"d" * 4000, fsync=True)
    fd = os.open(m / "0.log", os.O_RDWR)
    try:
        os.ftruncate(fd, 1000)
        os.pwrite(fd, b"n" * 500, 1000)
    finally:
        os.close(fd)
    reply = faultfs.ok("lose-unfsynced")
    assert reply["files"] == 1 and reply["bytes_restored"] == 3000
    assert (m / "0.log").read_bytes() == b"d" * 4000


def test_writes_not_fsynced_are_gone_after_lose_unfsynced_while_fsynced_ones_survive(faultfs):
    m = faultfs.mnt
    write_file(m / "synced", b"kept", fsync=True)
    fd = os.open(m / "mixed", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"first")
        os.fsync(fd)
        os.write(fd, b"-second")
        os.fsync(fd)
        os.write(fd, b"-third")
    finally:
        os.close(fd)
    faultfs.ok("lose-unfsynced")
    assert (m / "synced").read_bytes() == b"kept"
    assert (m / "mixed").read_bytes() == b"first-second"


def test_a_file_created_and_never_fsynced_comes_back_empty(faultfs):
    m = faultfs.mnt
    (m / "t-0").mkdir()
    write_file(m / "t-0" / "00.log", b"x" * 777, fsync=False)
    with open(m / "t-0" / "00.index", "ab") as f:
        f.write(b"y" * 16)
    reply = faultfs.ok("lose-unfsynced")
    assert reply["files"] == 2 and reply["bytes_cut"] == 793
    assert sorted(os.listdir(m / "t-0")) == ["00.index", "00.log"]     # metadata is durable at once
    assert (m / "t-0" / "00.log").stat().st_size == 0 and (m / "t-0" / "00.index").read_bytes() == b""


def test_a_file_written_via_tmp_fsync_and_rename_survives_while_an_unfsynced_rename_comes_back_empty(faultfs):
    m = faultfs.mnt
    write_file(m / "checkpoint", b"old", fsync=True)
    write_file(m / "checkpoint.tmp", b"new contents", fsync=True)
    os.replace(m / "checkpoint.tmp", m / "checkpoint")
    dfd = os.open(m, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    write_file(m / "other.tmp", b"never fsynced", fsync=False)
    os.replace(m / "other.tmp", m / "other")
    faultfs.ok("lose-unfsynced")
    assert sorted(os.listdir(m)) == ["checkpoint", "other"]
    assert (m / "checkpoint").read_bytes() == b"new contents"
    assert (m / "other").read_bytes() == b""


def test_a_stalled_write_blocks_until_release_and_then_lands(faultfs):
    m = faultfs.mnt
    fd = os.open(m / "0.log", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert faultfs.ok("stall", ops="write")["stalled"] == ["write"]
        t, out = in_thread(lambda: os.pwrite(fd, b"stalled", 0))
        assert wait_until(lambda: faultfs.ok("status")["blocked"] == 1)
        time.sleep(0.3)
        assert t.is_alive() and (faultfs.backing / "0.log").read_bytes() == b""
        assert os.pread(fd, 10, 0) == b""                    # reads are not stalled
        faultfs.ok("release")
        t.join(10)
        assert not t.is_alive() and out == {"value": 7}
        assert (faultfs.backing / "0.log").read_bytes() == b"stalled"
    finally:
        os.close(fd)


def test_errors_with_p_1_on_writes_make_write_raise_eio_while_reads_work_and_clear_heals(faultfs):
    m = faultfs.mnt
    write_file(m / "f", b"readable", fsync=True)
    faultfs.ok("errors", ops="write", p=1.0, seed=7)
    fd = os.open(m / "f", os.O_RDWR)
    try:
        with pytest.raises(OSError) as e:
            os.write(fd, b"zzz")
        assert e.value.errno == errno.EIO
        assert os.pread(fd, 8, 0) == b"readable"
        assert faultfs.ok("status")["errors_injected"] == 1
        assert faultfs.ok("clear")["errors_injected"] == 1
        assert os.pwrite(fd, b"ok", 0) == 2
    finally:
        os.close(fd)
    assert (m / "f").read_bytes() == b"okadable"


def test_errors_with_a_path_prefix_fail_only_the_files_under_it(faultfs):
    m = faultfs.mnt
    (m / "bad").mkdir()
    (m / "good").mkdir()
    faultfs.ok("errors", ops=["write", "fsync"], p=1.0, path="/bad/")
    write_file(m / "good" / "f", b"fine", fsync=True)
    with pytest.raises(OSError) as e:
        write_file(m / "bad" / "f", b"doomed", fsync=True)
    assert e.value.errno == errno.EIO
    assert (m / "good" / "f").read_bytes() == b"fine"
    faultfs.ok("errors", ops="write", p=0)
    assert faultfs.ok("status")["errors"] is None


def test_status_counts_ops_injected_errors_pending_bytes_and_tracked_files(faultfs):
    m = faultfs.mnt
    before = faultfs.ok("status")
    assert (before["mount"], before["backing"]) == (str(m), str(faultfs.backing))
    assert (before["frozen"], before["stalled"], before["errors"]) == (False, [], None)
    write_file(m / "a", b"a" * 100, fsync=False)
    write_file(m / "b", b"b" * 50, fsync=True)
    fd = os.open(m / "b", os.O_RDWR)
    os.pwrite(fd, b"B" * 10, 0)                              # 10 durable bytes saved
    s = faultfs.ok("status")
    assert s["ops"] > before["ops"] and s["open_handles"] == 1
    assert (s["pending_bytes"], s["files_tracked"]) == (110, 2)
    os.fsync(fd)
    os.close(fd)
    assert wait_until(lambda: faultfs.ok("status")["open_handles"] == 0)      # the kernel releases async
    s = faultfs.ok("status")
    assert (s["pending_bytes"], s["files_tracked"]) == (100, 1)
    faultfs.ok("lose-unfsynced")
    s = faultfs.ok("status")
    assert (s["pending_bytes"], s["files_tracked"], s["power_losses"]) == (0, 0, 1)


def test_an_op_blocked_by_freeze_across_lose_unfsynced_fails_and_never_lands(faultfs):
    m = faultfs.mnt
    write_file(m / "0.log", b"durable", fsync=True)
    fd = os.open(m / "0.log", os.O_RDWR)
    try:
        assert faultfs.ok("freeze")["drained"] is True
        t, out = in_thread(lambda: os.pwrite(fd, b"-in-flight", 7))
        assert wait_until(lambda: faultfs.ok("status")["blocked"] == 1)
        reply = faultfs.ok("lose-unfsynced")
        assert reply["aborted_ops"] == 1 and reply["frozen"] is True     # frozen before: stays frozen
        assert reply["refreshed"] is True and reply["paths"] == []
        t.join(10)
        assert isinstance(out.get("error"), OSError) and out["error"].errno == errno.EIO
        faultfs.ok("thaw")
    finally:
        os.close(fd)
    assert (m / "0.log").read_bytes() == b"durable"


def test_the_ctl_cli_prints_the_reply_and_exits_0_if_ok_and_1_if_not(faultfs):
    def cli(*args):
        return subprocess.run([sys.executable, SCRIPT, "ctl", *args], capture_output=True, text=True, timeout=30)
    res = cli(faultfs.sock, '{"cmd": "status"}')
    assert res.returncode == 0 and json.loads(res.stdout)["mount"] == str(faultfs.mnt)
    res = cli(faultfs.sock, '{"cmd": "errors", "ops": "write", "p": 2}')
    assert res.returncode == 1 and "p must be in [0, 1]" in json.loads(res.stdout)["error"]
    res = cli(faultfs.sock, '{"cmd": "explode"}')
    assert res.returncode == 1 and "unknown cmd" in json.loads(res.stdout)["error"]
    res = cli(faultfs.sock + ".nope", "status")
    assert res.returncode == 1 and json.loads(res.stdout)["ok"] is False


def test_help_works_and_bad_arguments_give_a_one_line_error(tmp_path):
    res = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "mount" in res.stdout and "ctl" in res.stdout
    res = subprocess.run([sys.executable, SCRIPT, "mount", str(tmp_path)], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "error" in res.stderr
    res = subprocess.run([sys.executable, SCRIPT, "mount", str(tmp_path / "missing"), str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode != 0 and res.stderr.strip().splitlines() == [
        f"faultfs: error: backing directory {tmp_path / 'missing'} is not a directory"]


def test_sigterm_unmounts_the_mountpoint_even_while_a_write_is_stalled(faultfs):
    fd = os.open(faultfs.mnt / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        faultfs.ok("stall", ops="all")
        t, out = in_thread(lambda: os.pwrite(fd, b"late", 0))
        assert wait_until(lambda: faultfs.ok("status")["blocked"] == 1)
        faultfs.proc.send_signal(signal.SIGTERM)
        assert faultfs.proc.wait(15) == 0
        t.join(10)
        assert not t.is_alive()
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    assert not os.path.ismount(faultfs.mnt)
    assert wait_until(lambda: f"unmounted {faultfs.mnt}" in faultfs.lines, timeout=5), faultfs.lines
    assert not os.path.exists(faultfs.sock)


def test_a_process_that_lives_through_the_power_loss_reads_what_survived_through_its_fd_and_mmap(faultfs):
    m = faultfs.mnt
    write_file(m / "f", b"d" * 8192, fsync=True)
    fd = os.open(m / "f", os.O_RDWR)
    try:
        os.pwrite(fd, b"X" * 4096, 0)                        # same size: only the cached pages could lie
        with mmap.mmap(fd, 8192, access=mmap.ACCESS_READ) as mm:
            assert mm[:3] == b"XXX" and os.pread(fd, 3, 0) == b"XXX"
            faultfs.ok("freeze")
            reply = faultfs.ok("lose-unfsynced")         # its refresh passes the freeze
            assert reply["refreshed"] is True and reply["bytes_restored"] == 4096 and reply["frozen"] is True
            faultfs.ok("thaw")
            assert os.pread(fd, 3, 0) == b"ddd" and mm[:3] == b"ddd"
    finally:
        os.close(fd)


def test_concurrent_writers_each_get_back_exactly_what_their_last_fsync_saw(faultfs):
    import random

    def writer(i: int) -> bytes:
        rng = random.Random(i)
        path = faultfs.mnt / f"w{i}"
        model, durable = bytearray(), b""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            for _ in range(300):
                r = rng.random()
                if r < 0.1:
                    os.fsync(fd)
                    durable = bytes(model)
                elif r < 0.15:
                    n = rng.randrange(len(model) + 1)
                    os.ftruncate(fd, n)
                    del model[n:]
                else:
                    off = rng.randrange(len(model) + 1)
                    data = rng.randbytes(rng.randrange(1, 3000))
                    os.pwrite(fd, data, off)
                    model[off:off + len(data)] = data
        finally:
            os.close(fd)
        assert path.read_bytes() == bytes(model)
        return durable

    threads = [in_thread(lambda i=i: writer(i)) for i in range(6)]
    for t, _ in threads:
        t.join(60)
    results = [out for _, out in threads]
    assert all("value" in out for out in results), results
    faultfs.ok("lose-unfsynced")
    for i, out in enumerate(results):
        assert (faultfs.mnt / f"w{i}").read_bytes() == out["value"], i


@pytest.mark.parametrize("faultfs", [("--writeback", "0.5")], indirect=True)
def test_with_writeback_a_write_older_than_the_expiry_survives_a_power_loss_and_a_newer_one_does_not(faultfs):
    """The page cache's writeback: what has been dirty for longer than the expiry is durable without fsync."""
    old, new = faultfs.mnt / "old", faultfs.mnt / "new"
    write_file(old, b"written back", fsync=False)
    assert wait_until(lambda: faultfs.ok("status")["written_back"] >= 1, 5)
    write_file(new, b"still dirty", fsync=False)
    faultfs.ok("lose-unfsynced")
    assert old.read_bytes() == b"written back"
    assert new.read_bytes() == b""
    assert faultfs.ok("status")["writeback_s"] == 0.5
