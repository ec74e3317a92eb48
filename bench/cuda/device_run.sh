#!/usr/bin/env bash
# device_run.sh: runs on the lent GPU machine, in the repository root, with what bench/cuda/stage.sh staged.
#   bash bench/cuda/device_run.sh stage         keeps the model's first part in /tmp/mx (call 1)
#   bash bench/cuda/device_run.sh run ops        the op tests only (graphs on and off), no model: carry .devcarry
#   bash bench/cuda/device_run.sh run models     every model fixture on the GPU vs its reference: carry .devcarry
#   bash bench/cuda/device_run.sh run [WHAT]    joins the model (if .devcarry-m2 came along), checks its sha256,
#                                               unpacks the libraries and runs WHAT: test (test_cuda with CUDA graphs
#                                               on and off), bench (bench_cuda, peer.py, mixatt bench), all (default)
# Logs go to $OUT (the device tool brings them back) when OUT is set.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
M=/tmp/mx
OUTD=${OUT:-/tmp/mx/out}
mkdir -p "$M" "$OUTD"
case "${1:-}" in
stage)
    cp .devcarry-m1/part "$M/model.part1" && ls -la "$M" && echo "device_run: part 1 staged"
    exit 0 ;;
run) ;;
*) echo "usage: device_run.sh stage | run [test|bench|all]" >&2; exit 2 ;;
esac
WHAT=${2:-all}
if [ "$WHAT" = models ]; then # every model fixture on the GPU vs its reference: no big model needed
    mkdir -p "$M/lib" "$M/bin" && tar -C "$M/lib" -xzf .devcarry/lib.tar.gz && tar -C "$M/bin" -xzf .devcarry/bin.tar.gz
    export LD_LIBRARY_PATH="$M/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    MIXATT="$M/bin/mixatt" python3 tests/cuda/check_models_gpu.py 2>&1 | tee "$OUTD/models.log"
    exit "${PIPESTATUS[0]}"
fi
if [ "$WHAT" = ops ]; then # the op tests only, graphs on and off: no model needed (carry .devcarry alone)
    mkdir -p "$M/lib" "$M/bin" && tar -C "$M/lib" -xzf .devcarry/lib.tar.gz && tar -C "$M/bin" -xzf .devcarry/bin.tar.gz
    export LD_LIBRARY_PATH="$M/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    rc=0
    for g in 1 0; do
        MX_CUDA_GRAPHS=$g "$M/bin/test_cuda" > "$OUTD/test_ops_graphs$g.log" 2>&1 || rc=1
        grep -E "^FAIL" "$OUTD/test_ops_graphs$g.log"; tail -1 "$OUTD/test_ops_graphs$g.log" | sed "s/^/graphs $g: /"
    done
    exit $rc
fi
if [ -f .devcarry-m2/part ]; then
    test -f "$M/model.part1" || { echo "device_run: part 1 is not in $M (machine restarted?): run 'stage' first" >&2; exit 3; }
    cat "$M/model.part1" .devcarry-m2/part > "$M/model.gguf"
fi
test -f "$M/model.gguf" || { echo "device_run: no model in $M: run 'stage', then 'run' carrying .devcarry-m2" >&2; exit 3; }
if [ -f .devcarry/model.sha256 ] && [ "$(sha256sum "$M/model.gguf" | awk '{print $1}')" != "$(cat .devcarry/model.sha256)" ]; then
    echo "device_run: model checksum mismatch" >&2; exit 3
fi
mkdir -p "$M/lib" && tar -C "$M/lib" -xzf .devcarry/lib.tar.gz
export LD_LIBRARY_PATH="$M/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
BIN=$M/bin
mkdir -p "$BIN" && tar -C "$BIN" -xzf .devcarry/bin.tar.gz
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
rc=0
if [ "$WHAT" = test ] || [ "$WHAT" = all ]; then
    $BIN/test_cuda "$M/model.gguf" > "$OUTD/test_graphs_on.log" 2>&1; r=$?; [ $r -ne 0 ] && rc=$r
    grep -E "^FAIL" "$OUTD/test_graphs_on.log"; tail -1 "$OUTD/test_graphs_on.log" | sed 's/^/graphs on: /'
    MX_CUDA_GRAPHS=0 $BIN/test_cuda > "$OUTD/test_graphs_off.log" 2>&1; r=$?; [ $r -ne 0 ] && rc=$r
    grep -E "^FAIL" "$OUTD/test_graphs_off.log"; tail -1 "$OUTD/test_graphs_off.log" | sed 's/^/graphs off (ops only): /'
fi
if [ "$WHAT" = bench ] || [ "$WHAT" = all ]; then
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
    done
fi
exit $rc
