#!/usr/bin/env bash
# CUDA smoke check: every method trains a few dozen iterations on the GPU, then ns-eval, hs-export mesh
# and (volumetric methods) ns-export tsdf run on the checkpoint. One line per method and step.
#
#   bash bench/cuda_smoke.sh [WORKDIR]        (needs a CUDA machine with the project installed)
#
# Sized to finish in a few minutes: a 64 px synthetic subject, 40 iterations, small test-time fitting.
set -uo pipefail
WORK="${1:-$(mktemp -d /tmp/hs-cuda-smoke.XXXX)}"
mkdir -p "$WORK"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('device:', torch.cuda.get_device_name(0), 'torch', torch.__version__)" || exit 2
[ -d "$WORK/subject" ] || hs-synth subject "$WORK/subject" --size 64 --num-train 8 --num-test 4 > "$WORK/synth.log" 2>&1 || { echo "hs-synth FAILED (see $WORK/synth.log)"; exit 1; }
COMMON=(--machine.device-type cuda --vis tensorboard --max-num-iterations 40 --steps-per-save 40
        --steps-per-eval-batch 1000 --steps-per-eval-image 1000 --pipeline.test-time-steps 3
        --pipeline.test-time-rays 256)
declare -A EXTRA=(
  [tensorf-local-deform]="--pipeline.model.schedule-scale 0.002 --pipeline.model.final-resolution 64"
  [rignerf-star]=""
  [imavatar-surface]="--pipeline.model.num-steps 48"
)
status=0
for method in tensorf-local-deform rignerf-star imavatar-surface; do
  out="$WORK/runs/$method"
  start=$(date +%s)
  # shellcheck disable=SC2086
  if ns-train "$method" "${COMMON[@]}" ${EXTRA[$method]} --output-dir "$out" --data "$WORK/subject" > "$WORK/$method.train.log" 2>&1; then
    config=$(find "$out" -name config.yml | head -1)
    line="$method: train ok ($(( $(date +%s) - start )) s)"
    if ns-eval --load-config "$config" --output-path "$WORK/$method.eval.json" > "$WORK/$method.eval.log" 2>&1; then
      psnr=$(python -c "import json; r = json.load(open('$WORK/$method.eval.json'))['results']; print(f\"{r['psnr']:.2f}\")")
      line="$line, ns-eval ok (PSNR $psnr)"
    else line="$line, ns-eval FAILED"; status=1; fi
    if hs-export mesh --load-config "$config" --frames 0 --resolution 64 --level 1.0 --output-dir "$WORK/$method.mesh" > "$WORK/$method.mesh.log" 2>&1; then
      line="$line, hs-export ok"
    else line="$line, hs-export FAILED (a faint field after 40 iterations can miss --level; see the log)"; status=1; fi
    if [ "$method" != "imavatar-surface" ]; then
      if HEADSTUDIO_FRAME=0 ns-export tsdf --load-config "$config" --output-dir "$WORK/$method.tsdf" --resolution 64 --texture-method tsdf --target-num-faces None > "$WORK/$method.tsdf.log" 2>&1; then
        line="$line, ns-export tsdf ok"
      else line="$line, ns-export tsdf FAILED"; status=1; fi
    else
      if ns-export marching-cubes --load-config "$config" --output-dir "$WORK/$method.mc" --resolution 128 --simplify-mesh False > "$WORK/$method.mc.log" 2>&1; then
        line="$line, ns-export marching-cubes ok"
      else line="$line, ns-export marching-cubes FAILED"; status=1; fi
    fi
  else
    line="$method: train FAILED: $(grep -m1 -E 'Error|error' "$WORK/$method.train.log")"; status=1
  fi
  echo "$line"
done
echo "logs in $WORK"
exit $status
