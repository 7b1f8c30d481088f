# `make test` sets everything up in .venv (idempotent: stamps skip finished steps)
# and runs the test suite. `make bench` runs the benchmarks.
# The Python that .venv is made with. Left empty, scripts/pick_python.sh takes the first
# Python 3.11 or newer on PATH (python3, else python3.13, 3.12, 3.11, 3.14) and says so.
PYTHON ?=
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := $(VENV)/.stamps
EXT_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cu csrc/cuda/*.h csrc/cuda/*.cpp)
# Compile the CUDA kernels even without a GPU (sm_80 and sm_90) wherever a CUDA toolkit
# (nvcc) is found, so a broken .cu fails the build here; without one the rest builds and
# `make test` says it skipped them. FORCE_CUDA=1 requires them (the build fails without
# nvcc); `make test FORCE_CUDA=0` skips them.
FORCE_CUDA ?= auto
# What setup.py decides the CUDA compile from: when it changes (nvcc installed or hidden,
# CUDA_HOME, FORCE_CUDA), the next `make install` builds again.
CUDA_STATE := FORCE_CUDA=$(FORCE_CUDA) CUDA_HOME=$(CUDA_HOME) CUDA_PATH=$(CUDA_PATH) \
	nvcc=$(shell command -v nvcc) $(wildcard /usr/local/cuda/bin/nvcc)
CUDA_RECORD := scops_fast/_build_errors/_C_cuda.txt
# Build the CUDA kernels' CPU emulation too (backend "cuda_emu", checked by the tests).
SCOPS_FAST_CUDA_EMU ?= 1

.PHONY: FORCE all install browser test test-rounding test-no-avx512 demo bench bench-levers bench-isa lint format clean sanitize gpu-check gpu-rehearsal test-gpu-stack test-arm-compile bench-predict bench-autobatch

all: test

$(STAMPS)/venv:
	py=$$(sh scripts/pick_python.sh "$(PYTHON)") && "$$py" -m venv $(VENV)
	mkdir -p $(STAMPS) && touch $@

# --no-compile: pip byte-compiles one file at a time (40 of the install's 106 s here);
# compileall then does it on every core (about 15 s here). Compiled here rather than on
# first import: where PYTHONDONTWRITEBYTECODE is set (this project's machines set it) no import
# writes a .pyc, and every process the tests start compiled torch's modules again (torch,
# torchvision, cv2, scipy and Inductor imported in 10.4 s without the .pyc files, 4.6 s
# with them). A file that does not compile for this Python (torch ships helpers written
# for 3.12) is left to its import, as before: compileall's status is not the build's.
# opencv-python-headless (listed before the contrib build replaced it) shares cv2/ with
# opencv-contrib-python-headless: both go, or the last one written wins, file by file.
$(STAMPS)/deps: requirements.txt $(STAMPS)/venv
	@sh scripts/pick_python.sh $(PY) > /dev/null || \
		{ echo "make: .venv was made with that Python: rm -rf .venv, then run make again"; exit 1; }
	if $(PY) -m pip show -q opencv-python-headless 2>/dev/null; then \
		$(PY) -m pip uninstall -y -q opencv-python-headless opencv-contrib-python-headless; fi
	$(PY) -m pip install --disable-pip-version-check -q --no-compile -r requirements.txt
	$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
		> /dev/null || true
	touch $@

$(STAMPS)/cuda-state: FORCE | $(STAMPS)/venv
	@echo '$(CUDA_STATE)' | cmp -s - $@ || echo '$(CUDA_STATE)' > $@

FORCE:

$(STAMPS)/build: $(STAMPS)/deps $(STAMPS)/cuda-state setup.py pyproject.toml $(EXT_SOURCES)
	FORCE_CUDA=$(FORCE_CUDA) SCOPS_FAST_CUDA_EMU=$(SCOPS_FAST_CUDA_EMU) SCOPS_FAST_STRICT_BUILD=1 $(PY) -m pip install --disable-pip-version-check -q \
		--no-build-isolation --no-deps -e .
	touch $@

install: $(STAMPS)/build

# tests/test_report_browser.py opens report.html in headless Chromium through chromedriver:
# installed here when missing (Debian's chromium and chromium-driver, or Fedora's chromium and
# chromedriver), so that the test run needs nothing installed by hand; nothing is done when a
# Chromium or Chrome (any of BROWSER_NAMES) and chromedriver are on the PATH already. Where
# neither apt-get nor dnf is found it stops and says what to install.
BROWSER_NAMES := chromium chromium-browser google-chrome google-chrome-stable
browser:
	@found=; for b in $(BROWSER_NAMES); do command -v $$b >/dev/null && found=$$b && break; done; \
	if [ -z "$$found" ] || ! command -v chromedriver >/dev/null; then \
		sudo=$$( [ "$$(id -u 2>/dev/null)" = 0 ] || echo sudo ); \
		if command -v apt-get >/dev/null; then \
			$$sudo apt-get update -q && \
			DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q chromium chromium-driver; \
		elif command -v dnf >/dev/null; then \
			$$sudo dnf install -y -q chromium chromedriver; \
		else \
			echo "make browser: tests/test_report_browser.py needs Chromium or Chrome" \
				"($(BROWSER_NAMES)) and its chromedriver on PATH, and found no apt-get or dnf" \
				"to install them: install both, then run make test again" >&2; \
			exit 1; \
		fi; \
	fi

# The suite runs on TEST_JOBS workers (pytest-xdist), one test file per worker at a time so
# that a file's shared fixtures are made once; the slowest files start first (conftest.py).
TEST_JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
PYTEST_JOBS := -n $(TEST_JOBS) --dist loadfile
# Idle OpenMP threads sleep instead of spinning (libgomp spins a while by default): the
# workers and the processes their tests start share the cores, and a thread spinning in one
# holds a core another needs. The whole suite took 400-412 s with it against 480-499 s
# without, one run after the other here (2 cores); no result depends on it.
TEST_OMP := OMP_WAIT_POLICY=PASSIVE

# The browser's packages install while the Python environment builds.
test:
	$(MAKE) --no-print-directory -j2 install browser
	@why=$$(sed -n 's/^not built: //p' $(CUDA_RECORD) 2>/dev/null); \
	if [ -n "$$why" ]; then echo "make test: skipped the CUDA compile: $$why"; fi
	$(VENV)/bin/ruff check scops_fast tests benchmarks scripts
	$(MAKE) --no-print-directory gpu-rehearsal
	$(TEST_OMP) $(PY) -m pytest tests -q $(PYTEST_JOBS)
	$(MAKE) --no-print-directory test-rounding

# The tests marked `rounding` (float results whose rounding another CPU changes) again, under
# what changes rounding the way another machine does (docs/verification.md, "`make test` on another CPU");
# about 2 minutes here. A: one thread, torch's portable kernels (ATen DEFAULT, so no cpp
# build loads: its cases skip), oneDNN and MKL at SSE4.1/4.2, OpenCV's plain code, and the
# inputs of the tests that take the `nudge` fixture moved by one ulp. B: three threads,
# ATen, oneDNN and MKL at AVX2 (on an AVX-512 machine, lowered from it). No cache provider:
# the main run's record of failures stays its own.
ROUNDING_A := OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 \
	MKL_ENABLE_INSTRUCTIONS=SSE4_2 OPENCV_CPU_DISABLE=AVX2,FMA3,AVX SCOPS_FAST_TEST_OPENCV_PLAIN=1 \
	SCOPS_FAST_TEST_ULP_NUDGE=1
ROUNDING_B := OMP_NUM_THREADS=3 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 \
	MKL_ENABLE_INSTRUCTIONS=AVX2
test-rounding: install
	$(TEST_OMP) $(ROUNDING_A) $(PY) -m pytest tests -q -m rounding -p no:cacheprovider $(PYTEST_JOBS)
	$(TEST_OMP) $(ROUNDING_B) $(PY) -m pytest tests -q -m rounding -p no:cacheprovider $(PYTEST_JOBS)

# The main job: train SCOPS on the embedded synthetic dataset, evaluate, write the report.
# With --resume once runs/demo holds a run: a second make demo picks up the finished
# checkpoint and only re-evaluates.
demo: install
	$(PY) -m scops_fast.train --config demo --out runs/demo $$(test -f runs/demo/checkpoint.pt && echo --resume)

# All benchmarks, then benchmarks/RESULTS.md and its plots (about 45 minutes here, quiet).
# With ORIGINAL=path/to/SCOPS ORIGINAL_TPS=path/to/tps_stn_pytorch (checkouts of the original
# code) it also times the original's training step beside ours (about 6 minutes more).
BENCH_CAP_GB ?= 16
ORIGINAL ?=
ORIGINAL_TPS ?=
BENCH_OUT := benchmarks/results
bench: install
	mkdir -p $(BENCH_OUT)
	$(PY) -m pytest benchmarks/bench_losses.py --benchmark-only --bench-size all --benchmark-json $(BENCH_OUT)/losses.json
	$(PY) -m pytest benchmarks/bench_losses.py --benchmark-only --bench-size heavy --benchmark-json $(BENCH_OUT)/losses_heavy.json
	$(PY) -m pytest benchmarks/bench_train_step.py --benchmark-only --train-cases 128x1,128x2,256x1,256x2,512x1 --train-rounds 1 --benchmark-json $(BENCH_OUT)/train.json
	$(PY) -m pytest benchmarks/bench_train_step.py --benchmark-only --train-cases 256x6 --train-rounds 2 --train-run-cap-gb 16 --benchmark-json $(BENCH_OUT)/train_celeba.json
	$(PY) benchmarks/train_step.py compare --size 256 --batch 2 --rounds 4 --out $(BENCH_OUT)/compare_256x2.json
	$(PY) benchmarks/train_step.py largest $(BENCH_OUT)/train.json $(BENCH_OUT)/train_celeba.json --cap-gb $(BENCH_CAP_GB) --run-cap-gb $(BENCH_CAP_GB) --out $(BENCH_OUT)/largest.json
ifneq ($(ORIGINAL),)
	$(PY) benchmarks/original_step.py --original $(ORIGINAL) --tps $(ORIGINAL_TPS) --size 256 --batch 6 --steps 2 --out $(BENCH_OUT)/original_step.json
endif
	$(PY) benchmarks/report.py

# The largest batch under 16 GiB with each memory lever (none, activation checkpointing,
# checkpointing + bfloat16) at 256 to 1024 px; real runs confirm it at 512 and 1024 px, the
# next batch refused (benchmarks/train_levers.py; about an hour on 2 cores, most of it in the
# confirming steps of 20 to 40 images at 512 px). Needs about 17 GB free.
bench-levers: install
	mkdir -p $(BENCH_OUT)
	$(PY) benchmarks/train_levers.py --sizes 256,512,768,1024 --confirm-sizes 512,1024 \
		--cap-gb $(BENCH_CAP_GB) --out $(BENCH_OUT)/levers.json
	$(PY) benchmarks/train_levers.py --levers selective --sizes 256,512 --confirm-sizes '' \
		--cap-gb $(BENCH_CAP_GB) --out $(BENCH_OUT)/levers.json --append
	$(PY) benchmarks/train_levers.py --levers stages --sizes 512,1024 --confirm-sizes 512,1024 \
		--cap-gb $(BENCH_CAP_GB) --out $(BENCH_OUT)/levers.json --append
ifneq ($(ORIGINAL),)
	$(PY) benchmarks/train_levers.py --levers original --sizes 512,1024 --confirm-sizes 512,1024 \
		--fit-batches 1,2 --original $(ORIGINAL) --tps $(ORIGINAL_TPS) \
		--cap-gb $(BENCH_CAP_GB) --out $(BENCH_OUT)/levers.json --append
endif
	$(PY) benchmarks/report.py

# scops-train --batch-size auto end to end on the CPU: its choice for the SPEC section 8 step
# at 256 px under 8 GiB, then two steps of the chosen batch under an 8 GiB address-space
# guard, whose resident peak must stay under it: about 10 minutes.
bench-autobatch: install
	mkdir -p $(BENCH_OUT)
	$(PY) benchmarks/autobatch_check.py --size 256 --budget-gb 8 --out $(BENCH_OUT)/autobatch_check.json

# scops-predict's images/s, batched and with reader processes against one image at a time,
# for the demo network and DeepLab at 256x256, and its memory over 10,000 images: ~5 minutes.
bench-predict: install
	mkdir -p $(BENCH_OUT)
	$(PY) benchmarks/predict_throughput.py --out $(BENCH_OUT)/predict.json
	$(PY) benchmarks/report.py

# The CPU kernels' two x86-64 builds timed one after the other (concentration at B=16 and
# the dense semantic loss at B=2, with eager, torch.compile and a copy): about 1 minute.
ISA_CASES := -k "concentration_loss or copy or (semantic_consistency_loss and not lowres)"
bench-isa: install
	mkdir -p $(BENCH_OUT)
	for isa in avx2 avx512; do \
		SCOPS_FAST_CPU_CAPABILITY=$$isa $(PY) -m pytest benchmarks/bench_losses.py --benchmark-only \
			--bench-size b16,dense2 $(ISA_CASES) --bench-memory off -q \
			--benchmark-json $(BENCH_OUT)/isa_$$isa.json || exit 1; \
		$(PY) benchmarks/summarize.py $(BENCH_OUT)/isa_$$isa.json; \
	done

# The test suite on an emulated x86-64 CPU with AVX2 and FMA but no AVX-512 (QEMU user mode,
# QEMU 8 or later: see scripts/no_avx512.py), for the machines CI does not land on. About
# 8x slower than `make test`'s tests.
test-no-avx512: install browser
	$(PY) scripts/no_avx512.py -- -m pytest tests -q -rs

# On a machine with an NVIDIA GPU, with the Python, torch and triton found there (nothing is
# installed): build the CUDA kernels for it, run the shared suite's GPU pairs and
# benchmarks/gpu_bench.py, at most 8 minutes; every result lands in OUT as its step ends.
# Without a GPU it says so in one line. `scripts/gpu_check.py --dry-run` prints the steps.
OUT ?= build/gpu-check
gpu-check:
	$(or $(PYTHON),python3) scripts/gpu_check.py --out $(OUT)

# The GPU check rehearsed on this CPU (part of `make test`): its build command, its test
# selection collected with a GPU faked and checked, every Triton kernel compiled for sm_90,
# the benchmark's plan. Without a CUDA toolkit the build step says it is skipped.
gpu-rehearsal: install
	$(PY) scripts/gpu_check.py --rehearse --out build/gpu-rehearsal > build/gpu-rehearsal.log 2>&1 \
		|| { tail -n 60 build/gpu-rehearsal.log; exit 1; }
	@grep -E '^gpu-check: [a-z-]+ (passed|skipped|failed)' build/gpu-rehearsal.log

# The GPU machine's own stack (Python 3.12, torch 2.11, torchvision 0.26, triton 3.6) in a
# separate environment (.venv-gpu-stack; the libraries build in place beside ours, under
# Python 3.12's names): the package builds on it, and the suite's core and the rehearsal
# pass on it (Triton through the rehearsal's sm_90 compile, not the interpreter). About 3 GB
# the first time; not part of `make test`.
# pyenv's shims answer `command -v` for versions that are not selected: a real interpreter
# is one that runs.
GPU_STACK_PYTHON ?= $(firstword $(foreach p,$(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) \
	$(shell command -v python3.12),$(shell $(p) -c 'print("$(p)")' 2>/dev/null)))
GPU_STACK_VENV := .venv-gpu-stack
GPU_STACK_PY := $(GPU_STACK_VENV)/bin/python
GPU_STACK := torch==2.11.0 torchvision==0.26.0 triton==3.6.0 numpy pillow scipy \
	opencv-contrib-python-headless tqdm ninja pybind11 setuptools wheel pytest pytest-xdist hypothesis
GPU_STACK_CORE := tests/test_api.py tests/test_backends.py tests/test_gpu_check.py \
	tests/test_cuda_build.py tests/test_cuda_emu.py tests/test_kernel_edges.py tests/test_compile_cold.py
test-gpu-stack:
	@test -n "$(GPU_STACK_PYTHON)" || { echo "test-gpu-stack: no python3.12 found (GPU_STACK_PYTHON=...)"; exit 1; }
	test -x $(GPU_STACK_PY) || $(GPU_STACK_PYTHON) -m venv $(GPU_STACK_VENV)
	$(GPU_STACK_PY) -m pip install --disable-pip-version-check -q --no-compile $(GPU_STACK)
	FORCE_CUDA=$(FORCE_CUDA) SCOPS_FAST_CUDA_EMU=1 SCOPS_FAST_STRICT_BUILD=1 $(GPU_STACK_PY) setup.py -q build_ext --inplace
	$(GPU_STACK_PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile -p no:cacheprovider \
		$(GPU_STACK_CORE) -k "not triton"
	$(GPU_STACK_PY) scripts/gpu_check.py --rehearse --out build/gpu-rehearsal-stack

# The CPU kernels and the CUDA emulation compiled (not linked, not run) for aarch64 with
# Debian's cross compiler (apt install g++-aarch64-linux-gnu): what an ARM machine's build would
# reject first. About a minute of CPU; not part of `make test`.
test-arm-compile: $(STAMPS)/deps
	$(PY) scripts/cross_compile.py

# C++ kernels under AddressSanitizer + UBSan (build/sanitize/), running the cpp and
# robustness tests against them: a release check, about 2 minutes here.
sanitize: $(STAMPS)/deps
	$(PY) scripts/sanitize.py

lint: install
	$(VENV)/bin/ruff check scops_fast tests benchmarks scripts
	$(VENV)/bin/ruff format --check scops_fast tests benchmarks

format: install
	$(VENV)/bin/ruff format scops_fast tests benchmarks
	$(VENV)/bin/ruff check --fix scops_fast tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info scops_fast/*.so scops_fast/_build_errors
