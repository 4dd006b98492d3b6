#!/usr/bin/env bash
# ORT CUDA check of depth-pruned, fine-tuned models (issue 23): verification of depth
# pruning on the GPU, quality through ORT CUDA, latency at batch 1 against the original.
# Needs $PAYLOAD with ortgpu.tar.xz, sepprune.xz, convtasnet.onnx, d8_ref.onnx,
# d10_ref.onnx and heldout_test/ (a LibriMix-style set); writes under $OUT.
set -uo pipefail
W=/tmp/w; P=${PAYLOAD:?}
mkdir -p $W/ort
xz -dc $P/sepprune.xz > $W/sepprune && chmod +x $W/sepprune
xz -dc $P/ortgpu.tar.xz | tar x -C $W/ort
export ORT_DYLIB_PATH=$W/ort/onnxruntime/capi/libonnxruntime.so.1.31.1 RUST_BACKTRACE=0
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
B=$W/sepprune; M=$P/convtasnet.onnx; t0=$(date +%s)
$B prune $M -o $W/s50.onnx --ratio 0.5 --verify-runtime ort-cuda 2>&1 | tail -1
$B prune $M -o $W/d10.onnx --blocks 10,11,12,13,14,16,17,19,20,21 --verify-runtime ort-cuda 2>&1 | tail -4
for m in $M $P/d8_ref.onnx $P/d10_ref.onnx; do $B eval $m --data $P/heldout_test --runtime ort-cuda 2>&1 | tail -1; done
echo "checks done after $(( $(date +%s) - t0 )) s"
MODELS="$M $P/d8_ref.onnx $P/d10_ref.onnx $W/s50.onnx"
for g in "" --cuda-graph; do
  $B bench $MODELS --runtime ort-cuda --seconds 1,4 --runs 100 --warmup 10 $g --json > $OUT/depth_bench$g.json 2> $OUT/depth_bench$g.err || tail -3 $OUT/depth_bench$g.err
done
python3 - "$OUT" <<'PY'
import json, sys, os, glob
for p in sorted(glob.glob(sys.argv[1] + '/depth_bench*.json')):
    for r in json.load(open(p)):
        print(f"{'graph' if r['cuda_graph'] else 'plain'} {r['seconds']:.0f}s {os.path.basename(r['model']):16s} {r['median_ms']:7.3f} ms p10 {r['p10_ms']:6.3f} p90 {r['p90_ms']:6.3f} x{r['speedup']:.2f} MACs x{r['macs_speedup']:.2f}")
PY
echo "total $(( $(date +%s) - t0 )) s"
