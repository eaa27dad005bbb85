"""SSH transport (paramiko) and the ssh backend: real hosts named in a TOML cluster file.

Host keys: the policy is explicit and strict. A host is trusted only if its
key is in the cluster file's `known_hosts` (or, when that is not given, the
user's ~/.ssh/known_hosts); an unknown or changed key refuses the connection
(paramiko's RejectPolicy). For docker nodes the cluster writes a known_hosts
file from each node's host key, read through `docker exec` at creation.

Cluster file:

    user = "root"                      # optional, default root
    key = "~/.ssh/id_ed25519"          # private key, required
    known_hosts = "~/.ssh/known_hosts" # optional
    port = 22                          # optional default for every host
    python = "python3"                 # optional, the hosts' interpreter
    zookeeper = "every-node"           # optional: or "dedicated" (then one host has role = "zookeeper")

    [broker]                           # optional: which broker runs on the hosts (default: acked-broker)
    command = "{python} -m broker.main {config}"   # or "/opt/kafka/bin/kafka-server-start.sh {config}"
    data_dir = "/var/lib/acked/broker" # its log.dirs, wiped by reset and teardown
    port = 9092                        # where clients connect (listeners, advertised.listeners)
    config = "server.properties"       # the config acked writes for it, Kafka's names

    [[hosts]]
    name = "n1"                        # hostname the others resolve (ZooKeeper and broker use it)
    address = "192.0.2.11"             # where the harness reaches it
    port = 22                          # optional

The command's placeholders are services.BROKER_PLACEHOLDERS; read_cluster_file checks the [broker]
table and says which key is wrong and how to fix it.
"""
from __future__ import annotations

import atexit
import dataclasses
import functools
import io
import posixpath
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import tomllib
from pathlib import Path

from clusters import services
from clusters.base import ClusterError, ClusterSpec, CommandResult
from clusters.image import NODE_PYTHON_PACKAGES
from clusters.local import REPO_ROOT, new_name
from clusters.node import ShellNode, raise_for
from clusters.remote import ACKPROXY_CHAIN, ACKPROXY_PORT, DATA, FAKETIME_FILE, LOGS, NODE_PACKAGES, RemoteCluster

#: where the ssh backend installs the project and its Python packages on a host
INSTALL_DIR = "/opt/acked"
#: Debian packages a host needs, checked (and installed with apt-get when the user is root) by `install`
HOST_PACKAGES = {"java": "default-jre-headless", "/usr/share/java/zookeeper.jar": "zookeeper",
                 "iptables": "iptables", "tc": "iproute2", "pkill": "procps", "setsid": "util-linux"}
#: what a capability's node-side helper needs besides: faultfs (disk) mounts with fusermount3, the broker's
#: clock (clock) is libfaketime's
CAPABILITY_PACKAGES = {"disk": {"fusermount3": "fuse3"},
                       "clock": {"/usr/lib/*/faketime/libfaketimeMT.so.1": "libfaketime"}}
#: ports the hosts already use for acked, which a [broker] port must not take
RESERVED_PORTS = {services.ZK_CLIENT_PORT: "ZooKeeper's clients", services.ZK_PEER_PORT: "ZooKeeper's peers",
                  services.ZK_ELECTION_PORT: "ZooKeeper's elections", ACKPROXY_PORT: "the ack proxy (acks capability)"}


@dataclasses.dataclass
class ClusterKey:
    path: Path
    public_line: str

    def pkey(self):
        import paramiko
        return paramiko.Ed25519Key.from_private_key_file(str(self.path))


