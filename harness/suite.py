"""A suite's result: the cells of a pytest suite of acked runs, and one reporter per format.

As ducktape's reporters do for its test results (report.html, report.json, report.xml), one result object --
`Suite`, built from pytest's reports by the plugin (harness/pytest_plugin.py) -- is written by three
reporters: `write_json` (suite.json, the data), `write_junit` (junit.xml: one testcase per cell, each with its
run reports as properties, for CI systems) and `write_html` (index.html: the matrix -- rows are settings,
columns faults -- each cell passed / failed / flaky / error with links to its runs).

A *cell* is one test case, however many times `--acked-repeat` ran it. Its outcome over its attempts:
passed when every attempt passed, failed when every attempt failed, flaky when some passed and some failed
(not passed: a cell that loses data one time in three is a finding), error when an attempt could not run
(setup or teardown failed), skipped when every attempt was skipped.
"""
from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

# the run report's clock format and atomic write: a suite page sits beside run pages
from harness.report import _now as now, _write_atomic

SUITE_FILE = "suite.json"
OUTCOMES = ("passed", "failed", "flaky", "error", "skipped")


@dataclasses.dataclass
class Attempt:
    """One execution of a cell (one pytest item)."""

    nodeid: str
    outcome: str                 # passed | failed | error | skipped
    duration: float
    message: str = ""
    #: run directories and reports of the acked runs the attempt made (relative to the suite dir if below it)
    runs: list[dict] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Cell:
    cell: str                    # the test's node id without its repeat index
    row: str                     # the settings (the runs' profile)
    column: str                  # the faults (the runs' nemeses)
    attempts: list[Attempt] = dataclasses.field(default_factory=list)

    @property
    def outcome(self) -> str:
        kinds = {a.outcome for a in self.attempts}
        if "error" in kinds:
            return "error"
        if kinds == {"skipped"}:
            return "skipped"
        kinds.discard("skipped")
        if kinds == {"passed"}:
            return "passed"
        if kinds == {"failed"}:
            return "failed"
        return "flaky"

    @property
    def duration(self) -> float:
        return sum(a.duration for a in self.attempts)

    @property
    def message(self) -> str:
        return next((a.message for a in self.attempts if a.outcome in ("failed", "error") and a.message), "")


@dataclasses.dataclass
class Suite:
    name: str
    started: str
    cells: dict[str, Cell] = dataclasses.field(default_factory=dict)
    finished: str = ""

    def add(self, cell: str, row: str, column: str, attempt: Attempt) -> None:
        c = self.cells.setdefault(cell, Cell(cell, row, column))
        c.row, c.column = c.row or row, c.column or column
        c.attempts.append(attempt)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(OUTCOMES, 0)
        for c in self.cells.values():
            out[c.outcome] += 1
        return out

    @property
    def ok(self) -> bool:
        counts = self.counts()
        return not (counts["failed"] or counts["flaky"] or counts["error"])

    def matrix(self) -> tuple[list[str], list[str], dict[tuple[str, str], list[Cell]]]:
        """Rows (settings), columns (faults), and the cells at each crossing, in first-seen order."""
        rows: list[str] = []
        cols: list[str] = []
        at: dict[tuple[str, str], list[Cell]] = {}
        for c in self.cells.values():
            if c.row not in rows:
                rows.append(c.row)
            if c.column not in cols:
                cols.append(c.column)
            at.setdefault((c.row, c.column), []).append(c)
        return rows, cols, at

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "started": self.started, "finished": self.finished, "counts": self.counts(),
                "ok": self.ok,
                "cells": [{"cell": c.cell, "row": c.row, "column": c.column, "outcome": c.outcome,
                           "duration": round(c.duration, 3), "message": c.message,
                           "attempts": [dataclasses.asdict(a) for a in c.attempts]} for c in self.cells.values()]}

    @classmethod
    def from_dict(cls, d: dict) -> "Suite":
        s = cls(d["name"], d.get("started", ""), finished=d.get("finished", ""))
        for c in d.get("cells", []):
            cell = Cell(c["cell"], c.get("row", ""), c.get("column", ""))
            cell.attempts = [Attempt(**a) for a in c.get("attempts", [])]
            s.cells[c["cell"]] = cell
        return s


# ---- reporters ------------------------------------------------------------------------------------------------

