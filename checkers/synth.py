"""Synthetic queue histories from a correct in-memory log model.

Used by the property tests (every generated history must be valid) and by
bench/check_large.py. Concurrent client threads send and poll; some ops fail
or end indeterminate (info: the send may or may not have been appended, and
the process is replaced, as after a crash); keys rotate; the history ends with
a final drain (a fresh process assigns every key, seeks to the beginning and
polls until it has read everything), so a correct model is always valid.
"""
from __future__ import annotations

import heapq
import random


def _send(emit, rng, t, p, k, vals, log, p_fail, p_info) -> bool:
    """One send op of process p to key k: failed (p_fail), indeterminate (p_info: appended to the log or not,
    by a coin) or acknowledged with its offsets. False when the process crashed with it (an `info`)."""
    r = rng.random()
    if r < p_fail:
        emit({"time": t, "process": p, "type": "fail", "f": "send", "error": "NOT_ENOUGH_REPLICAS",
              "value": [["send", k, v] for v in vals]})
    elif r < p_fail + p_info:
        if rng.random() < 0.5:
            log.extend(vals)
        emit({"time": t, "process": p, "type": "info", "f": "send", "error": "REQUEST_TIMED_OUT",
              "value": [["send", k, [None, v]] for v in vals]})
        return False
    else:
        base = len(log)
        log.extend(vals)
        emit({"time": t, "process": p, "type": "ok", "f": "send",
              "value": [["send", k, [base + i, v]] for i, v in enumerate(vals)]})
    return True


def generate(seed=0, *, n_ops=1000, threads=10, active_keys=100, keys_per_consumer=10,
             rotate_every=2000, max_poll=100, p_fail=0.01, p_info=0.01, p_crash=0.002,
             p_assign=0.01, batch=1):
    """Return a list of events (dicts with index, time, process, type, f, value).

    n_ops counts client ops of the main phase (each gives two events), not the
    drain. batch > 1 makes some sends carry several micro-ops (same key).
    """
    rng = random.Random(seed)
    logs: dict[str, list] = {}
    next_key = 0
    active: list[str] = []
    for _ in range(active_keys):
        k = str(next_key)
        next_key += 1
        active.append(k)
        logs[k] = []
    next_value = 0
    next_process = threads
    proc = list(range(threads))            # thread -> current process id
    assigned = [dict() for _ in range(threads)]  # thread -> {key: next position}
    events: list[dict] = []
    committed: dict[str, int] = {}  # key -> furthest position any consumer reached
    heap = []  # (completion time, thread, invocation info)
    t_now = 0

    def emit(ev):
        ev["index"] = len(events)
        events.append(ev)

    def start(th, t):
        nonlocal next_value
        r = rng.random()
        p = proc[th]
        if r < p_crash:
            op = ("crash", None)
            emit({"time": t, "process": p, "type": "invoke", "f": "crash", "value": None})
        elif r < p_crash + p_assign or not assigned[th] and r < 0.3:
            ks = rng.sample(active, min(keys_per_consumer, len(active)))
            op = ("assign", ks)
            emit({"time": t, "process": p, "type": "invoke", "f": "assign", "value": ks})
        elif r < 0.5:
            k = rng.choice(active)
            n = 1 if batch <= 1 else rng.randint(1, batch)
            vals = []
            for _ in range(n):
                vals.append(next_value)
                next_value += 1
            op = ("send", k, vals)
            emit({"time": t, "process": p, "type": "invoke", "f": "send",
                  "value": [["send", k, v] for v in vals]})
        else:
            op = ("poll",)
            emit({"time": t, "process": p, "type": "invoke", "f": "poll", "value": [["poll"]]})
        heapq.heappush(heap, (t + rng.randint(200_000, 5_000_000), th, op))

    for th in range(threads):
        start(th, rng.randint(0, 1_000_000))
    done = 0
    while done < n_ops:
        t, th, op = heapq.heappop(heap)
        t_now = t
        p = proc[th]
        kind = op[0]
        if kind == "crash":
            emit({"time": t, "process": p, "type": "info", "f": "crash", "value": None})
            proc[th] = next_process
            next_process += 1
            assigned[th] = {}
        elif kind == "assign":
            # Kept keys keep their position; new ones resume where the
            # group's committed offset is (the furthest any consumer got).
            old = assigned[th]
            assigned[th] = {k: old.get(k, committed.get(k, 0)) for k in op[1]}
            emit({"time": t, "process": p, "type": "ok", "f": "assign", "value": op[1]})
        elif kind == "send":
            _, k, vals = op
            if not _send(emit, rng, t, p, k, vals, logs[k], p_fail, p_info):
                proc[th] = next_process
                next_process += 1
                assigned[th] = {}
        else:
            if rng.random() < p_info / 2:
                emit({"time": t, "process": p, "type": "info", "f": "poll", "error": "timeout",
                      "value": [["poll"]]})
                proc[th] = next_process
                next_process += 1
                assigned[th] = {}
            else:
                budget = max_poll
                out = {}
                a = assigned[th]
                for k in a:
                    if budget <= 0:
                        break
                    pos = a[k]
                    log = logs[k]
                    if pos < len(log):
                        end = min(len(log), pos + budget)
                        out[k] = [[o, log[o]] for o in range(pos, end)]
                        budget -= end - pos
                        a[k] = end
                        if end > committed.get(k, 0):
                            committed[k] = end
                emit({"time": t, "process": p, "type": "ok", "f": "poll", "value": [["poll", out]]})
        done += 1
        # Rotate keys: retire the oldest active key, open a new one.
        if rotate_every and done % rotate_every == 0:
            active.pop(0)
            k = str(next_key)
            next_key += 1
            active.append(k)
            logs[k] = []
        start(th, t)
    # Let in-flight ops finish (completions as above would change the model;
    # instead they end indeterminate, like a harness stopping its clients).
    while heap:
        t, th, op = heapq.heappop(heap)
        t_now = t
        emit({"time": t, "process": proc[th], "type": "info", "f": op[0],
              "value": None if op[0] != "send" else [["send", op[1], [None, v]] for v in op[2]],
              "error": "stopped"})
        if op[0] == "send" and rng.random() < 0.5:
            logs[op[1]].extend(op[2])
    drain(events, logs, next_process, t_now + 1_000_000, max_poll)
    return events