def cluster_key(cluster_dir: Path) -> ClusterKey:
    """The cluster's SSH key (ed25519), made once per cluster in its directory."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(cluster_dir) / "ssh" / "id_ed25519"
    with _key_lock:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            key = Ed25519PrivateKey.generate()
            private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                        serialization.NoEncryption())
            public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                   serialization.PublicFormat.OpenSSH)
            path.touch(mode=0o600)
            path.write_bytes(private)
            path.with_suffix(".pub").write_text(public.decode() + " acked\n")
    return ClusterKey(path, path.with_suffix(".pub").read_text().strip())


_key_lock = threading.Lock()


class SSHNode(ShellNode):
    """A host reached with paramiko; one connection, a channel per command."""

    def __init__(self, name: str, broker_id: int, address: str, user: str, key_file: Path,
                 known_hosts: Path | None, port: int = 22):
        self.name = name
        self.broker_id = broker_id
        self.ip = address
        self.address, self.port, self.user = address, port, user
        self.key_file, self.known_hosts = Path(key_file).expanduser(), known_hosts
        self._client = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SSHNode({self.name}, {self.user}@{self.address}:{self.port})"

    @property
    def client(self):
        import paramiko
        with self._lock:
            if self._client is None or not self._client.get_transport() or \
                    not self._client.get_transport().is_active():
                client = paramiko.SSHClient()
                if self.known_hosts:
                    client.load_host_keys(str(Path(self.known_hosts).expanduser()))
                else:
                    client.load_system_host_keys()
                client.set_missing_host_key_policy(paramiko.RejectPolicy())
                try:
                    client.connect(self.address, port=self.port, username=self.user,
                                   key_filename=str(self.key_file), timeout=10, banner_timeout=10,
                                   auth_timeout=10, allow_agent=False, look_for_keys=False)
                except paramiko.SSHException as e:
                    raise ClusterError(f"{self.name}: ssh to {self.user}@{self.address}:{self.port} failed: {e} "
                                       f"(is its host key in {self.known_hosts or '~/.ssh/known_hosts'}?)") from None
                except OSError as e:
                    raise ClusterError(f"{self.name}: cannot reach {self.address}:{self.port}: {e}") from None
                self._client = client
            return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def run(self, cmd, timeout: float = 30.0, check: bool = False, input: str | None = None) -> CommandResult:
        line = cmd if isinstance(cmd, str) else shlex.join(cmd)
        # the remote side enforces the deadline too, so nothing keeps running past it
        line = f"timeout -k 1 {timeout} sh -c {shlex.quote(line)}"
        stdin, stdout, stderr = self.client.exec_command(line, timeout=timeout + 5)
        if input is not None:
            stdin.write(input)
        stdin.channel.shutdown_write()
        try:
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            status = stdout.channel.recv_exit_status()
        except socket.timeout:
            stdout.channel.close()
            out, err, status = "", f"timed out after {timeout}s", 124
        result = CommandResult(status, out, err)
        if check and not result.ok:
            raise_for(self.name, cmd, result)
        return result

    def put_bytes(self, data: bytes, remote: str, mode: int = 0o644) -> None:
        self.run(["mkdir", "-p", posixpath.dirname(remote) or "/"], check=True)
        with self.client.open_sftp() as sftp:
            with sftp.open(remote, "wb") as f:
                f.write(data)
            sftp.chmod(remote, mode)

    def get(self, remote: str, local: Path) -> None:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.client.open_sftp() as sftp:
                sftp.get(remote, str(local))
        except FileNotFoundError:
            raise ClusterError(f"{self.name}: {remote} does not exist") from None

    def get_tree(self, remote: str, local_dir: Path) -> None:
        with self.client.open_sftp() as sftp:
            try:
                entries = sftp.listdir_attr(remote)
            except FileNotFoundError:
                raise ClusterError(f"{self.name}: {remote} does not exist") from None
            for e in entries:
                path = f"{remote}/{e.filename}"
                if stat.S_ISDIR(e.st_mode):
                    self.get_tree(path, Path(local_dir) / e.filename)
                elif stat.S_ISREG(e.st_mode):
                    Path(local_dir).mkdir(parents=True, exist_ok=True)
                    sftp.get(path, str(Path(local_dir) / e.filename))


@functools.cache
def node_python_packages() -> Path:
    """A directory of NODE_PYTHON_PACKAGES as binary wheels for the hosts' CPython 3.11, made by this machine's
    pip once per process (the hosts need no internet access and no pip); removed when the process exits."""
    lib = Path(tempfile.mkdtemp(prefix="acked-node-lib-"))
    atexit.register(shutil.rmtree, lib, ignore_errors=True)
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--target", str(lib),
                        "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
                        *NODE_PYTHON_PACKAGES], capture_output=True, text=True)
    if p.returncode != 0:
        raise ClusterError(f"pip could not fetch the node's Python packages: {p.stderr.strip()[-500:]}")
    return lib


# ------------------------------------------------------------ the cluster file

def read_cluster_file(path: Path) -> dict:
    path = Path(path)
    try:
        conf = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterError(f"cluster file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ClusterError(f"cluster file {path} is not valid TOML: {e}") from None
    hosts = conf.get("hosts")
    if not hosts or not isinstance(hosts, list):
        raise ClusterError(f"cluster file {path}: add at least one [[hosts]] table with name and address")
    for i, h in enumerate(hosts):
        missing = [k for k in ("name", "address") if k not in h]
        if missing:
            raise ClusterError(f"cluster file {path}: host #{i + 1} lacks {', '.join(missing)}")
    if "key" not in conf:
        raise ClusterError(f"cluster file {path}: set key = \"<path of the private key>\"")
    names = [h["name"] for h in hosts]
    if len(set(names)) != len(names):
        raise ClusterError(f"cluster file {path}: host names must be unique, got {names}")
    try:
        conf["broker"] = services.broker_description(conf.get("broker", {}),
                                                     {**RESERVED_PORTS, int(conf.get("port", 22)): "sshd"})
    except ValueError as e:
        raise ClusterError(f"cluster file {path}: {e}") from None
    return conf


class SSHCluster(RemoteCluster):
    """The same layout as the docker backend on hosts reached over SSH; the broker is the cluster file's
    [broker] (acked-broker unless it names another)."""

    def __init__(self, spec: ClusterSpec, name: str | None = None, conf: dict | None = None):
        if conf is None:
            if spec.cluster_file is None:
                raise ClusterError("the ssh backend needs a cluster file: --cluster hosts.toml")
            conf = read_cluster_file(spec.cluster_file)
        self.name = name or new_name(spec.run_id)
        base = Path(spec.cluster_file).parent if spec.cluster_file else Path.cwd()

        def resolve(p):
            p = Path(p).expanduser()
            return p if p.is_absolute() else base / p
        key = resolve(conf["key"])
        known = resolve(conf["known_hosts"]) if conf.get("known_hosts") else None
        user, port = conf.get("user", "root"), int(conf.get("port", 22))
        self.python = conf.get("python", "python3")
        self.broker = conf.get("broker") or services.BrokerDescription()
        self.pythonpath = f"{INSTALL_DIR}/src:{INSTALL_DIR}/lib"
        layout = conf.get("zookeeper", spec.zookeeper)
        all_nodes = []
        broker_id = 0
        for h in conf["hosts"]:
            is_zk = h.get("role") == "zookeeper"
            if not is_zk:
                broker_id += 1
            all_nodes.append((is_zk, SSHNode(h["name"], 0 if is_zk else broker_id, h["address"], h.get("user", user),
                                             key, known, int(h.get("port", port)))))
        self.nodes = [n for z, n in all_nodes if not z]
        dedicated = [n for z, n in all_nodes if z]
        if layout == "dedicated" and not dedicated:
            raise ClusterError("zookeeper = \"dedicated\" needs a host with role = \"zookeeper\" in the cluster file")
        self.zk_nodes = dedicated or list(self.nodes)
        # the file decides the shape: a run that reuses this cluster (Cluster.reuse) is compared with it
        self.spec = dataclasses.replace(spec, nodes=len(self.nodes),
                                        zookeeper="dedicated" if dedicated else "every-node")
        self.dir = Path(spec.work_dir).resolve() / self.name
        self.timings: dict[str, float] = {}

    def install(self) -> None:
        """Copy the project and its Python packages onto every host; check (or apt-get install) Debian packages."""
        bundle = self._bundle()
        self._parallel(lambda n: self._install_on(n, bundle), self.all_nodes)

    def _bundle(self) -> bytes:
        """A tar of src/ (the project's packages, as they are now) and lib/ (NODE_PYTHON_PACKAGES, for Python
        3.11, fetched by pip once per process: some 20 s that every later start of this process saves)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(node_python_packages(), arcname="lib")
            for pkg in NODE_PACKAGES:
                if (REPO_ROOT / pkg).is_dir():
                    tar.add(REPO_ROOT / pkg, arcname=f"src/{pkg}",
                            filter=lambda t: None if "__pycache__" in t.name else t)
        return buf.getvalue()

    def _install_on(self, node: SSHNode, bundle: bytes) -> None:
        missing = []
        needed = dict(HOST_PACKAGES)
        for capability in sorted(self.spec.capabilities):
            needed.update(CAPABILITY_PACKAGES.get(capability, {}))
        for probe, package in needed.items():
            test = f"ls {probe} >/dev/null 2>&1" if probe.startswith("/") else f"command -v {probe}"
            if not node.run(test).ok:
                missing.append(package)
        if missing:
            r = node.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -q " + " ".join(sorted(set(missing))),
                         timeout=600)
            if not r.ok:
                raise ClusterError(f"{node.name}: missing Debian packages {sorted(set(missing))} and apt-get failed; "
                                   f"install them on the host: {r.stderr.strip()[-300:]}")
        node.put_bytes(bundle, f"{INSTALL_DIR}/bundle.tar.gz")
        node.run(f"cd {INSTALL_DIR} && rm -rf src lib && tar xzf bundle.tar.gz && rm bundle.tar.gz",
                 check=True, timeout=120)

    def start(self, timeout: float = 60.0) -> None:
        """Install, clear what an earlier cluster (perhaps a killed harness's) left on the hosts, start afresh."""
        try:
            self.install()
            self._parallel(lambda node: self._clear(node, logs=True), self.all_nodes)
            self._start_daemons(timeout)
        except BaseException:
            self.teardown()
            raise

    def _clear(self, node: SSHNode, logs: bool = False) -> None:
        """Stop our daemons and fault helpers on a host, undo the ack proxy's redirect of the broker's port, and
        remove the data they kept (the broker's data_dir, ZooKeeper's, the clock offset); the installed files
        stay, and the logs unless `logs` (a new cluster collects only its own lines)."""
        self.stop_node_daemons(node)
        port, chain = self.broker.port, ACKPROXY_CHAIN
        truncate = f"for f in {LOGS}/*; do [ -f \"$f\" ] && : > \"$f\"; done; " if logs else ""
        node.run(f"iptables -t nat -D PREROUTING -p tcp --dport {port} -j {chain} 2>/dev/null; "
                 f"iptables -t nat -F {chain} 2>/dev/null; iptables -t nat -X {chain} 2>/dev/null; {truncate}"
                 f"rm -rf {self.broker.data_dir} {self.broker.backing_dir} {DATA}/zookeeper {FAKETIME_FILE}; true",
                 timeout=120)

    def teardown(self) -> None:
        """Stop the daemons and remove their data; the hosts and the installed files stay."""
        def one(node: SSHNode) -> None:
            try:
                self._clear(node)
            except ClusterError:
                pass  # an unreachable host cannot be cleaned; the next start clears it
            finally:
                node.close()
        self._parallel(one, self.all_nodes)

    def describe(self) -> dict:
        return {"name": self.name, "backend": "ssh", "nodes": {n.name: n.address for n in self.all_nodes},
                "bootstrap_servers": self.bootstrap_servers(),
                "zookeeper_connect": self.zookeeper_connect_from_host, "broker": self.broker.to_dict()}
