#!/bin/sh
# Instructions per operation (callgrind) for every workload and loop, 2 jobs in parallel.
#   PY=/path/to/python benchmarks/callgrind_all.sh [OUTDIR] > table.txt
# Instruction counts do not depend on machine load, unlike times. (threadsafe runs its two
# threads serialized under valgrind, so its count is indicative only.)
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-/tmp/callgrind}
LOOPS=${LOOPS:-"uvloop rloop ferroloop"}
{
for wl in "call_soon 20000 60000" "call_soon_native 20000 60000" "timer_fire 10000 30000" \
          "timer_cancel 20000 60000" "threadsafe 20000 60000" "tasks 5000 15000" \
          "tasks_sleep0 5000 15000" "gather 10000 30000" "futures 10000 30000" \
          "sleep0_pingpong 20000 60000" "burst_300k 300000 600000"; do
  for loop in $LOOPS; do echo "$loop $wl"; done
done
} | xargs -P2 -L1 sh -c '"$0/callgrind_ops.sh" "$1" "$2" "$3" "$4" '"$OUT" "$HERE"
