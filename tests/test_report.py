"""The HTML report: real run directories (checker output on generated histories, and a real standalone run)
rendered to index.html; assertions on what a reader needs, read back from the HTML."""
from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import orjson
import pytest

import checkers
import checkers.synth as synth
from harness import report
from harness.cli import main as acked
from harness.config import TestDescription
from harness.runner import _write_json, make_run_dir


# ---- run directories from generated histories -----------------------------------------------------------------

#: (start, stop as fractions of the run, start f, what its invocation asks, what its completion records, stop f)
KILL_THEN_PARTITION = (
    (0.2, 0.35, "kill", "leader", {"target": "leader", "nodes": ["n2"], "key": "5", "leader": 2, "isr": [1, 2, 3]},
     "start"),
    (0.5, 0.7, "start-partition", {"shape": "halves", "clients": "all"},
     {"shape": "halves", "clients": "all", "cut": [["n1", "n2"], ["n1", "n3"]], "groups": [["n1"], ["n2", "n3"]]},
     "stop-partition"),
)
#: a kill of key 1's leader, and while n2 is down a partition that isolates key 0's leader n1
OVERLAPPING = (
    (0.15, 0.45, "kill", "leader", {"target": "leader", "nodes": ["n2"], "key": "1", "leader": 2, "isr": [1, 2, 3]},
     "start"),
    (0.3, 0.6, "start-partition", {"shape": "leader", "clients": "all"},
     {"shape": "leader", "clients": "all", "cut": [["n1", "n2"], ["n1", "n3"]], "groups": [["n1"], ["n2", "n3"]],
      "key": "0", "leader": 1, "isolated": "n1"}, "stop-partition"),
)


def _history(seed: int, n_ops: int, lose_offsets=(), lose_keys=3, faults=KILL_THEN_PARTITION, scale=40) -> list[dict]:
    """A correct log-model history (checkers.synth), stretched to tens of seconds, with faults as the nemesis
    runner records them (an invoke and an info completion of process "nemesis" per op; by default a kill, then a
    partition), and optionally offsets removed from every read of the first keys (-> lost-write and friends)."""
    ev = synth.generate(seed, n_ops=n_ops, threads=6, active_keys=12)
    for e in ev:
        e["time"] *= scale
    end = ev[-1]["time"]
    for a, b, f1, asked, value, f2 in faults or ():
        for at, f, inv, v in ((a, f1, asked, value), (b, f2, None, {"nodes": value.get("nodes", [])})):
            ev.append({"time": int(at * end), "process": "nemesis", "type": "invoke", "f": f, "value": inv})
            ev.append({"time": int(at * end) + 10_000_000, "process": "nemesis", "type": "info", "f": f, "value": v})
    ev.sort(key=lambda e: e["time"])
    victims = {str(k) for k in range(lose_keys)}
    for e in ev:
        if lose_offsets and e["f"] == "poll" and e["type"] == "ok" and e["value"]:
            for k, recs in e["value"][0][1].items():
                if k in victims:
                    recs[:] = [r for r in recs if r[0] not in lose_offsets]
    for i, e in enumerate(ev):
        e["index"] = i
    return ev


