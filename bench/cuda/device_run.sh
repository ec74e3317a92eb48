#!/usr/bin/env bash
# device_run.sh: runs on the lent GPU machine, in the repository root, with what bench/cuda/stage.sh staged.
#   bash bench/cuda/device_run.sh stage          keeps the model's first part in /tmp/mx (call 1)
#   bash bench/cuda/device_run.sh run WHAT...     runs each WHAT in order (default: all):
#       ops      the op tests only (test_cuda with CUDA graphs on and off, and with MX_CUDA_PREFILL=fa2: the
#                prefill kernel of other GPUs), no model: carry .devcarry
#       models   every model fixture on the GPU vs its reference (tests/cuda/check_models_gpu.py): .devcarry
#       attn     every prefill-attention variant tried (bench/cuda/fa_variants.cu: checked against a CPU
#                reference, then timed) and PyTorch's SDPA (peer.py) in the same run, no model: .devcarry
#       moe      the Mixtral-shaped MoE benchmark beside HF transformers (bench/cuda/moe_bench.py): .devcarry
#       moecheck only that model's logits check, under several launch settings (A/B of a wrong result)
#       moeab    that model's mixatt prefill/decode under MoE launch settings (MX_CUDA_MOE, MX_CUDA_MOE_STREAMS, ...), no HF
#       test     test_cuda with the default model (graphs on) and the ops with graphs off
#       bench    bench_cuda, peer.py, mixatt bench and the decode A/B of the launch options
#       all      test and bench
#       base     bench_cuda and mixatt bench from another tree's binaries (BASE_DC=its carried DEVCARRY), for an
#                A/B of a change in one run
#     test/bench/all need the default model: part 1 staged by call 1 and .devcarry-m2 carried (joined here and
#     checked against its sha256), or already joined in /tmp/mx by an earlier call on this warm machine.
# DEVCARRY=NAME (stage.sh's): the binaries in NAME/, the model parts in NAME-m1/ and NAME-m2/. A run without
# NAME/ carried reuses the binaries an earlier call on this warm machine unpacked (so a call may carry only a
# model part).
# The binaries run with the carried libraries on LD_LIBRARY_PATH (through wrappers in /tmp/mx/bin, which the
# Python scripts call as MIXATT); python3 itself keeps the machine's own libraries. mixatt links Open MPI but only
# initializes it under mpirun, so it runs here alone. Logs go to $OUT (the device tool brings them back).
set -uo pipefail
ROOT=${ROOT:-$(cd "$(dirname "$0")/../.." && pwd)} # ROOT=...: the tree, when this script was carried in
cd "$ROOT"
M=/tmp/mx
DC=${DEVCARRY:-.devcarry} # the staged binaries (stage.sh's DEVCARRY)
OUTD=${OUT:-/tmp/mx/out}
mkdir -p "$M" "$OUTD"
case "${1:-}" in
stage)
    # the model parts carried in this call (part 1, or part 2 when the tree plus both carries passes 64 MiB)
    [ -f "$DC-m1/part" ] && { cp "$DC-m1/part" "$M/model.part1" && echo "device_run: part 1 staged"; }
    [ -f "$DC-m2/part" ] && { cp "$DC-m2/part" "$M/model.part2" && echo "device_run: part 2 staged"; }
    [ -f "$DC/model.sha256" ] && cp "$DC/model.sha256" "$M/model.sha256"
    ls -la "$M"
    [ "${2:-}" = run ] || exit 0
    shift ;; # `stage run WHAT...`: stage, then run in the same call
run) ;;
*) echo "usage: device_run.sh stage [run WHAT...] | run [ops|models|attn|moe|test|bench|all]..." >&2; exit 2 ;;
esac
shift
WHATS=${*:-all}

# binaries and libraries; wrappers that give the binaries (only) the carried libraries
mkdir -p "$M/lib" "$M/raw" "$M/bin"
# a .tar.gz or .tar.xz (stage.sh XZ=1; unpacked by Python's lzma, which needs no xz binary here)
unpack() { # unpack DIR ARCHIVE_WITHOUT_SUFFIX
    if [ -f "$2.tar.xz" ]; then
        python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' "$2.tar.xz" "$1"
    else
        tar -C "$1" -xzf "$2.tar.gz"
    fi
}
if [ -f "$DC/bin.tar.gz" ] || [ -f "$DC/bin.tar.xz" ]; then
    unpack "$M/lib" "$DC/lib" && unpack "$M/raw" "$DC/bin" || exit 3
    [ -f "$DC/model.sha256" ] && cp "$DC/model.sha256" "$M/model.sha256"
