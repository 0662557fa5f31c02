#!/bin/bash
# Third command: find-peak under the interactive bounds on the kit's server, then stop it and let
# loadgen launch vLLM itself (its own launcher, `python3 -m vllm.entrypoints.openai.api_server`) for a
# --max-num-seqs sweep with a relaunch per point (enforce-eager: ~85 s per start instead of ~130 s).
source benchmarks/h100/common.sh
el "find-peak llama3_1-8b-interactive"
$LG find-peak server --preset llama3_1-8b-interactive --start-qps 8 --precision 4 --repeats 1 --max-runs 5 \
    --input-len 512 --output-len 128 --num-requests 700 --duration 0 $COMMON --out "$R/peak-8b-interactive" 2>&1 | tail -n 12
el "stopping the kit's server"
kill "$(cat /tmp/vllm_server.pid)" 2>/dev/null; sleep 8
el "sweep --max-num-seqs 16,64,256 (loadgen launches vLLM per point)"
$LG sweep benchmarks/h100/sweep-max-num-seqs.yaml --server-arg=--max-num-seqs=16,64,256 --quiet \
    --out "$R/sweep-max-num-seqs" 2>&1 | tail -n 15
summary
tar -czf "$OUT/loadgen-c.tgz" -C "$R" --exclude=requests.jsonl --exclude=warmup.jsonl .
el "client C done"