def make_run(root: Path, name: str, events: list[dict] | None, *, started: str = "2026-11-25T12:00:00",
             with_results=True, stamp: dt.datetime | None = None) -> tuple[Path, dict | None]:
    """A run directory laid out as the runner leaves it: test.json, history.jsonl, results.json, logs/."""
    desc = TestDescription(name=name, profile="acks-1", backend="docker", nodes=3, nemeses=["kill", "partition"],
                           seed=7, producer={"linger.ms": "5"}).validate()
    run_dir = make_run_dir(root, name, now=stamp)
    _write_json(run_dir / "test.json", {"test": desc.to_dict(), "versions": {"python": "3.11.2"}, "seed": 7,
                                        "started": started})
    results = None
    if events is not None:
        with open(run_dir / "history.jsonl", "wb") as fh:
            for e in events:
                fh.write(orjson.dumps(e) + b"\n")
        if with_results:
            results = checkers.check(run_dir / "history.jsonl")
            results["harness"] = {"errors": [], "error": None, "interrupted": False, "nemesis-errors": [],
                                  "main-phase": {"seconds": 30.0, "ops": len(events) // 2, "ops-per-second": 50.0}}
            _write_json(run_dir / "results.json", results)
    (run_dir / "logs" / "n1").mkdir()
    (run_dir / "logs" / "n1" / "broker.log").write_text("INFO broker 1 started\n")
    (run_dir / "logs" / "clients.log").write_text("librdkafka says hi\n")
    return run_dir, results


class Page(HTMLParser):
    """The parts of a rendered page the tests look at."""

    def __init__(self, text: str):
        super().__init__()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []
        self.ids: set[str] = set()
        self.tags: list[str] = []
        self.text_parts: list[str] = []
        self.feed(text)
        self.text = " ".join(" ".join(self.text_parts).split())

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "href" in a:
            self.hrefs.append(a["href"])
        if "src" in a:
            self.srcs.append(a["src"])
        if "id" in a:
            self.ids.add(a["id"])

    def handle_endtag(self, tag):
        if self.tags and tag in ("style", "title"):
            self.tags.append("/" + tag)

    def handle_data(self, data):
        if self.tags and self.tags[-1] in ("style", "title"):
            return  # not text a reader sees
        self.text_parts.append(data)


def read_page(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def section_text(path: Path, element_id: str) -> str:
    """The visible text of the <section id=...> of a page."""
    raw = path.read_text(encoding="utf-8").split(f'id="{element_id}"', 1)[1].split("</section>", 1)[0]
    return Page("<p " + raw).text


def assert_self_contained_with_relative_links(path: Path, page: Page) -> None:
    assert "link" not in page.tags and "script" not in page.tags  # no external CSS or JS
    for src in page.srcs:
        assert src.startswith("data:image/svg+xml;base64,"), src[:60]
    for href in page.hrefs:
        if href.startswith("#"):  # a link within the page: to an anomaly, to a fault of the faults table
            assert href[1:] in page.ids, f"{href} from {path} points at no element"
            continue
        assert "://" not in href and not href.startswith("/"), href
        target = (path.parent / unquote(href)).resolve()
        assert target.exists(), f"{href} from {path} points at nothing"


@pytest.fixture(scope="module")
def lossy(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    run_dir, results = make_run(root, "lossy", _history(3, 1500, lose_offsets=(3, 4)))
    out = report.render(run_dir)
    return root, run_dir, results, out


# ---- tests ------------------------------------------------------------------------------------------------------

def test_invalid_run_shows_verdict_anomalies_explanations_and_the_cited_history_lines(lossy):
    root, run_dir, results, out = lossy
    assert out == run_dir / "index.html" and results["valid"] is False
    assert "lost-write" in results["bad-anomaly-types"]
    page = read_page(out)
    banner = section_text(out, "verdict")
    assert "INVALID" in banner and all(t in banner for t in results["bad-anomaly-types"])
    for kind in results["anomaly-types"]:
        assert f"anomaly-{kind}" in page.ids
        assert f"{kind} × {results['anomaly-counts'][kind]}" in page.text
        for rec in results["anomalies"][kind][:report.MAX_RECORDS_PER_TYPE]:
            assert " ".join(rec["explanation"].split()) in page.text
    # the lost write's sending op is a row of the history table, with its value as recorded
    history = [orjson.loads(line) for line in (run_dir / "history.jsonl").read_bytes().splitlines()]
    lost = results["anomalies"]["lost-write"][0]
    section = out.read_text().split('id="anomaly-lost-write"')[1].split("</section>")[0]
    for i in lost["ops"]:
        assert re.search(rf'<td class="num">{i}</td>', section), f"op {i} missing from the history table"
    sender = history[lost["ops"][0]]
    assert sender["f"] == "send"
    assert json.dumps(sender["value"], separators=(",", ":")) in section_text(out, "anomaly-lost-write")
    # totals straight from the checker's stats
    stats = results["stats"]
    assert f"{stats['acknowledged']} acknowledged " in page.text
    assert f"{stats['acknowledged-but-never-read']} acknowledged but never read" in page.text


def test_plots_are_embedded_svg_and_faults_are_listed(lossy):
    _, run_dir, results, out = lossy
    page = read_page(out)
    plots = [s for s in page.srcs if s.startswith("data:image/svg+xml;base64,")]
    assert len(plots) == 4  # throughput, latency, unseen, per-key offsets
    for p in plots:
        svg = base64.b64decode(p.split(",", 1)[1]).decode()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "http://" not in svg.split("<svg", 1)[1]. \
            replace("http://www.w3.org", "").replace("http://purl.org", "").replace("http://creativecommons.org", "")
    # the throughput plot shades both fault kinds, and its legend names them
    throughput = base64.b64decode(plots[0].split(",", 1)[1]).decode()
    assert "kill (fault)" in throughput and "partition (fault)" in throughput
    # the keys that lost writes are among the plotted ones
    m = re.search(r"Offset progress of keys ([\w, ]+)", page.text)
    assert m and {"0", "1", "2"} <= set(m.group(1).replace(",", " ").split())
    assert "Faults (2)" in page.text and "kill" in page.text and "partition" in page.text


def test_links_are_relative_and_point_at_existing_files(lossy):
    root, run_dir, _, out = lossy
    page = read_page(out)
    assert_self_contained_with_relative_links(out, page)
    for name in ("history.jsonl", "results.json", "test.json", "logs/n1/broker.log", "logs/clients.log"):
        assert name in page.hrefs, name
    assert "../../index.html" in page.hrefs and (root / "index.html").exists()


def test_valid_run_says_valid_and_lists_no_anomalies(tmp_path):
    run_dir, results = make_run(tmp_path, "clean", _history(4, 800))
    assert results["valid"] is True
    out = report.render(run_dir)
    page = read_page(out)
    assert section_text(out, "verdict").startswith("valid") and "INVALID" not in page.text
    assert "Anomalies None found." in page.text
    assert not [i for i in page.ids if i.startswith("anomaly-")]


def test_crashed_run_without_results_and_with_a_truncated_history_still_renders(tmp_path):
    run_dir, _ = make_run(tmp_path, "crashed", _history(5, 600), with_results=False)
    data = (run_dir / "history.jsonl").read_bytes()
    (run_dir / "history.jsonl").write_bytes(data[:len(data) // 2 + 7])  # cut mid-line
    (run_dir / "harness-error.txt").write_text("main failed: RuntimeError: broker gone\n")
    out = report.render(run_dir)
    page = read_page(out)
    assert section_text(out, "verdict").startswith("unknown not checked")
    assert "results.json is missing" in page.text and "cut-off line" in page.text
    assert "harness-error.txt" in page.hrefs
    # what the history holds is still shown: completions per function counted from it, and the faults
    assert re.search(r"\d+ ok, \d+ fail, \d+ info client ops completed", page.text)
    assert re.search(r"Faults \([12]\) kill × 1 .*# fault from \(s\) to \(s\) duration targets anomalies after error "
                     r"1 kill leader [\d.]+ [\d.]+ [\d.]+ s n2 \(leader of key 5\)", page.text)
    assert_self_contained_with_relative_links(out, page)
    index = read_page(tmp_path / "index.html")
    assert "crashed" in index.text and "no results.json" in index.text


def test_run_dir_with_only_a_test_description_renders(tmp_path):
    run_dir, _ = make_run(tmp_path, "setup-failed", None)
    page = read_page(report.render(run_dir))
    assert "history.jsonl is missing" in page.text and "acks-1" in page.text


def test_odd_results_cost_a_plot_or_an_index_row_never_the_report(tmp_path):
    run_dir, results = make_run(tmp_path, "odd", _history(8, 400))
    results["perf"]["throughput"] = {"send ok": [["not a time"]]}  # e.g. written by another tool
    _write_json(run_dir / "results.json", results)
    other, _ = make_run(tmp_path, "other", _history(9, 300))
    (other / "results.json").write_text("[1, 2]")  # not an object
    out = report.render(run_dir)
    page = read_page(out)
    assert "The throughput plot could not be drawn" in page.text
    assert len([s for s in page.srcs if s.startswith("data:image/svg+xml")]) == 3  # the other plots still are
    index = read_page(tmp_path / "index.html")
    assert "odd" in index.text and "other" in index.text


def test_huge_anomaly_counts_and_histories_keep_the_page_bounded(tmp_path):
    events = _history(6, 6000, lose_offsets=set(range(2, 60)), lose_keys=12)
    run_dir, results = make_run(tmp_path, "many", events)
    counts = results["anomaly-counts"]
    assert counts["lost-write"] > 100
    out = report.render(run_dir)
    text = out.read_text()
    section = text.split('id="anomaly-lost-write"')[1].split("</section>")[0]
    assert section.count('class="record"') == report.MAX_RECORDS_PER_TYPE
    assert f"and {counts['lost-write'] - report.MAX_RECORDS_PER_TYPE} more lost-write" in section
    assert section.count("<tr class=") <= report.MAX_HISTORY_ROWS_PER_TYPE + 1
    assert out.stat().st_size < 2_000_000
    # long poll values are cut, never pasted whole
    assert max(len(m) for m in re.findall(r'<td class="value">([^<]*)</td>', text)) < report.MAX_VALUE_CHARS + 120


def test_results_index_lists_runs_newest_first_with_verdicts_and_working_links(tmp_path):
    old, _ = make_run(tmp_path, "lossy", _history(3, 600, lose_offsets=(3, 4)), started="2026-11-24T08:00:00",
                      stamp=dt.datetime(2026, 11, 24, 8))
    new, _ = make_run(tmp_path, "clean", _history(4, 600), started="2026-11-25T09:30:00",
                      stamp=dt.datetime(2026, 11, 25, 9, 30))
    report.render(old)
    report.render(new)  # each render regenerates the index
    out = tmp_path / "index.html"
    page = read_page(out)
    rows = re.findall(r'<tr class="run (\w+)">\s*<td class="mono">([\w-]+)</td>', out.read_text())
    assert rows == [("valid", "clean"), ("invalid", "lossy")]
    assert "lost-write" in page.text and "2 run(s)" in page.text
    assert_self_contained_with_relative_links(out, page)
    assert sorted(page.hrefs) == sorted(f"{p.relative_to(tmp_path).as_posix()}/index.html" for p in (old, new))


def test_fault_intervals_pair_starts_with_stops_and_leave_unhealed_faults_open():
    ev = [{"process": "nemesis", "type": t, "f": f, "time": int(s * 1e9), "value": None}
          for t, f, s in [("invoke", "kill", 1), ("info", "kill", 1.5), ("invoke", "start", 4), ("info", "start", 5),
                          ("invoke", "start-partition", 7), ("info", "start-partition", 7.1)]]
    ivs = report.fault_intervals(ev, end=20.0)
    assert [(iv["fault"], iv["start"], iv["end"], iv["open"]) for iv in ivs] == [
        ("kill", 1.0, 5.0, False), ("partition", 7.0, 20.0, True)]


def _nemesis_ops(*ops) -> list[dict]:
    """(invoked at, completed at, f, asked, recorded[, error]) -> the invoke and info events the nemesis runner
    writes."""
    ev = []
    for t0, t1, f, asked, value, *error in ops:
        ev.append({"process": "nemesis", "type": "invoke", "f": f, "time": int(t0 * 1e9), "value": asked})
        done = {"process": "nemesis", "type": "info", "f": f, "time": int(t1 * 1e9), "value": value}
        if error:
            done["error"] = error[0]
        ev.append(done)
    return ev


KILL_LEADER = {"target": "leader", "nodes": ["n2"], "key": "6", "leader": 2, "isr": [1, 2, 3]}
PARTITION_LEADER = {"shape": "leader", "clients": "all", "cut": [["n1", "n2"], ["n1", "n3"]],
                    "groups": [["n1"], ["n2", "n3"]], "key": "6", "leader": 1, "isolated": "n1"}


def test_intervals_come_from_the_registry_and_overlapping_kill_and_partition_get_two_lanes():
    from nemesis.packages import display
    shown = display()
    ev = _nemesis_ops((1, 1.2, "kill", "leader", KILL_LEADER),
                      (3, 3.1, "start-partition", {"shape": "leader", "clients": "all"}, PARTITION_LEADER),
                      (5, 6, "start", None, {"nodes": ["n2"]}),
                      (7, 7.1, "strobe-clock", {"target": "one", "delta-ms": 5000, "period-ms": 1000, "duration": 8},
                       {"target": "one", "delta-ms": 5000, "nodes": ["n3"]}),
                      (8, 8.5, "stop-partition", None, {"healed": ["n1", "n2", "n3"]}),
                      (9, 9.2, "reset-clock", None, {"nodes": ["n3"]}),
                      (10, 30, "isolate-leader-then-kill", {"target": "leader"},
                       {"key": "6", "leader": 2, "isr-before": [1, 2, 3], "isr-shrunk-to-leader": True,
                        "isr-before-kill": [2], "killed": "n2", "elected": 3}))
    kill, partition, clock, trap = report.fault_intervals(ev, end=40.0)
    # the start op's invocation to the stop op's completion; label and colour from the registry
    assert (kill["fault"], kill["start"], kill["end"], kill["open"]) == ("kill", 1.0, 6.0, False)
    assert (partition["fault"], partition["start"], partition["end"]) == ("partition", 3.0, 8.5)
    assert (clock["fault"], clock["start"], clock["end"]) == ("clock", 7.0, 9.2)  # strobe-clock starts clock too
    assert (trap["fault"], trap["start"], trap["end"], trap["open"]) == ("isolate-leader-then-kill", 10.0, 40.0, True)
    for iv in (kill, partition, clock, trap):
        assert (iv["label"], iv["color"]) == (shown[iv["fault"]]["label"], shown[iv["fault"]]["color"])
        assert iv["error"] is None
    # overlapping faults on different lanes; lane 0 when nothing else is active
    assert [iv["lane"] for iv in (kill, partition, clock, trap)] == [0, 1, 0, 0]
    # what was hit, from the completion value
    assert kill["value"] == KILL_LEADER and kill["targets"] == "n2 (leader of key 6)"
    assert kill["title"] == "kill leader" and kill["phrase"] == "killed n2, leader of key 6"
    assert partition["targets"].startswith("n1 | n2 n3") and partition["title"] == "partition leader"
    assert partition["phrase"] == "isolated n1, leader of key 6"
    assert clock["targets"].startswith("n3 ±5000 ms") and clock["title"] == "clock strobe"
    assert "killed n2" in trap["phrase"] and "broker 3 elected" in trap["phrase"]


def test_a_fault_the_registry_does_not_know_is_grey_and_labelled_with_its_f():
    ev = _nemesis_ops((1, 1.5, "frobnicate", "x", {"nodes": ["n1"]}),
                      (2, 2.1, "start-gremlin", None, None),
                      (4, 4.2, "stop-gremlin", None, None),
                      (5, 5.1, "kill", "one", None, "ssh: connection refused"))
    frob, gremlin, kill = report.fault_intervals(ev, end=10.0)
    assert (frob["label"], frob["color"], frob["start"], frob["end"]) == \
        ("frobnicate", report.UNKNOWN_FAULT_COLOR, 1.0, 1.5)
    assert (gremlin["label"], gremlin["color"], gremlin["end"], gremlin["open"]) == \
        ("start-gremlin", report.UNKNOWN_FAULT_COLOR, 4.2, False)
    # a registry fault whose start failed is still shown (it may be half done), with its error
    assert kill["error"] == "ssh: connection refused" and kill["open"] and kill["end"] == 10.0
    assert kill["color"] != report.UNKNOWN_FAULT_COLOR and "failed" in kill["targets"]
    # and the plots draw the unknown ones grey, with their f in the legend
    svg = base64.b64decode(report.plot_throughput(
        {"bucket-seconds": 0.5, "throughput": {"send ok": [[t / 2, 10.0] for t in range(20)]}},
        [frob, gremlin, kill], 10.0).split(",", 1)[1]).decode()
    assert "frobnicate (fault)" in svg and "start-gremlin (fault)" in svg and report.UNKNOWN_FAULT_COLOR in svg


def test_attribution_picks_the_active_fault_else_the_last_healed_one_else_none():
    ivs = report.fault_intervals(_nemesis_ops(
        (10, 10.1, "kill", "leader", KILL_LEADER),
        (20, 20.1, "start-partition", {"shape": "leader", "clients": "all"}, PARTITION_LEADER),
        (25, 26, "start", None, {"nodes": ["n2"]}),
        (30, 30.5, "stop-partition", None, {}),
        (40, 40.2, "pause", "n3", {"target": "n3", "nodes": ["n3"]}),
        (45, 45.2, "resume", None, {"nodes": ["n3"]})), end=60.0)
    assert report.attribute(5.0, ivs) is None and report.attribute(None, ivs) is None
    a = report.attribute(12.0, ivs)  # only the kill is active
    assert (a["state"], a["interval"]["fault"], round(a["since"], 3), a["also"]) == ("active", "kill", 2.0, [])
    a = report.attribute(22.0, ivs)  # kill and partition: the one started last, and the other one noted
    assert (a["state"], a["interval"]["fault"]) == ("active", "partition")
    assert [o["fault"] for o in a["also"]] == ["kill"]
    assert report.attribution_sentence("lost-write of key 6", 22.0, a) == (
        "lost-write of key 6 at 22.0 s, 2.0 s after `partition leader` isolated n1, leader of key 6 "
        "(also active: `kill leader`)")
    a = report.attribute(35.0, ivs)  # both healed: the partition most recently
    assert (a["state"], a["interval"]["fault"], round(a["since"], 3)) == ("healed", "partition", 4.5)
    assert report.attribution_sentence("poll-skip", 35.0, a).startswith(
        "poll-skip at 35.0 s, 4.5 s after the heal of `partition leader`, which isolated n1, leader of key 6")
    a = report.attribute(50.0, ivs)
    assert (a["interval"]["fault"], a["interval"]["phrase"]) == ("pause", "paused n3")
    assert report.attribution_sentence("G0", 3.0, None) == "G0 at 3.0 s, before any fault"


def _lose_sends_at(ev: list[dict], fractions, keys) -> list[tuple[str, int, float]]:
    """Remove from every read the write to each key acknowledged first after each fraction of the run: lost writes
    sent at known times. Returns (key, offset, time in seconds) of each."""
    end = max(e["time"] for e in ev)
    lost = []
    for frac, key in zip(fractions, keys):
        for e in ev:
            if e["f"] == "send" and e["type"] == "ok" and e["time"] >= frac * end and e["value"][0][1] == key:
                lost.append((key, e["value"][0][2][0], e["time"] / 1e9))
                break
    gone = {(key, off) for key, off, _ in lost}
    for e in ev:
        if e["f"] == "poll" and e["type"] == "ok" and e["value"]:
            for k, recs in e["value"][0][1].items():
                recs[:] = [r for r in recs if (k, r[0]) not in gone]
    return lost


def test_the_run_report_names_the_fault_each_anomaly_followed(tmp_path):
    ev = _history(3, 1500, faults=OVERLAPPING)
    lost = _lose_sends_at(ev, (0.35, 0.5, 0.75), ("0", "1", "2"))
    run_dir, results = make_run(tmp_path, "overlap", ev)
    assert results["valid"] is False and results["anomaly-counts"]["lost-write"] == 3
    out = report.render(run_dir)
    page = read_page(out)
    # the page's text, with the spaces the parser puts around the code elements of fault titles taken out
    section = re.sub(r" ([),])", r"\1", section_text(out, "anomaly-lost-write"))
    # while both faults are active: the partition (started last), with the kill noted
    assert re.search(r"lost-write of key 0 at [\d.]+ s, [\d.]+ s after partition leader isolated n1, leader of key 0 "
                     r"\(also active: kill leader\)", section), section[:600]
    # while only the partition is active
    assert re.search(r"lost-write of key 1 at [\d.]+ s, [\d.]+ s after partition leader isolated n1, leader of key 0"
                     r"(?! \(also)", section)
    # after both healed: the one healed last
    assert re.search(r"lost-write of key 2 at [\d.]+ s, [\d.]+ s after the heal of partition leader, which isolated "
                     r"n1, leader of key 0", section)
    t = next(t for key, _, t in lost if key == "0")
    assert f"lost-write of key 0 at {t:.1f} s" in section
    # at a glance: which faults each type of anomaly followed
    glance = Page(out.read_text().split('id="anomaly-faults"', 1)[1].split("</table>", 1)[0]).text
    assert re.search(r"lost-write invalid 3 partition × 3 \(2 while active, 1 after the heal\)", glance), glance
    # both faults in the faults table, with their labels, targets and the anomalies that followed them
    faults = Page(out.read_text().split('id="faults"', 1)[1].split("<h2", 1)[0]).text
    assert re.search(r"1 kill leader [\d.]+ [\d.]+ [\d.]+ s n2 \(leader of key 1\)", faults), faults
    assert re.search(r"2 partition leader [\d.]+ [\d.]+ [\d.]+ s n1 \| n2 n3 \(n1: leader of key 0\) recorded .* \d+$",
                     faults)
    throughput = base64.b64decode([s for s in page.srcs if s.startswith("data:image/svg")][0].split(",", 1)[1]).decode()
    assert throughput.count("kill (fault)") == 1 and throughput.count("partition (fault)") == 1  # each package once
    assert_self_contained_with_relative_links(out, page)


def test_values_from_the_history_are_escaped_in_the_fault_table_and_the_sentences(tmp_path):
    evil = "<script>alert(1)</script>"
    faults = ((0.1, 0.9, "start-partition", {"shape": evil}, {"shape": evil, "groups": [[evil], ["n2", "n3"]]},
               "stop-partition"),
              (0.2, 0.3, f"x{evil}", evil, {"nodes": [evil]}, "stop-x"))
    ev = _history(3, 800, faults=faults)
    _lose_sends_at(ev, (0.5,), ("0",))
    run_dir, _ = make_run(tmp_path, "evil", ev)
    out = report.render(run_dir)
    html = out.read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert f"after partition {evil} cut {evil} | n2 n3" in section_text(out, "anomaly-lost-write")


def test_latency_lines_break_where_nothing_completed_instead_of_drawing_across():
    # [time, p50, p90, p99, max] per 0.1 s bucket: ops complete, then none for 5 s (a leader kill), then again
    pts = [[t / 10, 2.0, 3.0, 4.0, 5.0] for t in range(0, 10)] + [[6.0, 5000.0, 6000.0, 9000.0, 9000.0],
                                                                  [6.1, 2.0, 3.0, 0.0, 4.0]]
    xs, p99 = report._broken_at_gaps(pts, 0.1, 3)
    gaps = [i for i, y in enumerate(p99) if y != y]
    assert gaps == [10] and 0.9 < xs[10] < 6.0           # one break, inside the silent stretch
    assert [x for i, x in enumerate(xs) if i not in gaps] == [p[0] for p in pts]
    assert p99[:10] == [4.0] * 10 and p99[11:] == [9000.0, 1e-3]   # values kept, zero clamped for the log axis


def test_cli_renders_a_run_and_rerenders_stale_runs_of_a_results_dir(tmp_path, capsys):
    run_dir, _ = make_run(tmp_path, "cli", _history(7, 400))
    assert acked(["report", str(run_dir)]) == 0
    assert (run_dir / "index.html").exists() and (tmp_path / "index.html").exists()
    os.utime(run_dir / "index.html", (0, 0))  # older than results.json: stale
    assert acked(["report", str(tmp_path)]) == 0
    assert (run_dir / "index.html").stat().st_mtime > 0
    out = capsys.readouterr().out
    assert str(tmp_path / "index.html") in out
    assert acked(["report", str(tmp_path / "nope")]) == 4
    empty = tmp_path / "empty"
    empty.mkdir()
    assert acked(["report", str(empty)]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("acked report: ") for line in err)


def test_a_real_run_leaves_its_report(tmp_path):
    """The runner's report phase on a real run: one standalone acked-broker, real confluent-kafka clients."""
    from test_harness_standalone import run
    result = run(tmp_path, time_limit=3, rate=100, concurrency="3", seed=11, max_writes_per_key=30)
    assert result.error is None, result.error
    out = result.run_dir / "index.html"
    assert out.exists()
    page = read_page(out)
    verdict = {True: "valid", False: "INVALID"}.get(result.valid, "unknown")
    assert section_text(out, "verdict").startswith(verdict)
    assert "confluent-kafka" in page.text and "librdkafka" in page.text
    stats = result.results["stats"]
    assert f"{stats['acknowledged']} acknowledged " in page.text
    assert len([s for s in page.srcs if s.startswith("data:image/svg+xml")]) >= 3
    assert "logs/n1/broker.log" in page.hrefs and "logs/clients.log" in page.hrefs
    assert_self_contained_with_relative_links(out, page)
    assert result.run_dir.name in (Path(tmp_path) / "results" / "index.html").read_text()


# ---- one history reader (issue 16, part 5) ----------------------------------------------------------------------

def test_the_report_has_no_history_parser_of_its_own(lossy, tmp_path):
    """The report reads history.jsonl through checkers.history (iter_jsonl): the same lines are events and the same
    lines are problems as for the checker; fault pairing is the registry's package_of_f."""
    import inspect
    from checkers.history import read_history
    from nemesis.packages import package_of_f
    source = inspect.getsource(report)
    assert not hasattr(report, "HistoryScan") and "iter_jsonl" in source and "orjson.loads(line" not in source
    _, run_dir, results, _ = lossy
    # a garbled line, a line that is JSON but not an event, and a cut-off last line: the checker's problems
    blob = (run_dir / "history.jsonl").read_bytes()
    broken = tmp_path / "history.jsonl"
    broken.write_bytes(blob + b"{not json\n" + b'{"type": "ok"}\n' + b'{"process": 0, "ty')
    facts = report.read_history_facts(broken, set())
    expected = read_history(broken)
    assert [(p.line, p.message) for p in facts.problems] == [(p.line, p.message) for p in expected.problems]
    assert facts.truncated and facts.events == len(expected.events)
    # the report's view of the run: the cited ops are the checker's, each fault interval is the registry's
    view = report.load_run(run_dir)
    assert {s["type"] for s in view["anomalies"]} == set(results["anomaly-types"])
    lost = next(s for s in view["anomalies"] if s["type"] == "lost-write")
    assert {r["index"] for r in lost["rows"] if r["role"] == "cited"} >= set(results["anomalies"]["lost-write"][0]["ops"])
    assert view["fault_count"] == 2
    facts = report.read_history_facts(run_dir / "history.jsonl", report._anomaly_ops(results))
    assert set(facts.rows) == report._anomaly_ops(results)
    ivs = report.fault_intervals(facts.nemesis, facts.last_time)
    assert [iv["fault"] for iv in ivs] == ["kill", "partition"]
    for iv in ivs:
        assert package_of_f(iv["f"])[0].name == iv["fault"]


def test_a_cut_run_reports_unknown_with_the_reason(tmp_path):
    """A history of acked's runner without the run op's ok completion: unseen is not a loss, the page says why."""
    from checkers.history import RUN_INVOKE
    events = _history(5, 300, faults=())
    events = [{**RUN_INVOKE, "index": 0, "time": 0}] + [{**e, "index": e["index"] + 1} for e in events]
    events.append({"index": len(events), "time": events[-1]["time"] + 1, "process": 0, "type": "invoke", "f": "send",
                   "value": [["send", "0", 99999]]})
    events.append({"index": len(events), "time": events[-1]["time"] + 1, "process": 0, "type": "ok", "f": "send",
                   "value": [["send", "0", [99999, 99999]]]})
    run_dir, results = make_run(tmp_path, "cut", events)
    assert results["valid"] == "unknown" and "final drain" in results["unknown-reason"]
    out = report.render(run_dir)
    assert "the history ends before the final drain completed" in section_text(out, "verdict")
