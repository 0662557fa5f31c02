#!/bin/bash
# Second command (the kit's server still warm, PHASES= CLIENT_CMD=...): Server at three rates (light,
# near the knee, past it; the concurrency-256 ceiling was ~46 req/s), a length-mix workload, and
# find-peak under MLPerf's llama3_1-8b bounds (TTFT p99 <= 2000 ms, TPOT p99 <= 100 ms), time-boxed.
PART=b; source benchmarks/h100/common.sh
for q in 8 36 55; do
  el "server qps $q"
  $LG run server --qps "$q" --duration 20 --num-requests 1 --input-len 512 --output-len 128 \
      --preset llama3_1-8b $COMMON --out "$R/server-$q" 2>&1 | tail -n 4
  pack
done
el "length mix"
$LG run benchmarks/h100/lengthmix.yaml $COMMON --out "$R/lengthmix" 2>&1 | tail -n 3
pack
el "find-peak llama3_1-8b"
timeout -s INT 230 $LG find-peak server --preset llama3_1-8b --start-qps 24 --step 0.5 --precision 4 \
    --repeats 1 --max-runs 7 --input-len 512 --output-len 128 --duration 0 $COMMON \
    --out "$R/peak-8b" 2>&1 | tail -n 14
pack; cat "$OUT/loadgen-summary.txt"
el "client B done"
