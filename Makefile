# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEMO_OUT ?= runs/demo

.PHONY: install data toolchain firmware demo test bench ui clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

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

firmware: toolchain
	$(MAKE) -C firmware_interface/firmware host
	@if command -v arm-none-eabi-gcc >/dev/null; then $(MAKE) -C firmware_interface/firmware qemu; fi

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

test: install data firmware
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