else
    [ -x "$M/raw/mixatt" ] || { echo "device_run: no $DC carried and no binaries unpacked in $M" >&2; exit 3; }
    echo "device_run: reusing the binaries unpacked in $M by an earlier call"
fi
# NCCL (mixatt links it when the build found it): CUDA's own, else the one PyTorch's nvidia-nccl wheel brings
NCCL_DIR=/usr/local/cuda/lib64
[ -e "$NCCL_DIR/libnccl.so.2" ] || NCCL_DIR=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
echo "device_run: libnccl from ${NCCL_DIR:-(not found)}"
for b in mixatt test_cuda test_cuda_train bench_cuda fa_variants; do
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/lib:/usr/local/cuda/lib64:%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec %s/raw/%s "$@"\n' \
        "$M" "$NCCL_DIR" "$M" "$b" > "$M/bin/$b"
    chmod +x "$M/bin/$b"
done
BIN=$M/bin
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "device_run: mixatt --help says: $("$BIN/mixatt" --help 2>&1 | head -1)"  # starts without mpirun?

need_model() {
    local p2=$DC-m2/part
    [ -f "$p2" ] || p2=$M/model.part2
    if [ -f "$p2" ] && [ ! -f "$M/model.gguf" ]; then
        test -f "$M/model.part1" || { echo "device_run: part 1 is not in $M (machine restarted?): run 'stage' first" >&2; return 3; }
        cat "$M/model.part1" "$p2" > "$M/model.gguf"
        if [ -f "$M/model.sha256" ] && [ "$(sha256sum "$M/model.gguf" | awk '{print $1}')" != "$(cat "$M/model.sha256")" ]; then
            echo "device_run: model checksum mismatch" >&2; rm -f "$M/model.gguf"; return 3
        fi
    fi
    test -f "$M/model.gguf" || { echo "device_run: no model in $M: run 'stage', then 'run' carrying .devcarry-m2" >&2; return 3; }
}

rc=0
for WHAT in $WHATS; do
case $WHAT in
ops)
    for g in 1 0; do
        MX_CUDA_GRAPHS=$g "$BIN/test_cuda" > "$OUTD/test_ops_graphs$g.log" 2>&1 || rc=1
        grep -E "^FAIL" "$OUTD/test_ops_graphs$g.log"; tail -1 "$OUTD/test_ops_graphs$g.log" | sed "s/^/graphs $g: /"
    done
    MX_CUDA_PREFILL=fa2 MX_CUDA_GRAPHS=0 "$BIN/test_cuda" > "$OUTD/test_ops_fa2.log" 2>&1 || rc=1
    grep -E "^FAIL" "$OUTD/test_ops_fa2.log"; tail -1 "$OUTD/test_ops_fa2.log" | sed "s/^/MX_CUDA_PREFILL=fa2, graphs 0: /" ;;
models)
    MIXATT="$BIN/mixatt" python3 tests/cuda/check_models_gpu.py 2>&1 | tee "$OUTD/models.log"
    [ "${PIPESTATUS[0]}" -ne 0 ] && rc=1 ;;
attn)
    # every prefill-attention variant (bench/cuda/fa_variants.cu), checked and timed, then PyTorch's SDPA (FA2,
    # cuDNN) at the same shapes; the variants' table last
    "$BIN/fa_variants" > "$OUTD/fa_variants.log" 2>&1 || rc=1
    PYTHONUNBUFFERED=1 python3 bench/cuda/peer.py > "$OUTD/peer.log" 2>&1
    grep -E "^FAIL" "$OUTD/fa_variants.log"
    sed -n '/^prefill attention/,$p' "$OUTD/fa_variants.log"; grep -i "prefill" "$OUTD/peer.log" ;;
