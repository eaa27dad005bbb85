"""Subcommands of `acked` (see harness/cli.py): image build, cluster up|down|status|logs."""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from clusters import BACKENDS
from clusters.base import ClusterError, ClusterSpec

EXIT_FAILED = 3
EXIT_BAD_USAGE = 4   # bad input: one line, as `acked run` (docs/running.md, "Exit statuses")
CAPABILITIES = ("net", "disk", "clock", "acks")


class BadInput(ClusterError):
    """The command line asks for something impossible; nothing was started."""
DEFAULT_WORK_DIR = Path("results/.clusters")
#: every `acked image` and `acked cluster` subcommand's --help ends with its exit statuses (docs/running.md)
EXIT_STATUSES = ("exit statuses: 0 done; 1 nothing to act on (down --name: no such cluster); "
                 "3 it failed (the error on stderr, one line); 4 bad arguments")


def register(subparsers) -> None:

    # ---- acked image build
    image = subparsers.add_parser("image", epilog=EXIT_STATUSES, help="the node image (built from Debian packages, no registry)",
                                  description="Build the docker image the cluster nodes run.")
    image_sub = image.add_subparsers(dest="image_command", metavar="SUBCOMMAND")
    build = image_sub.add_parser(
        "build", epilog=EXIT_STATUSES, help="build the node image unless it is current",
        description="debootstrap Debian bookworm (minbase) from the host's apt mirror, add ZooKeeper, Java, "
                    "iproute2, iptables, sshd, FUSE, libfaketime and the broker's Python packages, and "
                    "docker-import it as acked-node:<recipe hash>. Rebuilds only when the recipe changed.")
    build.add_argument("--force", action="store_true", help="rebuild even if the current recipe's image exists")
    build.set_defaults(func=cmd_image_build)
    image.set_defaults(func=lambda args: _help(image))

    # ---- acked cluster ...
    cluster = subparsers.add_parser("cluster", epilog=EXIT_STATUSES, help="bring a cluster up or down by hand",
                                    description="Manual clusters: up prints the bootstrap servers; they stay "
                                                "until `acked cluster down`.")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND")
    cluster.set_defaults(func=lambda args: _help(cluster))

    up = cluster_sub.add_parser("up", epilog=EXIT_STATUSES, help="start ZooKeeper and brokers; print the bootstrap servers",
                                description="Start a cluster and leave it running; prints bootstrap.servers.")
    up.add_argument("--backend", choices=BACKENDS, default="docker",
                    help="local: processes on 127.0.0.1; docker: containers; ssh: the hosts of --cluster")
    up.add_argument("--nodes", type=int, default=3, help="number of brokers (not for ssh: the file names them)")
    up.add_argument("--cluster", type=Path, metavar="HOSTS.TOML", help="ssh backend: the cluster file")
    up.add_argument("--name", help="cluster name (default: manual-<random>)")
    up.add_argument("--zookeeper", choices=["every-node", "dedicated"], default="every-node",
                    help="a ZooKeeper member on every node (default) or one dedicated node")
    up.add_argument("--no-brokers", action="store_true", help="start ZooKeeper only")
    up.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="broker setting, Kafka's name (repeatable), e.g. --set min.insync.replicas=2")
    up.add_argument("--capabilities", default="net", help="comma list of net,disk,clock,acks (docker; default net)")
    up.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="where cluster state is kept")
    up.set_defaults(func=cmd_up)

    down = cluster_sub.add_parser("down", epilog=EXIT_STATUSES, help="stop and remove manual clusters (and leftovers of killed runs)",
                                  description="Remove the named cluster, or every manual cluster and every "
                                              "leftover whose owning process is gone.")
    down.add_argument("--name", help="only this cluster")
    down.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    down.set_defaults(func=cmd_down)

    status = cluster_sub.add_parser("status", epilog=EXIT_STATUSES, help="list clusters and their daemons",
                                    description="Clusters known here: local ones under --work-dir, docker ones "
                                                "by label, ssh ones started by `up`.")
    status.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    logs = cluster_sub.add_parser("logs", epilog=EXIT_STATUSES, help="copy every node's logs into a directory",
                                  description="Copy each node's logs into DEST/<node>/.")
    logs.add_argument("dest", type=Path, help="destination directory")
    logs.add_argument("--name", help="cluster name (default: the only one running)")
    logs.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    logs.set_defaults(func=cmd_logs)

