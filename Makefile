# mixatt: build, test, demo, bench.
#   make deps         install the Debian and PyPI packages mixatt needs (apt-get, pip)
#   make              release binary build/mixatt (-O3, OpenMP, OpenBLAS), warnings are errors
#   make asan         the same under AddressSanitizer + UBSan: build/asan/mixatt (used by the tests)
#   make test         unit tests (Criterion) + end-to-end tests (pytest) on the CPU
#   make model        fetch the default model (SmolLM2-135M-Instruct Q4_1 GGUF) into models/
#   make demo         build, fetch the model, generate an answer
#   make bench        llama-bench-style table for the default model on this machine
#   make fuzz         fuzz every reader (tests/fuzz: GGUF, safetensors, HF, tokenizer, shards, checkpoints, serve's
#                     request bodies, RULER haystacks) for FUZZ_SECONDS each
#   make study        the attention-variant training study (scripts/study.py; about an hour on 2 cores)
#   make study-gpu    the same study on a CUDA GPU at 21M-46M parameters and 50M tokens a run (bf16; about
#                     half an hour on an H200)
#   make fixtures     regenerate tests/fixtures from Hugging Face references (needs torch + transformers)

CC       ?= gcc
ARCH     ?= -march=native
CSTD     := -std=c11 -D_GNU_SOURCE
WARN     := -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow -Wmissing-prototypes -Wstrict-prototypes
# What this machine offers (cJSON/utf8proc/libmicrohttpd flags, Open MPI, NCCL) is detected by scripts/configure.sh
# into build/config.mk each time make builds, after `deps` when both are asked for (`make deps demo`), and read
# when a recipe runs, not when this file is parsed. Every object depends on build/config.mk, which is rewritten
# only when a value changed: a build whose detected features changed is rebuilt, an unchanged one is not.
CONFIG   := build/config.mk
cfg       = $(shell sed -n 's/^$1 := //p' $(CONFIG) 2>/dev/null)
DEPS_CF   = $(call cfg,DEPS_CF)
CFLAGS   ?= -O3 $(ARCH) -fopenmp -g
LDLIBS    = -lopenblas $(call cfg,DEPS_LIBS) -lpthread -lz -lm
ASANFLAGS := -O1 -g $(ARCH) -fopenmp -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

