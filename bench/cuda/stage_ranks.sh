#!/usr/bin/env bash
# stage_ranks.sh: prepares what bench/cuda/ranks_run.sh needs on the lent 2-GPU machine (kind nvidia-h200-x2),
# which has CUDA, NCCL (PyTorch's wheel) and PyTorch/transformers, but neither Open MPI nor OpenBLAS/cJSON/utf8proc.
# Run here, in the repository root:  bash bench/cuda/stage_ranks.sh
#   - builds a portable (-march=x86-64-v3) mixatt in a scratch copy of the tree ($BUILD_COPY, default
#     /tmp/mx-devbuild, shared with bench/cuda/stage.sh: the checkout's own build/ is left alone) and strips it;
#   - writes .devcarry-ranks/ (ignored: .gitignore's /.devcarry*/):
#       bin.tar.gz   mixatt
#       libs.tar.gz  the shared libraries of mixatt, mpirun, orted and Open MPI's plugins, except glibc's, the
#                    compiler runtime's, CUDA's and NCCL's (the machine has those)
#       ompi.tar.gz  Debian's Open MPI (mpirun, orted, plugins, help files, config), unpacked at / there
#       test_cuda    tests/cuda/test_cuda (the CUDA ops against the CPU), run by ranks_run.sh star
# No model travels: the fixtures are in the tree, and the benchmark's random-weight Llama is generated there
# (bench/cuda/ranks_model.py). Then one device call (about 25 MiB carried):
#   kind nvidia-h200-x2, carry [".devcarry-ranks"], command: bash bench/cuda/ranks_run.sh all
# The same layout as tests/cuda/stage_nccl.sh, which ran `make test-nccl` there.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=${BUILD_COPY:-/tmp/mx-devbuild}
D=.devcarry-ranks
cd "$ROOT"
mkdir -p "$B"
tar --exclude=./build --exclude=./models --exclude='./.devcarry*' --exclude=./.git -cf - . | tar -C "$B" -xf -
make -C "$B" -j"$(nproc)" ARCH=-march=x86-64-v3 build/mixatt
ldd "$B/build/mixatt" | grep -q libnccl || { echo "stage_ranks.sh: mixatt was built without NCCL" >&2; exit 1; }
rm -rf "$D" /tmp/mx-ranks-stage && mkdir -p "$D" /tmp/mx-ranks-stage/bin /tmp/mx-ranks-stage/libs
strip -o /tmp/mx-ranks-stage/bin/mixatt "$B/build/mixatt"
# the op tests (tests/cuda/test_cuda.c, lse_merge included); ranks_run.sh's star mode runs them when present
make -C "$B" -j"$(nproc)" ARCH=-march=x86-64-v3 build/cuda/test_cuda
strip -o "$D/test_cuda" "$B/build/cuda/test_cuda"
tar -C /tmp/mx-ranks-stage/bin -czf "$D/bin.tar.gz" .
ldd "$B/build/mixatt" "$(readlink -f /usr/bin/mpirun)" "$(readlink -f /usr/bin/orted)" \
    /usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/*.so 2>/dev/null | awk '$3 ~ /^\// {print $3}' | sort -u |
    grep -v -E '/libc\.so|/libm\.so|libpthread|/libdl\.|/librt\.|/libresolv|ld-linux|libcuda\.|libnccl|libcublas|libcudart|libstdc\+\+|libgcc_s' |
    while read -r l; do cp -L "$l" /tmp/mx-ranks-stage/libs/; done
tar -C /tmp/mx-ranks-stage -czf "$D/libs.tar.gz" libs
tar -C / -czf "$D/ompi.tar.gz" usr/bin/mpirun usr/bin/orterun usr/bin/orted usr/bin/mpiexec \
    usr/lib/x86_64-linux-gnu/openmpi usr/share/openmpi etc/openmpi
du -sh "$D"
echo "stage_ranks.sh: ready (device call: kind nvidia-h200-x2, carry [\"$D\"], bash bench/cuda/ranks_run.sh all)"