moe)
    MIXATT="$BIN/mixatt" PYTHONUNBUFFERED=1 python3 bench/cuda/moe_bench.py --dir "$M/moe" 2>&1 | tee "$OUTD/moe.log"
    [ "${PIPESTATUS[0]}" -ne 0 ] && rc=1 ;;
moecheck)
    MIXATT="$BIN/mixatt" PYTHONUNBUFFERED=1 python3 bench/cuda/moe_bench.py --dir "$M/moe" --check-only 2>&1 |
        tee "$OUTD/moecheck.log" ;;
moeab)
    # mixatt alone (no HF) under the MoE launch settings (moe_bench.py --ab; MX_MOE_AB overrides the list)
    MIXATT="$BIN/mixatt" PYTHONUNBUFFERED=1 python3 bench/cuda/moe_bench.py --dir "$M/moe" --ab 2>&1 |
        tee "$OUTD/moeab.log"
    [ "${PIPESTATUS[0]}" -ne 0 ] && rc=1 ;;
test|all)
    need_model || exit 3
    $BIN/test_cuda "$M/model.gguf" > "$OUTD/test_graphs_on.log" 2>&1; r=$?; [ $r -ne 0 ] && rc=$r
    grep -E "^FAIL" "$OUTD/test_graphs_on.log"; tail -1 "$OUTD/test_graphs_on.log" | sed 's/^/graphs on: /'
    MX_CUDA_GRAPHS=0 $BIN/test_cuda > "$OUTD/test_graphs_off.log" 2>&1; r=$?; [ $r -ne 0 ] && rc=$r
    grep -E "^FAIL" "$OUTD/test_graphs_off.log"; tail -1 "$OUTD/test_graphs_off.log" | sed 's/^/graphs off (ops only): /'
    ;;&
bench|all)
    need_model || exit 3
    $BIN/bench_cuda "$M/model.gguf" 2>&1 | tee "$OUTD/bench_cuda.log"
    PYTHONUNBUFFERED=1 python3 bench/cuda/peer.py 2>&1 | tee "$OUTD/peer.log"
    $BIN/mixatt bench -m "$M/model.gguf" --device cuda -n 256 2>&1 | tee "$OUTD/mixatt_bench.log"
    # decode A/B of the launch options (docs/PERFORMANCE.md: CUDA tunables), and where a decode step's time goes
    # (MX_CUDA_TIMING: graph GPU time vs flush-to-flush host clock); BENCH_AB overrides the list (empty: none)
    for v in ${BENCH_AB-MX_CUDA_TIMING=1 MX_CUDA_PDL=0 MX_CUDA_WSTAGE=0 MX_CUDA_FUSE=0}; do
        env $v $BIN/mixatt bench -m "$M/model.gguf" --device cuda -n 256 -p 0 -r 3 2>&1 |
            grep -E "tg256|timing: graph of [0-9]{3}" | sed "s/^/$v: /" | tee -a "$OUTD/mixatt_ab.log"
    done ;;
base)
    # the same figures from another tree's binaries in this run (BASE_DC: stage.sh's DEVCARRY of that tree,
    # carried), for an A/B of a change on one machine: bench_cuda and mixatt bench, the default model
    need_model || exit 3
    [ -f "${BASE_DC:-}/bin.tar.gz" ] || [ -f "${BASE_DC:-}/bin.tar.xz" ] ||
        { echo "device_run: base needs BASE_DC=<carried folder>" >&2; rc=2; continue; }
    mkdir -p "$M/base"
    unpack "$M/base" "$BASE_DC/bin" || exit 3
    for b in mixatt bench_cuda; do
        printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/lib:/usr/local/cuda/lib64:%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec %s/base/%s "$@"\n' \
            "$M" "$NCCL_DIR" "$M" "$b" > "$M/bin/base_$b"
        chmod +x "$M/bin/base_$b"
    done
    "$BIN/base_bench_cuda" "$M/model.gguf" 2>&1 | sed 's/^/base: /' | tee "$OUTD/base_bench_cuda.log"
    "$BIN/base_mixatt" bench -m "$M/model.gguf" --device cuda -n 256 2>&1 | sed 's/^/base: /' |
        tee "$OUTD/base_mixatt_bench.log" ;;
test) ;;
*) echo "device_run: unknown WHAT '$WHAT'" >&2; rc=2 ;;
esac
done
exit $rc
