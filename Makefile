# mixatt: build, test, demo, bench.
#   make deps         install the Debian and PyPI packages mixatt needs (apt-get, pip)
#   make              release binary build/mixatt (-O3, OpenMP, OpenBLAS), warnings are errors
#   make asan         the same under AddressSanitizer + UBSan: build/asan/mixatt (used by the tests)
#   make test         unit tests (Criterion) + end-to-end tests (pytest) on the CPU
#   make model        fetch the default model (SmolLM2-135M-Instruct Q4_1 GGUF) into models/
#   make demo         build, fetch the model, generate an answer
#   make bench        llama-bench-style table for the default model on this machine
#   make fuzz         fuzz the GGUF reader with libFuzzer for FUZZ_SECONDS (default 60)
#   make study        the attention-variant training study (scripts/study.py; about an hour on 2 cores)
#   make fixtures     regenerate tests/fixtures from Hugging Face references (needs torch + transformers)

CC       ?= gcc
ARCH     ?= -march=native
CSTD     := -std=c11 -D_GNU_SOURCE
WARN     := -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow -Wmissing-prototypes -Wstrict-prototypes
DEPS_CF  := $(shell pkg-config --cflags libcjson libutf8proc libmicrohttpd 2>/dev/null)
# Open MPI (mpirun launches; src/dist/comm_mpi.c): built in whenever pkg-config finds it.
MPI_CF   := $(shell pkg-config --cflags ompi-c 2>/dev/null)
MPI_LIBS := $(shell pkg-config --libs ompi-c 2>/dev/null)
ifneq ($(strip $(MPI_LIBS)),)
DEPS_CF  += $(MPI_CF) -DMX_HAVE_MPI
endif
CFLAGS   ?= -O3 $(ARCH) -fopenmp -g
LDLIBS   := -lopenblas $(shell pkg-config --libs libcjson libutf8proc libmicrohttpd 2>/dev/null || echo -lcjson -lutf8proc -lmicrohttpd) $(MPI_LIBS) -lpthread -lz -lm
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
EXTRA_LIBS :=
CUDA_DEFS  :=
-include cuda.mk
PYTEST   ?= python3 -m pytest

.PHONY: all deps asan test unit e2e model demo bench fuzz fixtures clean format format-check study
all: build/mixatt

build/mixatt: $(CLI_OBJ) build/libmixatt.a $(EXTRA_OBJ)
	$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) build/libmixatt.a $(EXTRA_OBJ) $(LDLIBS) $(EXTRA_LIBS)
build/libmixatt.a: $(OBJ)
	@mkdir -p $(@D); rm -f $@; ar rcs $@ $^
build/obj/%.o: %.c
	@mkdir -p $(@D)
	@$(if $(V),,echo "  CC      $<")
	$(Q)$(CC) $(CSTD) $(CFLAGS) $(WARN) $(DEPS_CF) $(CUDA_DEFS) -MMD -MP -c $< -o $@

asan: build/asan/mixatt build/asan/test_unit
build/asan/mixatt: $(ACLI_OBJ) build/asan/libmixatt.a
	$(CC) $(ASANFLAGS) -o $@ $^ $(LDLIBS)
build/asan/libmixatt.a: $(AOBJ)
	@mkdir -p $(@D); rm -f $@; ar rcs $@ $^
build/asan/test_unit: $(TOBJ) build/asan/libmixatt.a
	$(CC) $(ASANFLAGS) -o $@ $^ -lcriterion $(LDLIBS)
build/asan/obj/%.o: %.c
	@mkdir -p $(@D)
	@$(if $(V),,echo "  CC asan $<")
	$(Q)$(CC) $(CSTD) $(ASANFLAGS) $(WARN) $(DEPS_CF) -MMD -MP -c $< -o $@

-include $(OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(AOBJ:.o=.d) $(ACLI_OBJ:.o=.d) $(TOBJ:.o=.d)

test: unit e2e
unit: build/asan/test_unit
	cd tests && ../build/asan/test_unit --jobs 2
e2e: build/mixatt build/asan/mixatt build/dist/test_comm $(MODEL)
	MIXATT=$(CURDIR)/build/mixatt MIXATT_ASAN=$(CURDIR)/build/asan/mixatt $(PYTEST) -q tests/e2e

# The communicator's test driver (tests/dist/test_comm.c), run alone and under mpirun by tests/e2e/test_dist.py.
build/dist/test_comm: tests/dist/test_comm.c build/libmixatt.a $(EXTRA_OBJ)
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

FUZZ_SECONDS ?= 60
fuzz:
	@mkdir -p build/fuzz tests/fuzz/corpus-run
	clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -o build/fuzz/fuzz_gguf \
	    tests/fuzz/fuzz_gguf.c src/io/gguf.c src/io/dtype.c src/base/status.c
	./build/fuzz/fuzz_gguf -max_total_time=$(FUZZ_SECONDS) -max_len=65536 tests/fuzz/corpus-run tests/fuzz/corpus

study: build/mixatt $(MODEL)
	python3 scripts/study.py --out study

fixtures:
	python3 scripts/make_fixtures.py
	python3 scripts/fixtures_tokenizer.py
	python3 scripts/fixtures_blocks.py
	python3 scripts/fixtures_hf.py
	python3 scripts/fixtures_train.py

# Every C, header and CUDA source under src, tests and bench, formatted by the repo's .clang-format.
FORMAT_SRC = $(shell find src tests bench -name '*.[ch]' -o -name '*.cu' | sort)
format:
	@clang-format -i $(FORMAT_SRC)
# Fails (lists the lines) when a file is not formatted; .ci/run runs it.
format-check:
	@clang-format --dry-run -Werror $(FORMAT_SRC)

clean:
	rm -rf build
