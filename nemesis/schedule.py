"""When faults start and stop: a seeded plan of timed ops, the thread that executes it, and replay.

The plan is data: `[{"time": seconds after the main phase began, "f", "value"}]`. `plan()` draws it
from the enabled packages with a seeded generator (Jepsen's `gen/mix` of per-package start/stop
cycles): a start every `interval` seconds or so (uniform over [interval/2, 3*interval/2]), each from
a package whose fault is not active, drawn from a shuffled bag so a short run sees every package; each
fault stopped about `interval` seconds after it started. Under the `mix` schedule faults of different
packages overlap when a start comes before the previous stop; under `alternate` a start waits for the
previous stop. The same seed gives the same plan.

`NemesisRunner` executes a plan on a thread, records each op as an invoke and an info completion of
process "nemesis" in the history, and keeps the realized schedule (the ops, their resolved targets and
their real times), which the runner writes to `nemesis.json` in the run directory. `replay_plan()`
turns such a file back into a plan: targets that were drawn at random (`one`, `minority`, random
partition halves) become the nodes they hit then; role targets (`leader`, `controller`, ...) are
resolved afresh, since who leads is a property of the new run.
"""
from __future__ import annotations

import heapq
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable

import orjson

from nemesis.core import RANDOM_TARGETS, Compose, Context
from nemesis.packages import Package, package_of_f


SCHEDULES = ("mix", "alternate")


