"""When faults start and stop: a seeded schedule, and the thread that executes it and records the ops."""
from __future__ import annotations

import random
import threading
from typing import Any, Callable, Iterator

from nemesis.faults import Fault


def schedule(seed: int, faults: list[str], interval: float) -> Iterator[tuple[float, str, str]]:
    """Endless (delay seconds, "start"|"stop", fault name): a quiet period, one fault for about `interval`
    seconds, heal, repeat. Delays are uniform over [interval/2, 3*interval/2]. Faults are drawn from a
    shuffled bag (every fault once per round, in a seeded random order), so a short run with two
    nemeses sees both rather than, by chance, the same one twice."""
    rng = random.Random(seed)
    while faults:
        bag = list(faults)
        rng.shuffle(bag)
        for name in bag:
            yield rng.uniform(interval / 2, 1.5 * interval), "start", name
            yield rng.uniform(interval / 2, 1.5 * interval), "stop", None


class Nemesis:
    """Runs the schedule on a thread; each fault start/stop is an invoke and an info completion of process
    "nemesis" in the history (Jepsen records nemesis completions as info)."""

    def __init__(self, faults: dict[str, Fault], seed: int, interval: float,
                 append: Callable[[dict], Any], on_change: Callable[[list[str]], None] | None = None):
        self.faults = faults
        self.seed = seed
        self.interval = interval
        self.append = append
        self.on_change = on_change or (lambda active: None)
        self.rng = random.Random(seed + 1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: Fault | None = None
        self._lock = threading.Lock()
        self.errors: list[str] = []
        #: fault name -> how many times it was started (for the run summary)
        self.started: dict[str, int] = {}

    def active(self) -> list[str]:
        return [name for name, f in self.faults.items() if f.active]

    def _do(self, fault: Fault, start: bool) -> None:
        f = fault.start_f if start else fault.stop_f
        self.append({"process": "nemesis", "type": "invoke", "f": f, "value": None})
        try:
            value = fault.start(self.rng) if start else fault.stop()
            if start:
                self.started[fault.name] = self.started.get(fault.name, 0) + 1
            self.append({"process": "nemesis", "type": "info", "f": f, "value": value})
        except Exception as e:  # noqa: BLE001 -- a fault that failed is recorded, the run goes on
            self.errors.append(f"{f}: {e}")
            self.append({"process": "nemesis", "type": "info", "f": f, "value": None, "error": str(e)})
        self.on_change(self.active())

    def run(self) -> None:
        for delay, action, name in schedule(self.seed, sorted(self.faults), self.interval):
            if self._stop.wait(delay):
                return
            with self._lock:
                if self._stop.is_set():
                    return
                if action == "start":
                    self._current = self.faults[name]
                    self._do(self._current, True)
                elif self._current is not None:
                    self._do(self._current, False)
                    self._current = None

    def start(self) -> None:
        if self.faults:
            self._thread = threading.Thread(target=self.run, name="nemesis", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

    def heal(self) -> None:
        """Stop every active fault (the heal phase); also after errors, and safe to call twice."""
        self._stop.set()
        with self._lock:
            for fault in self.faults.values():
                if fault.active:
                    self._do(fault, False)
            self._current = None
