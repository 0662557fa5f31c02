#!/bin/bash
# Third command: find-peak under the interactive bounds (TTFT p99 <= 500 ms, TPOT p99 <= 30 ms) on the
# kit's server, time-boxed.
PART=c; source benchmarks/h100/common.sh
el "find-peak llama3_1-8b-interactive"
timeout -s INT 330 $LG find-peak server --preset llama3_1-8b-interactive --start-qps 18 --step 0.5 \
    --precision 3 --repeats 0 --max-runs 7 --input-len 512 --output-len 128 --duration 0 $COMMON \
    --out "$R/peak-8b-interactive" 2>&1 | tail -n 12
pack; cat "$OUT/loadgen-summary.txt"
el "client C done"
