#!/bin/bash
# The serving-model loop on the GPU machine (../shared/GPU.md: CLIENT_CMD of .gpu/device_serve.sh, vLLM
# serving the 8B-shaped dummy model at http://127.0.0.1:8000 with --max-num-seqs 32): four calibration
# points, loadgen calibrate, then two predictions confirmed by runs (an unseen load, an unseen length).
# Everything lands in $OUT/calibrate.tar.gz and the console in $OUT/calibrate.txt.
set -u
URL=http://127.0.0.1:8000
W=/tmp/calibrate; rm -rf $W; mkdir -p $W
LG="python3 -m loadgen"
{
  for p in "1 128 6" "1 1024 6" "8 512 32" "128 512 384"; do
    set -- $p
    $LG run concurrency --url $URL --concurrency $1 --input-len $2 --output-len 128 --num-requests $3 \
        --duration 0 --seed $2 --out $W/c$1-i$2 --quiet 2>&1 | grep -E "requests:|TTFT \(from sent\)|TPOT|^E2E|error" 
  done
  $LG calibrate $W/c1-i128 $W/c1-i1024 $W/c8-i512 $W/c128-i512 --out $W/model.json
  $LG predict $W/model.json concurrency --url $URL --concurrency 48 --input-len 512 --output-len 128 \
      --num-requests 192 --duration 0 --seed 7 --tier chat:ttft_ms=500 --tier batch:ttft_ms=5000 --confirm \
      --out $W/unseen-load 2>&1 | grep -v "^\["
  $LG predict $W/model.json concurrency --url $URL --concurrency 8 --input-len 2048 --output-len 128 \
      --num-requests 32 --duration 0 --seed 8 --confirm --out $W/unseen-length 2>&1 | grep -v "^\["
} 2>&1 | tee $OUT/calibrate.txt
(cd $W && tar -czf $OUT/calibrate.tar.gz model.json unseen-*/prediction.json */report.json)
