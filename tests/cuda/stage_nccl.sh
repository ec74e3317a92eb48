#!/usr/bin/env bash
# stage_nccl.sh: prepares `make test-nccl`'s program for the lent GPU machine, which has CUDA and (in PyTorch's
# venv) libnccl, but neither Open MPI nor OpenBLAS/cJSON/utf8proc. Run here, in the repository root, after
# `make` (it reuses build/obj/src/backend/cuda/*.o):  bash tests/cuda/stage_nccl.sh
# It writes .devnccl/ (ignore it: echo /.devnccl/ >> .git/info/exclude): test_nccl built for x86-64-v3,
# ompi.tar.gz (mpirun, orted, Open MPI's plugins and help files, unpacked at / there) and libs.tar.gz (the
# shared libraries those need). Then one device call, kind nvidia-h200-x2, carry [".devnccl"]:
#   cd .devnccl && tar -C / -xzf ompi.tar.gz && tar -xzf libs.tar.gz &&
#   NL=$(dirname $(find /opt /usr/local /usr/lib -name 'libnccl.so.2*' | head -1)) &&
#   export LD_LIBRARY_PATH=$PWD/libs:$NL:/usr/local/cuda/lib64 NCCL_NVLS_ENABLE=0 &&
#   M="mpirun --allow-run-as-root --bind-to none -np 2 -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE" &&
#   $M -x MIXATT_COMM_TIMEOUT=60 ./test_nccl all && $M -x MIXATT_COMM_TIMEOUT=3 ./test_nccl timeout
set -euo pipefail
cd "$(dirname "$0")/../.."
ls build/obj/src/backend/cuda/*.o >/dev/null || { echo "stage_nccl.sh: run make first (CUDA objects)" >&2; exit 1; }
rm -rf .devnccl /tmp/mx-nccl-libs && mkdir -p .devnccl /tmp/mx-nccl-libs/libs
lib_src=$(ls src/*/*.c src/backend/cpu/*.c | grep -v -e '^src/cli/')
# shellcheck disable=SC2046,SC2086
gcc -std=c11 -D_GNU_SOURCE -O1 -march=x86-64-v3 -fopenmp -w $(pkg-config --cflags libcjson libutf8proc ompi-c) \
    -DMX_HAVE_MPI -DMX_HAVE_CUDA -DMX_HAVE_NCCL -I/usr/local/cuda/include -o .devnccl/test_nccl \
    tests/cuda/test_nccl.c $lib_src build/obj/src/backend/cuda/*.o -lopenblas -lcjson -lutf8proc \
    $(pkg-config --libs ompi-c) -lm -L/usr/local/cuda/lib64 -lcudart -lcublasLt -lcublas -lstdc++ -lnccl
strip .devnccl/test_nccl
# the non-CUDA, non-libc shared libraries of the program, mpirun, orted and Open MPI's plugins
ldd .devnccl/test_nccl "$(readlink -f /usr/bin/mpirun)" "$(readlink -f /usr/bin/orted)" \
    /usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/*.so 2>/dev/null | awk '$3 ~ /^\// {print $3}' | sort -u |
    grep -v -E '/libc\.so|/libm\.so|libpthread|/libdl\.|/librt\.|ld-linux|libcuda\.|libnccl|libcublas|libcudart|libstdc\+\+|libgcc_s' |
    while read -r l; do cp -L "$l" /tmp/mx-nccl-libs/libs/; done
tar -C / -czf .devnccl/ompi.tar.gz usr/bin/mpirun usr/bin/orterun usr/bin/orted usr/bin/mpiexec \
    usr/lib/x86_64-linux-gnu/openmpi usr/share/openmpi etc/openmpi
tar -C /tmp/mx-nccl-libs -czf .devnccl/libs.tar.gz libs
du -sh .devnccl
