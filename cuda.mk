# cuda.mk: the CUDA backend, included by the Makefile. Defines no goal of its own before the Makefile's `all`.
# When nvcc is found: src/backend/cuda/*.cu are compiled into build/obj (sm_90a machine code for the H100/H200
# plus compute_80 PTX that the driver compiles for other GPUs of compute capability >= 8.0), registered through
# CUDA_DEFS=-DMX_HAVE_CUDA and linked into build/mixatt through EXTRA_OBJ/EXTRA_LIBS.
#   make test-cuda    every CUDA op against its CPU twin + the default model's logits and greedy output (GPU)
#   make test-nccl    NCCL collectives against MPI and the NCCL timeout, under mpirun on 2 GPUs (NCCL_RANKS=N)
#   make bench-cuda   decode/prefill tok/s of the default model, attention kernels vs PyTorch SDPA (GPU)
#   make bench-cuda-kernels   every prefill-attention variant tried (bench/cuda/fa_variants.cu) checked and
#                     timed, beside PyTorch SDPA (GPU)
# On the lent GPU machine (no OpenBLAS there, 64 MiB per transfer): bench/cuda/stage.sh here, then
# bench/cuda/device_run.sh there (see stage.sh's header for the two calls).
NVCC ?= $(shell command -v nvcc 2>/dev/null || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; })

ifneq ($(strip $(NVCC)),)
CUDA_HOME  ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CU_SRC     := $(sort $(wildcard src/backend/cuda/*.cu))
CU_OBJ     := $(CU_SRC:%.cu=build/obj/%.o)
NVCCFLAGS  ?= -O3 -std=c++17 -lineinfo -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=compute_80 \
              -Xcompiler -Wall,-Wno-unused-parameter,-Wno-unused-function -Werror all-warnings
CUDA_DEFS  := -DMX_HAVE_CUDA
EXTRA_OBJ  := $(CU_OBJ)
EXTRA_LIBS  = -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lcublasLt -lcublas -lstdc++ $(call cfg,NCCL_LIBS)
CUDA_INC   := -isystem $(CUDA_HOME)/include  # system headers: nccl.h is not -Wstrict-prototypes clean

# NCCL (src/dist/comm_nccl.c: collectives on GPU buffers between ranks) when nccl.h is found and Open MPI is there
# to bootstrap it, as scripts/configure.sh finds them (build/config.mk, read when the recipe runs); only that file
# sees -DMX_HAVE_NCCL and the CUDA headers, and -lnccl joins EXTRA_LIBS above.
build/obj/src/dist/comm_nccl.o: NCCL_CF = $(call cfg,NCCL_CF)

build/obj/%.o: %.cu
	@mkdir -p $(@D)
	@$(if $(V),,echo "  NVCC    $<")
	$(Q)$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

-include $(CU_OBJ:.o=.d)

build/cuda/test_cuda: tests/cuda/test_cuda.c build/libmixatt.a $(CU_OBJ)
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(CFLAGS) $(WARN) $(DEPS_CF) $(CUDA_INC) -o $@ $< build/libmixatt.a $(CU_OBJ) $(LDLIBS) $(EXTRA_LIBS)
# every CUDA training op against the CPU's, whole GPU training steps against the CPU, determinism
build/cuda/test_cuda_train: tests/cuda/test_cuda_train.c build/libmixatt.a $(CU_OBJ)
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(CFLAGS) $(WARN) $(DEPS_CF) $(CUDA_INC) -o $@ $< build/libmixatt.a $(CU_OBJ) $(LDLIBS) $(EXTRA_LIBS)
build/cuda/bench_cuda: bench/cuda/bench_cuda.c build/libmixatt.a $(CU_OBJ)
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(CFLAGS) $(WARN) $(DEPS_CF) $(CUDA_INC) -o $@ $< build/libmixatt.a $(CU_OBJ) $(LDLIBS) $(EXTRA_LIBS)

# NCCL against MPI on 2 GPUs (tests/cuda/test_nccl.c): every collective, then a rank that skips an allreduce
# must make the other's time out (MIXATT_COMM_TIMEOUT=3) with a message instead of hanging.
build/cuda/test_nccl: tests/cuda/test_nccl.c build/libmixatt.a $(CU_OBJ)
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(CFLAGS) $(WARN) $(DEPS_CF) $(CUDA_INC) -o $@ $< $(CU_OBJ) build/libmixatt.a $(LDLIBS) $(EXTRA_LIBS)
NCCL_RANKS ?= 2
MPIRUN_NCCL = mpirun --allow-run-as-root --bind-to none -np $(NCCL_RANKS)
test-nccl: build/cuda/test_nccl
	$(MPIRUN_NCCL) -x MIXATT_COMM_TIMEOUT=60 ./build/cuda/test_nccl all
	$(MPIRUN_NCCL) -x MIXATT_COMM_TIMEOUT=3 ./build/cuda/test_nccl timeout

.PHONY: test-cuda bench-cuda test-nccl
test-cuda: build/cuda/test_cuda build/cuda/test_cuda_train $(MODEL)
	./build/cuda/test_cuda $(MODEL)
	./build/cuda/test_cuda_train
bench-cuda: build/cuda/bench_cuda build/mixatt $(MODEL)
	./build/cuda/bench_cuda $(MODEL)
	python3 bench/cuda/peer.py

# Kernel experiments, not part of mixatt (bench/cuda): every prefill-attention kernel and tile configuration
# tried, each checked against a CPU reference and timed (fa_variants.cu); what a kernel boundary costs against a
# grid-wide barrier (sync_cost.cu).
BENCH_CU := build/cuda/fa_variants build/cuda/sync_cost
build/cuda/%: bench/cuda/%.cu
	@mkdir -p $(@D)
	@$(if $(V),,echo "  NVCC    $<")
	$(Q)$(NVCC) $(NVCCFLAGS) -MMD -MP -o $@ $<
-include $(BENCH_CU:=.d)
.PHONY: bench-cuda-kernels
bench-cuda-kernels: $(BENCH_CU)
	./build/cuda/fa_variants
	python3 bench/cuda/peer.py
else
.PHONY: test-cuda bench-cuda test-nccl bench-cuda-kernels
test-cuda bench-cuda test-nccl bench-cuda-kernels:
	@echo "nvcc was not found: this build has no CUDA backend (install the CUDA toolkit, or set NVCC=...)" >&2; exit 1
endif
