#!/usr/bin/env bash
# study_gpu.sh: the GPU attention-variant study (`make study-gpu`, scripts/study.py --device cuda) on the lent GPU
# machine, in calls of at most 10 minutes. Needs the binaries that bench/cuda/stage.sh puts in $DEVCARRY
# (DEVCARRY=.devcarry-train) and the text shards this script's `pack` step puts in .devcarry-study/ (the machine
# has no Debian documentation). Here:   bash bench/cuda/study_gpu.sh pack
# There, through the device tool, with carry [".devcarry-train", ".devcarry-study"]:
#   DEVCARRY=.devcarry-train bash bench/cuda/study_gpu.sh run SECONDS [study.py flags]
# trains the runs that fit SECONDS (study.py --time-budget) into /tmp/mx/study, which stays while the machine is
# warm (a next call continues there), and copies every run's config.json, log.jsonl and summary.json and the
# results so far to $OUT/study/. Then here: python3 scripts/study.py --device cuda --out DIR --report-only
# writes the table and the loss plots from the fetched files.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
case "${1:-}" in
pack)
    d=$(mktemp -d)
    MIXATT=${MIXATT:-$ROOT/build/mixatt} "${PYTHON:-$ROOT/.venv/bin/python}" -c "import sys; sys.path.insert(0, 'scripts'); import study; \
study.doc_shards('$d', 'docs', study.TEXT_ROOTS['docs'])" || exit 1
    rm -rf .devcarry-study && mkdir -p .devcarry-study
    tar -C "$d" -cf - docs-data/docs_train_000000.bin docs-data/docs_val_000000.bin | xz -T2 -6 > .devcarry-study/docs.tar.xz
    rm -rf "$d"
    du -sh .devcarry-study ;;
run)
    budget=${2:?seconds}
    shift 2
    DEVCARRY=${DEVCARRY:-.devcarry-train} bash bench/cuda/train_check.sh setup > /dev/null || exit 3
    S=/tmp/mx/study
    mkdir -p "$S"
    [ -d "$S/docs-data" ] || xz -dc .devcarry-study/docs.tar.xz | tar -C "$S" -xf - || exit 3
    MIXATT=/tmp/mx/bin/mixatt PYTHONUNBUFFERED=1 python3 scripts/study.py --device cuda --out "$S" \
        --time-budget "$budget" "$@"
    rc=$?
    O=${OUT:-/tmp/mx/out}/study
    mkdir -p "$O"
    cp "$S"/results.md "$O"/ 2>/dev/null
    for r in "$S"/*/; do
        [ -f "$r/log.jsonl" ] || continue
        mkdir -p "$O/$(basename "$r")"
        cp "$r"/config.json "$r"/log.jsonl "$r"/summary.json "$O/$(basename "$r")"/ 2>/dev/null
    done
    exit $rc ;;
*)
    echo "usage: study_gpu.sh pack | run SECONDS [study.py flags]" >&2
    exit 2 ;;
esac
