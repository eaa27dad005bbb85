"""Counts, latency, throughput and per-key progress series for the report.

Everything returned is plain JSON (docs/history-format.md, "Results"). Times
are seconds since the run started (history `time` is nanoseconds); when events
carry no time the series are empty and only the counts are filled in.
"""
from __future__ import annotations

from array import array

MAX_POINTS = 200  # points per series after downsampling


class StatsCollector:
    def __init__(self):
        # Parallel arrays, one entry per completion (the checker appends to
        # them directly; -1 marks a missing time or latency).
        self.t_done = array("q")
        self.lat = array("q")
        self.kind = array("i")  # index into self.kinds
        self.kinds: list[tuple[str, str]] = []
        self.kind_of: dict = {}  # f -> type -> index into self.kinds
        self.samples: list = []  # (time ns, {k: unseen}, {k: [acked max offset, read max offset]})

    def kind_index(self, f, t) -> int:
        """The index of completions of f with type t in self.kinds (a new one the first time)."""
        kd = self.kind_of.get(f)
        if kd is None:
            kd = self.kind_of[f] = {}
        i = kd.get(t)
        if i is None:
            self.kinds.append((f, t))
            i = kd[t] = len(self.kinds) - 1
        return i

    def add_block(self, kinds, times, lats):
        """Many completions at once: lists of kind index, time (ns) and latency (ns, or -1)."""
        self.kind.fromlist(kinds)
        self.t_done.fromlist(times)
        self.lat.fromlist(lats)

    def sample(self, time, keys):
        items = keys.items()
        unseen = {k: len(ks.unseen) for k, ks in items if ks.unseen}
        offsets = {k: [am[0] if (am := ks.acked_max) is not None else None,
                       ks.maxread if ks.maxread >= 0 else None]
                   for k, ks in items if ks.acked_max is not None or ks.maxread >= 0}
        self.samples.append((time, unseen, offsets))

    def summary(self) -> dict:
        import numpy as np
        counts = np.bincount(np.frombuffer(self.kind, dtype=np.int32).astype(np.int64), minlength=len(self.kinds)) \
            if self.kind else []
        by_f: dict = {}
        total = {"ok": 0, "fail": 0, "info": 0}
        for (f, t), n in zip(self.kinds, counts):
            d = by_f.setdefault(str(f), {"ok": 0, "fail": 0, "info": 0})
            d[t] = int(n)
            total[t] = total.get(t, 0) + int(n)
        return {"by-f": dict(sorted(by_f.items())), "completions": total}

    def series(self) -> dict:
        out = {"time-unit": "s", "latency": {}, "throughput": {}, "unseen": [], "offsets": {}}
        import numpy as np
        t = np.frombuffer(self.t_done, dtype=np.int64)
        lat = np.frombuffer(self.lat, dtype=np.int64)
        kind = np.frombuffer(self.kind, dtype=np.int32)
        have = lat >= 0
        t, lat, kind = t[have], lat[have], kind[have]
        if len(t):
            t0, t1 = int(t.min()), int(t.max())
            width = max(1, (t1 - t0) // MAX_POINTS + 1)
            bucket = (t - t0) // width
            out["bucket-seconds"] = width / 1e9
            # One sort by (kind, bucket, latency); each (kind, bucket) run is then
            # a sorted segment whose percentiles are read off by position.
            nb = int(bucket.max()) + 1
            group = kind.astype(np.int64) * nb + bucket
            if int(lat.max()) < 1 << 40 and int(group.max()) < 1 << 22:
                packed = np.sort((group << 40) | lat)  # one int64 sort: 10x a lexsort
                group, lat = packed >> 40, packed & ((1 << 40) - 1)
            else:
                order = np.lexsort((lat, group))
                group, lat = group[order], lat[order]
            kind, bucket = group // nb, group % nb
            edge = np.r_[True, (kind[1:] != kind[:-1]) | (bucket[1:] != bucket[:-1])]
            starts = np.flatnonzero(edge)
            ends = np.r_[starts[1:], len(lat)]
            n = ends - starts
            p50 = lat[starts + n // 2]
            p95 = lat[starts + np.minimum(n - 1, (n * 0.95).astype(np.int64))]
            p99 = lat[starts + np.minimum(n - 1, (n * 0.99).astype(np.int64))]
            pmax = lat[ends - 1]
            tm = (t0 + (bucket[starts] + 0.5) * width) / 1e9
            tput = n / (width / 1e9)
            ms = [(x / 1e6).tolist() for x in (p50, p95, p99, pmax)]
            rows = zip(kind[starts].tolist(), tm.tolist(), *ms, tput.tolist())
            for kx, tmx, a50, a95, a99, amax, tp in rows:  # a few thousand rows at most
                f, typ = self.kinds[kx]
                name = f"{f} {typ}"
                tmx = round(tmx, 6)
                out["latency"].setdefault(name, []).append(
                    [tmx, round(a50, 3), round(a95, 3), round(a99, 3), round(amax, 3)])
                out["throughput"].setdefault(name, []).append([tmx, round(tp, 3)])
            out["latency-columns"] = ["time", "p50-ms", "p95-ms", "p99-ms", "max-ms"]
            out["throughput-columns"] = ["time", "ops-per-second"]
        if self.samples:
            step = max(1, len(self.samples) // MAX_POINTS)
            picked = self.samples[::step]
            if picked[-1] is not self.samples[-1]:
                picked.append(self.samples[-1])
            out["unseen"] = [{"time": round(tm / 1e9, 6), "total": sum(u.values()), "by-key": u}
                             for tm, u, _ in picked]
            offsets: dict[str, list] = {}
            for tm, _, o in picked:
                tsec = round(tm / 1e9, 6)
                for k, (sent, read) in o.items():
                    row = offsets.get(k)
                    if row is None:
                        row = offsets[k] = []
                    row.append([tsec, sent, read])
            out["offsets"] = offsets
            out["offsets-columns"] = ["time", "max-acknowledged-offset", "max-read-offset"]
        return out
