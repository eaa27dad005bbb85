"""Side by side in one run: alternate the variants of a measurement round by round, so that each sees the same
machine, print every measurement and the medians per variant. Used by bench/faultfs_cost.py and
bench/ackproxy_cost.py."""
from __future__ import annotations

import statistics
from typing import Callable


def side_by_side(modes: tuple[str, ...], rounds: int, measure: Callable[[str], dict],
                 fields: list[tuple[str, str, str]]) -> list[dict]:
    """measure(mode) -> {field: number, ...}; fields: (key, format spec, unit). Returns every row."""
    def show(get) -> str:
        return "  ".join(f"{key} {format(get(key), spec)}{unit}" for key, spec, unit in fields)
    rows = []
    for r in range(1, rounds + 1):
        for mode in modes:
            row = {"round": r, "mode": mode, **measure(mode)}
            rows.append(row)
            print(f"round {r} {mode:8} {show(row.__getitem__)}", flush=True)
    print()
    for mode in modes:
        mine = [x for x in rows if x["mode"] == mode]
        print(f"{mode:8} median of rounds: {show(lambda key: statistics.median(x[key] for x in mine))}")
    return rows
