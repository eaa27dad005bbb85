"""The HTML report of a run: run dir -> index.html (self-contained), results dir -> index.html of all runs.

`render(path)` takes a run directory (results/<name>/<timestamp>/) or a results
directory. For a run it writes the run's index.html -- verdict, test
description, totals, anomalies with their explanations, history lines and the
fault each one followed, Jepsen-style perf plots with the fault intervals drawn
one lane per concurrent fault, the faults table, links to the logs -- and then
regenerates the results directory's index.html. Faults are paired, labelled and
coloured through the nemesis registry (nemesis/packages.py). Everything is
embedded (CSS inline, plots as data: URIs), so the file can be mailed or
archived by CI on its own; links to logs and raw files are relative.

A run that crashed may lack results.json or test.json, or end in a truncated
history line: the report shows what is there and says what is missing. Huge
histories only cost one streaming pass; every table is bounded.
"""
from __future__ import annotations

import base64
import datetime as dt
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from checkers.history import CLIENT_FUNCTIONS, client_ops, client_ops_text  # the totals: one definition

TEMPLATES = Path(__file__).with_name("templates")

MAX_RECORDS_PER_TYPE = 8       # anomaly records shown with their explanation, per type
MAX_HISTORY_ROWS_PER_TYPE = 40  # history lines shown per anomaly type
MAX_VALUE_CHARS = 300          # an op's value is cut after this many characters in tables
MAX_FAULT_ROWS = 100
MAX_LOG_FILES = 200
MAX_PROBLEMS = 20
MAX_OFFSET_KEYS = 6
RUN_FILES = ("history.jsonl", "results.json", "test.json")
TIMESTAMP = re.compile(r"^\d{8}T\d{6}")

OUTCOME_COLORS = {"ok": "#2b9348", "info": "#f4a300", "fail": "#d62828"}
F_STYLES = {"send": "-", "poll": "--", "txn": "-."}

# One sentence per type so a reader needs no other page; docs/anomalies.md has the details.
TYPE_MEANINGS = {
    "lost-write": "An acknowledged write disappeared: reads went past its offset but none ever returned it.",
    "unseen": "Acknowledged values that no read returned by the end of the run (after the final drain).",
    "duplicate": "One value is stored at more than one offset of a key (typically a producer retry).",
    "inconsistent-offsets": "One offset of a key holds different values: the log forked.",
    "G1a": "A read returned a value whose send failed (an aborted read).",
    "poll-skip": "A consumer's next poll of a key started past records it never read.",
    "nonmonotonic-poll": "A consumer's next poll of a key went back to or before where the previous one ended.",
    "int-poll-skip": "Within one poll, consecutive records of a key skip over a known record.",
    "int-nonmonotonic-poll": "Within one poll, the records of a key go backwards.",
    "nonmonotonic-send": "A process's later send to a key landed at or before its earlier send.",
    "int-send-skip": "Within one op, two sends to a key have other records between them.",
    "int-nonmonotonic-send": "Within one op, two sends to a key landed in reverse order.",
    "offset-order-realtime": "A send begun after another was acknowledged got a lower offset.",
    "unexpected-value": "A read returned a value no op ever sent to that key.",
    "precommitted-read": "A transaction read its own uncommitted write.",
    "G0": "A cycle of write-write dependencies between transactions.",
    "G1c": "A cycle of dependencies that needs a write-read edge (circular information flow).",
    "committed-offset-regression": "A consumer group's committed offset went backwards.",
    "replica-divergence": "Two replicas of a partition hold different records below the high watermark both passed "
                          "(read from the brokers' logs after the run): replication let them diverge.",
}


# ---- what an unsafe profile is expected to show ----------------------------------------------------------------

#: what a log truncated below acknowledged writes shows besides the loss itself (as the reliability matrix says)
_TRUNCATION = frozenset({"lost-write", "unseen", "inconsistent-offsets", "nonmonotonic-send", "int-nonmonotonic-send",
                         "offset-order-realtime", "nonmonotonic-poll", "poll-skip", "int-nonmonotonic-poll",
                         "int-poll-skip"})
#: what a retried batch shows when it is stored twice or after a later one
_RETRY = frozenset({"duplicate", "poll-skip", "nonmonotonic-poll", "int-nonmonotonic-send", "nonmonotonic-send",
                    "offset-order-realtime"})


@dataclass(frozen=True)
class Deviation:
    """What the talk (KAFKA-RELIABILITY.md) predicts for one of its unsafe settings -- the profiles other than
    safe (harness/config.py PROFILES) -- so that a user reads an INVALID verdict as the warning confirmed, not as
    acked broken. Per fault, the reliability matrix has the finer table (tests/chaos/test_reliability_matrix.py)."""

    #: what the setting is expected to do, after "<profile> is expected to"
    claim: str
    #: the anomaly types that show it
    anomalies: tuple[str, ...]
    #: every bad type the setting explains (a truncated log shows more than the lost write itself)
    explains: frozenset
    #: the fault packages that expose it, the likeliest first
    faults: tuple[str, ...]


DEVIATIONS: dict[str, Deviation] = {
    "acks-1": Deviation("lose acknowledged writes when a leader dies, pauses or loses its disk before its followers "
                        "copy them", ("lost-write",), _TRUNCATION,
                        ("kill", "pause", "disk-errors", "isolate-leader-then-kill", "lose-unfsynced",
                         "isolate-leader-then-lose-unfsynced", "partition", "partition-then-kill-leader", "clock",
                         "packet", "disk-stall", "lose-acks")),
    "acks-0": Deviation("lose writes it counted as acknowledged once they were on the socket, when a leader dies or "
                        "is cut off", ("lost-write", "unseen"), _TRUNCATION | {"duplicate"},
                        ("kill", "pause", "partition", "isolate-leader-then-kill", "partition-then-kill-leader",
                         "disk-errors", "lose-unfsynced", "isolate-leader-then-lose-unfsynced", "packet", "clock",
                         "disk-stall", "lose-acks")),
    "unclean-election": Deviation("lose acknowledged writes when the ISR has shrunk to the leader and the leader "
                                  "dies: a stale follower is elected (the talk's trap)", ("lost-write", "unseen"),
                                  _TRUNCATION, ("isolate-leader-then-kill", "isolate-leader-then-lose-unfsynced",
                                                "partition-then-kill-leader")),
    "min-isr-1": Deviation("lose acknowledged writes when an in-sync replica set of one loses power before it "
                           "fsynced them", ("lost-write",), _TRUNCATION,
                           ("isolate-leader-then-lose-unfsynced", "lose-unfsynced")),
    "no-idempotence": Deviation("store a write twice or out of order when the producer retries a batch the broker "
                                "had stored (its acknowledgement was lost, or the leader moved)", ("duplicate",),
                                _RETRY, ("lose-acks", "kill", "pause", "partition", "packet", "disk-stall",
                                         "disk-errors", "isolate-leader-then-kill", "partition-then-kill-leader",
                                         "clock")),
    # the queue workload records what poll returned, not what an application processed (docs/suites.md)
    "auto-commit": Deviation("skip or re-deliver records that a crashed consumer had received but not processed; "
                             "the queue workload records what poll returned, not what was processed, so no verdict "
                             "of it can show that", (), frozenset(), ()),
}


def expectation(profile: str | None, nemeses, valid=None, bad=()) -> str | None:
    """One sentence on what the run's profile is expected to show -- before the run (valid=None) or against its
    verdict -- for the talk's unsafe deviations; None for safe. The terminal prints it under the header and the
    verdict line, the report under the verdict banner."""
    dev = DEVIATIONS.get(profile or "")
    if dev is None:
        return None
    packages = [str(n).partition(":")[0] for n in nemeses or []]
    head = f"{profile} is expected to {dev.claim}" + (f" ({', '.join(dev.anomalies)})" if dev.anomalies else "")
    if not dev.anomalies:
        return head + (f"; {', '.join(bad)} is not what the talk predicts for it: a finding to look into"
                       if valid is False else "")
    exposed = [p for p in packages if p in dev.faults]
    faults = f"this run's faults ({', '.join(packages)})" if packages else "a run without faults"
    hint = "" if exposed else f" (--nemesis {dev.faults[0]} exposes it)"
    if valid is None:
        return (f"{head}: an INVALID verdict would confirm the talk's warning, not a fault of acked"
                + ("" if exposed else f"; {faults} may not expose it{hint}"))
    if valid is False:
        unexplained = [a for a in bad if a not in dev.explains]
        if unexplained:
            return (f"{head}, but {', '.join(unexplained)} is not what the talk predicts for {profile}: a finding to "
                    f"look into")
        return f"{head}: INVALID here confirms the talk's warning, not a fault of acked"
    if valid is True:
        return f"{head}; {faults} did not expose it this time{hint}: VALID does not show {profile} safe"
    return None


