#!/usr/bin/env bash
# The GPU measurements of issue 23 in one call on a GPU machine:
#  1. CPU/CUDA parity of the fused kernels and AdamW (the lib's unit tests);
#  2. the training step of the real Conv-TasNet (1 s, batch 1 and 8) with this build, a
#     baseline build (BASE, optional) and PyTorch eager, all on the same card;
#  3. ORT CUDA against ORT CPU and tract: the original, L1 50% channels, and the slim
#     models in $PAYLOAD/models (batch 1, 1 s and 4 s, plain and with CUDA graphs);
#  4. `compress --target-latency` on ORT CUDA (structure chosen by the runtime).
# Needs $PAYLOAD with sepprune.xz (scripts/cuda_build.sh --release, stripped),
# unit_tests.xz, optionally sepprune-base.xz, convtasnet.onnx.xz, models/*.onnx.xz,
# ortgpu.tar.xz.* (the parts of onnxruntime-gpu 1.31.1's onnxruntime/capi libraries), and
# mini/ (a small `mix` set for the block ablation); writes $OUT/results.tgz (every JSON
# and log below) and prints a summary.
set -uo pipefail
P=${PAYLOAD:?}; W=/tmp/w; mkdir -p $W
FINAL=$OUT; OUT=$W/results; mkdir -p $OUT
t0=$(date +%s)
since() { echo "after $(( $(date +%s) - t0 )) s"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for f in sepprune sepprune-base unit_tests; do
  [ -f $P/$f.xz ] && xz -dc $P/$f.xz > $W/$f && chmod +x $W/$f
done
xz -dc $P/convtasnet.onnx.xz > $W/convtasnet.onnx
mkdir -p $W/models
for f in $P/models/*.onnx.xz; do xz -dc $f > $W/models/$(basename $f .xz); done
if [ ! -d $W/ort ]; then mkdir -p $W/ort && cat $P/ortgpu.tar.xz.* | xz -dc | tar x -C $W/ort; fi
export ORT_DYLIB_PATH=$W/ort/onnxruntime/capi/libonnxruntime.so.1.31.1
# CUDA 13, cuBLAS, cuRAND, cuDNN 9 of the Python environment's PyTorch wheels
SP=$(python3 -c "import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))")
export LD_LIBRARY_PATH=$(ls -d $SP/nvidia/*/lib $SP/nvidia/cu13/lib 2>/dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}
export RUST_BACKTRACE=1
B=$W/sepprune; M=$W/convtasnet.onnx
echo "== unpacked, $(since)"

echo "== 1. parity"
timeout 90 $W/unit_tests cuda --test-threads 1 --nocapture 2>&1 | grep -v "^$" | tail -14

echo "== 2. training step, 1 s, batch 1 and 8"
train() {  # NAME BINARY
  timeout 100 $2 bench --train --cuda $M --seconds 1 --batch 1,8 --runs ${RUNS:-30} --warmup 5 \
    --json > $OUT/train_$1.json 2> $OUT/train_$1.err
  echo "$1: rc=$? $(since)"; tail -2 $OUT/train_$1.err
}
train new $B
[ -x $W/sepprune-base ] && train base $W/sepprune-base
timeout 120 python3 scripts/gpu/torch_step.py --device cuda --batch 1,8 --seconds 1 \
  --runs ${RUNS:-30} > $OUT/torch_cuda.jsonl 2>&1
echo "torch: rc=$? $(since)"
train new2 $B

echo "== 3. ORT CUDA, ORT CPU, tract"
$B prune $M -o $W/s50.onnx --ratio 0.5 --verify-runtime ort-cuda 2>&1 | tail -3
MODELS="$M $W/s50.onnx $(ls $W/models/*.onnx | tr '\n' ' ')"
timeout 150 $B bench $MODELS --runtime ort-cuda --seconds 1,4 --runs 60 --warmup 10 --json \
  > $OUT/ort_cuda.json 2> $OUT/ort_cuda.err
echo "ort-cuda: rc=$? $(since)"; tail -2 $OUT/ort_cuda.err
timeout 100 $B bench $MODELS --runtime ort-cuda --seconds 1,4 --runs 60 --warmup 10 --cuda-graph \
  --json > $OUT/ort_cuda_graph.json 2> $OUT/ort_cuda_graph.err
echo "ort-cuda graph: rc=$? $(since)"; tail -2 $OUT/ort_cuda_graph.err
timeout 120 $B bench $MODELS --runtime ort-cuda,ort,tract --seconds 1 --runs 10 --warmup 2 --json \
  > $OUT/three.json 2> $OUT/three.err
echo "three runtimes: rc=$? $(since)"; tail -2 $OUT/three.err

echo "== 4. compress --target-latency on ORT CUDA"
timeout 150 $B compress $M --data $P/mini -o $W/tl.onnx --target-latency ${TARGET_MS:-2.6} \
  --runtime ort-cuda,ort --structure auto --method l1 --finetune-minutes 0 --no-refit --runs 30 \
  > $OUT/target_latency.txt 2>&1
echo "target-latency: rc=$? $(since)"; tail -25 $OUT/target_latency.txt
[ -f $W/tl.onnx.report/report.json ] && cp $W/tl.onnx.report/report.json $OUT/target_latency.json

python3 - "$OUT" <<'PY'
import json, sys, os
o = sys.argv[1]
for f in ("train_new.json", "train_base.json", "train_new2.json"):
    p = os.path.join(o, f)
    if os.path.exists(p) and os.path.getsize(p) > 0:
        for r in json.load(open(p)):
            ph = r.get("phases_ms")
            ph = "" if not ph else " phases " + " / ".join(f"{v:.1f}" for v in ph)
            print(f"{f[6:-5]:5s} {r['step']:8s} batch {r.get('batch', 1)} median {r['median_ms']:7.2f} ms p10 {r['p10_ms']:7.2f} p90 {r['p90_ms']:7.2f}{ph}")
p = os.path.join(o, "torch_cuda.jsonl")
if os.path.exists(p):
    for l in open(p):
        if l.startswith("{"):
            r = json.loads(l)
            print(f"torch {r['gln']:10s} batch {r['batch']} median {r['median_ms']:7.2f} ms p10 {r['p10_ms']:7.2f} p90 {r['p90_ms']:7.2f}")
for f in ("ort_cuda.json", "ort_cuda_graph.json", "three.json"):
    p = os.path.join(o, f)
    if os.path.exists(p) and os.path.getsize(p) > 0:
        for r in json.load(open(p)):
            print(f"{f[:-5]:15s} {r['runtime']:8s} {r['seconds']:.0f}s {os.path.basename(r['model']):22s} {r['median_ms']:8.2f} ms  x{r['speedup']:.2f}  MACs x{r['macs_speedup']:.2f}")
PY
echo "total $(since)"
tar czf $FINAL/results.tgz -C $W results
