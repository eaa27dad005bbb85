"""pytest plugin of acked (entry point `acked` in pyproject.toml).

Write reliability tests as ordinary parametrized pytest tests:

    @pytest.mark.parametrize("profile", ["safe", "acks-1"])
    def test_leader_kills(acked_run, profile):
        result = acked_run(profile=profile, nemeses=["kill"], time_limit=60)
        assert result.valid is (profile == "safe")

`acked_run(description=None, **fields)` runs one test (fields as in
harness.config.TestDescription, overriding `description`) with its run store
under the test's tmp_path unless `results_dir` is given, and returns a
harness.runner.RunResult (run_dir, valid, exit_status, results, error).
`--acked-backend` picks the default backend. Tests marked `slow` run only
with `--run-slow`.
"""
from __future__ import annotations

import copy
import dataclasses

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("acked")
    group.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")
    group.addoption("--acked-backend", default=None, help="default cluster backend of acked_run (docker, local)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running; skipped unless --run-slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def acked_run(tmp_path, request):
    from harness.config import TestDescription, from_dict
    from harness.runner import run_test

    backend = request.config.getoption("--acked-backend")

    def run(description: TestDescription | None = None, **fields):
        desc = copy.deepcopy(description) if description is not None else TestDescription()
        if backend and "backend" not in fields and description is None:
            desc.backend = backend
        if "results_dir" not in fields:
            fields["results_dir"] = str(tmp_path / "results")
        if "name" not in fields and description is None:
            fields["name"] = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")
        desc = from_dict({k: v for k, v in fields.items()}, desc, where="acked_run")
        return run_test(desc)

    return run


def description(**fields):
    """A TestDescription from keyword fields (for parametrizing tests)."""
    from harness.config import TestDescription
    return dataclasses.replace(TestDescription(), **fields)