# ---- the run's totals ------------------------------------------------------------------------------------------

def send_failures(history) -> dict | None:
    """Why an UNKNOWN run's sends failed, when at least half of the completed sends did not succeed:
    {"failed": sends that failed with the commonest error, "sends": all completed sends, "error": that error}
    (results.json's `send-failures`, the verdict line's "256 of 256 sends failed: ...", the report's banner);
    None otherwise, or without a readable history."""
    import collections
    from checkers.history import HistoryError, iter_jsonl
    errors: collections.Counter = collections.Counter()
    total = 0
    try:
        for _, e in iter_jsonl(history, []):   # the checker's reader; lines it cannot read are skipped
            if e["f"] != "send" or e["type"] == "invoke" or e["process"] == "nemesis":
                continue
            total += 1
            if e["type"] != "ok":
                errors[str(e.get("error") or e["type"])] += 1
    except (OSError, HistoryError):
        return None
    if not total or sum(errors.values()) * 2 < total:
        return None
    error, n = errors.most_common(1)[0]
    return {"failed": n, "sends": total, "error": error}


# ---- entry points ----------------------------------------------------------------------------------------------

def render(path: str | os.PathLike) -> Path:
    """Render a run directory's index.html (and its results directory's), or a results directory's index.

    Returns the path of the file written for `path` itself.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory: give a run directory or a results directory")
    if is_run_dir(path):
        out = render_run(path)
        root = results_root_of(path)
        if root is not None:
            try:
                render_index(root)
            except OSError:
                pass  # the run's own report is written; an unwritable results dir must not fail the run
        return out
    return render_index(path)


def is_run_dir(path: Path) -> bool:
    return any((path / f).is_file() for f in RUN_FILES)


def results_root_of(run_dir: Path) -> Path | None:
    """results/<name>/<timestamp>/ -> results/, when the run dir sits in that layout."""
    root = run_dir.resolve().parent.parent
    if TIMESTAMP.match(run_dir.resolve().name) or (root / "latest").is_symlink():
        return root
    return None


def find_runs(root: Path) -> list[Path]:
    """Run directories of a results dir: <name>/<timestamp>/ (and a run dir given directly below root)."""
    runs = []
    for name in sorted(root.iterdir()):
        if name.name.startswith(".") or name.is_symlink() or not name.is_dir():
            continue  # .clusters, latest
        if is_run_dir(name):
            runs.append(name)
            continue
        for stamp in sorted(name.iterdir()):
            if stamp.is_dir() and not stamp.is_symlink() and is_run_dir(stamp):
                runs.append(stamp)
    return runs


def render_run(run_dir: Path) -> Path:
    run = load_run(run_dir)
    page = _env().get_template("run.html.j2").render(run=run, generated=_now())
    out = run_dir / "index.html"
    _write_atomic(out, page)
    return out


def render_index(root: Path, stale_runs: bool = False) -> Path:
    """results/index.html: every run, newest first. stale_runs=True first (re)renders runs whose report is
    missing or older than their results."""
    rows = []
    for run_dir in find_runs(root):
        if stale_runs and _stale(run_dir):
            try:
                render_run(run_dir)
            except Exception as e:  # noqa: BLE001 -- one broken run must not hide the others
                (run_dir / "report-error.txt").write_text(f"{type(e).__name__}: {e}\n")
        try:
            rows.append(summarize_run(run_dir, root))
        except Exception as e:  # noqa: BLE001 -- a run with odd files is listed, not fatal to the index
            rows.append({"name": run_dir.parent.name, "stamp": run_dir.name, "when": "",
                         "sort": (0.0, run_dir.name), "verdict": "unknown", "bad": [], "allowed": [], "profile": "", "nemeses": "",
                         "backend": "", "duration": "", "ops": "", "error": f"unreadable: {type(e).__name__}: {e}",
                         "href": _href(f"{run_dir.relative_to(root).as_posix()}/")})
    rows.sort(key=lambda r: r["sort"], reverse=True)
    from harness.suite import find_suites, summarize_suite
    suites = []
    for suite_dir in find_suites(root):
        try:
            suites.append(summarize_suite(suite_dir, root))
        except (OSError, ValueError, KeyError) as e:   # listed as unreadable, not fatal to the index
            suites.append({"name": suite_dir.name, "when": "", "counts": {}, "ok": None, "cells": 0,
                           "href": f"{suite_dir.name}/", "error": f"unreadable: {type(e).__name__}: {e}"})
    suites.sort(key=lambda r: r["when"], reverse=True)
    page = _env().get_template("index.html.j2").render(root=str(root), rows=rows, suites=suites, generated=_now())
    out = root / "index.html"
    _write_atomic(out, page)
    return out


def _stale(run_dir: Path) -> bool:
    report = run_dir / "index.html"
    if not report.exists():
        return True
    newest = max((run_dir / f).stat().st_mtime for f in RUN_FILES if (run_dir / f).exists())
    return report.stat().st_mtime < newest


# ---- loading a run ---------------------------------------------------------------------------------------------

def _read_json(path: Path, notes: list[str], missing_note: str) -> dict | None:
    if not path.exists():
        notes.append(missing_note)
        return None
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as e:
        notes.append(f"{path.name} is not valid JSON ({e}); it was probably cut off while being written.")
        return None
    if not isinstance(data, dict):
        notes.append(f"{path.name} does not hold a JSON object; it is ignored.")
        return None
    return data


@dataclass
class HistoryFacts:
    """What the report takes from history.jsonl, read with the checker's reader (checkers.history.iter_jsonl):
    the same lines are events and the same lines are problems as for `acked check`. Bounded memory: only the
    nemesis ops and the lines that results.json cites are kept; per-op counts come from results.json's stats."""

    events: int = 0
    problems: list = field(default_factory=list)  # checkers.history.Problem
    nemesis: list = field(default_factory=list)
    rows: dict = field(default_factory=dict)         # index -> event, for the cited ops
    invocations: dict = field(default_factory=dict)  # cited completion index -> its invocation
    counts: dict = field(default_factory=dict)       # f -> {ok, fail, info}: only when results.json has no stats
    last_time: float | None = None
    open_at_end: int = 0
    not_a_history: str | None = None                 # HistoryError's message

    @property
    def truncated(self) -> bool:
        return any(p.message.startswith("truncated last line") for p in self.problems)

    @property
    def bad_lines(self) -> list:
        return [(p.line, p.message) for p in self.problems]


