"""Docker backend: one container per node on a private bridge network, driven with the docker SDK.

Containers run a tiny init as pid 1; every daemon (sshd, ZooKeeper, broker)
is started through the Node transport (`docker exec`), so faults and restarts
work the same here as on SSH hosts. Everything created carries the labels
acked.cluster=<name>, acked.run=<run id> and acked.owner=<pid:start time of
the process that created it>; the reaper (run by every start) removes what
belongs to an owner that no longer exists.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import shutil
import tarfile
import time
from pathlib import Path

from clusters.base import ClusterError, ClusterSpec, CommandResult
from clusters.image import build_image, docker_image_exists, image_tag
from clusters.local import REPO_ROOT, new_name, process_start_time
from clusters.node import ShellNode, raise_for
from clusters.reaper import start_reaper
from clusters.remote import DATA, LOGS, NODE_PACKAGES, RemoteCluster

LABEL_CLUSTER = "acked.cluster"
LABEL_RUN = "acked.run"
LABEL_OWNER = "acked.owner"
MANUAL_OWNER = "manual"



def docker_client():
    import docker
    try:
        client = docker.from_env(timeout=120)
        client.ping()
        return client
    except Exception as e:  # the SDK raises several types for "no daemon"
        raise ClusterError(f"docker is not reachable ({e.__class__.__name__}); start the docker daemon "
                           f"or set DOCKER_HOST") from None


def snapshot_source(dest: Path) -> Path:
    """A copy of the node packages as they are now, mounted at /src on every node of one cluster. Mounting the
    working tree itself let an edit made during a run (an editor, a test that breaks a rule on purpose and
    reverts it) reach a broker that restarted mid-run: a cluster must run one version of its code."""
    if dest.exists():
        shutil.rmtree(dest)
    for pkg in NODE_PACKAGES:
        shutil.copytree(REPO_ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def docker_socket_path() -> str:
    """The Docker Engine's unix socket on this host (DOCKER_HOST=unix://... or the default)."""
    host = os.environ.get("DOCKER_HOST", "")
    return host.removeprefix("unix://") if host.startswith("unix://") else "/var/run/docker.sock"


def owner_token() -> str:
    pid = os.getpid()
    return f"{pid}:{process_start_time(pid)}"


def owner_alive(token: str) -> bool:
    if token == MANUAL_OWNER:
        return True
    try:
        pid, started = token.split(":", 1)
        return process_start_time(int(pid)) == started
    except ValueError:
        return False


