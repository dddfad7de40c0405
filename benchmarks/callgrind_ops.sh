#!/bin/sh
# Instructions per operation under callgrind: run N1 and N2 operations, report the difference.
#   PY=/path/to/python benchmarks/callgrind_ops.sh LOOP WORKLOAD N1 N2 [OUTDIR]
set -e
LOOP=$1 WL=$2 N1=$3 N2=$4 OUT=${5:-/tmp/callgrind}
PY=${PY:-python3}
HERE=$(dirname "$0")
mkdir -p "$OUT"
for n in "$N1" "$N2"; do
  valgrind --tool=callgrind --callgrind-out-file="$OUT/$LOOP.$WL.$n" \
    "$PY" "$HERE/profile_one.py" "$LOOP" "$WL" "$n" --warmup 2000 >/dev/null 2>"$OUT/$LOOP.$WL.$n.log"
done
i1=$(grep -m1 '^summary:' "$OUT/$LOOP.$WL.$N1" | awk '{print $2}')
i2=$(grep -m1 '^summary:' "$OUT/$LOOP.$WL.$N2" | awk '{print $2}')
echo "$LOOP $WL instructions/op: $(( (i2 - i1) / (N2 - N1) ))"
