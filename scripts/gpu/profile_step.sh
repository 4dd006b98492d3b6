#!/usr/bin/env bash
# Kernel time of the Candle CUDA training step by kernel name (ncu, one metric: no replay
# of the whole application), for finding what a step spends its GPU time on (issue 23).
# Needs $PAYLOAD with sepprune.xz and convtasnet.onnx.xz; BATCH (8). Writes $OUT/profile.txt.
set -uo pipefail
P=${PAYLOAD:?}; W=/tmp/w; mkdir -p $W
xz -dc $P/sepprune.xz > $W/sepprune && chmod +x $W/sepprune
xz -dc $P/convtasnet.onnx.xz > $W/convtasnet.onnx
SP=$(python3 -c "import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))")
export LD_LIBRARY_PATH=$(ls -d $SP/nvidia/*/lib $SP/nvidia/cu13/lib 2>/dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}
uname -r; nvidia-smi --query-gpu=name --format=csv,noheader
cmd="$W/sepprune bench --train --cuda $W/convtasnet.onnx --seconds 1 --batch ${BATCH:-8} --runs 1 --warmup 0"
timeout 300 ncu --clock-control none --metrics gpu__time_duration.sum --csv --log-file $W/ncu.csv $cmd > $W/bench.txt 2>&1
echo "ncu rc=$?"; tail -3 $W/bench.txt
python3 - $W/ncu.csv > $OUT/profile.txt <<'PY'
import csv, sys, collections
rows = [r for r in csv.DictReader(l for l in open(sys.argv[1]) if l.startswith('"'))]
t = collections.Counter(); n = collections.Counter()
for r in rows:
    if r.get("Metric Name") == "gpu__time_duration.sum":
        v = float(r["Metric Value"].replace(",", ""))
        unit = r.get("Metric Unit", "ns")
        v *= {"ns": 1, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6}.get(unit, 1)
        k = r["Kernel Name"][:90]
        t[k] += v; n[k] += 1
tot = sum(t.values())
print(f"# ncu gpu__time_duration.sum by kernel: {sys.argv[1]}\nunit ns total {tot:.0f} kernels {sum(n.values())}")
for k, v in t.most_common(40):
    print(f"{100*v/tot:5.1f}% {v:12.0f} x {n[k]:5d} {k}")
PY
cat $OUT/profile.txt
