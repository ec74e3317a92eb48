#!/usr/bin/env bash
# ranks_run.sh: tensor parallelism and Star Attention on $NP GPUs (default 2; issue #6), run on the lent machine (kind nvidia-h200-x2) in the
# repository root with what bench/cuda/stage_ranks.sh staged in .devcarry-ranks/ (carry it):
#   bash bench/cuda/ranks_run.sh WHAT...   each WHAT in order (default: all = check bench star)
#     check   ranks_check.py: `mpirun -np 2 mixatt logits --tp 2 --device cuda` vs one GPU, the CPU in fp32 and
#             transformers on the Llama, Mixtral and DeepSeek-V2 fixtures, prefill and decode
#     bench   a random-weight Llama (ranks_model.py, shapes $SHAPES, default "3b 8b"; a shape starts only while
#             less than $BENCH_BUDGET s, default 250, have passed) and `mixatt bench -p 4096 -n 128` on 1 GPU
#             and under `mpirun -np 2 ... --tp 2` on 2 GPUs
#     star    Star Attention (ranks_star.py): correctness first (Star on 2 GPUs and on 1 vs dense on 1 GPU and the
#             CPU's Star, tiny Llama fixture), then a random-weight Llama ($STAR_SHAPE, default 3b, $STAR_LAYERS
#             layers, default the shape's) and phase-1 prefill of $STAR_CTX (default "32768 65536 131072") on
#             2 GPUs (block = n/2, anchor = block and block/4) against dense prefill on 1 GPU, beside the ideal
#             speedups; contexts start while less than $STAR_BUDGET s (default 300) of the benchmark passed
# NVLink multicast stays off (NCCL_NVLS_ENABLE=0, exported to every rank). Everything goes to $OUT/ranks.log
# (plus ranks_check.json and bench.jsonl), which the device tool brings back.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
C=.devcarry-ranks
M=/tmp/mxr
OUTD=${OUT:-$M/out}
mkdir -p "$M/lib" "$M/raw" "$M/bin" "$OUTD"
DEVICE=${DEVICE:-cuda} # cpu: a dry run of this script's logic on a machine without GPUs
PP=${PP:-4096}
NP=${NP:-2} # ranks = GPUs
export OUTD DEVICE NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 MIXATT_COMM_TIMEOUT=30
exec > >(tee -a "$OUTD/ranks.log") 2>&1
test -f "$C/bin.tar.gz" || { echo "ranks_run: no $C (run bench/cuda/stage_ranks.sh here and carry it)"; exit 3; }
# Debian's Open MPI over whatever the image has (its own mpirun, if any, pairs with another libpmix); not in a dry run
{ [ "$DEVICE" = cpu ] || tar -C / -xzf "$C/ompi.tar.gz"; } && tar -C "$M" -xzf "$C/libs.tar.gz" && cp "$M"/libs/* "$M/lib/" &&
    tar -C "$M/raw" -xzf "$C/bin.tar.gz" || exit 3
# NCCL: CUDA's own, else the one PyTorch's nvidia-nccl wheel brings
NL=/usr/local/cuda/lib64
[ -e "$NL/libnccl.so.2" ] || NL=$(dirname "$(find /opt /usr/local /usr/lib -name 'libnccl.so.2*' 2>/dev/null | head -1)")
LIBS=$M/lib:$NL:/usr/local/cuda/lib64
printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s/raw/mixatt "$@"\n' "$LIBS" "$M" > "$M/bin/mixatt"
chmod +x "$M/bin/mixatt"
MX=$M/bin/mixatt
# mpirun with the carried libraries (python3 keeps the machine's own)
MPIRUN="timeout 240 env LD_LIBRARY_PATH=$LIBS /usr/bin/mpirun --allow-run-as-root --bind-to none -np $NP -x NCCL_NVLS_ENABLE -x MIXATT_COMM_TIMEOUT"
export MIXATT=$MX MPIRUN NP
echo "ranks_run: $(date -u +%FT%TZ) libnccl from $NL; mpirun in PATH: $(command -v mpirun)"
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader
nvidia-smi topo -m 2>&1 | head -4

# bench's --json lines (stderr; under mpirun every rank prints them) → bench.jsonl, labelled; the rest to the log
json_to() { # $1 = stderr file, $2 = label, $3 = GPUs
    grep -v '^{' "$1"
    grep '^{' "$1" | sed "s/^/{\"model\":\"$2\",\"gpus\":$3,\"r\":/; s/\$/}/" >> "$OUTD/bench.jsonl"
}

bench_pair() { # $1 = model dir, $2 = label: 1 GPU, then 2 GPUs (--tp 2), then 2 GPUs without CUDA graphs
    local args=(bench -m "$1" --device "$DEVICE" -p "$PP" -n 128 -r 3 --json) r=0
    echo "== $2: 1 GPU"
    timeout 240 "$MX" "${args[@]}" 2> "$M/err" || r=1
    json_to "$M/err" "$2" 1
    echo "== $2: $NP GPUs, --tp $NP"
    $MPIRUN "$MX" "${args[@]}" --tp "$NP" 2> "$M/err" || r=1
    json_to "$M/err" "$2" "$NP"
    echo "== $2: $NP GPUs, --tp $NP, decode with CUDA graphs off (MX_CUDA_GRAPHS=0)"
    MX_CUDA_GRAPHS=0 $MPIRUN -x MX_CUDA_GRAPHS "$MX" bench -m "$1" --device "$DEVICE" -p 0 -n 128 -r 3 --tp "$NP" 2>&1 |
        grep -E "tg128|rror|mixatt"
    return $r
}

rc=0
for WHAT in ${*:-all}; do
case $WHAT in
check|all)
    echo "== check: 2 GPUs vs 1 GPU, CPU fp32, transformers"
    PYTHONUNBUFFERED=1 python3 bench/cuda/ranks_check.py || rc=1
    ;;&
bench|all)
    for shape in ${SHAPES:-3b 8b}; do
        if [ "$SECONDS" -gt "${BENCH_BUDGET:-250}" ]; then echo "== bench $shape: skipped (${SECONDS}s passed)"; continue; fi
        echo "== bench $shape: generating the random-weight model (${SECONDS}s passed)"
        PYTHONUNBUFFERED=1 python3 bench/cuda/ranks_model.py "$M/llama-$shape" --shape "$shape" || { rc=1; continue; }
        bench_pair "$M/llama-$shape" "llama-$shape" || rc=1
        rm -rf "$M/llama-$shape"
    done ;;&
star|all)
    echo "== star: correctness, Star on 2 GPUs and 1 GPU vs dense on 1 GPU and the CPU's Star (${SECONDS}s passed)"
    PYTHONUNBUFFERED=1 python3 bench/cuda/ranks_star.py check || rc=1
    echo "== star bench: generating the random-weight model (${SECONDS}s passed)"
    SM=$M/llama-star
    PYTHONUNBUFFERED=1 python3 bench/cuda/ranks_model.py "$SM" --shape "${STAR_SHAPE:-3b}" --max-pos 131080 \
        ${STAR_LAYERS:+--layers "$STAR_LAYERS"} || rc=1
    [ -d "$SM" ] && { PYTHONUNBUFFERED=1 python3 bench/cuda/ranks_star.py bench "$SM" ${STAR_CTX:-32768 65536 131072} || rc=1; }
    rm -rf "$SM"
    if [ -x "$C/test_cuda" ] && [ "$DEVICE" != cpu ]; then
        echo "== star: tests/cuda/test_cuda (lse_merge and every op against the CPU)"
        LD_LIBRARY_PATH=$LIBS timeout 90 "$C/test_cuda" > "$OUTD/test_cuda.log" 2>&1 || rc=1
        grep -E "lse_merge|FAIL|passed" "$OUTD/test_cuda.log"
    fi
    ;;
check|bench|star) ;;
*) echo "ranks_run: unknown WHAT '$WHAT'"; rc=2 ;;
esac
done
echo "ranks_run: done in ${SECONDS}s, status $rc"
exit $rc
