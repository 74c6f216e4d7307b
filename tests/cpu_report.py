"""`pytest --cpu-report`: where the suite's processor time goes, per test module.

On a small machine the suite's wall time is bounded below by its processor time over the cores:
a suite that computes 20 CPU-minutes cannot finish in 8 minutes on 2 cores, however its tests are
handed out. `--durations` shows wall time, which mixes computing with waiting (a server starting,
a queue polled) and with the load the other worker puts on the machine; this shows what each test
costs wherever it runs.

A test's time is its own process's (the pytest worker running it, setup and teardown included, so
a shared fixture counts in the test that made it) plus that of every process it started and
waited for. DVC and the stages it runs wait for theirs, so a `dvc repro` counts whole. Processes
nobody waits for are not counted: `dvc queue start`'s workers and the experiments they run."""

from __future__ import annotations

import json
import resource
import time
from collections import defaultdict

import pytest

KEY = "segpipe_cpu_rows"  # what each xdist worker hands the controller in its workeroutput


def pytest_addoption(parser):
    parser.addoption("--cpu-report", action="store_true",
                     help="after the run, each test module's processor time (its own and its child processes'), "
                          "largest first (tests/cpu_report.py)")


def pytest_configure(config):
    if config.getoption("cpu_report"):
        config.pluginmanager.register(CpuReport(config), "segpipe-cpu-report")


def processor_seconds() -> tuple[float, float]:
    """User and system time of this process, and of the children it has waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def by_module(rows: list[tuple[str, float, float, float]]) -> list[tuple[str, int, float, float, float]]:
    """(module, tests, wall s, own CPU s, children's CPU s) per module, the costliest first."""
    modules = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for nodeid, wall, own, children in rows:
        totals = modules[nodeid.split("::")[0]]
        totals[0] += 1
        totals[1] += wall
        totals[2] += own
        totals[3] += children
    return sorted(((m, *t) for m, t in modules.items()), key=lambda row: -(row[3] + row[4]))


class CpuReport:
    def __init__(self, config):
        self.config = config
        self.rows: list[tuple[str, float, float, float]] = []
        self.started = time.monotonic()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        (own, children), start = processor_seconds(), time.monotonic()
        try:
            return (yield)
        finally:
            own_after, children_after = processor_seconds()
            self.rows.append((item.nodeid, time.monotonic() - start, own_after - own, children_after - children))

    def pytest_sessionfinish(self, session):
        if hasattr(self.config, "workeroutput"):  # an xdist worker: the controller prints the report
            self.config.workeroutput[KEY] = json.dumps(self.rows)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error):
        self.rows += [tuple(row) for row in json.loads(getattr(node, "workeroutput", {}).get(KEY, "[]"))]

    def pytest_terminal_summary(self, terminalreporter):
        if hasattr(self.config, "workeroutput"):
            return
        write = terminalreporter.write_line
        terminalreporter.write_sep("=", "processor time per test module (--cpu-report)")
        write(f"{'module':<42} {'tests':>5} {'wall s':>8} {'own s':>8} {'children s':>10} {'CPU s':>8}")
        for module, tests, wall, own, children in by_module(self.rows):
            write(f"{module:<42} {tests:>5} {wall:>8.1f} {own:>8.1f} {children:>10.1f} {own + children:>8.1f}")
        from segpipe.data.preprocess import worker_count

        cpu = sum(own + children for _, _, own, children in self.rows)
        cores = worker_count(0)  # the cores this process may run on
        elapsed = time.monotonic() - self.started
        write(f"{len(self.rows)} tests computed {cpu:.0f} CPU s in {elapsed:.0f} s: on {cores} cores, "
              f"no hand-out of these tests finishes in under {cpu / cores:.0f} s")