def write_json(suite: Suite, out_dir: Path) -> Path:
    out = Path(out_dir) / SUITE_FILE
    _write_atomic(out, json.dumps(suite.to_dict(), indent=1))
    return out


def write_junit(suite: Suite, out_dir: Path) -> Path:
    """junit.xml: one <testcase> per cell (its attempts folded as --acked-repeat ran them), the cell's runs as
    <property name="acked_report"> entries; a flaky cell is a failure whose message says flaky."""
    counts = suite.counts()
    root = ET.Element("testsuites")
    ts = ET.SubElement(root, "testsuite", name=suite.name, tests=str(len(suite.cells)),
                       failures=str(counts["failed"] + counts["flaky"]), errors=str(counts["error"]),
                       skipped=str(counts["skipped"]), time=f"{sum(c.duration for c in suite.cells.values()):.3f}",
                       timestamp=suite.started.replace(" ", "T"))
    for c in suite.cells.values():
        path, _, name = c.cell.rpartition("::")
        tc = ET.SubElement(ts, "testcase", classname=path.replace("/", ".").removesuffix(".py"), name=name or c.cell,
                           time=f"{c.duration:.3f}")
        props = ET.SubElement(tc, "properties")
        ET.SubElement(props, "property", name="acked_row", value=c.row)
        ET.SubElement(props, "property", name="acked_column", value=c.column)
        ET.SubElement(props, "property", name="acked_attempts", value=str(len(c.attempts)))
        for a in c.attempts:
            for r in a.runs:
                if r.get("report"):
                    ET.SubElement(props, "property", name="acked_report", value=r["report"])
        outcome = c.outcome
        if outcome == "failed":
            ET.SubElement(tc, "failure", message=c.message[:500]).text = c.message
        elif outcome == "flaky":
            passed = sum(a.outcome == "passed" for a in c.attempts)
            msg = f"flaky: passed {passed} of {len(c.attempts)} attempts; {c.message}"
            ET.SubElement(tc, "failure", message=msg[:500], type="flaky").text = msg
        elif outcome == "error":
            ET.SubElement(tc, "error", message=c.message[:500]).text = c.message
        elif outcome == "skipped":
            ET.SubElement(tc, "skipped", message=c.message[:500])
    ET.indent(root)
    out = Path(out_dir) / "junit.xml"
    _write_atomic(out, ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")
    return out


def _href(target: str, base: Path) -> str:
    """A link from the suite page to a run report: relative when the report is under the suite dir."""
    p = Path(target)
    try:
        return p.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return p.resolve().as_uri()


def write_html(suite: Suite, out_dir: Path) -> Path:
    from harness.report import _env   # the run report's Jinja environment: same style, autoescaped
    out_dir = Path(out_dir)
    rows, cols, at = suite.matrix()
    view: dict[tuple[str, str], list[dict]] = {}
    for key, cells in at.items():
        view[key] = [{
            "outcome": c.outcome, "name": c.cell.rpartition("::")[2], "duration": f"{c.duration:.0f} s",
            "message": c.message, "attempts": [{
                "outcome": a.outcome, "runs": [{"href": _href(r["report"], out_dir), "verdict": r.get("verdict", "")}
                                              for r in a.runs if r.get("report")]} for a in c.attempts]}
            for c in cells]
    page = _env().get_template("suite.html.j2").render(
        suite=suite, counts=suite.counts(), rows=rows, cols=cols, view=view, generated=now())
    out = out_dir / "index.html"
    _write_atomic(out, page)
    return out


def write_all(suite: Suite, out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {"json": write_json(suite, out_dir), "junit": write_junit(suite, out_dir), "html": write_html(suite, out_dir)}


def find_suites(root: Path) -> list[Path]:
    """Suite directories of a results dir (results/<suite>/suite.json)."""
    return sorted(p.parent for p in Path(root).glob(f"*/{SUITE_FILE}"))


def summarize_suite(suite_dir: Path, root: Path) -> dict:
    d = json.loads((suite_dir / SUITE_FILE).read_text())
    return {"name": d.get("name", suite_dir.name), "when": d.get("started", ""), "counts": d.get("counts", {}),
            "ok": d.get("ok"), "cells": len(d.get("cells", [])),
            "href": f"{suite_dir.relative_to(root).as_posix()}/index.html"}


__all__ = ["Attempt", "Cell", "Suite", "write_all", "write_json", "write_junit", "write_html", "find_suites",
           "summarize_suite", "OUTCOMES"]
