#!/bin/bash
# Runs ON the GPU machine (repo root), no GPU involved: benchmarks/client_capacity.py with the simulated
# server on 8 cores (one process per core, SO_REUSEPORT) and every client on one other core, so the
# levels that one server core cannot feed on the 2-core development VMs (Poisson 500 and 1,000 req/s
# × 128 tokens) measure the client, not the server. The peer is the kit's vLLM 0.26 `vllm bench
# serve`, so the kit's payload must be unpacked first: this script does it from the stashed parts
# (bash .gpu/device_stash.sh .gpuwheels/p1 in the previous command), given the last part as $1.
#   bash benchmarks/h100/client_f.sh .gpuwheels/p2
set -u
T0=$(date +%s)
OUTD=${OUT:-/tmp/out}; mkdir -p "$OUTD"
exec > >(tee -a "$OUTD/client-f.log") 2>&1
el() { echo "[+$(( $(date +%s) - T0 ))s] $*"; }
if [ ! -f /tmp/site/.complete ]; then
  mkdir -p /tmp/stash
  [ -n "${1:-}" ] && cp "$1"/site.tar.xz.part* /tmp/stash/
  sums=$PWD/.gpu/payload.sha256
  (cd /tmp/stash && grep part "$sums" | sha256sum -c -) || { el "MISSING PART"; exit 2; }
  rm -rf /tmp/site && mkdir -p /tmp/site
  cat /tmp/stash/site.tar.xz.part* | xz -dc -T0 | tar -x -C /tmp/site || { el "unpack failed"; exit 3; }
  touch /tmp/site/.complete
fi
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 \
       DO_NOT_TRACK=1
el "unpacked; $(nproc) CPUs; $(python3 -c 'import vllm; print("vllm", vllm.__version__)' 2>/dev/null | tail -1)"
LEVELS=${LEVELS:-concurrency:64,concurrency:256,concurrency:1024,poisson:100,poisson:500,poisson:1000,short:1000}
python3 benchmarks/client_capacity.py --server-cpus 0-7 --client-cpu 9 --peer-python python3 --peer-cli \
    --levels "$LEVELS" --out "$OUTD/client_capacity-h200-host.json" 2>&1 | grep -v "^W1"
el "done"