class DockerNode(ShellNode):
    """A container reached with `docker exec`."""

    def __init__(self, name: str, broker_id: int, container):
        self.name = name
        self.broker_id = broker_id
        self.container = container
        self.ip: str = ""

    def __repr__(self) -> str:
        return f"DockerNode({self.name}, {self.container.short_id})"

    def run(self, cmd, timeout: float = 30.0, check: bool = False, input: str | None = None) -> CommandResult:
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        env = {}
        if input is not None:
            # the SDK's exec has no stdin; the input travels in the environment
            env["ACKED_INPUT"] = input
            argv = ["sh", "-c", 'printf %s "$ACKED_INPUT" | "$@"', "sh", *argv]
        # coreutils' timeout: TERM at the deadline, KILL a second later; status 124 as subprocess timeouts
        argv = ["timeout", "-k", "1", str(timeout), *argv]
        res = self.container.exec_run(argv, demux=True, environment=env or None)
        out, err = res.output if res.output else (None, None)
        result = CommandResult(res.exit_code if res.exit_code is not None else 255,
                               (out or b"").decode(errors="replace"), (err or b"").decode(errors="replace"))
        if check and not result.ok:
            raise_for(self.name, cmd, result)
        return result

    def put_bytes(self, data: bytes, remote: str, mode: int = 0o644) -> None:
        directory, base = posixpath.split(remote)
        self.run(["mkdir", "-p", directory or "/"], check=True)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(base)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
        if not self.container.put_archive(directory or "/", buf.getvalue()):
            raise ClusterError(f"{self.name}: could not write {remote}")

    def put_many(self, files: dict[str, bytes], mode: int = 0o644) -> None:
        """Several files in one archive (one API call); their directories must exist."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for path, data in files.items():
                info = tarfile.TarInfo(path.lstrip("/"))
                info.size, info.mode, info.mtime = len(data), mode, int(time.time())
                tar.addfile(info, io.BytesIO(data))
        if not self.container.put_archive("/", buf.getvalue()):
            raise ClusterError(f"{self.name}: could not write {', '.join(files)}")

    def get(self, remote: str, local: Path) -> None:
        self._get_tree(remote, Path(local), single=True)

    def get_tree(self, remote: str, local_dir: Path) -> None:
        """Copy a directory of the node into local_dir (its contents, not the directory itself)."""
        self._get_tree(remote, Path(local_dir), single=False)

    def _get_tree(self, remote: str, local: Path, single: bool) -> None:
        import docker.errors
        try:
            stream, _ = self.container.get_archive(remote)
        except docker.errors.NotFound:
            raise ClusterError(f"{self.name}: {remote} does not exist") from None
        buf = io.BytesIO(b"".join(stream))
        with tarfile.open(fileobj=buf) as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            if single:
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(tar.extractfile(members[0]).read())
                return
            for m in members:
                rel = Path(*Path(m.name).parts[1:])  # drop the top directory's own name
                if ".." in rel.parts:
                    continue
                target = local / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(m).read())


class DockerCluster(RemoteCluster):
    """N containers n1..nN (plus `zk` when ZooKeeper is dedicated) on the network acked-<name>."""

    def __init__(self, spec: ClusterSpec, name: str | None = None, manual: bool = False, image: str | None = None):
        if spec.nodes < 1:
            raise ClusterError("--nodes must be at least 1")
        if spec.zookeeper not in ("every-node", "dedicated"):
            raise ClusterError(f"zookeeper layout {spec.zookeeper!r} is unknown; use every-node or dedicated")
        unknown = set(spec.capabilities) - {"net", "disk", "clock", "acks"}
        if unknown:
            raise ClusterError(f"unknown capabilities {sorted(unknown)}; use net, disk, clock, acks")
        self.spec = spec
        self.host_capabilities = frozenset(spec.capabilities)   # container privileges and devices, fixed at create
        self.name = name or new_name(spec.run_id)
        self.owner = MANUAL_OWNER if manual else owner_token()
        self.image = image
        self.dir = Path(spec.work_dir).resolve() / self.name
        self.nodes: list[DockerNode] = []
        self.zk_nodes: list[DockerNode] = []
        self.network = None
        self._client = None
        self._torn_down = False
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------ helpers
    @property
    def client(self):
        if self._client is None:
            self._client = docker_client()
        return self._client

    @property
    def labels(self) -> dict[str, str]:
        return {LABEL_CLUSTER: self.name, LABEL_RUN: self.spec.run_id, LABEL_OWNER: self.owner}

    # ------------------------------------------------------------ lifecycle
    def create(self) -> None:
        """Network, volumes and containers (idle, running the image's init)."""
        reap(self.client, work_dir=self.dir.parent)
        self.image = self.image or build_image(quiet=docker_image_exists(image_tag()))
        if self.owner != MANUAL_OWNER:
            # before anything is created: a harness SIGKILLed from here on leaves nothing behind
            start_reaper(self.client, self.image, self.owner, docker_socket_path())
        self.dir.mkdir(parents=True, exist_ok=True)
        source = snapshot_source(self.dir / "src")
        self.network = self.client.networks.create(f"acked-{self.name}", driver="bridge", labels=self.labels,
                                                   check_duplicate=True)
        names = [f"n{i}" for i in range(1, self.spec.nodes + 1)]
        if self.spec.zookeeper == "dedicated":
            names.append("zk")
        caps, devices = [], []
        if {"net", "acks"} & set(self.host_capabilities):   # acks: the nat rule in front of the proxy
            caps.append("NET_ADMIN")
        if "disk" in self.host_capabilities:
            caps.append("SYS_ADMIN")
            devices.append("/dev/fuse:/dev/fuse:rwm")

        def make(node_name: str) -> DockerNode:
            volume = self.client.volumes.create(f"acked-{self.name}-{node_name}", labels=self.labels)
            container = self.client.containers.run(
                self.image, name=f"acked-{self.name}-{node_name}", hostname=node_name, detach=True,
                labels={**self.labels, "acked.node": node_name}, network=self.network.name,
                volumes={str(source): {"bind": "/src", "mode": "ro"}, volume.name: {"bind": DATA, "mode": "rw"}},
                cap_add=caps, devices=devices,
                # AppArmor would refuse FUSE mounts even with SYS_ADMIN
                security_opt=["apparmor:unconfined"] if devices else None,
                environment={"ACKED_CLUSTER": self.name, "ACKED_NODE": node_name},
                tmpfs={"/run": "", "/tmp": ""},
            )
            broker_id = int(node_name[1:]) if node_name.startswith("n") else 0
            return DockerNode(node_name, broker_id, container)

        made = self._parallel(make, names)
        for node in made:
            node.container.reload()
            node.ip = node.container.attrs["NetworkSettings"]["Networks"][self.network.name]["IPAddress"]
        self.nodes = [n for n in made if n.name.startswith("n")]
        self.zk_nodes = [n for n in made if n.name == "zk"] or list(self.nodes)
        (self.dir / "cluster.json").write_text(json.dumps(self.describe()))

    def start(self, timeout: float = 60.0) -> None:
        try:
            if not self.nodes:
                t = time.monotonic()
                self.create()
                self.timings = {"create": round(time.monotonic() - t, 2)}
            self._start_daemons(timeout)
        except BaseException:
            self.teardown()
            raise

    def _prepare_node(self, node: DockerNode) -> None:
        if not node.is_running("sshd"):  # still up after a reset
            self._start_sshd(node)

    def start_sshd(self) -> None:
        """Only sshd on every node (the ssh backend's tests use the containers as hosts)."""
        self._parallel(self._start_sshd, self.all_nodes)

    def _start_sshd(self, node: DockerNode) -> None:
        from clusters.ssh import cluster_key
        key = cluster_key(self.dir)
        node.put_bytes((key.public_line + "\n").encode(), "/root/.ssh/authorized_keys", mode=0o600)
        node.run("chmod 700 /root/.ssh; mkdir -p /run/sshd; test -f /etc/ssh/ssh_host_ed25519_key || "
                 "ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key", check=True)
        if not node.is_running("sshd"):
            node.start_daemon("sshd", ["/usr/sbin/sshd", "-D", "-e", "-o", "HostKey=/etc/ssh/ssh_host_ed25519_key"],
                              f"{LOGS}/sshd.log")

    def host_keys(self) -> dict[str, str]:
        """Each node's sshd host key (`type base64`), read through docker exec: the trust anchor of known_hosts."""
        keys = {n.name: " ".join(n.output(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).stdout.split()[:2])
                for n in self.all_nodes}
        missing = [name for name, key in keys.items() if " " not in key]
        if missing:
            raise ClusterError(f"could not read the sshd host key of {', '.join(missing)}; rebuild the node image "
                               "(acked image build)")
        return keys

    def write_known_hosts(self, path: Path | None = None) -> Path:
        path = path or self.dir / "known_hosts"
        keys = self.host_keys()
        path.write_text("".join(f"{n.ip},{n.name} {keys[n.name]}\n" for n in self.all_nodes))
        return path

    def teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        try:
            remove_cluster(self.client, self.name)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def describe(self) -> dict:
        return {"name": self.name, "backend": "docker", "nodes": {n.name: n.ip for n in self.all_nodes},
                "bootstrap_servers": self.bootstrap_servers(),
                "zookeeper_connect": self.zookeeper_connect_from_host, "dir": str(self.dir)}

    @classmethod
    def attach(cls, spec: ClusterSpec, name: str) -> "DockerCluster":
        """The running cluster `name` (for `acked cluster status|logs|down`)."""
        cluster = cls(spec, name=name)
        containers = cluster.client.containers.list(all=True, filters={"label": f"{LABEL_CLUSTER}={name}"})
        if not containers:
            raise ClusterError(f"no docker cluster named {name!r}; see `acked cluster status`")
        for c in sorted(containers, key=lambda c: c.labels.get("acked.node", "")):
            node_name = c.labels.get("acked.node", c.name)
            node = DockerNode(node_name, int(node_name[1:]) if node_name.startswith("n") else 0, c)
            nets = c.attrs["NetworkSettings"]["Networks"]
            node.ip = next(iter(nets.values()))["IPAddress"] if nets else ""
            (cluster.nodes if node_name.startswith("n") else cluster.zk_nodes).append(node)
        cluster.nodes.sort(key=lambda n: n.broker_id)
        cluster.zk_nodes = cluster.zk_nodes or list(cluster.nodes)
        cluster.owner = containers[0].labels.get(LABEL_OWNER, MANUAL_OWNER)
        return cluster


# ------------------------------------------------------------ reaping

def list_labelled(client, label: str) -> dict[str, list[dict]]:
    """Raw listings (no per-object inspect, which races with removal) of containers, networks, volumes."""
    flt = {"label": label}
    return {"containers": client.api.containers(all=True, filters=flt),
            "networks": client.api.networks(filters=flt),
            "volumes": client.api.volumes(filters=flt).get("Volumes") or []}


def remove_cluster(client, name: str) -> None:
    """Remove the containers, networks and volumes labelled acked.cluster=name."""
    import docker.errors

    def gone_or_going(e: docker.errors.APIError) -> bool:
        # 404: already removed; 409 "removal in progress": someone else removes it
        return e.status_code == 404 or (e.status_code == 409 and "in progress" in str(e))

    for attempt in range(3):
        found = list_labelled(client, f"{LABEL_CLUSTER}={name}")
        for c in found["containers"]:
            try:
                client.api.remove_container(c["Id"], force=True, v=True)
            except docker.errors.APIError as e:
                if not gone_or_going(e):
                    raise
        for n in found["networks"]:
            try:
                client.api.remove_network(n["Id"])
            except docker.errors.APIError as e:
                if not gone_or_going(e) and attempt == 2:
                    raise
        for v in found["volumes"]:
            try:
                client.api.remove_volume(v["Name"], force=True)
            except docker.errors.APIError as e:
                if not gone_or_going(e) and attempt == 2:
                    raise
        if not any(list_labelled(client, f"{LABEL_CLUSTER}={name}").values()):
            return
        time.sleep(0.5)


def labelled_clusters(client) -> dict[str, dict]:
    """{cluster name: {"owner", "run", "containers"}} for everything carrying our labels."""
    found: dict[str, dict] = {}
    listed = list_labelled(client, LABEL_CLUSTER)
    for kind, objects in listed.items():
        for obj in objects:
            labels = obj.get("Labels") or {}
            entry = found.setdefault(labels[LABEL_CLUSTER], {"owner": labels.get(LABEL_OWNER, ""),
                                                              "run": labels.get(LABEL_RUN, ""), "containers": []})
            if kind == "containers":
                entry["containers"].append((obj.get("Names") or ["?"])[0].lstrip("/"))
    return found


def reap(client=None, include_manual: bool = False, work_dir: Path | None = None) -> list[str]:
    """Remove clusters whose owning process is gone (and manual ones when asked); returns their names.

    With work_dir, their directories there (SSH keys, cluster.json) go too.
    """
    client = client or docker_client()
    reaped = []
    for name, info in labelled_clusters(client).items():
        manual = info["owner"] == MANUAL_OWNER
        if owner_alive(info["owner"]) and not (include_manual and manual):
            continue
        remove_cluster(client, name)
        if work_dir is not None:
            shutil.rmtree(Path(work_dir) / name, ignore_errors=True)
        reaped.append(name)
    return reaped
