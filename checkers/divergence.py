"""The replica-divergence checker: replicas.json -> `replica-divergence` anomalies (a pure function).

Kafka's counterpart is ReplicaVerificationTool (kafka-replica-verification.sh), which fetches every
replica of every partition and reports the first offset where two of them differ. Jepsen has no
counterpart: its Kafka checker judges the clients' history only, where a replica that diverged from its
leader (a follower that missed a truncation after a leader change) shows only if it is later elected and
read from. Comparing the logs themselves makes every run a direct check of the replication protocol.

The rule (docs/anomalies.md, "replica-divergence"): two replicas of a partition must hold the same
batches below the lower of their two high watermarks, each capped by that replica's own log end. A
batch is (base offset, last offset, partition leader epoch, stored CRC-32C, whether the bytes match that
CRC); followers copy the leader's batches byte for byte, so any difference is a finding against the
broker. A replica that merely ends earlier is behind, not divergent.

Input: the replicas.json structure (clusters/replicas.py, docs/history-format.md). `merge` folds the
anomalies into a results.json dict; `replica-divergence` always makes a run invalid.
"""
from __future__ import annotations

import bisect
from itertools import combinations

KIND = "replica-divergence"
MAX_EXAMPLES = 1000


def effective_high_watermark(replica: dict) -> int:
    """The replica's checkpointed high watermark, capped by its log end (as the broker does at start: it
    resumes from min(checkpoint, log end offset)); 0 when the checkpoint does not name the partition."""
    hw = replica.get("high-watermark")
    return max(0, min(hw if isinstance(hw, int) else 0, replica.get("log-end-offset", 0)))


def check_replicas(data: dict) -> list[dict]:
    """Every pair of replicas of a partition that differ below their common high watermark, one record
    per pair: topic, partition, nodes, offsets [first, last], high-watermark (the bound compared below),
    batches (the first differing batch of each node, or None), differing-batches, ops [], explanation."""
    by_partition: dict[tuple[str, int], list[dict]] = {}
    for rep in data.get("replicas") or []:
        by_partition.setdefault((rep["topic"], rep["partition"]), []).append(rep)
    found = []
    for (topic, partition), reps in sorted(by_partition.items()):
        reps.sort(key=lambda r: (r.get("broker-id", 0), r["node"]))
        for a, b in combinations(reps, 2):
            rec = compare_pair(topic, partition, a, b)
            if rec is not None:
                found.append(rec)
    return found


def compare_pair(topic: str, partition: int, a: dict, b: dict) -> dict | None:
    """The divergence of replicas a and b below min(their high watermarks), or None when they agree."""
    hw_a, hw_b = effective_high_watermark(a), effective_high_watermark(b)
    bound = min(hw_a, hw_b)
    low = max(a.get("log-start-offset", 0), b.get("log-start-offset", 0))
    if bound <= low:
        return None
    batches_a, batches_b = _below(a, low, bound), _below(b, low, bound)
    differing = sorted(base for base in batches_a.keys() | batches_b.keys()
                       if batches_a.get(base) != batches_b.get(base))
    if not differing:
        return None
    first = differing[0]
    last = min(bound - 1, max(batch[1] for batch in (*(batches_a.get(x) for x in differing),
                                                     *(batches_b.get(x) for x in differing)) if batch))
    shown = {a["node"]: _covering(a, first), b["node"]: _covering(b, first)}
    return {
        "topic": topic, "partition": partition, "nodes": [a["node"], b["node"]], "offsets": [first, last],
        "high-watermark": bound, "high-watermarks": {a["node"]: hw_a, b["node"]: hw_b},
        "batches": {node: _batch_dict(batch) for node, batch in shown.items()},
        "differing-batches": len(differing), "ops": [],
        "explanation": _explain(topic, partition, a, b, hw_a, hw_b, first, last, len(differing), shown),
    }


