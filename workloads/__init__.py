"""Workloads behind one interface (workloads/base.py), and the registry the config, the CLI and the runner read.

Jepsen's counterpart: the map of workload names to workload functions in a
Jepsen test's command line (`--workload`). A workload is a module here with a
`Workload` subclass, and its line below (docs/workloads.md, "Adding a workload").
"""
from __future__ import annotations

from workloads.base import Workload
from workloads.pipeline import PipelineWorkload
from workloads.queue import QueueWorkload

#: name -> the workload class, built as cls(test description, log)
WORKLOADS: dict[str, type[Workload]] = {
    "queue": QueueWorkload,
    "pipeline": PipelineWorkload,
}
