#!/usr/bin/env bash
# Install koquant and everything it needs into ./.venv (Python 3.11, CPU-only torch 2.13.0).
# llama-cpp-python builds from source the first time (~12 CPU-minutes); pip caches the wheel.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3.11}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -c constraints.txt)
"${PIP[@]}" -q pip==25.3
# torch first and alone, so the CPU wheel is what every later step sees as installed
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -e ".[gguf,onnx,gptq,bench,test]"
# fetch the pinned llama.cpp converter (vendored in the llama-cpp-python sdist) once
.venv/bin/python -c "from koquant.llamacpp import llama_cpp_source; print('llama.cpp sources:', llama_cpp_source())"
echo "koquant installed: .venv/bin/koquant"
