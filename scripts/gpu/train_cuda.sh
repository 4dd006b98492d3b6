#!/usr/bin/env bash
# Candle CUDA training on a GPU machine (issue 23): CPU/CUDA parity of the fused kernels
# and AdamW, the training step of the real Conv-TasNet on the GPU against PyTorch eager on
# the same card and against the machine's CPU, and `learn --cuda` against `learn` on the CPU.
# Settings: RUNS (timed steps, 30), SECONDS_LIST (1,4), BATCHES (fine-tuning batch sizes, 1),
# FINETUNE_BATCH (also a 40-step `finetune --cuda --batch N`), SKIP_CPU (no CPU runs).
# Needs $PAYLOAD with sepprune.xz (scripts/cuda_build.sh --release, stripped),
# unit_tests.xz (the lib's unit tests built with --features cuda), convtasnet.onnx.xz and
# set/ (a `mix` data set); writes under $OUT.
set -uo pipefail
W=/tmp/w; P=${PAYLOAD:?}; mkdir -p $W
t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
xz -dc $P/sepprune.xz > $W/sepprune && chmod +x $W/sepprune
xz -dc $P/unit_tests.xz > $W/unit_tests && chmod +x $W/unit_tests
xz -dc $P/convtasnet.onnx.xz > $W/convtasnet.onnx
# the CUDA 13 runtime, cuBLAS and cuRAND of the Python environment's PyTorch wheels
SP=$(python3 -c "import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))")
export LD_LIBRARY_PATH=$(ls -d $SP/nvidia/*/lib $SP/nvidia/cu13/lib 2>/dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}
export RUST_BACKTRACE=1
B=$W/sepprune; M=$W/convtasnet.onnx
echo "== parity (unpacked after $(( $(date +%s) - t0 )) s)"
timeout 90 $W/unit_tests cuda --test-threads 1 --nocapture 2>&1 | grep -v "^$" | tail -20
echo "== sepprune bench --train --cuda"
timeout 150 $B bench --train --cuda $M --seconds ${SECONDS_LIST:-1,4} --batch ${BATCHES:-1} --runs ${RUNS:-30} --warmup 5 --json > $OUT/train_cuda.json 2> $OUT/train_cuda.err
echo "rc=$? after $(( $(date +%s) - t0 )) s"; tail -5 $OUT/train_cuda.err
echo "== PyTorch eager, same card"
timeout 120 python3 scripts/gpu/torch_step.py --device cuda --batch 1,8 --seconds 1 --runs ${RUNS:-30} > $OUT/torch_cuda.jsonl 2>&1
echo "rc=$? after $(( $(date +%s) - t0 )) s"; cat $OUT/torch_cuda.jsonl | tail -6
if [ -z "${SKIP_CPU:-}" ]; then
echo "== sepprune bench --train, CPU ($(nproc) cores)"
timeout 120 $B bench --train $M --seconds 1 --runs 5 --warmup 1 --json > $OUT/train_cpu.json 2> $OUT/train_cpu.err
echo "rc=$? after $(( $(date +%s) - t0 )) s"; tail -3 $OUT/train_cpu.err
fi
if [ -n "${FINETUNE_BATCH:-}" ]; then
  echo "== finetune --cuda --batch $FINETUNE_BATCH, 40 steps"
  s=$(date +%s.%N)
  timeout 150 $B finetune $M --data $P/set/test -o $W/ft.onnx --cuda --batch $FINETUNE_BATCH --steps 40 --val-every 20 --lr 1e-4 --seconds 1 --json > $OUT/finetune_batch.json 2> $OUT/finetune_batch.err
  echo "rc=$? wall $(python3 -c "print(round($(date +%s.%N) - $s, 1))") s"; tail -3 $OUT/finetune_batch.err; head -c 600 $OUT/finetune_batch.json; echo
fi
if [ -z "${SKIP_CPU:-}" ]; then
echo "== learn, CUDA then CPU, 24 steps each"
for dev in --cuda ""; do
  s=$(date +%s.%N)
  timeout 150 $B learn $M --data $P/set/test -o $W/masks$dev.json --target-macs 0.5 --iters 24 --seconds 1 $dev > $OUT/learn$dev.log 2>&1
  rc=$?
  echo "learn $dev rc=$rc wall $(python3 -c "print(round($(date +%s.%N) - $s, 1))") s"; tail -2 $OUT/learn$dev.log
done
fi
python3 - "$OUT" <<'PY'
import json, sys, os
o = sys.argv[1]
for f in ("train_cuda.json", "train_cpu.json"):
    p = os.path.join(o, f)
    if os.path.exists(p) and os.path.getsize(p) > 0:
        for r in json.load(open(p)):
            ph = r.get("phases_ms")
            ph = "" if not ph else " phases " + " / ".join(f"{v:.1f}" for v in ph)
            print(f"{r['device']:4s} {r['step']:8s} {r['seconds']:.0f}s batch {r.get('batch', 1)} median {r['median_ms']:8.2f} ms p10 {r['p10_ms']:8.2f} p90 {r['p90_ms']:8.2f}{ph}")
PY
echo "total $(( $(date +%s) - t0 )) s"