def read_history_facts(path: Path, wanted: set[int], count: bool = False) -> HistoryFacts:
    """One streaming pass of checkers.history.iter_jsonl over the history (indexes as read_history numbers them:
    the line's `index`, else one past the previous). count: tally completions per f (results.json has none).

    The pass goes by blocks (checkers.history.iter_jsonl_blocks): a block of lines as the harness writes them
    comes decoded only as far as the checker's fast path decodes it, and just the lines kept (nemesis ops, the
    cited ops and their invocations) are read whole; other blocks come line by line as iter_jsonl yields them.
    A cited op's invocation in an earlier block is read again at the end."""
    from checkers.history import HARNESS, HistoryError, iter_jsonl_blocks, read_block_lines
    facts = HistoryFacts()
    open_invoke: dict[Any, Any] = {}  # process -> its invocation: an event, or (block, line) in an EventBlock
    next_index = 0
    last = None
    nemesis = facts.nemesis
    rows = facts.rows
    invocations = facts.invocations
    counts = facts.counts
    spans = []   # (offset, size) of each EventBlock
    late = []    # (container, key, (block, line)) of lines in an earlier block
    try:
        for blk in iter_jsonl_blocks(path, facts.problems):
            if type(blk) is list:  # lines iter_jsonl judged one by one
                for _line, ev in blk:
                    idx = ev.get("index")
                    if not isinstance(idx, int):
                        idx = ev["index"] = next_index
                    next_index = max(next_index, idx + 1)
                    facts.events += 1
                    t = ev.get("time")
                    if isinstance(t, (int, float)) and (last is None or t > last):
                        last = t
                    p, typ = ev["process"], ev["type"]
                    if p == "nemesis":
                        if len(nemesis) < 20_000:
                            nemesis.append(ev)
                    elif typ == "invoke":
                        open_invoke[p] = ev
                    else:
                        inv = open_invoke.pop(p, None)
                        if count and p != HARNESS:
                            c = counts.setdefault(ev["f"], {"ok": 0, "fail": 0, "info": 0})
                            c[typ] += 1
                        if idx in wanted and inv is not None:
                            if type(inv) is tuple:
                                late.append((invocations, idx, inv))
                            invocations[idx] = inv
                    if idx in wanted:
                        rows[idx] = ev
                continue
            b = len(spans)
            spans.append((blk.offset, blk.size))
            here = []  # (container, key, line) of this block's lines to read whole
            for i, ev in enumerate(blk.events):
                idx = ev.index
                if idx >= next_index:
                    next_index = idx + 1
                t = ev.time
                if last is None or t > last:
                    last = t
                p = ev.process
                if p == "nemesis":
                    if len(nemesis) < 20_000:
                        here.append((nemesis, len(nemesis), i))
                        nemesis.append(None)
                elif ev.type == "invoke":
                    open_invoke[p] = (b, i)
                else:
                    inv = open_invoke.pop(p, None)
                    if count and p != HARNESS:
                        c = counts.get(ev.f)
                        if c is None:
                            c = counts[ev.f] = {"ok": 0, "fail": 0, "info": 0}
                        c[ev.type] += 1
                    if inv is not None and idx in wanted:
                        if type(inv) is tuple:
                            if inv[0] == b:
                                here.append((invocations, idx, inv[1]))
                            else:
                                late.append((invocations, idx, inv))
                        invocations[idx] = inv
                if idx in wanted:
                    here.append((rows, idx, i))
                    rows[idx] = (b, i)
            facts.events += len(blk.events)
            for container, key, i in here:
                container[key] = blk.line(i)
    except HistoryError as e:
        facts.not_a_history = str(e)
    by_block: dict[int, list] = {}
    for container, key, loc in late:
        if container.get(key) is loc:  # not replaced by a later line with the same index
            by_block.setdefault(loc[0], []).append((container, key, loc[1]))
    for b, todo in by_block.items():
        lines = read_block_lines(path, *spans[b], {i for _, _, i in todo})
        for container, key, i in todo:
            container[key] = lines[i]
    facts.last_time = last / 1e9 if last is not None else None
    facts.open_at_end = len(open_invoke)
    return facts


# ---- faults: intervals from the nemesis registry, and the fault an anomaly followed -------------------------------

UNKNOWN_FAULT_COLOR = "#888888"
#: what each package did to the nodes it hit, for sentences ("killed n2")
_REGISTRY: dict | None = None


def _registry() -> dict:
    """nemesis.packages.display(): {package: {"label", "color", "start": [fs], "stop": f}}, plus the f -> package
    index; empty (every fault grey) if the registry cannot be imported, so an odd tree still gets its report."""
    global _REGISTRY
    if _REGISTRY is None:
        by_f: dict[str, tuple[str, str]] = {}
        try:
            from nemesis.packages import PACKAGES, display, nemesis_fs, package_of_f
            shown = display()
            sequences = {name for name, p in PACKAGES.items() if p.sequence}
            for f in nemesis_fs():  # which package an f starts or stops: the registry's own answer
                owner = package_of_f(f)
                if owner is not None:
                    by_f[f] = (owner[0].name, owner[1])
        except Exception:  # noqa: BLE001 -- a report without colours beats no report
            shown, sequences = {}, set()
        _REGISTRY = {"packages": shown, "by_f": by_f, "sequences": sequences}
    return _REGISTRY


def _role_of(value: dict) -> str | None:
    """What the nodes hit were, when the op aimed at a role: 'leader of key 6', 'the controller'."""
    target = str(value.get("target") or "")
    shape = str(value.get("shape") or "")
    kind, _, arg = target.partition(":")
    key = value.get("key", arg or None)
    if kind in ("leader", "leader-of") or shape in ("leader", "leader-from-followers"):
        return f"leader of key {key}" if key is not None else "the leader"
    if kind == "followers-of":
        return f"followers of key {key}" if key is not None else "the followers"
    if kind == "primaries" and value.get("leaders") is not None:
        return "leaders of the hot keys"
    if "controller" in (kind, shape):
        return "the controller"
    if "coordinator" in (kind, shape):
        return "the group coordinator"
    return None


def _names(nodes: Any) -> str:
    if isinstance(nodes, (list, tuple)):
        return " ".join(str(n) for n in nodes)
    return str(nodes)


def _signed_ms(ms: Any) -> str:
    return f"{ms:+g} ms" if isinstance(ms, (int, float)) else f"{ms} ms"


def _describe(fault: str, f: str, asked: Any, value: Any, error: Any, sequence: bool = False) -> dict:
    """A start op's completion -> {"choice", "targets", "phrase"}: what was asked in a word, the nodes hit in short
    ("n2 (leader of key 6)", "n1 | n2 n3"), and a verb phrase for a sentence ("killed n2, leader of key 6")."""
    asked_d = asked if isinstance(asked, dict) else {}
    choice = asked if isinstance(asked, str) else asked_d.get("drawn") or asked_d.get("shape") \
        or asked_d.get("behaviour") or asked_d.get("target")
    if isinstance(value, dict):
        choice = value.get("drawn") or value.get("shape") or value.get("behaviour") or choice
    if f == "strobe-clock":
        choice = "strobe"
    if not isinstance(value, dict):
        what = choice if isinstance(choice, str) and choice else _short(asked, 60) if asked is not None else f
        if error:
            return {"choice": choice, "targets": f"asked {what}; failed", "phrase": f"(asked {what}, failed: "
                    f"{_short(error, 80)})"}
        if value is None:
            return {"choice": choice, "targets": f"asked {what}" if asked is not None else "",
                    "phrase": f"(asked {what})" if asked is not None else ""}
        return {"choice": choice, "targets": _short(value, 60), "phrase": _short(value, 60)}
    if value.get("skipped"):
        return {"choice": choice, "targets": f"skipped: {value['skipped']}",
                "phrase": f"did nothing ({value['skipped']})"}
    role = _role_of({**asked_d, **value})
    if sequence or any(k in value for k in ("killed", "isr-before", "restarted")):
        return {"choice": choice, **_describe_sequence(value)}
    if "groups" in value or "cut" in value:
        return {"choice": choice, **_describe_partition(value, role)}
    nodes = _names(value.get("nodes") or [])
    if "delta-ms" in value:
        amount = value["delta-ms"]
        amount = f"±{abs(amount):g} ms" if isinstance(amount, (int, float)) else f"{amount} ms"
        return {"choice": choice, "targets": f"{nodes} {amount} (strobe)",
                "phrase": f"strobed the clock of {nodes} by {amount}"}
    if "ms" in value:
        return {"choice": choice, "targets": f"{nodes} {_signed_ms(value['ms'])}",
                "phrase": f"skewed {nodes} by {_signed_ms(value['ms'])}"}
    verb = (_registry()["packages"].get(fault) or {}).get("verb", "hit")
    if "behaviour" in value:
        return {"choice": choice, "targets": f"{nodes} ({value['behaviour']})",
                "phrase": f"{verb} {nodes} ({value['behaviour']})"}
    if value.get("fallback"):
        role = f"{value.get('target', 'the role')} not found, a random node"
    if not nodes:
        return {"choice": choice, "targets": _short(value, 80), "phrase": f"{_short(value, 80)}"}
    return {"choice": choice, "targets": f"{nodes} ({role})" if role else nodes,
            "phrase": f"{verb} {nodes}, {role}" if role else f"{verb} {nodes}"}


def _describe_partition(value: dict, role: str | None) -> dict:
    groups = value.get("groups")
    if isinstance(groups, list) and groups:
        grouped = " | ".join(_names(g) for g in groups)
    elif isinstance(value.get("cut"), list):
        grouped = "links " + ", ".join("–".join(str(x) for x in e) for e in value["cut"][:6] if isinstance(e, list))
    else:
        grouped = "?"
    lone = value.get("isolated")
    if lone is None and role and isinstance(groups, list) and len(groups) == 2 and len(groups[0]) == 1:
        lone = groups[0][0]  # a role shape isolates one node: the smaller group
    clients = value.get("clients-cut-from")
    extra = f"; clients cut off {_names(clients)}" if clients else ""
    if lone is not None and role:
        how = ", from its followers" if value.get("shape") == "leader-from-followers" else ""
        return {"targets": f"{grouped} ({lone}: {role}){extra}", "phrase": f"isolated {lone}, {role}{how}{extra}"}
    return {"targets": grouped + extra, "phrase": f"cut {grouped}{extra}"}


