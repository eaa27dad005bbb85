"""Print what a broker's log directory holds, batch by batch, as JSON lines (read-only).

Kafka's counterpart is ``kafka-dump-log.sh`` (kafka.tools.DumpLogSegments): it prints each batch's
baseOffset, lastOffset, partitionLeaderEpoch and crc from the segment files.  This one runs on a node
(``python3 -m broker.dump_log LOG_DIR [TOPIC ...]``, with the broker package on the import path) so
that the harness can compare the replicas of a partition across brokers (clusters/replicas.py collects
it, checkers/divergence.py compares; Kafka's ReplicaVerificationTool does the same over Fetch).

It opens nothing for writing: a ``broker.log.Log`` would run recovery (truncating a torn tail and
rewriting indexes) on a broker that may still be running, so the segment files are mapped read-only and
walked with ``records.scan_batches``.  A batch whose CRC-32C does not match its bytes is printed (its
``crc-ok`` false) and the walk goes on; the walk of a segment stops at a torn or malformed batch, whose
bytes are counted in ``tail-bytes``.

One line per partition directory (``<topic>-<partition>``) of the given topics (every topic but
internal ``__`` ones when none is given), sorted by topic and partition::

    {"topic": "t", "partition": 0, "high-watermark": 12, "log-start-offset": 0, "log-end-offset": 14,
     "tail-bytes": 0, "batches": [[base offset, last offset, partition leader epoch, crc, crc-ok], ...]}

``high-watermark`` comes from the broker's ``replication-offset-checkpoint`` (null when the partition
is not in it).  A partition that cannot be read is ``{"topic", "partition", "error"}``.  Exit status 2
when LOG_DIR itself cannot be listed.
"""
from __future__ import annotations

import json
import mmap
import os
import sys

from .core import HW_CHECKPOINT
from .log import read_checkpoint, segment_bases, segment_path
from .records import scan_batches


def partition_dirs(log_dir: str, topics: set[str] | None = None) -> list[tuple[str, int, str]]:
    """(topic, partition, path) of every partition directory of log_dir, sorted; only `topics` when given."""
    out = []
    for name in os.listdir(log_dir):
        topic, sep, index = name.rpartition("-")
        path = os.path.join(log_dir, name)
        if not sep or not topic or not index.isdigit() or not os.path.isdir(path):
            continue
        if topics is not None and topic not in topics or topics is None and topic.startswith("__"):
            continue
        out.append((topic, int(index), path))
    return sorted(out)


def summarize(path: str) -> dict:
    """log-start-offset, log-end-offset, tail-bytes and the batch summaries of one partition directory."""
    batches: list[list] = []
    tail = 0
    bases = segment_bases(path)
    for base in bases:
        with open(segment_path(path, base), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if not size:
                continue
            with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as m:
                end = 0
                for pos, h, good in scan_batches(m):
                    batches.append([h.base_offset, h.last_offset, h.partition_leader_epoch, h.crc, good])
                    end = pos + h.size
                tail += size - end
    start = batches[0][0] if batches else (bases[0] if bases else 0)
    leo = batches[-1][1] + 1 if batches else start
    return {"log-start-offset": start, "log-end-offset": leo, "tail-bytes": tail, "batches": batches}


def dump(log_dir: str, topics: set[str] | None = None, out=sys.stdout) -> None:
    hws = read_checkpoint(os.path.join(log_dir, HW_CHECKPOINT))
    for topic, partition, path in partition_dirs(log_dir, topics):
        line: dict = {"topic": topic, "partition": partition}
        try:
            line["high-watermark"] = hws.get((topic, partition))
            line.update(summarize(path))
        except (OSError, ValueError) as e:
            line = {"topic": topic, "partition": partition, "error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(line, separators=(",", ":")) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m broker.dump_log LOG_DIR [TOPIC ...]", file=sys.stderr)
        return 2 if not args else 0
    log_dir, topics = args[0], set(args[1:]) or None
    try:
        os.listdir(log_dir)
    except OSError as e:
        print(f"dump_log: error: log dir {log_dir} cannot be read: {e.strerror}", file=sys.stderr)
        return 2
    dump(log_dir, topics)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
