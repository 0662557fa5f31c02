# Sourced by the H100 scripts below; runs ON the GPU machine from the repo root, inside the GPU kit's
# environment (../shared/gpu: vLLM 0.26.0 unpacked in /tmp/site, the kit's server on :8000 serving
# llama8b-dummy with random weights). Results go to /tmp/lg; after every step they are packed again
# into $OUT/loadgen-$PART.tgz (small files only) so a command stopped at its time limit still returns
# what it measured. The console log is copied to $OUT/client-$PART.log as it grows.
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
       VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 VLLM_USE_FLASHINFER_SAMPLER=0
URL=http://127.0.0.1:8000
MODEL=llama8b-dummy
R=/tmp/lg
mkdir -p "$R"
PART=${PART:-x}
exec > >(tee -a "$OUT/client-$PART.log") 2>&1
LG="${LG_PYTHON:-python3} -m loadgen"
COMMON="--url $URL --model $MODEL --quiet"
el() { echo "[lg +$(( $(date +%s) - ${LG_T0:=$(date +%s)} ))s] $*"; }
pack() {  # the results so far, and one summary line per run
  ${LG_PYTHON:-python3} benchmarks/h100/summarize.py "$R" > "$OUT/loadgen-summary.txt" 2>&1
  tar -czf "$OUT/loadgen-$PART.tgz" -C "$R" --exclude=requests.jsonl --exclude=warmup.jsonl .
}