def _describe_sequence(value: dict) -> dict:
    """A sequence's completion records each step: who was cut and killed, the ISR on the way, who was elected."""
    key = value.get("key")
    parts: list[str] = []
    short: list[str] = []
    of_key = f", leader of key {key}" if key is not None else ""
    if value.get("killed"):
        verb = "isolated and killed" if "isr-before-kill" in value else "killed"
        who = value.get("served-during-partition") or value["killed"]
        if value.get("served-during-partition"):
            parts.append(f"isolated broker {value.get('leader')}, leader of key {key}, until {who} led, then killed it")
        else:
            parts.append(f"{verb} {who}{of_key}")
        short.append(f"killed {value['killed']}")
    elif key is not None:
        parts.append(f"aimed at key {key}")
        short.append(f"key {key}")
    if "isr-before" in value and "isr-before-kill" in value:
        isr = f"ISR {_short(value['isr-before'], 30)} → {_short(value['isr-before-kill'], 30)}"
        parts.append(isr)
        short.append(isr)
    if "elected" in value:
        elected = value["elected"]
        parts.append(f"broker {elected} elected" if elected is not None else "no leader elected")
        short.append(f"elected {elected}")
    if value.get("restarted"):
        short.append(f"restarted {_names(value['restarted'])}")
    return {"targets": ", ".join(short), "phrase": ", ".join(parts)}


def _title(label: str, choice: Any, sequence: bool) -> str:
    """'partition leader', 'kill controller', 'packet loss': the package's label and what its op asked for, when
    that says more than a random pick of nodes does."""
    if sequence or not isinstance(choice, str) or not choice:
        return label
    if choice in ("one", "minority", "majority", "all", "cut") or re.fullmatch(r"[\w-]*\d+(\+[\w-]*\d+)*", choice):
        return label
    return f"{label} {choice}"


def _lanes(intervals: list[dict]) -> None:
    """Give each interval the lowest lane no other interval occupies while it is active (0 when none is)."""
    lane_ends: list[float] = []
    for iv in sorted(intervals, key=lambda iv: (iv["start"], iv["end"])):
        for lane, busy_until in enumerate(lane_ends):
            if busy_until <= iv["start"]:
                break
        else:
            lane = len(lane_ends)
            lane_ends.append(0.0)
        lane_ends[lane] = max(iv["end"], iv["start"])
        iv["lane"] = lane


def fault_intervals(nemesis_events: list[dict], end: float | None) -> list[dict]:
    """Nemesis ops -> fault intervals in seconds, ordered by start, paired through the nemesis registry.

    An interval spans a package's start op (its invocation) to its stop op's completion, as Jepsen shades them;
    a fault never stopped runs to `end` and is "open". Each is {"fault" (package name), "label", "color", "f",
    "start", "end", "open", "asked" (the start invocation's value), "value" (its completion's), "error",
    "heal_error", "title" ("partition leader"), "targets" ("n1 | n2 n3"), "phrase" ("isolated n1, leader of
    key 6"), "lane", "id"}. Faults of different packages may overlap: overlapping intervals get different lanes.
    An f the registry does not know (a foreign history) is grey and labelled with its f; its `start-X` pairs with
    `stop-X`, and any other such op is an interval from its invocation to its completion.
    """
    reg = _registry()
    intervals: list[dict] = []
    active: dict[str, list[dict]] = {}   # package (or unknown start f) -> its open intervals
    pending: dict[str, tuple[float, Any]] = {}  # f -> (invocation time, invocation value)
    for ev in nemesis_events:
        f, t = str(ev.get("f")), ev.get("time")
        if not isinstance(t, (int, float)):
            continue
        s = t / 1e9
        if ev.get("type") == "invoke":
            pending[f] = (s, ev.get("value"))
            continue
        started, asked = pending.pop(f, (s, None))
        owner = reg["by_f"].get(f)
        if owner is None:  # not in the registry
            if f.startswith("stop-") and active.get("start-" + f[5:]):
                owner = ("start-" + f[5:], "stop")
            else:
                owner = (f, "start")
        name, role = owner
        if role == "stop":
            for iv in active.pop(name, []):
                iv["end"], iv["open"] = s, False
                iv["heal_error"] = ev.get("error")
            continue
        d = reg["packages"].get(name)
        iv = {"fault": name, "f": f, "label": d["label"] if d else f, "color": d["color"] if d else UNKNOWN_FAULT_COLOR,
              "known": d is not None, "start": started, "end": None, "open": True, "asked": asked,
              "value": ev.get("value"), "error": ev.get("error"), "heal_error": None}
        iv.update(_describe(name, f, asked, iv["value"], iv["error"], name in reg["sequences"]))
        iv["title"] = _title(iv["label"], iv.pop("choice"), name in reg["sequences"])
        intervals.append(iv)
        if d is None and not f.startswith("start-"):
            iv["end"], iv["open"] = s, False  # an unknown one-shot op: its own duration
        else:
            active.setdefault(name, []).append(iv)
    for iv in intervals:
        if iv["end"] is None:
            iv["end"] = max(end, iv["start"]) if end is not None else iv["start"]
    intervals.sort(key=lambda iv: iv["start"])
    for n, iv in enumerate(intervals):
        iv["id"] = n
    _lanes(intervals)
    return intervals


def attribute(anomaly_time: float | None, intervals: list[dict]) -> dict | None:
    """The fault an anomaly at `anomaly_time` (seconds) followed: the one active then (the latest started, if
    several are, preferring those whose start did not fail), else the one healed most recently before it; None
    if no fault had started by then.

    Returns {"interval", "state" ("active" | "healed"), "since" (seconds since its start, or since its heal),
    "also" (the other faults active then)}.
    """
    if anomaly_time is None:
        return None
    t = anomaly_time
    active = [iv for iv in intervals if iv["start"] <= t <= iv["end"]]
    if active:  # a fault that did take effect before one whose start failed, then the latest started
        iv = max(active, key=lambda iv: (not iv.get("error"), iv["start"]))
        return {"interval": iv, "state": "active", "since": t - iv["start"],
                "also": [o for o in active if o is not iv]}
    healed = [iv for iv in intervals if iv["end"] <= t and not iv["open"]]
    if healed:
        iv = max(healed, key=lambda iv: (iv["end"], iv["start"]))
        return {"interval": iv, "state": "healed", "since": t - iv["end"], "also": []}
    return None


def attribution_sentence(what: str, anomaly_time: float, attr: dict | None, any_faults: bool = True) -> str:
    """'lost-write of key 6 at 62.2 s, 1.8 s after `partition leader` isolated n1, leader of key 6'."""
    head = f"{what} at {anomaly_time:.1f} s"
    if attr is None:
        return f"{head}, before any fault" if any_faults else f"{head}; the run had no fault"
    iv = attr["interval"]
    phrase = f" {iv['phrase']}" if iv.get("phrase") else ""
    if attr["state"] == "active":
        text = f"{head}, {attr['since']:.1f} s after `{iv['title']}`{phrase}"
        if attr["also"]:
            text += " (also active: " + ", ".join(f"`{o['title']}`" for o in attr["also"]) + ")"
        return text
    return (f"{head}, {attr['since']:.1f} s after the heal of `{iv['title']}`"
            + (f", which{phrase}" if phrase else "") + f" ({iv['start']:.1f}–{iv['end']:.1f} s)")


def _anomaly_ops(results: dict) -> set[int]:
    ops: set[int] = set()
    for recs in (results.get("anomalies") or {}).values():
        for rec in recs[:MAX_RECORDS_PER_TYPE]:
            ops.update(i for i in rec.get("ops", []) if isinstance(i, int))
    return ops


