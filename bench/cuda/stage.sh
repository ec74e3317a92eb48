#!/usr/bin/env bash
# stage.sh: prepares what `bench/cuda/device_run.sh` needs on the lent GPU machine, which has CUDA but not
# necessarily OpenBLAS/cJSON/utf8proc, and receives at most 64 MiB of tree per call (the default model is 98 MB).
# Run here, in the repository root:  bash bench/cuda/stage.sh
#   - builds portable (-march=x86-64-v3) test_cuda, test_cuda_train, bench_cuda, mixatt and fa_variants in a
#     scratch copy of the tree ($BUILD_COPY, default /tmp/mx-devbuild: the checkout's own build/ is left alone),
#     strips them;
#   - .devcarry/      bin.tar.gz (the binaries), lib.tar.gz (their non-CUDA shared libraries), model.sha256
#   - .devcarry-m1/   the model's first 58 MB;  .devcarry-m2/  the rest
# All three folders are ignored (.gitignore: /.devcarry*/). Then, through the device tool, two calls back to back
# (the machine keeps /tmp only while warm, ~30 s after a call):
#   1. carry [".devcarry-m1"]                 command: bash bench/cuda/device_run.sh stage
#   2. carry [".devcarry", ".devcarry-m2"]    command: bash bench/cuda/device_run.sh run [test|bench|all]
#      (when the tree and both carries pass 64 MiB: carry [".devcarry-m2"] with `stage` too, then [".devcarry"])
# Later calls while the machine is still warm need only carry [".devcarry"] (the model stays in /tmp/mx).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MODEL=${MODEL:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}
B=${BUILD_COPY:-/tmp/mx-devbuild}
# DEVCARRY: the folder for the binaries (default .devcarry); another name (e.g. .devcarry-attn, for a second line of
# work staging its own build beside this one) stages only the binaries and libraries, and with WITH_MODEL=1 the
# model parts too, into DEVCARRY-m1/ and DEVCARRY-m2/ (device_run.sh with the same DEVCARRY finds them there).
DC=${DEVCARRY:-.devcarry}
TMPB=/tmp/mx-devbin${DC#.devcarry}
TMPL=/tmp/mx-devlibs${DC#.devcarry}
SPLIT=${SPLIT_BYTES:-52000000}
cd "$ROOT"
test -f "$MODEL" || { echo "stage.sh: no model at $MODEL (make model)" >&2; exit 1; }
mkdir -p "$B"
# a scratch copy of the sources (tracked and untracked files, not build outputs or models)
tar --exclude=./build --exclude=./models --exclude='./.devcarry*' --exclude=./.git -cf - . | tar -C "$B" -xf -
make -C "$B" -j"$(nproc)" ARCH=-march=x86-64-v3 build/mixatt build/cuda/test_cuda build/cuda/test_cuda_train \
    build/cuda/bench_cuda build/cuda/fa_variants
rm -rf "$DC"
mkdir -p "$DC" "$TMPB"
rm -f "$TMPB"/*
for b in build/mixatt build/cuda/test_cuda build/cuda/test_cuda_train build/cuda/bench_cuda build/cuda/fa_variants; do
    strip -o "$TMPB/$(basename "$b")" "$B/$b"
done
# XZ=1: .tar.xz instead of .tar.gz (about a third of the size: the binaries, libraries and the model then fit two
# calls with room for a second tree's binaries)
pack() { if [ "${XZ:-0}" = 1 ]; then tar -C "$1" -cf - . | xz -T2 -6 > "$2.tar.xz"; else tar -C "$1" -czf "$2.tar.gz" .; fi; }
pack "$TMPB" "$DC/bin"
# every shared library the three binaries need (OpenBLAS, cJSON, utf8proc, Open MPI and theirs) except glibc's,
# the compiler runtime's and CUDA's own (the device has those, CUDA's under /usr/local/cuda; NCCL, 218 MB, is found
# there by device_run.sh, in /usr/local/cuda or PyTorch's nvidia-nccl wheel). device_run.sh puts
# them on LD_LIBRARY_PATH for mixatt's binaries only (wrappers), never for python3 there.
libs=$(for b in build/mixatt build/cuda/test_cuda build/cuda/test_cuda_train build/cuda/bench_cuda; do ldd "$B/$b"; done |
       awk '$3 ~ /^\// {print $3}' | sort -u |
       grep -vE '/(libc|libm|libdl|libpthread|librt|libresolv|ld-linux[^/]*|libstdc\+\+|libgcc_s|libcudart|libcublas[A-Za-z]*|libnccl)\.so' || true)
mkdir -p "$TMPL" && rm -f "$TMPL"/*
for l in $libs; do cp -L "$l" "$TMPL/$(basename "$l")"; done
pack "$TMPL" "$DC/lib"
if [ "$DC" != .devcarry ] && [ "${WITH_MODEL:-0}" != 1 ]; then
    du -sh "$DC"
    echo "stage.sh: ready in $DC (binaries only: device_run.sh with DEVCARRY=$DC, modes without the model)"
    exit 0
fi
rm -rf "$DC-m1" "$DC-m2"
mkdir -p "$DC-m1" "$DC-m2"
sha256sum "$MODEL" | awk '{print $1}' > "$DC/model.sha256"
head -c "$SPLIT" "$MODEL" > "$DC-m1/part"
tail -c +"$((SPLIT + 1))" "$MODEL" > "$DC-m2/part"
du -sh "$DC" "$DC-m1" "$DC-m2"
echo "stage.sh: ready (call 1 carries $DC-m1, call 2 carries $DC and $DC-m2)"
