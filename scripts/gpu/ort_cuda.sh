#!/usr/bin/env bash
# ORT CUDA measurements on a GPU machine (issue 23): what the runtime rewards at batch 1.
# Needs: $PAYLOAD with ortgpu.tar.xz (onnxruntime-gpu 1.31.1's onnxruntime/ package),
# sepprune.xz (a release build), convtasnet.onnx (the real model); writes under $OUT.
# RT=ort runs the same flow on the CPU (to rehearse it without a GPU).
set -uo pipefail
RT=${RT:-ort-cuda}
W=/tmp/w; mkdir -p $W
P=${PAYLOAD:?}
if [ ! -x $W/sepprune ]; then
  xz -dc $P/sepprune.xz > $W/sepprune && chmod +x $W/sepprune
fi
if [ "$RT" = ort-cuda ] && [ ! -d $W/ort ]; then
  mkdir -p $W/ort && xz -dc $P/ortgpu.tar.xz | tar x -C $W/ort
  export ORT_DYLIB_PATH=$W/ort/onnxruntime/capi/libonnxruntime.so.1.31.1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi
B=$W/sepprune; M=$P/convtasnet.onnx; V="python3 scripts/gpu/variants.py"
export RUST_BACKTRACE=0
t0=$(date +%s)
# slim models (verification of the 50% model in the runtime under test)
$B prune $M -o $W/s50.onnx --ratio 0.5 --verify-runtime $RT 2>&1 | tail -4
$B prune $M -o $W/s75.onnx --ratio 0.75 --no-verify 2>&1 | tail -1
$V $M $W/o_in.onnx --instance-norm
$V $W/s50.onnx $W/s50_in.onnx --instance-norm
$V $M $W/d8.onnx --drop 2,5,8,11,14,17,20,23
$V $M $W/d12.onnx --drop 1,3,5,7,9,11,13,15,17,19,21,23
$V $M $W/d12_in.onnx --drop 1,3,5,7,9,11,13,15,17,19,21,23 --instance-norm
$V $W/s50.onnx $W/s50_d12_in.onnx --drop 1,3,5,7,9,11,13,15,17,19,21,23 --instance-norm
echo "variants ready after $(( $(date +%s) - t0 )) s"
$B check $M --runtime $RT --trials 1 --seconds 1 2>&1 | tail -4
MODELS="$M $W/s50.onnx $W/s75.onnx $W/o_in.onnx $W/s50_in.onnx $W/d8.onnx $W/d12.onnx $W/d12_in.onnx $W/s50_d12_in.onnx"
RUNS=${RUNS:-50}
$B bench $MODELS --runtime $RT --seconds 1,4 --runs $RUNS --warmup 10 --json > $OUT/bench_plain.json 2> $OUT/bench_plain.err
echo "plain: rc=$? after $(( $(date +%s) - t0 )) s"; tail -3 $OUT/bench_plain.err
if [ "$RT" = ort-cuda ]; then
  $B bench $MODELS --runtime $RT --seconds 1,4 --runs $RUNS --warmup 10 --cuda-graph --json > $OUT/bench_graph.json 2> $OUT/bench_graph.err
  echo "graph: rc=$? after $(( $(date +%s) - t0 )) s"; tail -3 $OUT/bench_graph.err
  PYTHONPATH=$W/ort python3 scripts/gpu/ort_py_bench.py 1 $RUNS $M $W/s50.onnx $W/o_in.onnx $W/d12_in.onnx 2>&1 | grep -v "^\s*$" | tail -6
fi
python3 - "$OUT" <<'PY'
import json, sys, os
for f in ("bench_plain.json", "bench_graph.json"):
    p = os.path.join(sys.argv[1], f)
    if not os.path.exists(p) or os.path.getsize(p) == 0:
        continue
    for r in json.load(open(p)):
        print(f"{f[6:11]} {r['runtime']:8s} {r['seconds']:.0f}s {os.path.basename(r['model']):22s} {r['median_ms']:8.2f} ms  x{r['speedup']:.2f}  MACs x{r['macs_speedup']:.2f}")
PY
echo "total $(( $(date +%s) - t0 )) s"
