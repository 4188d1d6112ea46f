# Thin wrapper over CMake + Ninja. See README.md.
#   make            build build/tern (gcc, RelWithDebInfo)
#   make run        build, then serve on the embedded default (./tern-data)
#   make check      everything CI runs: format check, gcc build + all tests,
#                   clang ASan+UBSan build + all tests, fuzz targets (short)
#   make bench      the benchmarks under bench/ (prints figures)
#   make torture    tests/torture/torture.py: mail, moves, IMAP changes and
#                   kill -9 for DURATION seconds (180), then the zero-loss check;
#                   e.g. make torture DURATION=600 SEED=42 KILLS=off
#   make demo       tern demo: a short show on a temporary cluster

CC_GCC   ?= gcc
CC_CLANG ?= clang
JOBS     ?= $(shell nproc)
SOURCES  := $(shell find src tests/unit fuzz bench -name '*.[ch]' 2>/dev/null)

.PHONY: all build run check check-gcc check-asan check-fuzz format format-check bench clean \
	torture demo

all: build

build/build.ninja:
	cmake -S . -B build -G Ninja -DCMAKE_C_COMPILER=$(CC_GCC) -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: build/build.ninja
	cmake --build build -j $(JOBS)

run: build
	./build/tern serve

build-asan/build.ninja:
	cmake -S . -B build-asan -G Ninja -DCMAKE_C_COMPILER=$(CC_CLANG) -DCMAKE_BUILD_TYPE=Debug -DTERN_SANITIZE=ON

build-fuzz/build.ninja:
	cmake -S . -B build-fuzz -G Ninja -DCMAKE_C_COMPILER=$(CC_CLANG) -DCMAKE_BUILD_TYPE=Debug -DTERN_SANITIZE=ON -DTERN_FUZZ=ON

check: format-check check-gcc check-asan check-fuzz
	@echo "make check: all passed"

check-gcc: build
	cd build && ctest --output-on-failure -j 2

check-asan: build-asan/build.ninja
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		ctest --output-on-failure -j 2

check-fuzz: build-fuzz/build.ninja
	cmake --build build-fuzz -j $(JOBS)
	cd build-fuzz && ctest --output-on-failure -R '^fuzz/'

format:
	clang-format -i $(SOURCES)

format-check:
	@clang-format --dry-run --Werror $(SOURCES) && echo "format-check: ok"

bench: build
	bench/run.sh

# Parameters given on the make command line go to the script (the script
# reads the same names from the environment too); see its --help.
TORTURE_VARS := DURATION USERS CLIENTS RATE IMAP MOVERS ABORTS DRAINS KILLS KILL_EVERY \
	RESTART RESTART_EVERY SEED KEEP
torture: build
	/usr/bin/python3 tests/torture/torture.py TERN_BIN=$(CURDIR)/build/tern \
		$(foreach v,$(TORTURE_VARS),$(if $(filter command line,$(origin $(v))),$(v)=$($(v))))

demo: build
	./build/tern demo

clean:
	rm -rf build build-asan build-fuzz
