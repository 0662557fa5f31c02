#!/bin/bash
# Fourth command: stop the kit's server, then let loadgen launch vLLM itself (its own launcher,
# `python3 -m vllm.entrypoints.openai.api_server`, see sweep-max-num-seqs.yaml) for a --max-num-seqs
# sweep with a relaunch per point (enforce-eager: ~85 s per start instead of ~130 s).
PART=d; source benchmarks/h100/common.sh
el "stopping the kit's server"
kill "$(cat /tmp/vllm_server.pid)" 2>/dev/null; sleep 8
el "sweep --max-num-seqs 16,64,256 (loadgen launches vLLM per point)"
timeout -s INT 540 $LG sweep benchmarks/h100/sweep-max-num-seqs.yaml --server-arg=--max-num-seqs=16,64,256 \
    --quiet --out "$R/sweep-max-num-seqs" 2>&1 | tail -n 15
for f in "$R"/sweep-max-num-seqs/*/server.log; do [ -f "$f" ] && tail -n 3 "$f"; done
pack; cat "$OUT/loadgen-summary.txt"
el "client D done"
