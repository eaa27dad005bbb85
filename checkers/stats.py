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
        # Parallel lists, one entry per completion (the checker appends to
        # them directly; -1 marks a missing time or latency).
        self.t_done = array("q")
        self.lat = array("q")
        self.kind = array("i")  # index into self.kinds
        self.kinds: list[tuple[str, str]] = []
        self.kind_ix: dict = {}    # f -> type -> index into self.kinds
        self.samples: list = []  # (time ns, {k: unseen}, {k: [acked max offset, read max offset]})

    def new_kind(self, f, t) -> int:
        self.kinds.append((f, t))
        return len(self.kinds) - 1

    def add(self, f, t, time, inv_time):
        d = self.kind_ix.setdefault(f, {})
        if t not in d:
            d[t] = self.new_kind(f, t)
        self.kind.append(d[t])
        self.t_done.append(time if time is not None else -1)
        self.lat.append(time - inv_time if time is not None and inv_time is not None else -1)

    def sample(self, time, keys):
        unseen = {}
        offsets = {}
        for k, ks in keys.items():
            if ks.unseen:
                unseen[k] = len(ks.unseen)
            am = ks.acked_max
            if am is not None or ks.maxread >= 0:
                offsets[k] = [am[0] if am is not None else None, ks.maxread if ks.maxread >= 0 else None]
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
            for ix, (f, typ) in enumerate(self.kinds):
                sel = kind == ix
                if not sel.any():
                    continue
                b = bucket[sel]
                l = lat[sel]
                order = np.lexsort((l, b))
                b, l = b[order], l[order]
                starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
                ends = np.r_[starts[1:], len(b)]
                points, tput = [], []
                for s, e in zip(starts.tolist(), ends.tolist()):
                    seg = l[s:e]
                    n = e - s
                    tm = round((t0 + (int(b[s]) + 0.5) * width) / 1e9, 6)
                    points.append([tm, round(float(seg[n // 2]) / 1e6, 3), round(float(seg[min(n - 1, int(n * 0.95))]) / 1e6, 3),
                                   round(float(seg[min(n - 1, int(n * 0.99))]) / 1e6, 3), round(float(seg[-1]) / 1e6, 3)])
                    tput.append([tm, round(n / (width / 1e9), 3)])
                name = f"{f} {typ}"
                out["latency"][name] = points
                out["throughput"][name] = tput
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
                for k, (sent, read) in o.items():
                    offsets.setdefault(k, []).append([round(tm / 1e9, 6), sent, read])
            out["offsets"] = offsets
            out["offsets-columns"] = ["time", "max-acknowledged-offset", "max-read-offset"]
        return out
