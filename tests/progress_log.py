"""A test log written as the run goes (a pytest plugin; conftest.py imports its hooks).

scripts/gpu_check.sh sets MONIQUA_TEST_PROGRESS to a file per test phase.  JUnit XML
and pytest's summary are written only when a session ends, so GPU run 2's CUDA phase,
stopped by its time limit, left no trace of which test had failed.  This log is
appended to as tests start and end, by the process that reports (the xdist
controller, or pytest itself without xdist):

    start<TAB>nodeid
    passed|failed|skipped<TAB>nodeid<TAB>setup|call|teardown<TAB>seconds
        a failure's whole report, indented, under its line

A start without a result is a test that was running when the session stopped.
scripts/gpu_summary.py reads it.
"""
import os

_PROGRESS = os.environ.get("MONIQUA_TEST_PROGRESS")
_reporting = False  # set in pytest_configure: this process reports (not an xdist worker)


def pytest_configure(config):
    # An xdist worker has workerinput; the environment cannot tell (PYTEST_XDIST_WORKER
    # is inherited by a pytest started from inside a worker, as the test of this does).
    global _reporting
    _reporting = bool(_PROGRESS) and not hasattr(config, "workerinput")


def _progress(text: str) -> None:
    with open(_PROGRESS, "a") as f:
        f.write(text)


def pytest_runtest_logstart(nodeid, location):
    if _reporting:
        _progress(f"start\t{nodeid}\n")


def pytest_runtest_logreport(report):
    if not _reporting:
        return
    if report.when == "call" or report.outcome != "passed":
        _progress(f"{report.outcome}\t{report.nodeid}\t{report.when}\t{report.duration:.2f}\n")
    if report.failed:
        _progress("".join(f"    {line}\n" for line in report.longreprtext.splitlines()))
