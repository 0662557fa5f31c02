#!/bin/bash
# CLIENT_CMD of the second command (the kit's server still warm): Server at three rates (light, near
# the knee, past it), a length-mix workload, and find-peak under MLPerf's llama3_1-8b bounds.
source benchmarks/h100/common.sh
for q in 8 30 60; do
  el "server qps $q"
  $LG run server --qps "$q" --duration 15 --num-requests 1 --input-len 512 --output-len 128 \
      --preset llama3_1-8b $COMMON --out "$R/server-$q" 2>&1 | tail -n 2
done
el "length mix"
$LG run benchmarks/h100/lengthmix.yaml $COMMON --out "$R/lengthmix" 2>&1 | tail -n 2
el "find-peak llama3_1-8b"
$LG find-peak server --preset llama3_1-8b --start-qps 16 --precision 4 --repeats 1 --max-runs 7 \
    --input-len 512 --output-len 128 --num-requests 700 --duration 0 $COMMON --out "$R/peak-8b" 2>&1 | tail -n 12
summary
tar -czf "$OUT/loadgen-b.tgz" -C "$R" --exclude=requests.jsonl --exclude=warmup.jsonl .
el "client B done"
