"""Interop with Jepsen: read and write the Kafka workload's history.edn.

Jepsen writes one EDN map per line ({:index 0, :type :invoke, :f :send,
:process 0, :value [[:send 3 12]], ...}); keywords become strings here, integer
keys become the strings our format uses ("3"), and `:seek-to-beginning?` loses
its question mark. Writing does the reverse, turning keys that are decimal
strings back into integers, since Jepsen's workload uses integer keys.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence, Set
from typing import Iterator

import edn_format
from edn_format import Keyword

from .history import HistoryError, Problem, validate_event

_K = {name: Keyword(name) for name in ("index", "time", "process", "type", "f", "value", "error", "node",
                                        "send", "poll", "invoke", "ok", "fail", "info", "nemesis",
                                        "rebalance-log", "keys")}


def _plain(x):
    """EDN data -> JSON-shaped data (keywords as names, map keys as strings)."""
    if isinstance(x, Keyword):
        return x.name
    if isinstance(x, Mapping):
        return {_key(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (str, bytes)):
        return x
    if isinstance(x, (Sequence, Set)):
        return [_plain(v) for v in x]
    return x


def _key(k):
    if isinstance(k, Keyword):
        return k.name
    return str(k)


def from_edn_event(m) -> dict:
    ev = {}
    for k, v in m.items():
        name = _key(k)
        if name.endswith("?"):
            name = name[:-1]
        ev[name] = _plain(v)
    # Keys are strings in our format; Jepsen's are integers.
    f, v = ev.get("f"), ev.get("value")
    if isinstance(v, list):
        if f in ("send", "poll", "txn"):
            for mop in v:
                if isinstance(mop, list) and len(mop) > 1 and mop[0] == "send":
                    mop[1] = _key(mop[1])
        elif f in ("assign", "subscribe"):
            ev["value"] = [_key(k) for k in v]
    for r in ev.get("rebalance-log") or []:
        if isinstance(r, dict) and isinstance(r.get("keys"), list):
            r["keys"] = [_key(k) for k in r["keys"]]
    return ev


def iter_edn(path, problems: list[Problem]) -> Iterator[tuple[int, dict]]:
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        raise HistoryError(f"{path}: no such file") from None
    except OSError as e:
        raise HistoryError(f"{path}: cannot open: {e.strerror}") from None
    if text.lstrip().startswith("["):
        # Older Jepsen stores write the whole history as one vector.
        try:
            items = edn_format.loads(text)
        except Exception as e:  # edn_format raises several exception types
            raise HistoryError(f"{path}: not an EDN history: {e}") from None
        lines = [(i + 1, m) for i, m in enumerate(items)]
    else:
        lines = []
        for n, raw in enumerate(text.split("\n"), 1):
            if not raw.strip():
                continue
            try:
                lines.append((n, edn_format.loads(raw)))
            except Exception as e:
                if not lines:
                    raise HistoryError(f"{path}: not an EDN history: line {n} does not parse ({e})") from None
                problems.append(Problem(n, f"not valid EDN: {e}"))
    for n, m in lines:
        if not isinstance(m, Mapping):
            problems.append(Problem(n, f"expected an EDN map, got {type(m).__name__}"))
            continue
        ev = from_edn_event(m)
        err = validate_event(ev)
        if err:
            problems.append(Problem(n, err))
            continue
        yield n, ev


def _edn_key(k):
    if isinstance(k, str) and k.isdigit() and (k == "0" or not k.startswith("0")):
        return int(k)
    return k


def _edn_mop(mop):
    f = mop[0]
    if f == "send":
        x = mop[2] if len(mop) > 2 else None
        return [Keyword("send"), _edn_key(mop[1]), list(x) if isinstance(x, list) else x]
    if f == "poll":
        if len(mop) < 2:
            return [Keyword("poll")]
        return [Keyword("poll"), {_edn_key(k): [list(p) for p in pairs] for k, pairs in (mop[1] or {}).items()}]
    return [Keyword(str(f))] + list(mop[1:])


def to_edn_event(ev: dict):
    m = {}
    for name, v in ev.items():
        if name in ("type", "f"):
            v = Keyword(str(v))
        elif name == "process" and isinstance(v, str):
            v = Keyword(v)
        elif name == "value":
            f = ev.get("f")
            if f in ("send", "poll", "txn") and isinstance(v, list):
                v = [_edn_mop(m_) for m_ in v]
            elif f in ("assign", "subscribe") and isinstance(v, list):
                v = [_edn_key(k) for k in v]
        elif name == "seek-to-beginning":
            name = "seek-to-beginning?"
        elif name == "rebalance-log" and isinstance(v, list):
            v = [{Keyword(str(a)): ([_edn_key(x) for x in b] if a == "keys" and isinstance(b, list) else b)
                  for a, b in r.items()} for r in v if isinstance(r, dict)]
        m[Keyword(name)] = v
    return m


def write_edn(events, out) -> None:
    for ev in events:
        out.write(edn_format.dumps(to_edn_event(ev)))
        out.write("\n")


def write_jsonl(events, out) -> None:
    import orjson
    for ev in events:
        out.write(orjson.dumps(ev).decode())
        out.write("\n")
