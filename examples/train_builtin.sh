#!/usr/bin/env bash
# Reproduces the built-in model in animevae/builtin/: 60 minutes of `animevae train` on the 6,000 CC0 faces of
# faces-dev (500 held out by content hash), then `animevae export --onnx`, then copies the ONNX files in.
# Usage: examples/train_builtin.sh [path/to/faces-dev.tar] [WORK_FOLDER] [MINUTES]   (run from the repository
# root, venv active). With WORK_FOLDER the run is kept there (runs/builtin), for
# `animevae evaluate faces-dev --run builtin`. MINUTES (default 60) is the training budget on this machine.
set -euo pipefail
repo=$(pwd)
tar_path=$(realpath "${1:-../shared/data/faces-dev.tar}")
if [ -n "${2:-}" ]; then
  work=$(realpath -m "$2") && mkdir -p "$work"
else
  work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT
fi
tar -xf "$tar_path" -C "$work"
cd "$work"
# The relative folder name is what the model's metadata records as its training data.
# From scratch: a run's denoiser would otherwise start from the built-in one it is meant to reproduce. (Where it
# scores below the shipped one on the held-out faces, the export holds the shipped weights: the run says so.)
animevae train faces-dev --max-minutes "${3:-60}" --name builtin --seed 0 --quiet --denoiser-from-scratch
animevae export --onnx --run builtin
tail -n 1 runs/builtin/metrics.jsonl
cp runs/builtin/export/encoder.onnx runs/builtin/export/decoder.onnx runs/builtin/export/denoiser.onnx \
   runs/builtin/export/model.json "$repo/animevae/builtin/"
# A run with --prior diffusion also has prior.onnx; the built-in model samples from its mixture.
rm -f "$repo/animevae/builtin/prior.onnx"
cp runs/builtin/metrics.jsonl "$repo/animevae/builtin/metrics.jsonl"
echo "built-in model updated in $repo/animevae/builtin/"
