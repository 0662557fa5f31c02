#!/bin/bash
# CLIENT_CMD of the kit's first serving command (EAGER=0, default PHASES 1:32,16:200,64:256,256:512):
# loadgen at the same concurrency levels and prompt counts as the peer's phases, on the same server
# start, 512 in / 128 out, then SingleStream and Offline. NVML telemetry is on (default).
source benchmarks/h100/common.sh
for cn in 1:32 16:200 64:256 256:512; do
  c=${cn%%:*}; n=${cn##*:}
  el "concurrency $c ($n requests)"
  $LG run concurrency --concurrency "$c" --num-requests "$n" --duration 0 --input-len 512 --output-len 128 \
      --seed "$c" $COMMON --out "$R/conc-$c" 2>&1 | tail -n 3
done
el "singlestream"
$LG run singlestream --num-requests 32 --duration 0 --input-len 512 --output-len 128 $COMMON \
    --out "$R/singlestream" 2>&1 | tail -n 2
el "offline"
$LG run offline --num-requests 512 --duration 0 --input-len 512 --output-len 128 $COMMON \
    --out "$R/offline" 2>&1 | tail -n 2
summary
tar -czf "$OUT/loadgen-a.tgz" -C "$R" --exclude=requests.jsonl --exclude=warmup.jsonl .
el "client A done"
