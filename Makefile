# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEMO_OUT ?= runs/demo

.PHONY: install openblas data toolchain fpga-tools fpga-reports firmware demo test bench ui clean

install: $(STAMP)

# The reference simulators of the conformance suite (tests/conformance): aihwkit 1.2.0 has no wheel for this Python
# and is built once from its source archive (about 3 min on 2 cores; pip caches the wheel) against the pinned torch,
# with the build tools of the test extra and mypy's stubgen on PATH; it and badcrossbar go in without their declared
# dependencies (torchvision would pull another torch; pycairo is for badcrossbar's plots and has no wheel).
REFERENCE_SIMULATORS := aihwkit==1.2.0 badcrossbar==1.1.0

$(STAMP): pyproject.toml
	$(MAKE) openblas
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" MAKEFLAGS=-j$$(nproc) \
	  $(PY) -m pip install --quiet --no-build-isolation --no-deps $(REFERENCE_SIMULATORS)
	# badcrossbar's wheel also installs its own test suite as a top-level package `tests`, which would shadow
	# this repository's tests/ (`from tests.conftest import ...`): remove it.
	rm -rf $(VENV)/lib/python*/site-packages/tests
	touch $(STAMP)

# aihwkit's build links OpenBLAS: Debian's libopenblas-dev (without recommends), skipped where it is present.
openblas:
	@if command -v dpkg >/dev/null && ! dpkg -s libopenblas-dev >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      libopenblas-dev; \
	  else echo "note: install libopenblas-dev (aihwkit, the conformance suite's reference, builds against it)"; fi; \
	fi

# Fashion-MNIST from Debian's dataset-fashion-mnist where apt is available (as root), else the
# loader downloads it into ~/.cache/hwtoolkit with checksums.
data:
	@if [ ! -f $(FMNIST) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dataset-fashion-mnist; \
	fi

# The board firmware's toolchains from Debian (without recommends): a C compiler for the host build, the Arm
# cross-compiler and QEMU for the Cortex-M3 build, clang for the fuzzer. Skipped where they are present or
# where apt is not available (the tests that need them then skip, saying why).
TOOLCHAIN_PACKAGES := gcc make gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm clang libclang-rt-14-dev
toolchain:
	@if ! command -v arm-none-eabi-gcc >/dev/null || ! command -v qemu-system-arm >/dev/null || \
	    ! command -v clang >/dev/null; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      $(TOOLCHAIN_PACKAGES); \
	  else echo "note: install $(TOOLCHAIN_PACKAGES) to build the board firmware"; fi; \
	fi

# The FPGA core's tools from Debian (without recommends): Icarus Verilog for the cocotb tests, yosys,
# nextpnr-ice40 and icestorm for the synthesis reports, Verilator. Skipped where present or without apt.
FPGA_PACKAGES := iverilog yosys nextpnr-ice40 fpga-icestorm verilator
fpga-tools:
	@if ! command -v iverilog >/dev/null || ! command -v yosys >/dev/null || ! command -v nextpnr-ice40 >/dev/null; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      $(FPGA_PACKAGES); \
	  else echo "note: install $(FPGA_PACKAGES) for the FPGA core's tests and reports"; fi; \
	fi

# Synthesis and place-and-route reports of the FPGA core (build/fpga/synth/report.md; docs/fpga.md).
fpga-reports: install fpga-tools
	$(MAKE) -C firmware_interface/fpga reports PY=$(CURDIR)/$(PY)

firmware: toolchain fpga-tools
	$(MAKE) -C firmware_interface/firmware host
	@if command -v arm-none-eabi-gcc >/dev/null; then $(MAKE) -C firmware_interface/firmware qemu; fi
	@if command -v verilator >/dev/null && command -v g++ >/dev/null; then $(MAKE) -C firmware_interface/firmware fpga-sim; fi

# The main job: F-MNIST trained in situ on the ideal crossbar and on a realistic device (metal-oxide ECRAM),
# side by side: accuracy, gradient fidelity and a plot in $(DEMO_OUT)/sweep.*; then the GDU check of EP;
# then the ideal-crossbar network exported to ONNX and checked with onnxruntime on the whole test set; then
# 14x14 F-MNIST trained with the board firmware (host build, on a pty) in the loop, against the same
# fixed-point network on the reference target.
demo: install data firmware
	rm -rf $(DEMO_OUT)
	$(PY) -m hwtoolkit sweep configs/fmnist_mlp_crossbar.toml --param crossbar.preset --values ideal,ecram-mo \
	  --set train.epochs=5 --out $(DEMO_OUT)
	$(PY) -m hwtoolkit gdu configs/gdu_mlp.toml --beta 0.001 --json $(DEMO_OUT)/gdu.json --plot $(DEMO_OUT)/gdu.png
	$(PY) -m hwtoolkit export "$(DEMO_OUT)/points/crossbar.preset=ideal/seed1" --format onnx \
	  --out $(DEMO_OUT)/fmnist_mlp.onnx --check-samples 0
	$(PY) benchmarks/board_training.py --board host --set train.epochs=2 --runs $(DEMO_OUT)/board \
	  --json $(DEMO_OUT)/board_training.json

test: install data firmware fpga-tools
	$(PY) -m pytest -q

bench: install data
	$(PY) benchmarks/step_speed.py
	$(PY) benchmarks/crossbar_speed.py
	$(PY) benchmarks/quant_accuracy.py --runs runs/bench-quant-accuracy

# The MLflow UI on the default tracking store (runs/mlflow.db): every run, sweep point and tuning trial logged by
# the commands, at http://127.0.0.1:5000. Installs the optional `ui` extra (the full mlflow package) first.
ui: install
	$(PY) -m pip install --quiet -e '.[ui]'
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///runs/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf $(VENV) runs build *.egg-info
