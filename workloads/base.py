"""The workload interface: everything the runner needs from a workload, and nothing of how it talks to the cluster.

Jepsen's counterpart is the workload map (jepsen.tests.kafka's `workload`
returns {:client :generator :final-generator :checker}): a test is a
cluster, a nemesis and a workload, and the test runner drives the workload's
client with its generator, then its final generator, and hands the history to
its checker. Here a workload is one object, built from the test description
with no I/O, which the runner (harness/runner.py) calls in this order:

    versions()                      client library versions, into test.json
    setup(cluster, run_dir, logger) topics, connections; `generator` exists once this returns
    roles()                         the nemesis's answers: leaders, coordinators, hot keys
    main phase, one thread per worker slot:
        client(process)             a fresh client for a new logical process
        prepare(op)                 before the invocation is written (not in the op's latency)
        client.invoke(op)           the completion {type, value, error?}
        on_completion(op, done)     what the workload learns (the queue: offsets seen)
        client.close()              when the slot's process is retired
    recover(seconds)                after the faults are healed: wait for the cluster to serve again
    final(append)                   the final phase (Jepsen's final generator): its ops go through `append`
    collect(cluster, run_dir)       what to keep of the cluster's state for the check (the queue: replicas.json)
    teardown()                      close what setup opened
    check(history, run_dir, test)   the verdict: results.json's structure

The runner holds the run: the run directory, the history writer, the cluster,
the nemesis, the worker threads and their pacing, the phases and what happens
when one fails or is interrupted, results.json, the report and the exit
status. A workload must not import the harness (ARCHITECTURE.md: harness
imports workloads, never the reverse); `test` below is the harness's
TestDescription, passed in.

Adding a workload: a module in workloads/ with a `Workload` subclass, and its
line in `workloads.WORKLOADS` (docs/workloads.md).
"""
from __future__ import annotations

import abc
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Protocol

#: what the runner passes to `final`: writes one history event (process, type, f, value, ...) and returns its
#: index; the writer adds the index and the time
Append = Callable[[dict], int]


class Client(Protocol):
    """One logical process's connection to the system (Jepsen's client, opened for one process)."""

    def invoke(self, op: dict[str, Any]) -> dict[str, Any]:
        """Run one op synchronously; its completion {type: ok|fail|info, value, error?}. An op whose outcome
        is not known is `info`, never `fail` (ARCHITECTURE.md, "History format")."""

    def close(self) -> None: ...


class Generator(Protocol):
    """What the runner asks of a workload's generator (workloads/generator.py is the queue's). Not thread-safe:
    the runner calls it with `Workload.lock` held."""

    #: the process each worker slot runs now; len(processes) is the number of slots
    processes: list[int]

    def next_op(self, slot: int, now: float) -> dict[str, Any]:
        """The slot's next invocation {process, f, value} at `now`, seconds since the main phase began."""

    def next_delay(self) -> float:
        """Seconds from the previous invocation (over all slots) to the next one; 0: no pause."""

    def complete(self, slot: int, op: dict[str, Any], type_: str) -> int:
        """How the slot's op ended; the process the slot runs next (a new one after `info`, as in Jepsen)."""


class Workload(abc.ABC):
    """A workload. Subclasses implement the abstract methods; the others have defaults for a workload that
    needs nothing there. Each method is called from the runner's main thread unless it says otherwise."""

    #: its name in workloads.WORKLOADS (and `acked run --workload`)
    name: str = ""

    def __init__(self, test: Any, log: Callable[[str], None] | None = None):
        """`test`: the run's TestDescription (validated); `log`: one line for the run's progress output.
        No I/O here: a workload is built before the run directory exists, also for runs whose setup fails."""
        self.test = test
        self.log = log or (lambda msg: None)
        #: the generator, from setup on; None before (a run whose setup failed early has no final phase)
        self.generator: Generator | None = None
        #: held by the runner around every call to the generator; the workload holds it to read the generator's
        #: state from other threads (the nemesis's hot keys, the final phase's key list)
        self.lock = threading.Lock()

    def versions(self) -> dict[str, str]:
        """The client libraries this workload drives and their versions, for test.json's `versions`."""
        return {}

    @abc.abstractmethod
    def setup(self, cluster, run_dir: Path, logger: logging.Logger) -> None:
        """Prepare the started cluster for the workload (topics, admin connections) and make `generator`.
        `logger` writes the run's logs/clients.log: hand it to the clients. Raising fails the run's setup."""

    def roles(self):
        """The nemesis's role answers (nemesis.core.Roles: leader_of, replicas_of, isr_of, controller,
        coordinator_of, hot_keys), each fresh when asked, from the nemesis's thread. Called once, after setup.
        None: role targets cannot be resolved (nemesis.core.NoRoles)."""
        return None

    @abc.abstractmethod
    def client(self, process: int) -> Client:
        """A new client for a logical process (Jepsen's `open!`). Called from worker threads and the final
        phase; each client is used by one thread and closed by it."""

    def prepare(self, op: dict[str, Any]) -> None:
        """Work an op needs before it is invoked that must not count in its latency (the queue workload creates
        the topic of a key it is about to send to). Called from worker threads, before the invocation is
        written to the history."""

    def on_completion(self, op: dict[str, Any], completion: dict[str, Any]) -> None:
        """What the workload learns from an op's completion (the queue: the highest offset seen per key, which
        the final phase reads up to, and which keys were just written, the nemesis's hot keys). Called from
        worker threads, after the completion is written and before the generator hears of it."""

    def recover(self, seconds: float) -> None:
        """After the faults are healed, before the final phase: wait up to `seconds` for the system to serve
        again (the queue: every partition has a leader). Skipped by a second Ctrl-C or a timeout."""

    @abc.abstractmethod
    def final(self, append: Append) -> tuple[str, int]:
        """The final phase (Jepsen's final generator): ops that make the history checkable (the queue reads
        every key to its end), each invocation and completion written through `append` as it happens.
        Returns why it stopped -- "read-everything", "log-end", "nothing-written" (complete), "time-limit"
        (incomplete: the history counts as cut) -- and how many keys it read; the runner writes the run op's
        completion from them (checkers.history.run_completion). Raising leaves the run op open. Skipped by a
        second Ctrl-C or a timeout."""

    def collect(self, cluster, run_dir: Path) -> list[str]:
        """After a final phase that was not interrupted: what the check needs of the cluster's state besides the
        history, written into run_dir (the queue: every broker's log, replicas.json). Returns the harness
        error lines of what could not be collected; never fails the run."""
        return []

    def teardown(self) -> None:
        """Close what setup opened. Called once whatever happened before, even when setup failed half way;
        the cluster is still up (its logs are collected and it is torn down after this)."""

    @abc.abstractmethod
    def check(self, history: Path, run_dir: Path, test: Any) -> dict[str, Any]:
        """The checker: results.json's structure (valid, anomaly-types, bad-anomaly-types, anomalies, stats,
        ...) from the history file, the files `collect` wrote, and the test description. Uses no state of
        the run, so a run directory can be checked again offline."""
