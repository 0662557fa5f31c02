#!/bin/bash
# Longer phases for the tool comparison at concurrency 64 and 16 (the 256-request phase at 64 is four
# closed-loop waves in 7 s, whose TTFT swung by 10-13% between sessions for either tool). Run with
#   EAGER=0 SERVE_ARGS=--no-enable-prefix-caching PHASES=64:1024,16:400
PART=e; source benchmarks/h100/common.sh
for cn in 64:1024 16:400; do
  c=${cn%%:*}; n=${cn##*:}
  el "concurrency $c ($n requests)"
  $LG run concurrency --concurrency "$c" --num-requests "$n" --duration 0 --input-len 512 --output-len 128 \
      --seed "$((c + 7))" $COMMON --out "$R/long-conc-$c" 2>&1 | tail -n 3
  pack
done
cat "$OUT/loadgen-summary.txt"
el "client E done"
