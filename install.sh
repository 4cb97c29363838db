#!/usr/bin/env bash
# Install koquant and everything it needs into ./.venv (Python 3.11, CPU-only torch 2.13.0).
# llama-cpp-python is built once from source for every x86-64 CPU (llama.cpp's CPU variants, one
# picked at load time; never -march=native) and cached in ~/.cache/koquant/wheels.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3.11}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -c constraints.txt)
"${PIP[@]}" -q pip==25.3
# torch first and alone, so the CPU wheel is what every later step sees as installed
"${PIP[@]}" torch==2.13.0
# the portable llama.cpp build (koquant.exporters.gguf.llamacpp.PORTABLE_CMAKE_ARGS), cached by version and flags
WHEEL=$(PYTHONPATH=src .venv/bin/python -m koquant.exporters.gguf.llamacpp wheel)
"${PIP[@]}" --force-reinstall --no-deps "$WHEEL"
"${PIP[@]}" -e ".[gguf,onnx,gptq,bench,serve,serve-bench,ray,test]"
# fetch the pinned llama.cpp converter (vendored in the llama-cpp-python sdist) once
.venv/bin/python -c "from koquant.exporters.gguf.llamacpp import llama_cpp_source; print('llama.cpp sources:', llama_cpp_source())"
echo "koquant installed: .venv/bin/koquant"
