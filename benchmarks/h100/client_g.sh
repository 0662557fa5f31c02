#!/bin/bash
# loadgen and `vllm bench serve` at equal concurrency on the same server, with uniform length ranges
# instead of fixed lengths (fixed lengths make a closed loop's requests end and prefill in waves, whose
# timing, not the client, decided TTFT p50 in the fixed-length pairs). Run as the kit's CLIENT_CMD with
#   EAGER=0 SERVE_ARGS=--no-enable-prefix-caching PHASES=
PART=g; source benchmarks/h100/common.sh
for cn in 16:400 64:1024; do
  c=${cn%%:*}; n=${cn##*:}
  el "loadgen concurrency $c ($n requests, uniform lengths)"
  $LG run benchmarks/h100/uniformmix.yaml --concurrency "$c" --num-requests "$n" --seed "$((c + 11))" \
      $COMMON --out "$R/mix-conc-$c" 2>&1 | tail -n 3
  pack
  el "vllm bench serve concurrency $c"
  python3 -m vllm.entrypoints.cli.main bench serve --backend vllm --base-url "$URL" \
      --endpoint /v1/completions --model "$MODEL" --tokenizer .gpu/llama8b-dummy --dataset-name random \
      --random-input-len 512 --random-output-len 128 --random-range-ratio 0.5 --ignore-eos \
      --max-concurrency "$c" --num-prompts "$n" --request-rate inf --seed "$((c + 1011))" \
      --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,90,99 --save-result \
      --result-dir "$R/mix-conc-$c" --result-filename vllm-bench.json --disable-tqdm 2>&1 \
      | grep -E "throughput|TTFT|Successful|Failed|Total (input|generated)" | head -12
  pack
done
cat "$OUT/loadgen-summary.txt"
el "client G done"