def _below(replica: dict, low: int, bound: int) -> dict[int, tuple]:
    """base offset -> batch tuple of the replica's batches holding an offset in [low, bound)."""
    return {batch[0]: tuple(batch) for batch in replica.get("batches") or [] if batch[0] < bound and batch[1] >= low}


def _covering(replica: dict, offset: int) -> list | None:
    """The replica's batch that holds offset, None when it has none."""
    batches = replica.get("batches") or []
    i = bisect.bisect_right([batch[0] for batch in batches], offset) - 1
    if i >= 0 and batches[i][1] >= offset:
        return list(batches[i])
    return None


def _batch_dict(batch: list | None) -> dict | None:
    if batch is None:
        return None
    base, last, epoch, crc, crc_ok = batch[:5]
    return {"base-offset": base, "last-offset": last, "leader-epoch": epoch, "crc": crc, "crc-ok": crc_ok}


def _describe(node: str, batch: list | None) -> str:
    if batch is None:
        return f"{node} has no batch there"
    base, last, epoch, crc, crc_ok = batch[:5]
    text = f"{node} holds offsets {base}..{last} written in leader epoch {epoch} with CRC 0x{crc:08x}"
    return text if crc_ok else text + ", which its bytes do not match (they were changed after the write)"


def _explain(topic, partition, a, b, hw_a, hw_b, first, last, count, shown) -> str:
    na, nb = a["node"], b["node"]
    where = f"offset {first}" if first == last else f"offsets {first} to {last}"
    described = "; ".join(_describe(node, batch) for node, batch in shown.items())
    return (f"Replicas {na} and {nb} of {topic} partition {partition} differ at {where}, below the high watermark "
            f"both have passed ({na}: {hw_a}, {nb}: {hw_b}): at offset {first} {described}. "
            f"{count} batch(es) below offset {min(hw_a, hw_b)} differ. Both brokers hold these offsets as "
            "committed, and committed records are the same on every replica, so at least one of them keeps records "
            "the partition's leader never committed there (for example a follower that missed a truncation after "
            "a leader change); consumers see them if that broker leads the partition.")


def summary(data: dict, found: list[dict]) -> dict:
    """What results.json says about the comparison, besides the anomalies."""
    reps = data.get("replicas") or []
    partitions = {(r["topic"], r["partition"]) for r in reps}
    behind = [{"topic": r["topic"], "partition": r["partition"], "node": r["node"],
               "log-end-offset": r.get("log-end-offset"), "high-watermark": r.get("high-watermark")}
              for r in reps if isinstance(r.get("high-watermark"), int) and r["high-watermark"] > r.get("log-end-offset", 0)]
    return {"nodes": [n["node"] for n in data.get("nodes") or []], "partitions": len(partitions),
            "replicas": len(reps), "divergent-pairs": len(found),
            "shorter-than-high-watermark": behind[:100], "errors": list(data.get("errors") or [])}


def merge(results: dict, data: dict) -> dict:
    """Fold the divergence check of `data` (replicas.json) into `results` (results.json), in place: the
    anomaly type, its records and count, the bad types and the verdict (replica-divergence is always bad),
    and a `replicas` summary. Returns results."""
    found = check_replicas(data)
    results["replicas"] = summary(data, found)
    if not found:
        return results
    results.setdefault("anomalies", {})[KIND] = found[:MAX_EXAMPLES]
    results.setdefault("anomaly-counts", {})[KIND] = len(found)
    results["anomaly-counts"] = dict(sorted(results["anomaly-counts"].items()))
    results["anomaly-types"] = sorted({*results.get("anomaly-types", []), KIND})
    results["bad-anomaly-types"] = sorted({*results.get("bad-anomaly-types", []), KIND})
    results["anomalies"] = {t: results["anomalies"][t] for t in results["anomaly-types"] if t in results["anomalies"]}
    results["valid"] = False
    results.pop("unknown-reason", None)
    return results
