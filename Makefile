# The front door. `make run` and `make test` are the two commands of the README; CMake does the
# building underneath.
BUILD      ?= build
JOBS       ?= $(shell nproc)
CMAKE_ARGS ?=
NANOINFER  := $(BUILD)/nanoinfer

.PHONY: all deps build run test test-gpu test-asan bench clean portable

all: build

deps:
	@tools/deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_ARGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS) -- --no-print-directory

# The main job: the comparative benchmark on what this machine has (a GPU if there is one).
run: build
	@$(NANOINFER) bench --default-sweep --out out/bench

test: build
	@ctest --test-dir $(BUILD) --output-on-failure -j 2

test-gpu: build
	@ctest --test-dir $(BUILD) --output-on-failure -L gpu

# The CPU tests once more under AddressSanitizer and UndefinedBehaviorSanitizer (no CUDA).
test-asan: deps
	@cmake -S . -B $(BUILD)-asan -DCMAKE_BUILD_TYPE=Debug -DNI_SANITIZE=ON -DNI_CUDA=OFF >/dev/null
	@cmake --build $(BUILD)-asan -j $(JOBS) -- --no-print-directory
	@ctest --test-dir $(BUILD)-asan --output-on-failure -j 2

bench: build
	@$(NANOINFER) bench --out out/bench

# A binary for the GPU machine: static PCRE2, jansson, libgomp and cudart.
portable: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DNI_PORTABLE=ON -DNI_CUDA=ON $(CMAKE_ARGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS) -- --no-print-directory

clean:
	rm -rf $(BUILD) $(BUILD)-asan