def load_run(run_dir: Path) -> dict:
    """Everything the run template shows, as plain data."""
    notes: list[str] = []
    test = _read_json(run_dir / "test.json", notes, "test.json is missing: the run's settings are unknown.")
    results = _read_json(run_dir / "results.json", notes,
                         "results.json is missing: the harness stopped before the check phase. The history below "
                         f"can still be judged offline: acked check {run_dir / 'history.jsonl'}")
    history_path = run_dir / "history.jsonl"
    scan = None
    if history_path.exists():
        has_counts = bool(((results or {}).get("stats") or {}).get("by-f"))
        scan = read_history_facts(history_path, _anomaly_ops(results or {}), count=not has_counts)
        if scan.not_a_history:
            notes.append(f"history.jsonl is not a history ({scan.not_a_history}); nothing of it is shown.")
        elif scan.truncated:
            notes.append("history.jsonl ends in a cut-off line: the run stopped while writing it. Everything "
                         "before that line is used; the cut-off line is skipped.")
        elif scan.bad_lines:
            notes.append(f"history.jsonl has {len(scan.bad_lines)} line(s) that are not JSON events; they are "
                         "skipped.")
        if scan.events == 0 and not scan.not_a_history:
            notes.append("history.jsonl is empty: no operation was recorded.")
    else:
        notes.append("history.jsonl is missing: no operation was recorded.")
    if (run_dir / "harness-error.txt").exists():
        notes.append("A phase of the harness failed; harness-error.txt has the traceback.")
    res = results or {}
    harness = res.get("harness") or {}
    valid = res.get("valid") if results is not None else None
    verdict = {True: "valid", False: "invalid"}.get(valid, "unknown")
    end = None
    perf = res.get("perf") or {}
    if scan is not None and scan.last_time is not None:
        end = scan.last_time
    intervals = fault_intervals(scan.nemesis, end) if scan else []
    anomalies = _anomaly_sections(res, scan, intervals)
    stats = res.get("stats") or {}
    by_f = stats.get("by-f") or (scan.counts if scan else {})
    nemesis_fs = {str(e.get("f")) for e in scan.nemesis} if scan else set()
    by_f = {f: c for f, c in by_f.items() if f in CLIENT_FUNCTIONS}  # faults have their own table
    plots = _plots(perf, intervals, res, end, nemesis_fs, notes)
    return {
        "dir": str(run_dir), "name": _run_name(run_dir, test), "stamp": run_dir.name,
        "verdict": verdict, "bad_types": res.get("bad-anomaly-types") or [],
        "anomaly_types": res.get("anomaly-types") or [],
        "send_failures": res.get("send-failures"),
        "unknown_reason": res.get("unknown-reason") if results is not None
        else "not checked: the run left no results.json",
        "checked": results is not None,
        "expectation": expectation(((test or {}).get("test") or {}).get("profile"),
                                   ((test or {}).get("test") or {}).get("nemeses"),
                                   valid if results is not None else "unknown", res.get("bad-anomaly-types") or []),
        "notes": notes,
        "harness": {"error": None if _interruption(harness, res) and str(harness.get("error")).startswith(
                        INTERRUPTION_ERRORS) else harness.get("error"),
                    "errors": harness.get("errors") or [],
                    "interrupted": harness.get("interrupted"), "interruption": _interruption(harness, res),
                    "nemesis_errors": harness.get("nemesis-errors") or [],
                    "main": harness.get("main-phase") or {}},
        "test": _test_view(test),
        "totals": _totals(stats, by_f, scan),
        "by_f": {f: by_f[f] for f in sorted(by_f)},
        "options": res.get("options") or {},
        "anomalies": anomalies,
        "anomaly_faults": _anomaly_fault_summary(anomalies),
        "problems": (res.get("history-problems") or [])[:MAX_PROBLEMS],
        "problem_count": res.get("history-problem-count", 0),
        "faults": _fault_rows(intervals, anomalies),
        "fault_legend": _fault_legend(intervals),
        "fault_count": len(intervals),
        "plots": plots,
        "files": _files(run_dir),
        "logs": _logs(run_dir),
        "history": {"events": scan.events if scan else 0, "span": end,
                    "open_at_end": scan.open_at_end if scan else 0} if scan else None,
    }


#: how the runner's error begins when the run was stopped rather than broken: the interruption note says it
INTERRUPTION_ERRORS = ("interrupted during ", "timed out during ")


def _interruption(harness: dict, res: dict) -> str | None:
    """The one note of an interrupted or timed-out run: where it stopped, what was still done, what the verdict
    judges. (The runner's error says the same words; it is not a second note.)"""
    if not harness.get("interrupted"):
        return None
    error = str(harness.get("error") or "")
    drained = ("the final drain was skipped, so acknowledged writes it did not read are not counted as lost"
               if res.get("history-cut") else "the history was drained after it")
    if error.startswith("timed out during "):
        return (f"The run {error} (the test's time limit): its faults were healed, {drained}, and its cluster "
                f"was released. The verdict judges the history up to that point.")
    where = f" during {error.removeprefix('interrupted during ')}" if error.startswith("interrupted during ") else ""
    return (f"The run was interrupted{where} (Ctrl-C or SIGTERM): its faults were healed, {drained}, and its "
            f"cluster was torn down. The verdict judges the history up to the interrupt.")


def _run_name(run_dir: Path, test: dict | None) -> str:
    if test and isinstance(test.get("test"), dict) and test["test"].get("name"):
        return str(test["test"]["name"])
    return run_dir.parent.name


def _test_view(test: dict | None) -> dict | None:
    if not test:
        return None
    d = test.get("test") if isinstance(test.get("test"), dict) else {}
    eff = d.get("effective") or {}
    nemeses = d.get("nemeses")
    summary = [
        ("profile", d.get("profile")), ("backend", d.get("backend")), ("nodes", d.get("nodes")),
        ("client", d.get("client")),
        ("concurrency", f"{eff['concurrency']} processes" if "concurrency" in eff else d.get("concurrency")),
        ("nemeses", ", ".join(nemeses) if nemeses else "none" if nemeses is not None else None),
        ("nemesis interval", _secs(d.get("nemesis_interval"))),
        ("kill target", d.get("kill_target") if nemeses and any(str(n).partition(":")[0] == "kill"
                                                                for n in nemeses) else None),
        ("time limit", _secs(d.get("time_limit"))), ("rate", f"{d['rate']} ops/s" if d.get("rate") else
                                                     "unlimited" if d.get("rate") == 0 else None),
        ("sub-via", eff.get("sub_via") or d.get("sub_via")), ("delivery", eff.get("delivery") or d.get("delivery")),
        ("seed", test.get("seed", d.get("seed"))), ("started", test.get("started")),
    ]
    kafka = {kind: eff.get(kind) or d.get(kind) or {} for kind in ("producer", "consumer", "topic", "broker")}
    return {"summary": [(k, v) for k, v in summary if v not in (None, "")],
            "kafka": {k: sorted(v.items()) for k, v in kafka.items() if v},
            "versions": sorted((test.get("versions") or {}).items()),
            "json": orjson.dumps(test, option=orjson.OPT_INDENT_2).decode()[:200_000]}


def _secs(v) -> str | None:
    return None if v is None else f"{v:g} s" if isinstance(v, (int, float)) else str(v)


def _totals(stats: dict, by_f: dict, scan: HistoryFacts | None) -> list[tuple[str, Any, str]]:
    rows = []
    for key, label, hint in (("acknowledged", "acknowledged", "values whose send completed ok"),
                             ("read", "read", "distinct values returned by ok polls"),
                             ("acknowledged-and-read", "acknowledged and read", ""),
                             ("acknowledged-but-never-read", "acknowledged but never read",
                              "after the final drain; see unseen / lost-write")):
        if key in stats:
            rows.append((label, stats[key], hint))
    if by_f:  # the run's totals (client_ops): the same counts as the terminal's verdict line and the runs index
        rows.append(("client ops completed", client_ops_text(client_ops(by_f)),
                     "every client op, the final drain's included; fail: certainly not done; info: may or may "
                     "not have happened"))
    if "keys" in stats:
        rows.append(("keys", stats["keys"], "partitions written or read"))
    events = stats.get("events", scan.events if scan else None)
    if events is not None:
        rows.append(("history events", events, ""))
    return rows


