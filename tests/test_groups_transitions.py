"""The group coordinator's state table (broker.groups.TRANSITIONS): what it refuses, and the diagram drawn from it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from broker.groups import (
    DIAGRAM_BEGIN,
    DIAGRAM_END,
    TRANSITIONS,
    Group,
    GroupState as S,
    IllegalStateTransition,
    state_diagram,
)
from test_groups_driver import Driver

ROOT = Path(__file__).resolve().parent.parent


def test_a_dead_group_cannot_start_a_rebalance():
    g = Group("g", 0, state=S.DEAD, state_timestamp=5)
    with pytest.raises(IllegalStateTransition) as e:
        g.transition_to(S.PREPARING_REBALANCE, now=10)
    assert (e.value.from_state, e.value.to_state) == (S.DEAD, S.PREPARING_REBALANCE)
    assert "Dead -> PreparingRebalance" in str(e.value)
    assert "'g'" in str(e.value)
    assert (g.state, g.state_timestamp) == (S.DEAD, 5)  # a refused change leaves the group as it was


def test_a_stable_group_cannot_skip_the_rebalance_and_become_empty():
    g = Group("g", 0, state=S.STABLE)
    with pytest.raises(IllegalStateTransition, match="Stable -> Empty .*only from PreparingRebalance"):
        g.transition_to(S.EMPTY, now=1)


def test_a_legal_transition_moves_the_group_and_stamps_the_time():
    g = Group("g", 0, state=S.EMPTY)
    g.transition_to(S.PREPARING_REBALANCE, now=42)
    assert (g.state, g.state_timestamp) == (S.PREPARING_REBALANCE, 42)


def test_the_table_is_kafkas_valid_previous_states_except_dead_to_dead():
    # GroupMetadata.scala, as Kafka 3.x writes it; Dead -> Dead is left out on purpose (groups.py says why)
    kafka = {
        S.EMPTY: {S.PREPARING_REBALANCE},
        S.PREPARING_REBALANCE: {S.STABLE, S.COMPLETING_REBALANCE, S.EMPTY},
        S.COMPLETING_REBALANCE: {S.PREPARING_REBALANCE},
        S.STABLE: {S.COMPLETING_REBALANCE},
        S.DEAD: {S.STABLE, S.PREPARING_REBALANCE, S.COMPLETING_REBALANCE, S.EMPTY},
    }
    ours = {to: {frm for frm, t in TRANSITIONS if t is to} for to in S}
    assert ours == kafka


def test_a_group_deleted_by_delete_groups_is_dead_and_cannot_rebalance():
    # the coordinator's own path to Dead, then a transition the table forbids from there
    d = Driver()
    d.commit({("t", 0): 7}, group="g")  # an offsets-only group: Empty
    g = d.coord.groups["g"]
    assert g.state is S.EMPTY
    d.apply(d.coord.delete_groups("del", ["g"], d.now))
    assert g.state is S.DEAD and "g" not in d.coord.groups
    with pytest.raises(IllegalStateTransition, match="Dead -> PreparingRebalance"):
        g.transition_to(S.PREPARING_REBALANCE, d.now)


def _docs_block() -> str:
    text = (ROOT / "docs" / "broker.md").read_text()
    begin = text.index(DIAGRAM_BEGIN)
    end = text.index(DIAGRAM_END, begin) + len(DIAGRAM_END)
    return text[begin:end] + "\n"


def test_the_state_diagram_in_docs_broker_md_is_drawn_from_the_table():
    assert _docs_block() == state_diagram(), (
        "docs/broker.md's group state diagram is out of date: replace its block with the output of "
        "`python -m broker.groups --diagram`")


def test_the_diagram_draws_every_transition_of_the_table():
    diagram = state_diagram()
    for (a, b), why in TRANSITIONS.items():
        assert f"{a.value} --> {b.value}: {why}\n" in diagram


def test_python_m_broker_groups_diagram_prints_the_block():
    out = subprocess.run([sys.executable, "-m", "broker.groups", "--diagram"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert out == state_diagram()