def _help(parser) -> int:
    parser.print_help()
    return EXIT_BAD_USAGE   # a subcommand is missing


def _fail(cmd: str, e: Exception) -> int:
    print(f"acked {cmd}: {e}", file=sys.stderr)
    return EXIT_BAD_USAGE if isinstance(e, BadInput) else EXIT_FAILED


# ------------------------------------------------------------ image

def cmd_image_build(args) -> int:
    from clusters.image import build_image
    try:
        build_image(force=args.force)
        return 0
    except ClusterError as e:
        return _fail("image build", e)


# ------------------------------------------------------------ cluster

def _parse_settings(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--set {item!r}: write KEY=VALUE, e.g. --set min.insync.replicas=2")
        out[key.strip()] = value.strip()
    return out


def _record(work_dir: Path, name: str, info: dict) -> None:
    d = Path(work_dir).resolve() / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "cluster.json").write_text(json.dumps(info, indent=1))


def _records(work_dir: Path) -> dict[str, dict]:
    out = {}
    root = Path(work_dir).resolve()
    if root.is_dir():
        for f in root.glob("*/cluster.json"):
            try:
                out[f.parent.name] = json.loads(f.read_text())
            except ValueError:
                continue
    return out


def cmd_up(args) -> int:
    from clusters.local import new_name
    try:
        caps = frozenset(c.strip() for c in args.capabilities.split(",") if c.strip())
        if caps - set(CAPABILITIES):
            unknown = ", ".join(sorted(caps - set(CAPABILITIES)))
            raise BadInput(f"--capabilities {args.capabilities}: unknown {unknown}; choose from {', '.join(CAPABILITIES)}")
        if args.nodes < 1:
            raise BadInput(f"--nodes must be at least 1, not {args.nodes}")
        if args.backend == "ssh" and args.cluster is None:
            raise BadInput("--backend ssh needs --cluster hosts.toml (see docs/clusters.md)")
        if args.cluster is not None and not Path(args.cluster).is_file():
            raise BadInput(f"--cluster {args.cluster}: no such file")
        spec = ClusterSpec(backend=args.backend, nodes=args.nodes, broker_config=_parse_settings(args.set),
                           work_dir=args.work_dir, run_id="manual", zookeeper=args.zookeeper, capabilities=caps,
                           cluster_file=args.cluster, brokers=not args.no_brokers)
        name = args.name or new_name("manual")
        started = time.monotonic()
        if args.backend == "local":
            from clusters.local import LocalCluster
            cluster = LocalCluster(spec, name=name, manual=True)
        elif args.backend == "docker":
            from clusters.docker import DockerCluster
            cluster = DockerCluster(spec, name=name, manual=True)
        else:
            from clusters.ssh import SSHCluster
            cluster = SSHCluster(spec, name=name)
        cluster.start()
        info = {**cluster.describe(), "cluster_file": str(Path(args.cluster).resolve()) if args.cluster else None}
        _record(args.work_dir, name, info)
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in getattr(cluster, "timings", {}).items())
        print(f"cluster {name} ({args.backend}) ready in {time.monotonic() - started:.1f}s"
              + (f" ({phases})" if phases else ""), file=sys.stderr)
        print(f"zookeeper.connect={info['zookeeper_connect']}", file=sys.stderr)
        if spec.brokers:
            print(cluster.bootstrap_servers())
        return 0
    except ClusterError as e:
        return _fail("cluster up", e)


def _docker_available() -> bool:
    try:
        from clusters.docker import docker_client
        docker_client()
        return True
    except ClusterError:
        return False


