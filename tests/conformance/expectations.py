"""Reads ``expected_failures.txt``.

Format: ``[excluded]`` and ``[xfail]`` sections; one entry a line, ``<test id>  -- <reason>``;
an excluded entry ``<suite>/<module>`` (no ``::``) excludes the whole module (not even imported);
``#`` starts a comment. A test id is ``<suite>/<module>::<Class>::<test>``. Excluded entries
may be globs (fnmatch), which never match a generated ``LoopUnderTest_*`` class (an exact id
does); xfail entries are exact ids. The reason of an xfail entry starts with its group, e.g.
``foundation: ...``.
"""

import fnmatch
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT = os.path.join(HERE, "expected_failures.txt")
_PYVER = re.compile(r"\s+@py(>=|<|==)(\d+)\.(\d+)\s*$")


class Expectations:
    def __init__(self):
        self.excluded = []  # [(glob, reason)]
        self.xfail = {}  # id -> reason

    def excluded_reason(self, tid, item=None):
        cls = tid.split("::")[1] if tid.count("::") >= 2 else ""
        twin = cls.startswith("LoopUnderTest_")
        for pat, reason in self.excluded:
            if pat == tid:
                return reason
            if not twin and any(c in pat for c in "*?[") and fnmatch.fnmatchcase(tid, pat):
                return reason
        return None

    def module_excluded(self, suite, mod):
        """The reason if the whole module is excluded (``suite/mod::*``)."""
        for pat, reason in self.excluded:
            if pat == f"{suite}/{mod}":
                return reason
        return None


def _applies(line):
    m = _PYVER.search(line)
    if not m:
        return line, True
    op, major, minor = m.group(1), int(m.group(2)), int(m.group(3))
    cur = sys.version_info[:2]
    ok = {">=": cur >= (major, minor), "<": cur < (major, minor), "==": cur == (major, minor)}[op]
    return line[: m.start()], ok


def load(path=DEFAULT):
    exp = Expectations()
    section = None
    with open(path) as f:
        for raw in f:
            line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
            if not line.strip():
                continue
            line = line.strip()
            if line in ("[excluded]", "[xfail]"):
                section = line[1:-1]
                continue
            line, ok = _applies(line)
            if not ok:
                continue
            tid, _, reason = line.partition(" -- ")
            tid, reason = tid.strip(), reason.strip()
            if section == "excluded":
                exp.excluded.append((tid, reason))
            elif section == "xfail":
                exp.xfail[tid] = reason
            else:
                raise ValueError(f"{path}: entry outside a section: {raw!r}")
    return exp
