"""I/O under a signal storm: tests/test_signals.py's STORM_SCRIPT at full size, loops interleaved.

python benchmarks/signal_storm.py [--rounds 5] [--mib 50] [--loops asyncio,ferroloop,uvloop]
                                  [--wakeup-buffer min|default|both] [--build LABEL=PYTHON]

Each run is a fresh process: another process sends SIGUSR1 to it as fast as it can (a handler
installed with ``add_signal_handler`` counts them) while a client echoes ``--mib`` MiB through a
``Protocol`` echo server on the same loop (the script pins itself to one CPU and the sender to
another where there are two). ``--wakeup-buffer min`` shrinks the self-pipe's send buffer to the
kernel's minimum, as the test does; ``default`` leaves the buffer a user gets (uvloop's self-pipe
is not reachable from Python and always keeps its default). ``--build LABEL=PYTHON`` adds a run of
ferroloop under another interpreter (a virtualenv with another build installed), labelled LABEL.

Each round runs every variant once, in an order rotated from round to round; the summary gives
each variant's median time and the median over rounds of its time divided by the same round's
asyncio time (and uvloop time), which is what survives a noisy machine. "wakeup-fd lines"
counts CPython's "Exception ignored when trying to write to the signal wakeup fd" reports on the
run's stderr; "threads" is the number of threads of the server process at the end.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TEST = os.path.join(HERE, os.pardir, "tests", "test_signals.py")


def storm_script():
    with open(TEST) as f:
        src = f.read()
    start = src.index("STORM_SCRIPT = r'''") + len("STORM_SCRIPT = r'''")
    return src[start : src.index("'''", start)]


def run_one(script, python, loop, size, bound, buffer):
    try:
        r = subprocess.run(
            [python, "-c", script, loop, str(size), str(bound), buffer],
            capture_output=True,
            text=True,
            timeout=bound + 40,
            cwd="/tmp",
        )
    except subprocess.TimeoutExpired:
        return {"error": "hung"}
    if r.returncode != 0 or not r.stdout.strip():
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    out = json.loads(r.stdout)
    out["wakeup_lines"] = r.stderr.count("signal wakeup fd")
    if out["count"] != size or not out["same"]:
        out["error"] = "timed out" if out["count"] is None else "wrong bytes"
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mib", type=int, default=50)
    ap.add_argument("--loops", default="asyncio,ferroloop,uvloop")
    ap.add_argument("--wakeup-buffer", choices=("min", "default", "both"), default="both")
    ap.add_argument("--build", action="append", default=[], metavar="LABEL=PYTHON")
    ap.add_argument("--bound", type=float, default=100.0, help="seconds before a run gives up")
    ap.add_argument("--json", help="write every run to this file")
    args = ap.parse_args()
    loops = args.loops.split(",")
    if "uvloop" in loops:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            print("uvloop is not installed: left out", file=sys.stderr)
            loops.remove("uvloop")
    buffers = ("min", "default") if args.wakeup_buffer == "both" else (args.wakeup_buffer,)
    # (label, interpreter, loop)
    variants = [(name, sys.executable, name) for name in loops]
    for spec in args.build:
        label, _, python = spec.partition("=")
        variants.append((label, python, "ferroloop"))
    script = storm_script()
    size = args.mib << 20
    runs = {}  # (buffer, label) -> [result per round]
    for rnd in range(args.rounds):
        for buffer in buffers:
            shift = rnd % len(variants)
            for label, python, loop in variants[shift:] + variants[:shift]:
                if buffer == "min" and loop == "uvloop":
                    continue  # cannot be set on uvloop: its run is the "default" one
                out = run_one(script, python, loop, size, args.bound, buffer)
                runs.setdefault((buffer, label), []).append(out)
                shown = out.get("error") or f"{out['elapsed']:6.2f} s"
                if "calls" in out:
                    shown += (
                        f"  handler calls {out['calls']}, wakeup-fd lines {out['wakeup_lines']},"
                        f" threads {out['threads']}"
                    )
                print(f"round {rnd} buffer {buffer:7} {label:12} {shown}", flush=True)
    print(f"\n{args.mib} MiB echo under a SIGUSR1 storm, {args.rounds} rounds, medians:")
    for buffer in buffers:
        print(f"wakeup buffer {buffer}:")
        for label, _, _ in variants:
            results = runs.get((buffer, label))
            if results is None:
                continue
            times = [r["elapsed"] for r in results if "error" not in r]
            line = f"  {label:12}"
            if times:
                median = statistics.median(times)
                line += f" {median:6.2f} s (range {min(times):.2f}-{max(times):.2f})"
            else:
                line += "      -"
            for ref in ("asyncio", "uvloop"):
                ref_runs = runs.get((buffer, ref)) or runs.get(("default", ref))
                if ref == label or not ref_runs:
                    continue
                ratios = [
                    r["elapsed"] / q["elapsed"]
                    for r, q in zip(results, ref_runs, strict=True)
                    if "error" not in r and "error" not in q
                ]
                if ratios:
                    line += f"  x{statistics.median(ratios):.2f} {ref}"
            failed = [r["error"] for r in results if "error" in r]
            if failed:
                line += f"  (failed: {', '.join(failed)})"
            print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"mib": args.mib, "runs": {f"{b}/{lab}": r for (b, lab), r in runs.items()}},
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
