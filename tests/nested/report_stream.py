"""A pytest plugin for the inner run of the nested batch (hwvirt.py): as each
test starts and ends, one line on the original standard error says so:

    ##vireo-report {"nodeid": ..., "started": true}
    ##vireo-report {"nodeid": ..., "phases": [{"when", "outcome", "text",
                    "duration", "sections", "xfail"}, ...]}

so that the host knows every finished test's outcome at once, even when L1
freezes before the run ends (a JUnit file comes only at the end).
Loaded with `-p report_stream` (tests/nested on PYTHONPATH)."""
import json
import os

PREFIX = "##vireo-report "

# pytest captures fd 2 during each test; this copy is the real one.
_STDERR = os.dup(2)
_phases = {}


def _text(report):
    if report.skipped and isinstance(report.longrepr, tuple):
        return report.longrepr[2].removeprefix("Skipped: ")
    return report.longreprtext


def _say(msg):
    data = (PREFIX + json.dumps(msg) + "\n").encode()
    while data:
        data = data[os.write(_STDERR, data):]


def pytest_runtest_logstart(nodeid, location):
    _say({"nodeid": nodeid, "started": True})


def pytest_runtest_logreport(report):
    _phases.setdefault(report.nodeid, []).append({
        "when": report.when, "outcome": report.outcome, "text": _text(report),
        "duration": report.duration, "sections": list(report.sections),
        "xfail": getattr(report, "wasxfail", None)})


def pytest_runtest_logfinish(nodeid, location):
    _say({"nodeid": nodeid, "phases": _phases.pop(nodeid, [])})
