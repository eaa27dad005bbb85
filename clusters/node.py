"""Daemons on a node, built on nothing but `Node.run`: the same shell recipe for every transport.

A daemon is started with `setsid` (its own session and process group, so a
signal reaches its children too), its output appended to a logfile, its pid
written to <run_dir>/<name>.pid. Signals go to the process group by that pid.
"""
from __future__ import annotations

import shlex
import time
from pathlib import Path

from clusters.base import ClusterError, CommandResult, Node

SIGNALS = {"KILL", "TERM", "STOP", "CONT", "INT", "HUP", "QUIT", "USR1", "USR2"}


class ShellNode(Node):
    #: where pidfiles live on the node
    run_dir: str = "/var/run/acked"
    #: environment every daemon gets (the local backend marks its processes with the cluster name)
    daemon_env: dict[str, str] = {}

    def put(self, local: Path, remote: str) -> None:
        """Copy a local file onto the node, mode kept, through the transport's put_bytes."""
        self.put_bytes(Path(local).read_bytes(), remote, mode=Path(local).stat().st_mode & 0o777)

    def put_bytes(self, data: bytes, remote: str, mode: int = 0o644) -> None:
        raise NotImplementedError(f"{type(self).__name__} copies files with put() only")

    def pidfile(self, name: str) -> str:
        return f"{self.run_dir}/{name}.pid"

    def start_daemon(self, name: str, cmd: list[str], logfile: str, env: dict[str, str] | None = None) -> int:
        if self.is_running(name):
            raise ClusterError(f"{self.name}: daemon {name!r} is already running; stop it first")
        envs = {**self.daemon_env, **(env or {})}
        env_args = " ".join(shlex.quote(f"{k}={v}") for k, v in envs.items())
        q = shlex.quote
        log_dir = logfile.rsplit("/", 1)[0] or "/"
        script = (
            f"mkdir -p {q(self.run_dir)} {q(log_dir)} || exit 1; cd /; "
            f"setsid env {env_args} {' '.join(q(c) for c in cmd)} >> {q(logfile)} 2>&1 < /dev/null & "
            f"pid=$!; echo $pid > {q(self.pidfile(name))}; echo $pid"
        )
        result = self.run(script, timeout=30, check=True)
        printed = result.stdout.strip()
        if not printed:   # the output was lost (see Node.output); the pidfile was written before the echo
            printed = self.output(["cat", self.pidfile(name)]).stdout.strip()
        try:
            return int(printed.splitlines()[-1])
        except (ValueError, IndexError):
            raise ClusterError(f"{self.name}: starting {name!r} printed no pid: {result.stdout!r} {result.stderr!r}")

    def start_daemon_ready(self, name: str, cmd: list[str], logfile: str, ready: str, timeout: float = 15.0,
                           env: dict[str, str] | None = None) -> None:
        """Start a daemon and return once a line of its log (written since this start) begins with `ready`.
        A daemon that exits, or does not get there within `timeout` (it is then KILLed), raises ClusterError
        with the last lines of its log."""
        size = self.output(f"stat -c %s {shlex.quote(logfile)} 2>/dev/null || echo 0").stdout.strip()
        offset = int(size) if size.isdigit() else 0
        self.start_daemon(name, cmd, logfile, env=env)
        deadline = time.monotonic() + timeout
        since = f"tail -c +{offset + 1} {shlex.quote(logfile)} 2>/dev/null"
        while True:
            text = self.output(since, timeout=10).stdout
            if any(line.startswith(ready) for line in text.splitlines()):
                return
            alive = self.is_running(name)
            if alive and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            if alive:
                self.stop_daemon(name, "KILL", timeout=3)
                why = f"did not print {ready!r} within {timeout:g} s"
            else:   # its last words may have come after our read
                text = self.output(since, timeout=10).stdout
                why = "exited"
            tail = "\n".join(text.strip().splitlines()[-15:]) or "(empty)"
            raise ClusterError(f"{self.name}: {name} {why}; {logfile} says:\n{tail}")

    def _pid_check(self, name: str) -> str:
        # A zombie answers kill -0 but is gone; treat it as not running.
        return (f"pid=$(cat {shlex.quote(self.pidfile(name))} 2>/dev/null) && [ -n \"$pid\" ] && "
                f"kill -0 $pid 2>/dev/null && ! grep -q '^State:.*Z' /proc/$pid/status 2>/dev/null")

    def signal(self, name: str, sig: str) -> bool:
        sig = sig.upper().removeprefix("SIG")
        if sig not in SIGNALS:
            raise ClusterError(f"unknown signal {sig!r}; use one of {sorted(SIGNALS)}")
        return self.run(f"{self._pid_check(name)} && kill -s {sig} -- -$pid", timeout=10).ok

    def is_running(self, name: str) -> bool:
        return self.run(self._pid_check(name), timeout=10).ok

    def pid(self, name: str) -> int | None:
        r = self.output(f"{self._pid_check(name)} && echo $pid")
        return int(r.stdout.strip()) if r.ok and r.stdout.strip().isdigit() else None

    def stop_daemon(self, name: str, sig: str = "TERM", timeout: float = 10.0) -> None:
        """Signal the daemon and wait for it to exit; KILL it when `timeout` passes. A stopped (SIGSTOP) daemon is continued first."""
        if not self.signal(name, sig):
            return
        if sig.upper().removeprefix("SIG") not in ("KILL", "STOP"):
            self.signal(name, "CONT")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running(name):
                return
            time.sleep(0.05)
        self.signal(name, "KILL")
        deadline = time.monotonic() + 5
        while self.is_running(name) and time.monotonic() < deadline:
            time.sleep(0.05)

    def check_run(self, cmd, timeout: float = 30.0) -> CommandResult:
        return self.run(cmd, timeout=timeout, check=True)


def raise_for(node_name: str, cmd, result: CommandResult) -> None:
    shown = cmd if isinstance(cmd, str) else shlex.join(cmd)
    raise ClusterError(f"{node_name}: command failed with status {result.status}: {shown}\n"
                       f"{result.stderr.strip() or result.stdout.strip()}")