def _short(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return text if len(text) <= limit else text[:limit] + f" … ({len(text) - limit} more characters)"


def _focus(value: Any, keys: set[str] | None) -> tuple[Any, int]:
    """A poll's records of `keys` only (the rest is noise for this anomaly) and how many other keys it read."""
    if not keys or not isinstance(value, list):
        return value, 0
    out, hidden = [], 0
    for mop in value:
        if isinstance(mop, list) and len(mop) == 2 and mop[0] == "poll" and isinstance(mop[1], dict):
            kept = {k: v for k, v in mop[1].items() if k in keys}
            hidden += len(mop[1]) - len(kept)
            out.append(["poll", kept])
        else:
            out.append(mop)
    return out, hidden


def _row(ev: dict, role: str = "", keys: set[str] | None = None) -> dict:
    t = ev.get("time")
    value, hidden = _focus(ev.get("value"), keys)
    text = _short(value)
    if hidden:
        text += f"  (+ {hidden} other key{'s' if hidden > 1 else ''})"
    return {"index": ev.get("index"), "time": f"{t / 1e9:.3f}" if isinstance(t, (int, float)) else "",
            "process": ev.get("process"), "type": ev.get("type"), "f": ev.get("f"),
            "value": text, "error": _short(ev["error"], 120) if ev.get("error") else "",
            "role": role}


# Worst first: what breaks the log itself, then what breaks reading it, then ordering.
SEVERITY = ["lost-write", "inconsistent-offsets", "replica-divergence", "G1a", "unexpected-value", "duplicate", "unseen",
            "precommitted-read", "G1c", "G0", "poll-skip", "nonmonotonic-poll", "int-poll-skip",
            "int-nonmonotonic-poll", "nonmonotonic-send", "int-nonmonotonic-send", "offset-order-realtime",
            "int-send-skip", "committed-offset-regression"]


def _severity(kind: str) -> int:
    base = kind.replace("-process", "").replace("-realtime", "")
    return SEVERITY.index(base) if base in SEVERITY else len(SEVERITY)


def _op_time(scan: HistoryFacts | None, ops: list) -> float | None:
    """The time (seconds) of the first cited op whose history line was read."""
    for i in ops:
        ev = scan.rows.get(i) if scan is not None and isinstance(i, int) else None
        if ev is not None and isinstance(ev.get("time"), (int, float)):
            return ev["time"] / 1e9
    return None


def _cause(kind: str, rec: dict, t: float | None, intervals: list[dict]) -> dict | None:
    """What the report shows of the fault an anomaly record followed (see `attribute`)."""
    if t is None or not intervals:
        return None
    what = f"{kind} of key {rec['key']}" if rec.get("key") is not None else kind
    attr = attribute(t, intervals)
    sentence = attribution_sentence(what, t, attr)
    # the sentence in pieces, so the template can set the fault titles (between backticks) as code
    pieces = [(text, n % 2 == 1) for n, text in enumerate(sentence.split("`")) if text]
    iv = attr["interval"] if attr else None
    return {"sentence": sentence, "pieces": pieces, "state": attr["state"] if attr else "none",
            "fault": iv["fault"] if iv else None, "label": iv["label"] if iv else "no fault yet",
            "color": iv["color"] if iv else "#cccccc", "id": iv["id"] if iv else None}


def _anomaly_fault_summary(sections: list[dict]) -> list[dict]:
    """Per anomaly type, the faults its shown records followed: [{"type", "count", "shown", "faults": [...]}]."""
    out = []
    for s in sections:
        by: dict[str, dict] = {}
        for r in s["records"]:
            c = r.get("cause")
            if c is None:
                continue
            e = by.setdefault(c["label"], {"label": c["label"], "color": c["color"], "n": 0, "active": 0,
                                           "healed": 0})
            e["n"] += 1
            e["active"] += c["state"] == "active"
            e["healed"] += c["state"] == "healed"
        out.append({"type": s["type"], "bad": s["bad"], "count": s["count"], "shown": len(s["records"]),
                    "faults": sorted(by.values(), key=lambda e: (-e["n"], e["label"]))})
    return out


def _anomaly_sections(res: dict, scan: HistoryFacts | None, intervals: list[dict] = ()) -> list[dict]:
    anomalies = res.get("anomalies") or {}
    counts = res.get("anomaly-counts") or {}
    bad = set(res.get("bad-anomaly-types") or [])
    types = list(res.get("anomaly-types") or anomalies.keys())
    types.sort(key=lambda t: (t not in bad, _severity(t), t))
    sections = []
    for kind in types:
        recs = anomalies.get(kind) or []
        shown = []
        op_keys: dict[int, set[str] | None] = {}
        for rec in recs[:MAX_RECORDS_PER_TYPE]:
            fields = [(k, _short(v, 160)) for k, v in rec.items()
                      if k not in ("ops", "explanation", "steps", "cycle")]
            steps = [s.get("explanation") or _short(s, 200) for s in rec.get("steps") or []]
            t = _op_time(scan, rec.get("ops") or [])
            shown.append({"explanation": _paragraphs(rec.get("explanation")), "ops": rec.get("ops") or [],
                          "fields": fields, "steps": steps, "cause": _cause(kind, rec, t, list(intervals))})
            for i in rec.get("ops") or []:
                if "key" in rec and op_keys.get(i, set()) is not None:
                    op_keys.setdefault(i, set()).add(str(rec["key"]))
                else:
                    op_keys[i] = None  # a record without a key: show the whole op
        rows = []
        for i in op_keys:
            if scan is None or len(rows) >= MAX_HISTORY_ROWS_PER_TYPE:
                break
            if i in scan.invocations:
                rows.append(_row(scan.invocations[i], "invocation"))
            if i in scan.rows:
                rows.append(_row(scan.rows[i], "cited", op_keys[i]))
        sections.append({"type": kind, "bad": kind in bad, "count": counts.get(kind, len(recs)),
                         "meaning": TYPE_MEANINGS.get(kind)
                         or TYPE_MEANINGS.get(kind.replace("-process", "").replace("-realtime", ""), ""),
                         "records": shown, "more": max(0, counts.get(kind, len(recs)) - len(shown)),
                         "rows": rows, "open": kind in bad and len(sections) < 2,
                         "allowed_by": (res.get("allowed-anomalies") or {}).get(kind)})
    return sections


def _paragraphs(text: Any) -> list[str]:
    if not text:
        return []
    return [p.strip() for p in str(text).split("\n\n") if p.strip()]


def _fault_rows(intervals: list[dict], sections: list[dict] = ()) -> list[dict]:
    followed: dict[int, int] = {}
    for s in sections:
        for rec in s["records"]:
            c = rec.get("cause")
            if c and c["id"] is not None:
                followed[c["id"]] = followed.get(c["id"], 0) + 1
    rows = []
    for iv in intervals[:MAX_FAULT_ROWS]:
        rows.append({"id": iv["id"], "fault": iv["fault"], "label": iv["label"], "title": iv["title"],
                     "color": iv["color"], "lane": iv["lane"], "start": f"{iv['start']:.2f}",
                     "end": "not stopped" if iv["open"] else f"{iv['end']:.2f}",
                     "duration": f"{iv['end'] - iv['start']:.1f} s" + (" +" if iv["open"] else ""),
                     "targets": iv["targets"],
                     "value": _short(iv["value"], 400) if iv["value"] is not None else "",
                     "asked": _short(iv["asked"], 200) if iv["asked"] is not None else "",
                     "error": _short(iv["error"], 300) if iv.get("error") else "",
                     "heal_error": _short(iv["heal_error"], 300) if iv.get("heal_error") else "",
                     "anomalies": followed.get(iv["id"], 0)})
    return rows


def _fault_legend(intervals: list[dict]) -> list[dict]:
    """Each package once, in order of first appearance, with how many times its fault was started."""
    seen: dict[str, dict] = {}
    for iv in intervals:
        e = seen.setdefault(iv["fault"], {"fault": iv["fault"], "label": iv["label"], "color": iv["color"], "n": 0})
        e["n"] += 1
    return list(seen.values())


def _files(run_dir: Path) -> list[dict]:
    out = []
    for name in ("history.jsonl", "results.json", "test.json", "harness-error.txt"):
        p = run_dir / name
        if p.is_file():
            out.append({"href": name, "name": name, "size": _size(p.stat().st_size)})
    return out


def _logs(run_dir: Path) -> dict:
    logs = run_dir / "logs"
    files = []
    total = 0
    if logs.is_dir():
        for p in sorted(logs.rglob("*")):
            if p.is_file():
                total += 1
                if len(files) < MAX_LOG_FILES:
                    rel = p.relative_to(run_dir).as_posix()
                    files.append({"href": _href(rel), "name": p.relative_to(logs).as_posix(),
                                  "size": _size(p.stat().st_size)})
    return {"files": files, "total": total, "exists": logs.is_dir()}


def _href(rel: str) -> str:
    from urllib.parse import quote
    return quote(rel)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# ---- plots -----------------------------------------------------------------------------------------------------

PLOT_WIDTH = 11.5
PLOT_MARGINS = {"left": 0.07, "right": 0.83}  # the same for every plot, so their time axes line up


def _figure(height: float, top_inches: float = 0.35, bottom_inches: float = 0.5, hspace: float = 0.35):
    from matplotlib.figure import Figure  # object API: no pyplot, no global backend switch
    fig = Figure(figsize=(PLOT_WIDTH, height), dpi=100)
    fig.subplots_adjust(top=1 - top_inches / height, bottom=bottom_inches / height, hspace=hspace,
                        **PLOT_MARGINS)
    return fig


def _data_uri(fig) -> str:
    import matplotlib
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "acked"}):
        fig.savefig(buf, format="svg")
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode()


