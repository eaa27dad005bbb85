"""Collect every broker's replicas of some topics through the Node transport: the data of replicas.json.

Each node runs broker/dump_log.py (Kafka's kafka-dump-log.sh) on its broker's log directory and prints
one JSON line per partition: its batches (base offset, last offset, leader epoch, CRC) and the high
watermark of the broker's checkpoint. Put together, they let checkers/divergence.py compare the replicas
of each partition directly, as Kafka's ReplicaVerificationTool (kafka-replica-verification.sh) does over
the network. Reading files, not fetching, also sees a replica that no client can reach: a follower's log.
"""
from __future__ import annotations

import concurrent.futures
import json
import time

from clusters.base import Cluster, ClusterError, Node

FORMAT_VERSION = 1
CHECKPOINT_INTERVAL = "replica.high.watermark.checkpoint.interval.ms"
DEFAULT_CHECKPOINT_INTERVAL_MS = 5000  # the broker's default, as Kafka's
#: seconds one node may take to print its logs (a CRC-32C pass over every segment of the topics)
DUMP_TIMEOUT = 120.0


def collect(cluster: Cluster, topics: list[str], timeout: float = DUMP_TIMEOUT, settle: float | None = None) -> dict:
    """{"version", "topics", "nodes": [{"node", "broker-id", "partitions"}], "replicas": [...], "errors": [...],
    "checkpoint-wait-seconds"}.

    `replicas` is flat: one entry per (node, topic, partition) with dump_log's fields plus `node` and
    `broker-id`. `errors` lists, as sentences, the nodes (or partitions) that could not be read.

    A broker writes its high-watermark checkpoint every replica.high.watermark.checkpoint.interval.ms, so
    right after the final drain a checkpoint can trail the log it describes (a restarted broker's may not
    exist yet), and the comparison below it would cover less. When some replica's checkpointed high watermark
    is below its partition's longest log, the logs are read once more after `settle` seconds (default: that
    interval of the cluster's brokers, and half a second)."""
    first = _collect_once(cluster, topics, timeout)
    if settle is None:
        config = getattr(getattr(cluster, "spec", None), "broker_config", None) or {}
        try:
            settle = int(config.get(CHECKPOINT_INTERVAL, DEFAULT_CHECKPOINT_INTERVAL_MS)) / 1000 + 0.5
        except ValueError:
            settle = DEFAULT_CHECKPOINT_INTERVAL_MS / 1000 + 0.5
    if settle <= 0 or not checkpoints_trail(first):
        return {**first, "checkpoint-wait-seconds": 0}
    time.sleep(settle)
    return {**_collect_once(cluster, topics, timeout), "checkpoint-wait-seconds": settle}


def checkpoints_trail(data: dict) -> bool:
    """Whether a replica's checkpointed high watermark is below the end of its partition's longest replica."""
    ends: dict[tuple, int] = {}
    for rep in data["replicas"]:
        key = (rep["topic"], rep["partition"])
        ends[key] = max(ends.get(key, 0), rep["log-end-offset"])
    return any((rep.get("high-watermark") or 0) < ends[(rep["topic"], rep["partition"])] for rep in data["replicas"])


def _collect_once(cluster: Cluster, topics: list[str], timeout: float) -> dict:
    topics = sorted(set(topics))
    nodes = list(cluster.nodes)

    def one(node: Node) -> tuple[list[dict], list[str]]:
        try:
            return read_node(cluster, node, topics, timeout)
        except Exception as e:  # noqa: BLE001 -- one unreadable node must not hide the others
            return [], [f"{node.name}: {type(e).__name__}: {e}"]

    out: dict = {"version": FORMAT_VERSION, "topics": topics, "nodes": [], "replicas": [], "errors": []}
    if not topics or not nodes:
        return out
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        results = list(pool.map(one, nodes))
    for node, (replicas, errors) in zip(nodes, results):
        out["nodes"].append({"node": node.name, "broker-id": node.broker_id, "partitions": len(replicas)})
        out["replicas"].extend(replicas)
        out["errors"].extend(errors)
    return out


def read_node(cluster: Cluster, node: Node, topics: list[str], timeout: float) -> tuple[list[dict], list[str]]:
    """The replicas one node holds of `topics` (dump_log's lines with `node` and `broker-id` added), and the
    partitions it could not read."""
    cmd = cluster.log_dump_command(node, topics)
    result = node.output(cmd, timeout=timeout)
    if not result.ok:
        why = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
        raise ClusterError(f"reading the broker's logs failed with status {result.status}: {why}")
    replicas, errors = [], []
    wanted = set(topics)
    for n, line in enumerate(result.stdout.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            errors.append(f"{node.name}: line {n} of the log dump is not JSON: {line[:80]!r}")
            continue
        if rec.get("topic") not in wanted:
            continue
        if "error" in rec:
            errors.append(f"{node.name}: {rec['topic']}-{rec['partition']}: {rec['error']}")
            continue
        replicas.append({"node": node.name, "broker-id": node.broker_id, **rec})
    return replicas, errors


def to_json(data: dict) -> bytes:
    """replicas.json's text: the top-level fields indented, one replica per line (its batches inline)."""
    head = [f' {json.dumps(k)}: {json.dumps(v)}' for k, v in data.items() if k != "replicas"]
    reps = [f'  {json.dumps(r, separators=(",", ":"))}' for r in data.get("replicas") or []]
    body = "[\n" + ",\n".join(reps) + "\n ]" if reps else "[]"
    return ("{\n" + ",\n".join([*head, f' "replicas": {body}']) + "\n}\n").encode()
