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

def _history(seed: int, n_ops: int, lose_offsets=(), lose_keys=3, faults=True, scale=40) -> list[dict]:
    """A correct log-model history (checkers.synth), stretched to tens of seconds, with a kill and a partition
    fault, and optionally offsets removed from every read of the first keys (-> lost-write and friends)."""
    ev = synth.generate(seed, n_ops=n_ops, threads=6, active_keys=12)
    for e in ev:
        e["time"] *= scale
    end = ev[-1]["time"]
    if faults:
        for a, b, f1, f2, value in ((0.2, 0.35, "kill", "start", {"nodes": ["n2"], "key": "5", "leader": 2}),
                                    (0.5, 0.7, "start-partition", "stop-partition",
                                     {"groups": [["n1"], ["n2", "n3"]]})):
            for at, f, v in ((a, f1, value), (b, f2, None)):
                ev.append({"time": int(at * end), "process": "nemesis", "type": "invoke", "f": f, "value": None})
                ev.append({"time": int(at * end) + 10_000_000, "process": "nemesis", "type": "info", "f": f,
                           "value": v})
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
    assert re.search(r"Faults \([12]\) fault from \(s\) to \(s\) what error kill ", page.text)
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