def _style(ax, xlabel="seconds since the run started", ylabel=""):
    ax.grid(True, color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel(xlabel, fontsize=9)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)


def _plain_log_ticks(ax):
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    lo, hi = ax.get_ylim()
    narrow = lo > 0 and hi / lo < 150  # within about two decades: label 1, 2, 5 of each, else decades only
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if narrow else (1.0,)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 100, not 10^2
    ax.yaxis.set_minor_formatter(NullFormatter())


LANE_INCHES = 0.12      # height of one lane of fault bars above a plot
LANE_GAP_INCHES = 0.035


def _strip_inches(intervals: list[dict]) -> float:
    """The height of the fault bars above a plot: one lane per fault active at the same time."""
    lanes = 1 + max((iv.get("lane", 0) for iv in intervals), default=-1)
    return lanes * (LANE_INCHES + LANE_GAP_INCHES) + 0.05 if lanes else 0.0


def _plot_title(ax, text: str, intervals: list[dict], fontsize: float = 10) -> None:
    """A plot's title, raised above its fault bars."""
    ax.set_title(text, fontsize=fontsize, loc="left", pad=6 + 72 * _strip_inches(intervals))


def _shade(ax, intervals: list[dict], bars: bool = True) -> list:
    """Shade each fault interval faintly behind the data and, with `bars`, draw it as a bar in its lane just above
    the plot (lane 0 nearest), labelled when it is wide enough, so faults active at the same time are each visible.
    Call after the x limits are set; returns one legend handle per package."""
    from matplotlib.patches import Patch, Rectangle
    from matplotlib.transforms import blended_transform_factory
    handles, seen = [], set()
    fig = ax.figure
    pos = ax.get_position()
    ax_h = max(pos.height * fig.get_figheight(), 0.1)  # inches
    ax_w = max(pos.width * fig.get_figwidth(), 0.1)
    lo, hi = ax.get_xlim()
    span = max(hi - lo, 1e-9)
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for iv in intervals:
        color = iv.get("color") or UNKNOWN_FAULT_COLOR
        start, stop = iv["start"], max(iv["end"], iv["start"])
        ax.axvspan(start, stop, color=color, alpha=0.10, linewidth=0, zorder=0)
        if bars:
            width = max(stop - start, span * 0.004)  # an instant still shows
            y = 1 + (0.05 + iv.get("lane", 0) * (LANE_INCHES + LANE_GAP_INCHES)) / ax_h
            failed = bool(iv.get("error"))  # a start that failed may have done nothing: hatched, not solid
            ax.add_patch(Rectangle((start, y), width, LANE_INCHES / ax_h, transform=trans, clip_on=False,
                                   facecolor="white" if failed else color, edgecolor=color, linewidth=0.8,
                                   hatch="/////" if failed else None, alpha=0.85, zorder=3))
            inches = width / span * ax_w
            text = next((t for t in (iv.get("title"), iv.get("label")) if t and len(t) * 0.055 + 0.08 < inches), None)
            if text:
                ax.text(start + width / 2, y + LANE_INCHES / ax_h / 2, text, transform=trans, ha="center",
                        va="center", fontsize=6.5, color=color if failed else "white", clip_on=False, zorder=4,
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6} if failed else None)
        if iv["fault"] not in seen:
            seen.add(iv["fault"])
            handles.append(Patch(facecolor=color, alpha=0.85, label=f"{iv.get('label', iv['fault'])} (fault)"))
    return handles


def _series_style(name: str) -> tuple[str, str, str]:
    f, _, outcome = name.rpartition(" ")
    return f, OUTCOME_COLORS.get(outcome, "#555555"), F_STYLES.get(f, ":")


def _legend(ax, extra=()):
    handles, labels = ax.get_legend_handles_labels()
    handles += list(extra)
    labels += [h.get_label() for h in extra]
    if handles:
        ax.legend(handles, labels, fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _xlim(ax, end):
    if end:
        ax.set_xlim(0, end * 1.01)


def _series_order(name: str):
    f, _, outcome = name.rpartition(" ")
    return (list(F_STYLES).index(f) if f in F_STYLES else len(F_STYLES), f, ["ok", "info", "fail"].index(outcome)
            if outcome in ("ok", "info", "fail") else 3)


def _display_bucket(series: dict, bucket: float, points: int = 80, shortest: float = 0.25) -> float:
    """A display bucket that leaves about `points` points over the run, and no shorter than `shortest` seconds:
    a rate over a few milliseconds is mostly noise."""
    end = max((pts[-1][0] for pts in series.values() if pts), default=0)
    if bucket <= 0 or end <= 0:
        return bucket
    return bucket * max(1, round(max(end / points, shortest) / bucket))


def _dense(pts: list, bucket: float) -> bool:
    """Whether a series has points in most buckets of its span (else lines between them would invent a trend)."""
    if len(pts) < 20 or bucket <= 0:
        return False
    return len(pts) >= 0.5 * ((pts[-1][0] - pts[0][0]) / bucket + 1)


def _broken_at_gaps(pts: list, bucket: float, column: int) -> tuple[list, list]:
    """x and y of one quantile column, with a break (NaN) wherever no op completed for more than a
    bucket: a line across the gap would draw latencies nobody measured (say through a leader kill,
    when nothing completes until the op timeouts)."""
    xs: list[float] = []
    ys: list[float] = []
    for i, p in enumerate(pts):
        if i and bucket > 0 and p[0] - pts[i - 1][0] > 1.5 * bucket:
            xs.append((p[0] + pts[i - 1][0]) / 2)
            ys.append(float("nan"))
        xs.append(p[0])
        ys.append(max(p[column], 1e-3))
    return xs, ys


def _rebin(pts: list, bucket: float, width: float, c0: float) -> list:
    """Average a rate series over display buckets of n of its own buckets (c0: the centre of its bucket 0);
    buckets without completions count as 0."""
    n = max(1, round(width / bucket)) if bucket > 0 else 1
    if not pts or n == 1:
        return pts
    sums: dict[int, float] = {}
    for t, rate in pts:
        b = round((t - c0) / bucket) // n
        sums[b] = sums.get(b, 0.0) + rate / n
    return [[c0 + (b * n + (n - 1) / 2) * bucket, sums.get(b, 0.0)] for b in range(min(sums), max(sums) + 1)]


def plot_throughput(perf: dict, intervals: list[dict], end: float | None,
                    nemesis_fs: set[str] = frozenset()) -> str | None:
    series = _client_series(perf.get("throughput") or {}, set(nemesis_fs))
    if not any(series.values()):
        return None
    strip = _strip_inches(intervals)
    fig = _figure(3.2 + strip, top_inches=0.35 + strip)
    ax = fig.add_subplot()
    bucket = perf.get("bucket-seconds") or 0
    width = _display_bucket(series, bucket)
    c0 = min(pts[0][0] for pts in (perf.get("throughput") or {}).values() if pts)  # every series' bucket grid
    for name in sorted(series, key=_series_order):
        pts = _rebin(series[name], bucket, width, c0)
        if not pts:
            continue
        _, color, ls = _series_style(name)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], ls, color=color, linewidth=1.4, label=name)
    _style(ax, ylabel="completions per second")
    ax.set_ylim(bottom=0)
    _xlim(ax, end)
    _legend(ax, _shade(ax, intervals))
    _plot_title(ax, f"Throughput (completions per second, averaged over {width:.3g} s)", intervals)
    return _data_uri(fig)


def _client_series(series: dict, nemesis_fs: set[str]) -> dict:
    """Series of client ops only: nemesis ops and client crashes are instants, not requests."""
    return {k: v for k, v in series.items() if v and k.rpartition(" ")[0] not in nemesis_fs | {"crash"}}