LIB_SRC  := $(sort $(wildcard src/*/*.c src/backend/cpu/*.c))
CLI_SRC  := $(sort $(wildcard src/cli/*.c))
LIB_SRC  := $(filter-out $(CLI_SRC),$(LIB_SRC))
TEST_SRC := $(sort $(wildcard tests/unit/*.c))

OBJ      := $(LIB_SRC:%.c=build/obj/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=build/obj/%.o)
AOBJ     := $(LIB_SRC:%.c=build/asan/obj/%.o)
ACLI_OBJ := $(CLI_SRC:%.c=build/asan/obj/%.o)
TOBJ     := $(TEST_SRC:%.c=build/asan/obj/%.o)

MODEL    := models/SmolLM2-135M-Instruct.Q4_1.gguf
Q        := $(if $(V),,@)   # make V=1 prints full command lines

# The CUDA backend (cuda.mk) is built into the release binary whenever nvcc is found; it adds its objects to
# EXTRA_OBJ, its libraries to EXTRA_LIBS and -DMX_HAVE_CUDA to CUDA_DEFS. The ASan build is CPU-only.
EXTRA_OBJ  :=
.DEFAULT_GOAL := all
EXTRA_LIBS  =
CUDA_DEFS  :=
-include cuda.mk

# The tests' Python: .venv, built by scripts/install-deps.sh from requirements-test.txt alone (and rebuilt when
# that file changes); nothing from the system's or the user's site-packages.
VENV     := .venv
PYTHON   := $(VENV)/bin/python
PYTEST   := $(PYTHON) -m pytest

.PHONY: all deps asan test unit e2e model demo bench fuzz fixtures clean format format-check study study-gpu FORCE
all: build/mixatt

build/mixatt: $(CLI_OBJ) build/libmixatt.a $(EXTRA_OBJ)
	$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) build/libmixatt.a $(EXTRA_OBJ) $(LDLIBS) $(EXTRA_LIBS)
build/libmixatt.a: $(OBJ)
	@mkdir -p $(@D); rm -f $@; ar rcs $@ $^
build/obj/%.o: %.c $(CONFIG)
	@mkdir -p $(@D)
	@$(if $(V),,echo "  CC      $<")
	$(Q)$(CC) $(CSTD) $(CFLAGS) $(WARN) $(DEPS_CF) $(CUDA_DEFS) $(NCCL_CF) -MMD -MP -c $< -o $@

asan: build/asan/mixatt build/asan/test_unit
build/asan/mixatt: $(ACLI_OBJ) build/asan/libmixatt.a
	$(CC) $(ASANFLAGS) -o $@ $^ $(LDLIBS)
build/asan/libmixatt.a: $(AOBJ)
	@mkdir -p $(@D); rm -f $@; ar rcs $@ $^
build/asan/test_unit: $(TOBJ) build/asan/libmixatt.a
	$(CC) $(ASANFLAGS) -o $@ $^ -lcriterion $(LDLIBS)
build/asan/obj/%.o: %.c $(CONFIG)
	@mkdir -p $(@D)
	@$(if $(V),,echo "  CC asan $<")
	$(Q)$(CC) $(CSTD) $(ASANFLAGS) $(WARN) $(DEPS_CF) -MMD -MP -c $< -o $@

-include $(OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(AOBJ:.o=.d) $(ACLI_OBJ:.o=.d) $(TOBJ:.o=.d)

# $(CONFIG) is made once per make run, after `deps` when that is asked for too (so also under -j).
$(CONFIG): FORCE | $(filter deps,$(MAKECMDGOALS))
	@sh scripts/configure.sh $@ "$(if $(strip $(NVCC)),$(CUDA_HOME))"
FORCE:

test: unit e2e
unit: build/asan/test_unit
	cd tests && ../build/asan/test_unit --jobs 2
e2e: build/mixatt build/asan/mixatt build/dist/test_comm $(MODEL) $(VENV)/requirements-test.txt
	MIXATT=$(CURDIR)/build/mixatt MIXATT_ASAN=$(CURDIR)/build/asan/mixatt $(PYTEST) -q tests/e2e
$(VENV)/requirements-test.txt: requirements-test.txt
	bash scripts/install-deps.sh --venv

# The communicator's test driver (tests/dist/test_comm.c), run alone and under mpirun by tests/e2e/test_dist.py.
build/dist/test_comm: tests/dist/test_comm.c build/libmixatt.a $(EXTRA_OBJ) $(CONFIG)
	@mkdir -p $(@D)
	$(CC) $(CSTD) $(CFLAGS) $(WARN) $(DEPS_CF) -o $@ $< $(EXTRA_OBJ) build/libmixatt.a $(LDLIBS) $(EXTRA_LIBS)

deps:
	bash scripts/install-deps.sh

model: $(MODEL)
$(MODEL):
	bash scripts/get-model.sh

demo: build/mixatt $(MODEL)
	./build/mixatt run --chat -p "What is the capital of France? Answer in one sentence." -n 64

bench: build/mixatt $(MODEL)
	./build/mixatt bench

# Fuzzing (tests/fuzz/fuzz_*.c, libFuzzer): the library built again by clang with ASan, UBSan that does not
# recover, and coverage instrumentation; one binary per target in build/fuzz/. `make fuzz` runs each target for
# FUZZ_SECONDS (default 60; FUZZ_RUNS=N stops a target after N inputs) from its committed seed corpus
# tests/fuzz/corpus/TARGET (new inputs go to build/fuzz/corpus/TARGET, a crash to build/fuzz/crash-TARGET-*);
# `make fuzz-build` only builds;
# `make fuzz-one FUZZ_TARGET=hf` runs one. The hf and ckpt targets read tests/fixtures/hf, and serve the tokenizer
# seed tests/fuzz/corpus/tokenizer/bpe_smollm.gguf, from the repo root.
FUZZ_SECONDS ?= 60
FUZZ_RUNS    ?= -1
FUZZ_TARGETS := gguf safetensors hf tokenizer shards ckpt serve ruler
FUZZ_CFLAGS  := -std=c11 -D_GNU_SOURCE -g -O1 -fopenmp -fno-omit-frame-pointer -Wno-pass-failed -fsanitize=address,undefined \
                -fno-sanitize-recover=all $(shell pkg-config --cflags libcjson libutf8proc 2>/dev/null)
FUZZ_OBJ     := $(LIB_SRC:%.c=build/fuzz/obj/%.o)
FUZZ_LIBS     = $(LDLIBS)
FUZZ_MAXLEN_gguf := 65536
FUZZ_MAXLEN_tokenizer := 65536
FUZZ_MAXLEN_ckpt := 65536
FUZZ_MAXLEN_hf := 8192
FUZZ_MAXLEN_safetensors := 8192
FUZZ_MAXLEN_shards := 8192
FUZZ_MAXLEN_serve := 8192
FUZZ_MAXLEN_ruler := 8192
.PHONY: fuzz-build fuzz-one
fuzz-build: $(FUZZ_TARGETS:%=build/fuzz/fuzz_%)
build/fuzz/obj/%.o: %.c
	@mkdir -p $(@D)
	$(Q)clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@
build/fuzz/libmixatt.a: $(FUZZ_OBJ)
	$(Q)rm -f $@ && ar rcs $@ $^
build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_common.h build/fuzz/libmixatt.a $(CONFIG)
	$(Q)clang $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< build/fuzz/libmixatt.a $(FUZZ_LIBS)
fuzz-one: build/fuzz/fuzz_$(FUZZ_TARGET)
	@mkdir -p build/fuzz/corpus/$(FUZZ_TARGET)
	ASAN_OPTIONS=allocator_may_return_null=1 OMP_NUM_THREADS=1 ./build/fuzz/fuzz_$(FUZZ_TARGET) \
	    -max_total_time=$(FUZZ_SECONDS) -runs=$(FUZZ_RUNS) -max_len=$(FUZZ_MAXLEN_$(FUZZ_TARGET)) -timeout=20 -print_final_stats=1 \
	    -artifact_prefix=build/fuzz/crash-$(FUZZ_TARGET)- build/fuzz/corpus/$(FUZZ_TARGET) \
	    tests/fuzz/corpus/$(FUZZ_TARGET)
fuzz: fuzz-build
	@set -e; for t in $(FUZZ_TARGETS); do $(MAKE) --no-print-directory fuzz-one FUZZ_TARGET=$$t; done
-include $(FUZZ_OBJ:.o=.d)

study: build/mixatt $(MODEL) $(VENV)/requirements-test.txt
	$(PYTHON) scripts/study.py --out study

study-gpu: build/mixatt $(MODEL) $(VENV)/requirements-test.txt
	$(PYTHON) scripts/study.py --device cuda --out study-gpu

fixtures:
	python3 scripts/make_fixtures.py
	python3 scripts/fixtures_tokenizer.py
	python3 scripts/fixtures_hf_tokenizers.py
	python3 scripts/fixtures_blocks.py
	python3 scripts/fixtures_hf.py
	python3 scripts/fixtures_train.py
	python3 scripts/fixtures_xattn.py

# Every C, header and CUDA source under src, tests and bench, formatted by the repo's .clang-format.
FORMAT_SRC = $(shell find src tests bench -name '*.[ch]' -o -name '*.cu' -o -name '*.cuh' | sort)
format:
	@clang-format -i $(FORMAT_SRC)
# Fails (lists the lines) when a file is not formatted; .ci/run runs it.
format-check:
	@clang-format --dry-run -Werror $(FORMAT_SRC)

clean:
	rm -rf build
