"""Per-function instruction cost of one operation: diff two callgrind runs (N1 and N2 ops).

python benchmarks/callgrind_diff.py OUT.N1 OUT.N2 N1 N2 [--inclusive] [--top 40]
"""

import argparse
import re
import subprocess
from collections import defaultdict


def load(path, inclusive):
    out = subprocess.run(
        [
            "callgrind_annotate",
            f"--inclusive={'yes' if inclusive else 'no'}",
            "--threshold=100",
            "--auto=no",
            path,
        ],
        capture_output=True,
        text=True,
    ).stdout
    costs = defaultdict(int)
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*)$", line)
        if (
            not m
            or ":" not in m.group(2)
            or "PROGRAM TOTALS" in line
            or re.search(r"\([\d,]+x\)", line)
        ):
            continue
        name = m.group(2)
        name = re.sub(r" \[[^\]]*\]$", "", name)  # object file
        name = re.sub(r"^.*?/([^/]+:)", r"\1", name)  # keep the source file's base name
        costs[name] += int(m.group(1).replace(",", ""))
    return costs


def main():
    p = argparse.ArgumentParser()
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("n1", type=int)
    p.add_argument("n2", type=int)
    p.add_argument("--inclusive", action="store_true")
    p.add_argument("--top", type=int, default=40)
    args = p.parse_args()
    a, b = load(args.a, args.inclusive), load(args.b, args.inclusive)
    dn = args.n2 - args.n1
    rows = sorted(((b.get(k, 0) - a.get(k, 0)) / dn, k) for k in set(a) | set(b))
    rows.reverse()
    total = sum(v for v, _ in rows) if not args.inclusive else None
    if total:
        print(f"total {total:.0f} instructions/op")
    for v, k in rows[: args.top]:
        print(f"{v:8.1f}  {k[:150]}")


if __name__ == "__main__":
    main()
