"""What the sample projects' tests record: the loop each test ran on, one JSON line per record
in the file named by $FERROLOOP_SAMPLE_RECORD (read by tests/test_pytest_plugin.py)."""

import asyncio
import json
import os


def name_of(obj):
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def record(label, loop=None):
    if loop is None:
        loop = asyncio.get_running_loop()
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]
    with open(os.environ["FERROLOOP_SAMPLE_RECORD"], "a") as f:
        f.write(json.dumps({"test": test, "label": label, "loop": name_of(loop)}) + "\n")


def record_session_end():
    """The policy asyncio holds once the session is over: never ferroloop's."""
    policy = asyncio.events._event_loop_policy
    with open(os.environ["FERROLOOP_SAMPLE_RECORD"], "a") as f:
        f.write(json.dumps({"test": "", "label": "session end",
                            "policy": None if policy is None else name_of(policy)}) + "\n")