def plot_latency(perf: dict, intervals: list[dict], end: float | None, nemesis_fs: set[str] = frozenset()) -> str | None:
    """Jepsen's latency graph as quantiles: one panel per request kind, p50 solid and p99 dotted per outcome."""
    series = _client_series(perf.get("latency") or {}, set(nemesis_fs))
    if not series:
        return None
    panels: dict[str, list[str]] = {}
    for name in series:
        f = name.rpartition(" ")[0]
        panels.setdefault(f if f in F_STYLES else "assign / subscribe", []).append(name)
    order = sorted(panels, key=lambda p: (p not in F_STYLES, list(F_STYLES).index(p) if p in F_STYLES else 0, p))
    n_panels = len(order)
    strip = _strip_inches(intervals)
    # each panel keeps its height and the gap above it grows by the fault bars' height
    panel = (2.3 * n_panels - 0.35) / (n_panels + (n_panels - 1) * 0.35)
    fig = _figure(2.3 * n_panels + 0.5 + strip * n_panels, top_inches=0.35 + strip,
                  hspace=(0.35 * panel + strip) / panel)
    axes = fig.subplots(n_panels, 1, sharex=True, squeeze=False)[:, 0]
    bucket = perf.get("bucket-seconds") or 0
    for n, (ax, kind) in enumerate(zip(axes, order)):
        for name in sorted(panels[kind]):
            pts = series[name]
            f, color, ls = _series_style(name)
            label = name if kind not in F_STYLES else name.rpartition(" ")[2]
            if _dense(pts, bucket):
                ax.plot(*_broken_at_gaps(pts, bucket, 1), "-", color=color, linewidth=1.3, label=f"{label} p50")
                ax.plot(*_broken_at_gaps(pts, bucket, 3), ":", color=color, linewidth=1.1, label=f"{label} p99")
            else:  # sparse series (rare outcomes, short runs): markers only
                t = [p[0] for p in pts]
                ax.plot(t, [max(p[1], 1e-3) for p in pts], "o", color=color, markersize=4, label=f"{label} p50")
                ax.plot(t, [max(p[3], 1e-3) for p in pts], "^", color=color, markersize=4, markerfacecolor="none",
                        label=f"{label} p99")
        ax.set_yscale("log")
        _plain_log_ticks(ax)
        _style(ax, xlabel="seconds since the run started" if n == len(order) - 1 else "", ylabel="latency (ms)")
        _plot_title(ax, f"{kind} latency", intervals)
        _xlim(ax, end)
        shade = _shade(ax, intervals)
        _legend(ax, shade if n == 0 else ())  # the faults are the same in every panel: listed once, at the top
    return _data_uri(fig)


def plot_unseen(perf: dict, intervals: list[dict], end: float | None) -> str | None:
    samples = perf.get("unseen") or []
    if not samples:
        return None
    strip = _strip_inches(intervals)
    fig = _figure(2.6 + strip, top_inches=0.35 + strip)
    ax = fig.add_subplot()
    ax.step([s["time"] for s in samples], [s["total"] for s in samples], where="post", color="#1d4e89",
            linewidth=1.4, label="acknowledged,\nnot yet read")
    _style(ax, ylabel="values")
    ax.set_ylim(bottom=0)
    _xlim(ax, end)
    _legend(ax, _shade(ax, intervals))
    _plot_title(ax, "Unseen over time (should fall to 0 after the final drain)", intervals)
    return _data_uri(fig)


def _offset_keys(res: dict, offsets: dict) -> list[str]:
    """Keys worth a plot: those named by bad anomalies, then those with unseen values, then the busiest."""
    chosen: list[str] = []

    def add(k):
        k = str(k)
        if k in offsets and k not in chosen and len(chosen) < MAX_OFFSET_KEYS:
            chosen.append(k)
    bad = res.get("bad-anomaly-types") or []
    for kind in bad + [t for t in res.get("anomaly-types") or [] if t not in bad]:
        for rec in (res.get("anomalies") or {}).get(kind, [])[:20]:
            if "key" in rec:
                add(rec["key"])
    unseen = (res.get("stats") or {}).get("unseen-by-key") or {}
    for k in sorted(unseen, key=lambda k: -unseen[k]):
        add(k)

    def last_offset(k):
        pts = [p for p in offsets[k] if p[1] is not None]
        return pts[-1][1] if pts else -1
    for k in sorted(offsets, key=lambda k: (-last_offset(k), k)):
        add(k)
    return chosen


def plot_offsets(res: dict, intervals: list[dict], end: float | None) -> tuple[str | None, list[str]]:
    offsets = (res.get("perf") or {}).get("offsets") or {}
    keys = _offset_keys(res, offsets)
    if not keys:
        return None, []
    cols = 3 if len(keys) > 2 else len(keys)
    rows = (len(keys) + cols - 1) // cols
    fig = _figure(2.2 * rows + 0.4, top_inches=0.3, hspace=0.45)
    fig.subplots_adjust(wspace=0.25)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    for n, ax in enumerate(axes.flat):
        if n >= len(keys):
            ax.set_visible(False)
            continue
        k = keys[n]
        pts = offsets[k]
        for col, label, color, ls in ((1, "max acknowledged offset", "#2b9348", "-"),
                                      (2, "max read offset", "#1d4e89", "--")):
            xs = [p[0] for p in pts if p[col] is not None]
            ys = [p[col] for p in pts if p[col] is not None]
            ax.step(xs, ys, ls, where="post", color=color, linewidth=1.3, label=label)
        _style(ax, xlabel="seconds" if n >= len(keys) - cols else "", ylabel="offset" if n % cols == 0 else "")
        ax.set_title(f"key {k}", fontsize=9, loc="left")
        _xlim(ax, end)
        _shade(ax, intervals, bars=False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=8, frameon=False, loc="upper left",
                   bbox_to_anchor=(PLOT_MARGINS["right"] + 0.01, 1 - 0.3 / (2.2 * rows + 0.4)))
    return _data_uri(fig), keys


def _plots(perf: dict, intervals: list[dict], res: dict, end: float | None, nemesis_fs: set[str],
           notes: list[str]) -> dict:
    def attempt(name, fn, *args):
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 -- odd series cost one plot, never the report
            notes.append(f"The {name} plot could not be drawn: {type(e).__name__}: {e}")
            return None
    offsets, keys = attempt("offsets", plot_offsets, res, intervals, end) or (None, [])
    return {"throughput": attempt("throughput", plot_throughput, perf, intervals, end, nemesis_fs),
            "latency": attempt("latency", plot_latency, perf, intervals, end, nemesis_fs),
            "unseen": attempt("unseen", plot_unseen, perf, intervals, end), "offsets": offsets, "offset_keys": keys}


# ---- the results index -----------------------------------------------------------------------------------------

def summarize_run(run_dir: Path, root: Path) -> dict:
    notes: list[str] = []
    test = _read_json(run_dir / "test.json", notes, "no test.json")
    results = _read_json(run_dir / "results.json", notes, "no results.json")
    res = results or {}
    valid = res.get("valid") if results is not None else None
    verdict = {True: "valid", False: "invalid"}.get(valid, "unknown")
    d = (test or {}).get("test") or {}
    started = (test or {}).get("started")
    when = None
    if started:
        try:
            when = dt.datetime.fromisoformat(started)
        except ValueError:
            pass
    if when is None:
        try:
            when = dt.datetime.strptime(run_dir.name[:15], "%Y%m%dT%H%M%S")
        except ValueError:
            when = dt.datetime.fromtimestamp(run_dir.stat().st_mtime)
    unseen = ((res.get("perf") or {}).get("unseen") or [])
    main = ((res.get("harness") or {}).get("main-phase") or {})
    duration = unseen[-1]["time"] if unseen else main.get("seconds")
    counts = res.get("anomaly-counts") or {}
    rel = run_dir.relative_to(root).as_posix()
    link = f"{rel}/index.html" if (run_dir / "index.html").exists() else f"{rel}/"
    by_f = (res.get("stats") or {}).get("by-f")
    ops = client_ops(by_f) if by_f is not None else None
    return {
        "name": _run_name(run_dir, test), "stamp": run_dir.name, "when": when.strftime("%Y-%m-%d %H:%M:%S"),
        "sort": (when.timestamp(), run_dir.name), "verdict": verdict,
        "bad": [(t, counts.get(t)) for t in res.get("bad-anomaly-types") or []],
        "allowed": [(t, counts.get(t)) for t in res.get("anomaly-types") or []
                    if t not in (res.get("bad-anomaly-types") or [])],
        "profile": d.get("profile", ""), "nemeses": ", ".join(d.get("nemeses") or []) or ("none" if test else ""),
        "backend": d.get("backend", ""),
        "duration": f"{duration:.1f} s" if isinstance(duration, (int, float)) else "",
        "ops": sum(ops.values()) if ops else "", "ops_text": client_ops_text(ops) if ops else "",
        "error": (res.get("harness") or {}).get("error") or ("no results.json" if results is None else ""),
        "href": _href(link),
    }


# ---- plumbing --------------------------------------------------------------------------------------------------

_ENV = None


def _env():
    global _ENV
    if _ENV is None:
        import jinja2
        _ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                                  autoescape=jinja2.select_autoescape(["html", "j2"]),
                                  trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    return _ENV


def _now() -> str:
    return dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


__all__ = ["render", "render_run", "render_index", "load_run", "fault_intervals", "attribute", "attribution_sentence",
           "find_runs"]
