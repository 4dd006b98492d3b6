#!/usr/bin/env bash
# One `compress` recipe over several seeds, one core per run, and the table of its results.
#
#   scripts/seeds.sh MODEL SPLIT OUTDIR "0 1 2 3 4" --target-macs 0.5 --teacher --finetune-steps 1500
#
# Runs `sepprune compress MODEL --data SPLIT -o OUTDIR/seedK.onnx --seed K ARGS...` for each
# seed K, JOBS at a time (default: the number of cores), each pinned to its own core with one
# Rayon thread: on a 2-core machine a run spread over two cores spends more CPU seconds for
# the same work (docs/recovery.md, "One core per run"). Logs go to OUTDIR/seedK.log.
# Then prints, from each run's report.json, a Markdown table: SI-SDRi on the test split
# after the refit and after fine-tuning (dB, share of the original's), the ORT speed-ups at
# 1 s and 4 s, and the CPU-minutes of the whole run (user + system, `getrusage`); then the
# mean and the sample standard deviation of the fine-tuned SI-SDRi.
#
# Env: BIN (default target/release/sepprune), JOBS, ORT_DYLIB_PATH (for `--runtime ort`).
# With TABLE_ONLY=1 it only prints the table of the runs already in OUTDIR.
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n 2,16p "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
model=$1 split=$2 out=$3 seeds=$4
shift 4
bin=${BIN:-target/release/sepprune}
jobs=${JOBS:-$(nproc)}
mkdir -p "$out"

if [ "${TABLE_ONLY:-0}" != 1 ]; then
  i=0
  for k in $seeds; do
    core=$((i % jobs))
    RAYON_NUM_THREADS=1 taskset -c "$core" "$bin" compress "$model" --data "$split" \
      -o "$out/seed$k.onnx" --seed "$k" "$@" >"$out/seed$k.log" 2>&1 &
    i=$((i + 1))
    if [ $((i % jobs)) -eq 0 ]; then wait; fi
  done
  wait
fi

python3 - "$out" $seeds <<'EOF'
import json, statistics, sys
out, seeds = sys.argv[1], sys.argv[2:]
print("| seed | refit only | fine-tuned (kept) | ORT 1 s / 4 s | CPU-minutes |")
print("|---|---|---|---|---|")
tuned = []
for k in seeds:
    path = f"{out}/seed{k}.onnx.report/report.json"
    try:
        r = json.load(open(path))
    except OSError:
        print(f"| {k} | no report ({path}; see {out}/seed{k}.log) | | | |")
        continue
    e = r["eval"]
    orig = e["original"]["si_sdri"]
    cell = lambda v: "" if v is None else f"{v['si_sdri']:.2f} ({100 * v['si_sdri'] / orig:.0f}%)"
    speed = {row["seconds"]: row["speedup"] for row in r["bench"]
             if row["model"] == "compressed" and row["runtime"] == "ort"}
    cpu = sum(t[2] for t in r["timings"]) / 60
    if e.get("finetuned"):
        tuned.append(e["finetuned"]["si_sdri"])
    sp = " / ".join(f"{speed[s]:.2f}x" for s in sorted(speed))
    print(f"| {k} | {cell(e.get('refitted'))} | {cell(e.get('finetuned'))} | {sp} | {cpu:.1f} |")
if len(tuned) > 1:
    m = statistics.mean(tuned)
    print(f"\nfine-tuned SI-SDRi over {len(tuned)} seeds: mean {m:.2f} dB "
          f"({100 * m / orig:.1f}% of {orig:.2f}), sd {statistics.stdev(tuned):.2f}")
EOF
