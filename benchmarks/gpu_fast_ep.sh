#!/usr/bin/env bash
# The fast-EP GPU checks in one run (about 10 minutes on an H100/H200), results as JSON under $OUT:
#   1. the GPU's matmul peak per precision;
#   2. the CIFAR-10 ConvNet (T1 = 250, T2 = 25, symmetric) per batch at 128 and 512: the engine in IEEE float32,
#      then with TF32 + channels-last + CUDA graphs, then in bfloat16, each against the autograd-of-Phi
#      formulation in the same precision, with achieved TFLOP/s against the matching matmul peak and the
#      cosine of its update with the float64 update;
#   3. the fast engine with phases that end at a 1e-4 tolerance (steps run, time per batch, update cosine),
#      and steps to the fixed point per solver (plain/Anderson, synchronous/alternating) on the ConvNet;
#   4. the CUDA tests of the suite.
# Each part writes its file as it ends, so a run cut short keeps what it finished; the exit status is
# that of the first part that failed. The float64 reference of the update's cosine is computed for the
# fast runs and the batch-128 baseline only (it is the slowest part at batch 512).
#
#   benchmarks/gpu_fast_ep.sh            # on the GPU machine, after `make install`
#   QUICK=1 benchmarks/gpu_fast_ep.sh    # a few minutes on a CPU: checks the script itself at tiny sizes
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"

if [ "${QUICK:-0}" = 1 ]; then
  DEV=cpu; BATCHES="2"; REPEATS="--warmup 1 --repeats 1"; SHORT=(--set ep.free_steps=3 --set ep.nudged_steps=2)
  FAST=(--set target.memory_format=channels_last --set target.compile=inductor --set target.compile_chunk=2)
  PEAK=(--size 256 --precisions float32); FP_ARGS=(--batch 2 --max-steps 20 --reference-steps 40)
  TF32=float32; LOW=(--set target.precision=bfloat16 --set target.compile=none); LOW_PEAK=float32
else
  if ! $PY -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "no CUDA device: run with QUICK=1 on a CPU" >&2
    exit 2
  fi
  DEV=cuda; BATCHES="128 512"; REPEATS="--warmup 2 --repeats 5"; SHORT=()
  FAST=(--set target.precision=tf32 --set target.memory_format=channels_last --set target.compile=cuda_graph)
  PEAK=(--precisions float32,tf32,bfloat16); FP_ARGS=(--batch 128 --max-steps 1000 --reference-steps 1500)
  TF32=tf32; LOW=(--set target.precision=bfloat16); LOW_PEAK=bfloat16
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
fi
CIFAR=(--config configs/cifar10_conv.toml --devices "$DEV" "${SHORT[@]}")

STATUS=0
run() {  # name, command...: runs it, logs to $OUT/name.log, says how long it took
  local name=$1; shift
  local start=$SECONDS
  echo "== $name"
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 12 "$OUT/$name.log"
  echo "== $name: exit $rc after $((SECONDS - start)) s"
  if [ "$rc" != 0 ] && [ "$STATUS" = 0 ]; then STATUS=$rc; fi
}

run matmul_peak $PY benchmarks/matmul_peak.py --device "$DEV" "${PEAK[@]}" --json "$OUT/matmul_peak.json"
first=${BATCHES%% *}
for b in $BATCHES; do
  fidelity=(); [ "$b" = "$first" ] && fidelity=(--fidelity)
  run "cifar_b${b}_float32" $PY benchmarks/step_speed.py "${CIFAR[@]}" --batch "$b" $REPEATS \
    --formulations engine,autograd "${fidelity[@]}" --peak float32 --out "$OUT/cifar_b${b}_float32.json"
  run "cifar_b${b}_fast" $PY benchmarks/step_speed.py "${CIFAR[@]}" --batch "$b" $REPEATS \
    --formulations engine,autograd "${FAST[@]}" --fidelity --peak "$TF32" --out "$OUT/cifar_b${b}_fast.json"
done
last=${BATCHES##* }
run "cifar_b${last}_low" $PY benchmarks/step_speed.py "${CIFAR[@]}" --batch "$last" $REPEATS --formulations engine,autograd \
  "${FAST[@]}" "${LOW[@]}" --fidelity --peak "$LOW_PEAK" --out "$OUT/cifar_b${last}_low.json"
run "cifar_b${first}_fast_tolerance" $PY benchmarks/step_speed.py "${CIFAR[@]}" --batch "$first" $REPEATS \
  --formulations engine "${FAST[@]}" --set ep.stop_tolerance=1e-4 --fidelity --peak "$TF32" \
  --out "$OUT/cifar_b${first}_fast_tolerance.json"
run fixed_point_steps $PY benchmarks/fixed_point_steps.py --networks cifar10_conv --device "$DEV" "${FP_ARGS[@]}" \
  --json "$OUT/fixed_point_steps_cifar10_conv.json"
if [ "$DEV" = cuda ]; then
  run gpu_tests $PY -m pytest -q -m gpu -p no:cacheprovider
fi
echo "results in $OUT"
exit $STATUS