def drain(events, logs, process, t, max_poll=100):
    """Final drain: a fresh process assigns all keys from the beginning and polls them empty."""
    ks = [k for k in logs if logs[k]]

    def emit(ev):
        ev["index"] = len(events)
        events.append(ev)

    emit({"time": t, "process": process, "type": "invoke", "f": "assign", "value": ks,
          "seek-to-beginning": True})
    emit({"time": t + 1000, "process": process, "type": "ok", "f": "assign", "value": ks,
          "seek-to-beginning": True})
    t += 2000
    pos = {k: 0 for k in ks}
    todo = list(ks)
    while todo:
        budget = max_poll
        out = {}
        for k in list(todo):
            if budget <= 0:
                break
            log = logs[k]
            end = min(len(log), pos[k] + budget)
            out[k] = [[o, log[o]] for o in range(pos[k], end)]
            budget -= end - pos[k]
            pos[k] = end
            if end >= len(log):
                todo.remove(k)
        emit({"time": t, "process": process, "type": "invoke", "f": "poll", "value": [["poll"]]})
        emit({"time": t + 500_000, "process": process, "type": "ok", "f": "poll", "value": [["poll", out]]})
        t += 600_000
    return events


def generate_read_heavy(seed=0, *, n_ops=1000, writers=10, readers=80, records_per_poll=80, keys=8,
                        rotate_every=0, p_fail=0.01, p_info=0.01, p_crash=0.001, batch=1):
    """A read-heavy history: every value is read by `readers` consumers, each poll returns up to
    `records_per_poll` records.

    `writers` threads only send (to `keys` active keys, rotating one key every `rotate_every` sends when
    non-zero); `readers` threads only poll, each its own consumer assigned every key that is active or that
    it has not read to the end, so each reads every value once (and the final drain once more). A reader
    polls about as often as `records_per_poll` records arrive, so its polls are mostly full; a lagging reader
    catches up at `records_per_poll` a poll. Sends fail or end indeterminate with p_fail and p_info; a reader
    crashes now and then (p_crash per op) and its replacement resumes where the thread's consumer was, as from
    its group's committed offset. With readers == records_per_poll, about half the ops are sends and half
    polls (the shape of issue 16: 250k sends, 250k polls of ~80 records, ~20M records read per 1M events).

    n_ops counts client ops of the main phase (each gives two events), not the drain.
    """
    rng = random.Random(seed)
    logs: dict[str, list] = {}
    active: list[str] = []
    next_key = 0

    def open_key():
        nonlocal next_key
        k = str(next_key)
        next_key += 1
        active.append(k)
        logs[k] = []

    for _ in range(keys):
        open_key()
    events: list[dict] = []

    def emit(ev):
        ev["index"] = len(events)
        events.append(ev)

    threads = writers + readers
    proc = list(range(threads))
    next_process = threads
    pos = [dict() for _ in range(threads)]         # reader thread -> {key: next offset}, kept across crashes
    assigned = [None] * threads                    # reader thread -> keys of its current assignment, or None
    next_value = 0
    sends = 0
    # A writer op lasts 0.2-5 ms (2.6 ms on average): a reader's poll takes about as long as records_per_poll
    # sends take to arrive, so its polls are mostly full.
    w_mean = 2_600_000
    r_mean = max(1, int(records_per_poll * w_mean / writers))
    heap = []

    def start(th, t):
        nonlocal next_value
        p = proc[th]
        if th < writers:
            k = rng.choice(active)
            n = 1 if batch <= 1 else rng.randint(1, batch)
            vals = list(range(next_value, next_value + n))
            next_value += n
            op = ("send", k, vals)
            emit({"time": t, "process": p, "type": "invoke", "f": "send", "value": [["send", k, v] for v in vals]})
            dt = rng.randint(200_000, 5_000_000)
        elif rng.random() < p_crash:
            op = ("crash",)
            emit({"time": t, "process": p, "type": "invoke", "f": "crash", "value": None})
            dt = rng.randint(100_000, 1_000_000)
        elif assigned[th] is None or set(active) - set(assigned[th]):
            have = pos[th]
            ks = [k for k in logs if k in active or have.get(k, 0) < len(logs[k])]
            op = ("assign", ks)
            emit({"time": t, "process": p, "type": "invoke", "f": "assign", "value": ks})
            dt = rng.randint(100_000, 1_000_000)
        else:
            op = ("poll",)
            emit({"time": t, "process": p, "type": "invoke", "f": "poll", "value": [["poll"]]})
            dt = rng.randint(r_mean // 2, r_mean * 3 // 2)
        heapq.heappush(heap, (t + dt, th, op))

    for th in range(threads):
        start(th, rng.randint(0, 1_000_000))
    done = 0
    t = 0
    while done < n_ops:
        t, th, op = heapq.heappop(heap)
        p = proc[th]
        kind = op[0]
        if kind == "send":
            _, k, vals = op
            if not _send(emit, rng, t, p, k, vals, logs[k], p_fail, p_info):
                proc[th] = next_process
                next_process += 1
            sends += 1
            if rotate_every and sends % rotate_every == 0:
                active.pop(0)
                open_key()
        elif kind == "crash":
            emit({"time": t, "process": p, "type": "info", "f": "crash", "value": None})
            proc[th] = next_process
            next_process += 1
            assigned[th] = None
        elif kind == "assign":
            assigned[th] = op[1]
            emit({"time": t, "process": p, "type": "ok", "f": "assign", "value": op[1]})
        else:
            budget = records_per_poll
            out = {}
            have = pos[th]
            for k in assigned[th]:
                if budget <= 0:
                    break
                at = have.get(k, 0)
                log = logs[k]
                if at < len(log):
                    end = min(len(log), at + budget)
                    out[k] = [[o, log[o]] for o in range(at, end)]
                    budget -= end - at
                    have[k] = end
            emit({"time": t, "process": p, "type": "ok", "f": "poll", "value": [["poll", out]]})
        done += 1
        start(th, t)
    while heap:  # in-flight ops end indeterminate, as when a harness stops its clients
        t, th, op = heapq.heappop(heap)
        emit({"time": t, "process": proc[th], "type": "info", "f": op[0],
              "value": None if op[0] != "send" else [["send", op[1], [None, v]] for v in op[2]],
              "error": "stopped"})
        if op[0] == "send" and rng.random() < 0.5:
            logs[op[1]].extend(op[2])
    drain(events, logs, next_process, t + 1_000_000, records_per_poll)
    return events


def records_read(events) -> int:
    """Records returned by ok polls: the read volume of a history."""
    n = 0
    for ev in events:
        if ev["type"] == "ok" and ev["f"] == "poll":
            for mop in ev["value"]:
                if len(mop) > 1 and mop[1]:
                    n += sum(map(len, mop[1].values()))
    return n
