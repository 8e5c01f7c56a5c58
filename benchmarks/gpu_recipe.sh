#!/usr/bin/env bash
# One GPU session's checks and recipe runs, written to fit a short lease: one epoch through every CUDA path
# (torchrun with NCCL, bf16, adversarial loss, diffusion prior, export), then the default recipe (A) and the
# adversarial + diffusion-prior recipe (B), each for MINUTES of wall clock at batch 64 (so its steps compare
# with a CPU run's), exported to ONNX and scored by the converged realism classifier on the GPU, and A's
# denoiser by bench_denoise.
# Usage: benchmarks/gpu_recipe.sh FACES_DEV_TAR OUT_DIR [MINUTES]   (repository root; torch with CUDA)
set -uo pipefail
tar_path=$(realpath "$1"); out=$(realpath -m "$2"); minutes=${3:-2.2}
repo=$(pwd); mkdir -p "$out"; export PYTHONPATH="$repo" PYTHONUNBUFFERED=1
start=$(date +%s)
log() { echo "[$(( $(date +%s) - start ))s] $*"; }
cli="python3 -m animevae"
realism() {  # realism MODEL_DIR NAME
  log "realism $2"
  timeout 150 python3 "$repo/benchmarks/realism.py" --data faces-dev --model "$1" --device "${REALISM_DEVICE:-cuda}" ${REALISM_ARGS:-} > "$out/realism-$2.json" \
    || log "realism $2 failed"
  cat "$out/realism-$2.json"
}
recipe() {  # recipe NAME TRAIN_ARGS...
  local name=$1; shift
  log "train $name: $*"
  timeout $(python3 -c "print(int($minutes*60+90))") $cli train faces-dev --max-minutes "$minutes" --name "$name" --seed 0 \
    --quiet "$@" || log "train $name failed"
  tail -n 1 "runs/$name/metrics.jsonl"
  timeout 120 $cli export --onnx --run "$name" || log "export $name failed"
  # Files come back at most 16 MiB each: without the encoder where the whole export is larger.
  for leave_out in none encoder.onnx; do
    tar -cf "$out/$name.tar" --exclude="$leave_out" -C runs "$name/export" "$name/metrics.jsonl" "$name/config.json" \
      $(cd runs && ls "$name"/samples/*.png | tail -n 1)
    [ "$(stat -c %s "$out/$name.tar")" -lt 16000000 ] && break
  done
  realism "runs/$name/export" "$name"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, torch.cuda.is_available(), 'ort', o.__version__, o.get_available_providers())"
work=$(mktemp -d) && tar -xf "$tar_path" -C "$work" && cd "$work"
export ANIMEVAE_DEBUG=1
# First a one-epoch run through every CUDA path (DDP over NCCL, bf16, adversarial loss, diffusion prior, export):
# where it fails, the rest would too, and the lease is better kept.
log "torchrun, one process (NCCL), one epoch"
timeout 150 torchrun --standalone --nproc_per_node 1 -m animevae train faces-dev --epochs 1 --name ddp --quiet \
  --adversarial-weight 0.5 --prior diffusion && timeout 120 $cli export --onnx --run ddp \
  || { log "one-epoch CUDA run failed: stopping"; exit 1; }
recipe gpuA
recipe gpuB --adversarial-weight 0.5 --prior diffusion
if [ $(( $(date +%s) - start )) -lt 450 ]; then
  log "bench_denoise gpuA"
  timeout 120 python3 "$repo/benchmarks/bench_denoise.py" --data faces-dev --model runs/gpuA/export --repeats 1 --no-nlm \
    > "$out/denoise-gpuA.txt" 2>&1 || log "bench_denoise failed"
  cat "$out/denoise-gpuA.txt"
fi
log done