def plan(packages: list[tuple[Package, str | None]], seed: int, interval: float, horizon: float,
         schedule: str = "mix") -> list[dict]:
    """Timed start/stop ops over [0, horizon) seconds. `mix`: faults of different packages may overlap;
    `alternate`: one fault at a time, each start waiting for the previous stop (the old nemesis's way)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    rng = random.Random(seed)
    ops: list[dict] = []
    stops: list[tuple[float, int, str]] = []      # (time, tiebreak, package name)
    active: set[str] = set()
    by_name = {p.name: (p, pin) for p, pin in packages}
    bag: list[str] = []
    t = 0.0
    n = 0
    while packages:
        t += rng.uniform(interval / 2, 1.5 * interval)
        while stops and stops[0][0] <= t:
            when, _, name = heapq.heappop(stops)
            active.discard(name)
            if when < horizon:
                ops.append({"time": round(when, 3), **by_name[name][0].stop_op()})
        if t >= horizon:
            break
        if not bag:
            bag = sorted(by_name)
            rng.shuffle(bag)
        free = [name for name in bag if name not in active]
        if not free or (schedule == "alternate" and active):
            continue
        name = free[0]
        bag.remove(name)
        pkg, pin = by_name[name]
        ops.append({"time": round(t, 3), **pkg.start_op(rng, pin)})
        active.add(name)
        n += 1
        heapq.heappush(stops, (t + rng.uniform(interval / 2, 1.5 * interval), n, name))
    ops.sort(key=lambda op: op["time"])
    return ops


def replay_plan(path: str | Path) -> list[dict]:
    """The plan of a recorded run (its nemesis.json), with randomly drawn targets fixed to what they hit."""
    data = orjson.loads(Path(path).read_bytes())
    out = []
    for rec in data.get("ops", []):
        value = rec.get("value")
        resolved = rec.get("resolved") if isinstance(rec.get("resolved"), dict) else {}
        nodes = resolved.get("nodes")
        if isinstance(value, str) and value in RANDOM_TARGETS and nodes:
            value = "+".join(nodes)
        elif isinstance(value, dict) and value.get("target") in RANDOM_TARGETS and nodes:
            value = {**value, "target": "+".join(nodes)}
        elif isinstance(value, dict) and "shape" in value and resolved.get("cut") is not None \
                and value["shape"] in ("halves", "one", "majorities-ring", "bridge"):
            value = {**value, "shape": "cut", "cut": resolved["cut"], "drawn": value["shape"]}
        out.append({"time": rec["time"], "f": rec["f"], "value": value})
    return out


class NemesisRunner:
    """Executes a plan on a thread; every op is an invoke and an info completion in the history (Jepsen
    records nemesis completions as info); `heal()` stops every active fault and tears the nemeses down."""

    def __init__(self, packages: list[tuple[Package, str | None]], ctx: Context, ops: list[dict],
                 append: Callable[[dict], Any], on_change: Callable[[list[str]], None] | None = None):
        self.packages = packages
        self.ctx = ctx
        self.ops = ops
        self.append = append
        self.on_change = on_change or (lambda active: None)
        self.nemesis = Compose(p.make() for p, _ in packages)
        self._stop = ctx.stopping
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._t0: float | None = None
        self.active: dict[str, dict] = {}          # package name -> its start op's completion value
        self.errors: list[str] = []
        #: package name -> how many times its fault was started (for the run summary)
        self.started: dict[str, int] = {}
        #: the realized schedule: what nemesis.json records
        self.realized: list[dict] = []
        self._set_up = False

    def setup(self) -> None:
        self.nemesis.setup(self.ctx)
        self._set_up = True

    def active_names(self) -> list[str]:
        return sorted(self.active)

    def _do(self, op: dict) -> None:
        f = op["f"]
        owner = package_of_f(f)
        t = time.monotonic() - self._t0 if self._t0 is not None else 0.0
        self.append({"process": "nemesis", "type": "invoke", "f": f, "value": op.get("value")})
        rec = {"time": round(t, 3), "f": f, "value": op.get("value")}
        try:
            value = self.nemesis.invoke(self.ctx, op)
            self.append({"process": "nemesis", "type": "info", "f": f, "value": value})
            rec["resolved"] = value
            if owner:
                pkg, role = owner
                if role == "start":
                    self.active[pkg.name] = value
                    self.started[pkg.name] = self.started.get(pkg.name, 0) + 1
                else:
                    self.active.pop(pkg.name, None)
        except Exception as e:  # noqa: BLE001 -- a fault that failed is recorded, the run goes on
            self.errors.append(f"{f}: {e}")
            self.append({"process": "nemesis", "type": "info", "f": f, "value": None, "error": str(e)})
            rec["error"] = str(e)
            if owner and owner[1] == "start":
                self.active[owner[0].name] = {"error": str(e)}  # may be half done: heal it anyway
        rec["completed"] = round(time.monotonic() - self._t0, 3) if self._t0 is not None else 0.0
        self.realized.append(rec)
        self.on_change(self.active_names())

    def run(self) -> None:
        for op in self.ops:
            if self._stop.wait(max(0.0, op["time"] - (time.monotonic() - self._t0))):
                return
            with self._lock:
                if self._stop.is_set():
                    return
                owner = package_of_f(op["f"])
                if owner and owner[1] == "stop" and owner[0].name not in self.active:
                    continue  # its start failed or was never run
                self._do(op)

    def start(self) -> None:
        self._t0 = time.monotonic()
        if self.ops:
            self._thread = threading.Thread(target=self.run, name="nemesis", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 90.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

    def heal(self) -> None:
        """Stop every active fault (recorded, as the heal phase's ops), then tear every nemesis down; safe twice."""
        self._stop.set()
        with self._lock:
            for pkg, _ in self.packages:
                if pkg.name in self.active:
                    self._do(pkg.stop_op())
            if self._set_up:
                try:
                    self.nemesis.teardown(self.ctx)
                except Exception as e:  # noqa: BLE001
                    self.errors.append(str(e))
            self.active.clear()
        self.on_change([])

    def write(self, path: Path, seed: int, interval: float, replayed_from: str | None = None) -> None:
        doc = {"seed": seed, "interval": interval, "packages": [f"{p.name}:{pin}" if pin else p.name
                                                                 for p, pin in self.packages],
               "replayed-from": replayed_from, "ops": self.realized}
        Path(path).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str))
