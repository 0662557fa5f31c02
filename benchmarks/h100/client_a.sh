#!/bin/bash
# CLIENT_CMD of the kit's first serving command, run with
#   EAGER=0 SERVE_ARGS=--no-enable-prefix-caching PHASES=1:32,16:200,64:256,256:1024
# loadgen at the same concurrency levels and prompt counts as the peer's phases, on the same server
# start, 512 in / 128 out, then SingleStream and Offline. NVML telemetry is on (default).
# Prefix caching is off so that neither tool's prompts can hit the cache (the peer's random prompts
# hit it for ~30% of prompt tokens at concurrency 256 in the first attempt, which made the comparison
# one of prompts, not of clients).
PART=a; source benchmarks/h100/common.sh
for cn in 1:32 16:200 64:256 256:1024; do
  c=${cn%%:*}; n=${cn##*:}
  el "concurrency $c ($n requests)"
  $LG run concurrency --concurrency "$c" --num-requests "$n" --duration 0 --input-len 512 --output-len 128 \
      --seed "$c" $COMMON --out "$R/conc-$c" 2>&1 | tail -n 4
  pack
done
el "singlestream"
$LG run singlestream --num-requests 32 --duration 0 --input-len 512 --output-len 128 $COMMON \
    --out "$R/singlestream" 2>&1 | tail -n 2
pack
el "offline"
$LG run offline --num-requests 1024 --duration 0 --input-len 512 --output-len 128 $COMMON \
    --out "$R/offline" 2>&1 | tail -n 2
pack; cat "$OUT/loadgen-summary.txt"
el "client A done"
