#!/usr/bin/env bash
# install-deps.sh: installs what mixatt needs to build and test on Debian 12 / Ubuntu, in two parts:
#   1. Debian packages (apt-get, skipped when all are there): a C compiler, pkg-config, OpenBLAS, Open MPI
#      (mpirun), cJSON, utf8proc, libmicrohttpd and zlib (serve), Criterion, clang and libomp (fuzzing),
#      clang-format (make format-check), gnuplot (mixatt plot), python3 with venv, chromium and chromium-driver
#      (the chat page test of serve).
#   2. The Python virtual environment .venv, with exactly the packages requirements-test.txt names (pip
#      --no-deps, then `pip check`, which names any dependency the file lacks). It is rebuilt from nothing
#      whenever requirements-test.txt differs from the copy kept in .venv/, and left alone otherwise.
# Usage: bash scripts/install-deps.sh [--venv]     (--venv: part 2 only; `make test` calls it so)
#        bash scripts/install-deps.sh --bench      .venv-bench from bench/requirements-bench.txt instead: llama.cpp
#                                                  (llama-cpp-python, compiled here: cmake, ~10 min) for bench/*.py
# What the build then finds (Open MPI, NCCL, CUDA) is detected by scripts/configure.sh when make next builds.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS="build-essential pkg-config libopenblas-dev libopenmpi-dev openmpi-bin libcjson-dev libutf8proc-dev
      libmicrohttpd-dev zlib1g-dev libcriterion-dev clang clang-format libclang-rt-dev libomp-dev gnuplot-nox
      python3 python3-venv python3-pip chromium chromium-driver"
REQ=requirements-test.txt
VENV=.venv
if [ "${1:-}" = --bench ]; then
    REQ=bench/requirements-bench.txt VENV=.venv-bench PKGS="$PKGS cmake"
    export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" # llama.cpp for this machine's instruction set
fi
PY=${MIXATT_PYTHON3:-/usr/bin/python3}   # Debian's python3 (not a pyenv or conda one that PATH may find first)

install_debian() {
    local sudo="" missing="" p
    [ "$(id -u)" = 0 ] || sudo="sudo"
    for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    [ -n "$missing" ] || return 0
    echo "install-deps: apt-get install$missing"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

install_venv() {
    if [ -x "$VENV/bin/python" ] && cmp -s "$REQ" "$VENV/$(basename "$REQ")"; then
        echo "install-deps: $VENV is up to date with $REQ"
        return 0
    fi
    [ -x "$PY" ] || { echo "install-deps: $PY not found: run \`make deps\` (or set MIXATT_PYTHON3)" >&2; exit 1; }
    echo "install-deps: creating $VENV from $REQ ($($PY --version))"
    rm -rf "$VENV"
    trap 'rm -rf "$VENV"' EXIT   # nothing half-built is left behind for the tests to run with
    "$PY" -m venv "$VENV" ||
        { echo "install-deps: '$PY -m venv' failed (Debian: apt-get install python3-venv, or \`make deps\`)" >&2; exit 1; }
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    "$VENV/bin/python" -m pip install --quiet --no-deps --no-input -r "$REQ"
    if ! "$VENV/bin/python" -m pip check >"$VENV/pip-check.txt" 2>&1; then
        echo "install-deps: $REQ is not complete; pip check says:" >&2
        sed 's/^/    /' "$VENV/pip-check.txt" >&2
        echo "install-deps: pin each package named there in $REQ" >&2
        exit 1
    fi
    cp "$REQ" "$VENV/$(basename "$REQ")"   # the stamp: written last
    trap - EXIT
    echo "install-deps: $VENV ready ($(grep -c '^[A-Za-z]' "$REQ") packages)"
}

[ "${1:-}" = --venv ] || install_debian
install_venv
echo "install-deps: done"
