#!/usr/bin/env bash
# The whole product path on a folder of faces, as a new user runs it, checking what it promises:
# train 2 epochs, export, generate 1,000 faces twice (the rerun changes no file), again with --batch-size 37
# into another folder (same bytes), then denoise them. Prints the timings and the validation numbers.
# Usage: examples/end_to_end.sh FACES_FOLDER [WORK_FOLDER]   (venv active)
set -euo pipefail
faces=$(realpath "$1")
work=${2:-$(mktemp -d)}
mkdir -p "$work" && cd "$work"
echo "working in $work"
time animevae train "$faces" --epochs 2 --name e2e --quiet
cat runs/e2e/metrics.jsonl
animevae export --onnx --run e2e
time animevae generate --count 1000 --out G --seed 7 --run e2e --quiet
before=$(find G -type f -printf '%p %T@\n' | sort | sha256sum)
animevae generate --count 1000 --out G --seed 7 --run e2e --quiet
after=$(find G -type f -printf '%p %T@\n' | sort | sha256sum)
[ "$before" = "$after" ] && echo "rerun: no file changed"
animevae generate --count 1000 --out G37 --seed 7 --batch-size 37 --run e2e --quiet
diff -r G G37 && echo "--batch-size 37: identical bytes"
time animevae denoise G --out D --run e2e --quiet
echo "denoised: $(find D -name '*.png' | wc -l) PNGs"
