#!/bin/sh
# configure.sh: detects what this machine offers the build and writes it, as make variables, to the file named
# by $1 (build/config.mk). make runs it before every build, after `deps` when both are asked for (`make deps
# demo`), and reads the values when a recipe runs; the file is rewritten only when a value changed, and every
# object depends on it, so a build whose detected features changed is rebuilt and an unchanged one is not.
#   $1  the file to write          $2  CUDA_HOME of the nvcc that make found ("" when none, or NVCC= was given)
# Detected: cJSON, utf8proc and libmicrohttpd flags (pkg-config), Open MPI (pkg-config ompi-c), CUDA (as make
# found it), NCCL (nccl.h beside that CUDA or in /usr/include, and Open MPI to bootstrap it).
set -eu
out=$1
cuda_home=${2:-}

pc() { pkg-config "$@" 2>/dev/null || true; }

deps_cf=$(pc --cflags libcjson libutf8proc libmicrohttpd)
deps_libs=$(pc --libs libcjson libutf8proc libmicrohttpd)
[ -n "$deps_libs" ] || deps_libs="-lcjson -lutf8proc -lmicrohttpd"

mpi_libs=$(pc --libs ompi-c)
mpi_cf=""
[ -z "$mpi_libs" ] || mpi_cf="$(pc --cflags ompi-c) -DMX_HAVE_MPI"

nccl_cf="" nccl_libs=""
if [ -n "$cuda_home" ]; then
    for h in "$cuda_home/include/nccl.h" /usr/include/nccl.h; do
        if [ -f "$h" ] && [ -n "$mpi_libs" ]; then
            nccl_cf="-DMX_HAVE_NCCL -isystem $cuda_home/include"  # system headers: nccl.h is not -Wstrict-prototypes clean
            nccl_libs="-lnccl"
            break
        fi
    done
fi


tmp="$out.tmp.$$"
mkdir -p "$(dirname "$out")"
cat >"$tmp" <<EOT
# $out: written by scripts/configure.sh; what this machine offers the build (do not edit: make rewrites it).
DEPS_CF := $deps_cf $mpi_cf
DEPS_LIBS := $deps_libs $mpi_libs
HAVE_MPI := ${mpi_libs:+1}
CUDA_HOME := $cuda_home
HAVE_NCCL := ${nccl_libs:+1}
NCCL_CF := $nccl_cf
NCCL_LIBS := $nccl_libs
EOT
if cmp -s "$tmp" "$out"; then
    rm -f "$tmp"
else
    mv "$tmp" "$out"
    yn() { [ -n "$1" ] && echo yes || echo no; }
    echo "  CONFIG  $out: Open MPI $(yn "$mpi_libs"), CUDA $(yn "$cuda_home"), NCCL $(yn "$nccl_libs")"
fi
