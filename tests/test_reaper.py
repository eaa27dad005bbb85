"""Nothing outlives a killed harness: a SIGKILLed `acked run` leaves no container, network or volume behind once
its reaper (clusters/reaper.py, a container that outlives the harness) has seen it die."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import docker
import pytest

from clusters.reaper import alive
from conftest import wait_until


def owned(client, name: str) -> dict[str, list[str]]:
    """What the run named `name` has on docker: containers, networks, volumes (acked.run starts with the name)."""
    def mine(obj) -> bool:
        return (obj.get("Labels") or {}).get("acked.run", "").startswith(f"{name}-")
    flt = {"label": "acked.run"}   # raw listings: no per-object inspect, which races with the removal
    return {"containers": [c["Id"] for c in client.api.containers(all=True, filters=flt) if mine(c)],
            "networks": [n["Id"] for n in client.api.networks(filters=flt) if mine(n)],
            "volumes": [v["Name"] for v in client.api.volumes(filters=flt).get("Volumes") or [] if mine(v)]}


def reapers_of(client, pid: int) -> list[str]:
    return [c["Id"] for c in client.api.containers(all=True, filters={"label": "acked.reaper"})
            if c["Labels"]["acked.reaper"].startswith(f"{pid}:")]


@pytest.mark.docker
def test_a_sigkilled_run_leaves_no_container_network_or_volume_ten_seconds_later(tmp_path):
    client = docker.from_env()
    name = f"reaped-{os.getpid()}"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "--backend", "docker", "--nodes", "3",
                             "--name", name, "--time-limit", "120", "--nemesis", "kill",
                             "--results-dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: len(owned(client, name)["containers"]) == 3, timeout=120, every=0.5), \
            "the run never made its containers"
        assert reapers_of(client, proc.pid), "the run started no reaper"
        assert all(owned(client, name).values())   # containers, a network and volumes exist
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert wait_until(lambda: not any(owned(client, name).values()), timeout=10, every=0.5), owned(client, name)
    # and the reaper took itself away too
    assert wait_until(lambda: not reapers_of(client, proc.pid), timeout=10)


def test_the_reaper_tells_a_living_owner_from_a_dead_one_and_from_a_reused_pid():
    me = open(f"/proc/{os.getpid()}/stat").read().rsplit(")", 1)[1].split()[19]
    assert alive(f"{os.getpid()}:{me}")
    assert not alive(f"{os.getpid()}:{int(me) + 1}")     # same pid, another process: not the owner
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert not alive(f"{dead.pid}:0")
