"""The reaper: removes a harness's docker resources within seconds of the harness's death (testcontainers' Ryuk).

CI kills jobs that overrun their limit, and a SIGKILLed harness cannot tear down its clusters; without a
reaper its containers, networks and volumes stay until the next acked command on that machine reaps them.
So the first docker cluster a harness process creates also starts this program in a container of the node
image (`start_reaper`), with the docker socket mounted and the host's pid namespace: a container survives
whatever kills the harness's process tree. It watches the owner process (pid and start time: the owner token
of clusters/docker.py, so a reused pid does not fool it) and, once the owner is gone, removes every container,
network and volume labelled `acked.owner=<token>`, then exits (the container removes itself).

Node-side program: the standard library only (the node image has no docker SDK); it speaks the Docker Engine
API over the unix socket. Run by hand: `python3 clusters/reaper.py --owner PID:START [--socket PATH]`.
"""
from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import time
import urllib.parse

LABEL_OWNER = "acked.owner"        # as clusters/docker.py
LABEL_REAPER = "acked.reaper"
POLL_S = 1.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30.0):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def api(sock: str, method: str, path: str) -> tuple[int, object]:
    conn = _UnixConnection(sock)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, (json.loads(body) if body and resp.getheader("Content-Type", "").startswith(
            "application/json") else body)
    finally:
        conn.close()


def alive(token: str, proc: str = "/proc") -> bool:
    """Whether the process named by `pid:start-time` still runs (a zombie counts as gone)."""
    pid, _, start = token.partition(":")
    try:
        with open(f"{proc}/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0] != "Z" and fields[19] == start


def reap(sock: str, token: str) -> dict[str, int]:
    """Remove what carries acked.owner=token: containers (with their anonymous volumes), networks, volumes."""
    flt = urllib.parse.quote(json.dumps({"label": [f"{LABEL_OWNER}={token}"]}))
    removed = {"containers": 0, "networks": 0, "volumes": 0}
    for _ in range(3):   # a network frees once its containers are gone
        _, containers = api(sock, "GET", f"/containers/json?all=1&filters={flt}")
        for c in containers or []:
            status, _ = api(sock, "DELETE", f"/containers/{c['Id']}?force=1&v=1")
            removed["containers"] += status in (204, 404)
        _, networks = api(sock, "GET", f"/networks?filters={flt}")
        for n in networks or []:
            status, _ = api(sock, "DELETE", f"/networks/{n['Id']}")
            removed["networks"] += status in (204, 404)
        _, volumes = api(sock, "GET", f"/volumes?filters={flt}")
        for v in (volumes or {}).get("Volumes") or []:
            status, _ = api(sock, "DELETE", f"/volumes/{urllib.parse.quote(v['Name'])}?force=1")
            removed["volumes"] += status in (204, 404)
        if not (containers or networks or (volumes or {}).get("Volumes")):
            break
        time.sleep(0.5)
    return removed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="reaper.py", description="Remove a harness's labelled docker resources once "
                                 "the harness process is gone.")
    ap.add_argument("--owner", required=True, help="the owner token pid:start-time (clusters/docker.py owner_token)")
    ap.add_argument("--socket", default="/var/run/docker.sock", help="the Docker Engine socket")
    ap.add_argument("--proc", default="/proc", help="where the host's processes are visible (pid namespace)")
    args = ap.parse_args(argv)
    if not alive(args.owner, args.proc):
        print(f"owner {args.owner} is not running: reaping at once", flush=True)
    print(f"watching {args.owner}", flush=True)
    while alive(args.owner, args.proc):
        time.sleep(POLL_S)
    removed = reap(args.socket, args.owner)
    print(f"owner {args.owner} is gone; removed {removed}", flush=True)
    return 0


# ---- the harness's side (imports the docker SDK only here) ----------------------------------------------------

def start_reaper(client, image: str, token: str, socket_path: str = "/var/run/docker.sock"):
    """Start the reaper container for owner `token` unless one runs; returns the container. It runs this file's
    source as it is now (`python3 -c`): nothing to mount, and an edit of the working tree cannot reach it."""
    running = client.containers.list(filters={"label": f"{LABEL_REAPER}={token}"})
    if running:
        return running[0]
    with open(__file__, encoding="utf-8") as f:
        source = f.read()
    return client.containers.run(
        image, ["python3", "-c", source, "--owner", token], name=f"acked-reaper-{token.replace(':', '-')}",
        detach=True, labels={LABEL_REAPER: token}, pid_mode="host", auto_remove=True, network_mode="none",
        volumes={socket_path: {"bind": "/var/run/docker.sock", "mode": "rw"}})


if __name__ == "__main__":
    sys.exit(main())
