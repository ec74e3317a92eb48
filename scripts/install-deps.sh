#!/usr/bin/env bash
# install-deps.sh: installs what mixatt needs to build and test on Debian/Ubuntu: a C compiler, OpenBLAS,
# Open MPI (mpirun), cJSON, utf8proc, Criterion, clang (fuzzing), clang-format (make format-check), gnuplot (mixatt plot), and the Python packages the tests use (numpy, gguf, pytest).
set -euo pipefail
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
PKGS="build-essential pkg-config libopenblas-dev libopenmpi-dev openmpi-bin libcjson-dev libutf8proc-dev libmicrohttpd-dev zlib1g-dev libcriterion-dev clang clang-format libclang-rt-dev libomp-dev gnuplot-nox python3 python3-pip"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
    echo "install-deps: apt-get install$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
if ! python3 -c "import numpy, gguf, pytest, openai" 2>/dev/null; then
    echo "install-deps: pip install numpy gguf pytest openai"
    python3 -m pip install -q numpy gguf pytest openai 2>/dev/null || python3 -m pip install -q --break-system-packages numpy gguf pytest openai
fi
echo "install-deps: done"
