#!/usr/bin/env bash
# train_check.sh: GPU training on the lent machine, in one call: every CUDA training op against the CPU
# (test_cuda_train), the end-to-end checks against PyTorch (tests/cuda/check_train_gpu.py), then the speed of
# GPT-2 124M beside torch.compile (bench/train_gpu.py); `profile`: where a GPT-2 124M bf16 step's time goes
# (mixatt train --profile, PROFILE_STEPS steps, default 6); `setup`: only the wrappers in /tmp/mx/bin. Needs only
# the binaries that bench/cuda/stage.sh puts in $DEVCARRY (no model): carry [".devcarry-train"] with
# DEVCARRY=.devcarry-train. WHAT: test, bench, all, profile or setup.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
M=/tmp/mx
DC=${DEVCARRY:-.devcarry}
OUTD=${OUT:-/tmp/mx/out}
mkdir -p "$M/lib" "$M/raw" "$M/bin" "$OUTD"
tar -C "$M/lib" -xzf "$DC/lib.tar.gz" && tar -C "$M/raw" -xzf "$DC/bin.tar.gz" || exit 3
NCCL_DIR=/usr/local/cuda/lib64
[ -e "$NCCL_DIR/libnccl.so.2" ] || NCCL_DIR=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
for b in mixatt test_cuda_train; do
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/lib:/usr/local/cuda/lib64:%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec %s/raw/%s "$@"\n' \
        "$M" "$NCCL_DIR" "$M" "$b" > "$M/bin/$b"
    chmod +x "$M/bin/$b"
done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
rc=0
case "${1:-all}" in test|all)
    "$M/bin/test_cuda_train" 2>&1 | tee "$OUTD/test_cuda_train.log"; [ "${PIPESTATUS[0]}" -ne 0 ] && rc=1
    MIXATT="$M/bin/mixatt" PYTHONUNBUFFERED=1 python3 tests/cuda/check_train_gpu.py 2>&1 | tee "$OUTD/check_train_gpu.log"
    [ "${PIPESTATUS[0]}" -ne 0 ] && rc=1 ;;
esac
case "${1:-all}" in bench|all)
    MIXATT="$M/bin/mixatt" PYTHONUNBUFFERED=1 python3 bench/train_gpu.py ${BENCH_ARGS:-} --out "$M/bench" 2>&1 |
        tee "$OUTD/train_gpu.log"
    cp "$M/bench/train_gpu.json" "$OUTD/" 2>/dev/null ;;
esac
case "${1:-all}" in profile)
    for prec in ${PROFILE_PRECISIONS:-bf16}; do
        echo "== mixatt train --profile, GPT-2 124M, $prec"
        "$M/bin/mixatt" train -c configs/train-gpt2-124m.json --device cuda --precision "$prec" -q --profile \
            --set steps="${PROFILE_STEPS:-6}" -o "$M/profile-$prec" 2>&1 | tee "$OUTD/profile-$prec.log"
    done ;;
esac
exit $rc