def cmd_down(args) -> int:
    from clusters import local
    removed: list[str] = []
    try:
        records = _records(args.work_dir)
        for name, info in records.items():
            if args.name and name != args.name:
                continue
            if info.get("backend") == "ssh":
                from clusters.ssh import SSHCluster
                spec = ClusterSpec(backend="ssh", work_dir=args.work_dir, cluster_file=Path(info["cluster_file"]))
                SSHCluster(spec, name=name).teardown()
                shutil.rmtree(Path(args.work_dir).resolve() / name, ignore_errors=True)
                removed.append(name)
        root = Path(args.work_dir).resolve()
        if args.name:
            d = root / args.name
            if (d / "owner.json").exists():
                local.kill_marked_processes(d)
                shutil.rmtree(d, ignore_errors=True)
                removed.append(args.name)
        else:
            removed += local.reap(root, include_manual=True)
        if _docker_available():
            from clusters import docker as dk
            client = dk.docker_client()
            if args.name:
                if args.name in dk.labelled_clusters(client):
                    dk.remove_cluster(client, args.name)
                    removed.append(args.name)
                shutil.rmtree(root / args.name, ignore_errors=True)
            else:
                for name in dk.reap(client, include_manual=True):
                    removed.append(name)
                    shutil.rmtree(root / name, ignore_errors=True)
        if args.name and args.name not in removed:
            print(f"acked cluster down: no cluster named {args.name!r}; see `acked cluster status`", file=sys.stderr)
            return 1
        print("removed: " + (", ".join(sorted(set(removed))) or "nothing"))
        return 0
    except ClusterError as e:
        return _fail("cluster down", e)


def _status_rows(work_dir: Path) -> list[dict]:
    from clusters import local
    rows = []
    root = Path(work_dir).resolve()
    docker_names = set()
    if _docker_available():
        from clusters import docker as dk
        client = dk.docker_client()
        for name, info in dk.labelled_clusters(client).items():
            docker_names.add(name)
            containers = dk.list_labelled(client, f"{dk.LABEL_CLUSTER}={name}")["containers"]
            rows.append({"name": name, "backend": "docker", "owner": info["owner"], "run": info["run"],
                         "nodes": {c["Labels"].get("acked.node", c["Names"][0]): c["State"] for c in containers},
                         "bootstrap_servers": _records(work_dir).get(name, {}).get("bootstrap_servers", "")})
    for name, info in _records(work_dir).items():
        if name in docker_names or info.get("backend") == "docker":
            continue
        row = {"name": name, "backend": info.get("backend"), "bootstrap_servers": info.get("bootstrap_servers", "")}
        if info.get("backend") == "local":
            d = root / name
            row["owner"] = "alive" if local.owner_alive(d) else "gone"
            row["nodes"] = {}
            for node_dir in sorted(p for p in d.iterdir() if (p / "run").is_dir()):
                node = local.LocalNode(node_dir.name, 0, node_dir, name)
                daemons = [p.stem for p in (node_dir / "run").glob("*.pid")]
                row["nodes"][node_dir.name] = ",".join(
                    f"{dn}:{'up' if node.is_running(dn) else 'down'}" for dn in sorted(daemons))
        rows.append(row)
    return rows


def cmd_status(args) -> int:
    try:
        rows = _status_rows(args.work_dir)
    except ClusterError as e:
        return _fail("cluster status", e)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no clusters")
        return 0
    for r in rows:
        print(f"{r['name']}  backend={r['backend']}  owner={r.get('owner', '-')}  "
              f"bootstrap={r.get('bootstrap_servers') or '-'}")
        for node, state in (r.get("nodes") or {}).items():
            print(f"    {node:6} {state}")
    return 0


def cmd_logs(args) -> int:
    try:
        records = _records(args.work_dir)
        name = args.name
        if name is None:
            if len(records) != 1:
                raise ClusterError(f"{len(records)} clusters are known; choose one with --name "
                                   f"({', '.join(records) or 'none'})")
            name = next(iter(records))
        info = records.get(name)
        if info is None:
            raise ClusterError(f"no cluster named {name!r}; see `acked cluster status`")
        spec = ClusterSpec(backend=info["backend"], work_dir=args.work_dir)
        if info["backend"] == "local":
            d = Path(info["dir"])
            for node_dir in sorted(p for p in d.iterdir() if (p / "logs").is_dir()):
                shutil.copytree(node_dir / "logs", args.dest / node_dir.name, dirs_exist_ok=True)
        elif info["backend"] == "docker":
            from clusters.docker import DockerCluster
            DockerCluster.attach(spec, name).collect_logs(args.dest)
        else:
            from clusters.ssh import SSHCluster
            spec.cluster_file = Path(info["cluster_file"])
            SSHCluster(spec, name=name).collect_logs(args.dest)
        print(f"logs of {name} in {args.dest}")
        return 0
    except ClusterError as e:
        return _fail("cluster logs", e)


# ------------------------------------------------------------ doctor
