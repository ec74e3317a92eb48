#!/usr/bin/env bash
# device_run.sh: runs on the lent GPU machine, in the repository root, with what bench/cuda/stage.sh staged.
#   bash bench/cuda/device_run.sh stage          keeps the model's first part in /tmp/mx (call 1)
#   bash bench/cuda/device_run.sh run WHAT...     runs each WHAT in order (default: all):
#       ops      the op tests only (test_cuda with CUDA graphs on and off), no model: carry .devcarry
#       models   every model fixture on the GPU vs its reference (tests/cuda/check_models_gpu.py): .devcarry
#       attn     prefill-attention variants (MX_CUDA_FA_VAR): test_cuda ops + bench_cuda kernels + peer.py: .devcarry
#       moe      the Mixtral-shaped MoE benchmark beside HF transformers (bench/cuda/moe_bench.py): .devcarry
#       moecheck only that model's logits check, under several launch settings (A/B of a wrong result)
#       moeab    that model's mixatt prefill/decode under MoE launch settings (MX_MOE, MX_MOE_STREAMS, ...), no HF
#       test     test_cuda with the default model (graphs on) and the ops with graphs off
#       bench    bench_cuda, peer.py, mixatt bench and the decode A/B of the launch options
#       all      test and bench
#     test/bench/all need the default model: part 1 staged by call 1 and .devcarry-m2 carried (joined here and
#     checked against its sha256), or already joined in /tmp/mx by an earlier call on this warm machine.
# The binaries run with the carried libraries on LD_LIBRARY_PATH (through wrappers in /tmp/mx/bin, which the
# Python scripts call as MIXATT); python3 itself keeps the machine's own libraries. mixatt links Open MPI but only
# initializes it under mpirun, so it runs here alone. Logs go to $OUT (the device tool brings them back).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
M=/tmp/mx
DC=${DEVCARRY:-.devcarry} # the staged binaries (stage.sh's DEVCARRY)
OUTD=${OUT:-/tmp/mx/out}
mkdir -p "$M" "$OUTD"
case "${1:-}" in
stage)
    # the model parts carried in this call (part 1, or part 2 when the tree plus both carries passes 64 MiB)
    [ -f .devcarry-m1/part ] && { cp .devcarry-m1/part "$M/model.part1" && echo "device_run: part 1 staged"; }
    [ -f .devcarry-m2/part ] && { cp .devcarry-m2/part "$M/model.part2" && echo "device_run: part 2 staged"; }
    ls -la "$M"
    exit 0 ;;
run) ;;
*) echo "usage: device_run.sh stage | run [ops|models|moe|test|bench|all]..." >&2; exit 2 ;;
esac
shift
WHATS=${*:-all}

# binaries and libraries; wrappers that give the binaries (only) the carried libraries
mkdir -p "$M/lib" "$M/raw" "$M/bin"
tar -C "$M/lib" -xzf "$DC/lib.tar.gz" && tar -C "$M/raw" -xzf "$DC/bin.tar.gz" || exit 3
# NCCL (mixatt links it when the build found it): CUDA's own, else the one PyTorch's nvidia-nccl wheel brings
NCCL_DIR=/usr/local/cuda/lib64
[ -e "$NCCL_DIR/libnccl.so.2" ] || NCCL_DIR=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
echo "device_run: libnccl from ${NCCL_DIR:-(not found)}"
for b in mixatt test_cuda test_cuda_train bench_cuda; do
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s/lib:/usr/local/cuda/lib64:%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec %s/raw/%s "$@"\n' \
        "$M" "$NCCL_DIR" "$M" "$b" > "$M/bin/$b"
    chmod +x "$M/bin/$b"
done
BIN=$M/bin
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "device_run: mixatt --help says: $("$BIN/mixatt" --help 2>&1 | head -1)"  # starts without mpirun?

need_model() {
    local p2=.devcarry-m2/part
    [ -f "$p2" ] || p2=$M/model.part2
    if [ -f "$p2" ] && [ ! -f "$M/model.gguf" ]; then
        test -f "$M/model.part1" || { echo "device_run: part 1 is not in $M (machine restarted?): run 'stage' first" >&2; return 3; }
        cat "$M/model.part1" "$p2" > "$M/model.gguf"
        if [ -f .devcarry/model.sha256 ] && [ "$(sha256sum "$M/model.gguf" | awk '{print $1}')" != "$(cat .devcarry/model.sha256)" ]; then
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
    done ;;
models)
    MIXATT="$BIN/mixatt" python3 tests/cuda/check_models_gpu.py 2>&1 | tee "$OUTD/models.log"
    [ "${PIPESTATUS[0]}" -ne 0 ] && rc=1 ;;
attn)
    # issue #5: the prefill-attention variants (MX_CUDA_FA_VAR, cuda_attention.cu), each checked by test_cuda's
    # attention cases and timed by bench_cuda (no model: kernels only), PyTorch's SDPA (FA2, cuDNN) in the same
    # run; a table last. ATTN_VARS overrides the list.
    for var in ${ATTN_VARS:-0 1 2 3 4}; do
        MX_CUDA_FA_VAR=$var MX_CUDA_GRAPHS=0 "$BIN/test_cuda" > "$OUTD/test_attn_var$var.log" 2>&1 || rc=1
        printf 'var %s test_cuda: %s (attention: %s PASS, %s FAIL)\n' "$var" "$(tail -1 "$OUTD/test_attn_var$var.log")" \
            "$(grep -c '^PASS attention' "$OUTD/test_attn_var$var.log")" "$(grep -c '^FAIL' "$OUTD/test_attn_var$var.log")"
        MX_CUDA_FA_VAR=$var "$BIN/bench_cuda" > "$OUTD/bench_attn_var$var.log" 2>&1 || rc=1
        grep "prefill attention" "$OUTD/bench_attn_var$var.log" | sed "s/^/var $var: /" >> "$OUTD/attn_table.txt"
    done
    PYTHONUNBUFFERED=1 python3 bench/cuda/peer.py 2>&1 | tee "$OUTD/peer.log" | grep -i "prefill\|PyTorch" >> "$OUTD/attn_table.txt"
    # the default variant again, last, for the run-to-run spread
    "$BIN/bench_cuda" 2>&1 | grep "prefill attention" | sed "s/^/default (again): /" >> "$OUTD/attn_table.txt"
    echo "==== table"; cat "$OUTD/attn_table.txt" ;;
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
    # decode A/B of the launch options, and where a decode step's time goes (MX_CUDA_TIMING: graph GPU time vs
    # flush-to-flush host clock)
    # MX_CUDA_SKIP (profiling only, wrong results): the step's time without one kind of decode kernel
    for v in MX_CUDA_TIMING=1 MX_CUDA_PDL=0 MX_CUDA_WSTAGE=0 MX_CUDA_FUSE=0 MX_CUDA_SKIP=qkv MX_CUDA_SKIP=attn \
             MX_CUDA_SKIP=add MX_CUDA_SKIP=gateup MX_CUDA_SKIP=head; do
        env $v $BIN/mixatt bench -m "$M/model.gguf" --device cuda -n 256 -p 0 -r 3 2>&1 |
            grep -E "tg256|timing: graph of [0-9]{3}" | sed "s/^/$v: /" | tee -a "$OUTD/mixatt_ab.log"
    done ;;
test) ;;
*) echo "device_run: unknown WHAT '$WHAT'" >&2; rc=2 ;;
esac
done
exit $rc
