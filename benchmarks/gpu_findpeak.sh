#!/bin/bash
# The find-peak half of the serving-model loop (after benchmarks/gpu_calibrate.sh, on the same warm
# machine, so /tmp/calibrate/model.json is there): the model's predicted peak Server QPS under a TTFT p99
# bound, then `loadgen find-peak` measuring it. Console in $OUT/findpeak.txt, peak.json and the
# prediction in $OUT/findpeak.tar.gz.  URL=... and TTFT_MS=... override the defaults.
set -u
URL=${URL:-http://127.0.0.1:8000}
TTFT=${TTFT_MS:-1000}
W=/tmp/calibrate
LG=${LG:-python3 -m loadgen}
SHAPE="--input-len 512 --output-len 128 --num-requests 662 --duration 0"
{
  $LG predict $W/model.json server --url $URL --qps 1 $SHAPE --seed 11 --tier peak:ttft_ms=$TTFT \
      --out $W/peak-prediction 2>&1 | grep -v "^\["
  start=$(python3 -c "import json; t=json.load(open('$W/peak-prediction/prediction.json'))['tiers'][0]; \
print(max(1.0, round((t['max'] or 2) / 2, 1)))")
  $LG find-peak server --url $URL --ttft-ms $TTFT $SHAPE --seed 12 --start-qps $start --precision 1 \
      --repeats 0 --max-runs 9 --out $W/peak --quiet 2>&1 | grep -v "^\["
} 2>&1 | tee $OUT/findpeak.txt
(cd $W && tar -czf $OUT/findpeak.tar.gz peak-prediction/prediction.json peak/peak.json)
