"""The open-world corpus table: every export in fixtures/corpus (and our own fixtures/models)
loaded, analysed and pruned by 30% of its MACs (`--scope all`), as a Markdown table.

usage: python scripts/corpus_table.py [--bin target/release/sepprune] [--out FILE]
                                     [--extra DIR] [--no-bench]

Columns: params (sepprune's count; PyTorch's from the manifest: those the forward reads, and
all), MACs at the length counted,
prunable / frozen channel groups (prunable ones by kind: channels, features, hidden units,
head dims, heads), the share of MACs in nodes that prunable groups change (`inspect`'s
`coverage`), the MACs reduction `prune --ratio 0.3 --scope all`
reached, its verification (slim == gate graph under the same masks, in ORT), the same with
random masks in tract (`n/a` where tract cannot run the original), onnx.checker on the slim
model, whether the slim model runs in ORT at 0.5, 1 and 2 s (or its fixed shape), and the
ORT CPU speed-up at 1 s (one thread, median of 20 interleaved runs; tiny models are noisy).
`--extra DIR` adds the .onnx files of DIR (scripts/fetch_real_corpus.sh fetches the real
trained ones). Needs onnx and onnxruntime (pip); never a dependency of the tool.
"""
import argparse
import glob
import json
import os
import re
import subprocess
import tempfile

import numpy as np
import onnx
import onnxruntime as ort


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RUST_BACKTRACE": "0"})
    return p.returncode, p.stdout, p.stderr


def error_line(stderr):
    stderr = re.sub(r"\x1b\[[0-9;]*m", "", stderr)
    if "Status Message:" in stderr:
        stderr = stderr.split("Status Message:")[1]
    lines = [l.strip() for l in stderr.splitlines() if l.strip() and "[E:onnxruntime" not in l]
    caused = [l for l in lines if not l.startswith(("Error", "Caused by", "0:", "1:"))]
    msg = caused[0] if caused else (lines[-1] if lines else "?")
    return msg.replace("|", "/")[:140]


def runs_at_lengths(path, manifest_inputs):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ok = []
    for sec in (0.5, 1.0, 2.0):
        feeds = {}
        for i in s.get_inputs():
            spec = next((m for m in manifest_inputs if m["name"] == i.name), None)
            rate = (spec or {}).get("rate") or 16000
            shape = [d if isinstance(d, int) else int(sec * rate) for d in i.shape]
            if "int64" in i.type:
                t = next(d for d in feeds[s.get_inputs()[0].name].shape if d > 1)
                feeds[i.name] = np.full(shape, t, dtype=np.int64)
            else:
                feeds[i.name] = (np.random.default_rng(0).standard_normal(shape) * 0.1).astype(np.float32)
        try:
            s.run(None, feeds)
            ok.append(True)
        except Exception:
            ok.append(False)
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/sepprune")
    ap.add_argument("--out", default="")
    ap.add_argument("--extra", default="")
    ap.add_argument("--no-bench", action="store_true")
    a = ap.parse_args()
    manifest = json.load(open("fixtures/corpus/manifest.json"))
    files = [(f"fixtures/corpus/{k}", v) for k, v in manifest.items()]
    ours = json.load(open("fixtures/models/manifest.json"))  # make_fixtures.py --count-only
    files += [(p, {"library": "sepprune fixtures", "inputs": [], **ours.get(os.path.basename(p), {})})
              for p in sorted(glob.glob("fixtures/models/*.onnx"))]
    if a.extra:
        registry = json.load(open("fixtures/registry.json"))  # PyTorch's counts
        files += [(p, {"library": "registry (trained)", "params": None, "inputs": [],
                       **registry.get(os.path.basename(p), {})})
                  for p in sorted(glob.glob(os.path.join(a.extra, "*.onnx")))]
    rows, n_ok, n_load = [], 0, 0
    tmp = tempfile.mkdtemp()
    for path, meta in files:
        name = os.path.basename(path)
        rc, out, err = run([a.bin, "inspect", path, "--json"])
        if rc != 0:
            rows.append(f"| {name} | {meta['library']} | no: {error_line(err)} | | | | | | | | | | |")
            continue
        n_load += 1
        ins = json.loads(out)
        live = [g for g in ins["groups"] if not g.get("frozen")]
        prunable, frozen = len(live), len(ins["groups"]) - len(live)
        kinds = {}
        for g in live:
            kinds[g.get("kind", "channels")] = kinds.get(g.get("kind", "channels"), 0) + 1
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        cov = f"{100 * ins.get('coverage', 0):.0f}%"
        pt, fwd = meta.get("params"), meta.get("params_forward")
        params = f"{ins['params']}" + (f" / {fwd} / {pt}" if pt else "")
        slim = os.path.join(tmp, name)
        rc, out, err = run([a.bin, "prune", path, "-o", slim, "--ratio", "0.3", "--scope", "all",
                            "--json"])
        if rc != 0:
            rows.append(f"| {name} | {meta['library']} | yes | {params} | {ins['macs'] / 1e6:.1f} M "
                        f"@ {ins['samples']} | {prunable} / {frozen} ({kinds}) | {cov} | no: {error_line(err)} | | | | | |")
            continue
        p = json.loads(out)
        red = 1 - p["macs_ratio"]
        exact = all(c["passed"] for c in p["check"]) if isinstance(p["check"], list) else p["check"].get("passed")
        try:
            onnx.checker.check_model(slim)
            checker = "ok"
        except Exception as e:
            checker = f"fails: {str(e)[:60]}"
        lens = runs_at_lengths(slim, meta.get("inputs", []))
        rc, out, err = run([a.bin, "check", path, "--runtime", "tract", "--trials", "2",
                            "--seconds", "1", "--json"])
        if rc == 0:
            tract = "exact"
        elif "tract:" in err:
            tract = "n/a"
        else:
            tract = "FAILS"
        speed = ""
        if not a.no_bench:
            rc, out, err = run([a.bin, "bench", path, slim, "--seconds", "1", "--runtime", "ort",
                                "--runs", "20", "--json"])
            if rc == 0:
                b = json.loads(out)
                speed = f"{b[1]['speedup']:.2f}x ({b[1]['macs_speedup']:.2f}x MACs)"
        within = abs(red - 0.3) <= 0.05
        n_ok += bool(exact and within and checker == "ok")
        rows.append(f"| {name} | {meta['library']} | yes | {params} | {ins['macs'] / 1e6:.1f} M @ "
                    f"{ins['samples']} | {prunable} / {frozen} ({kinds}) | {cov} | {red * 100:.1f}% | "
                    f"{'exact' if exact else 'FAILS'} | {tract} | {checker} | "
                    f"{'/'.join('y' if o else 'n' for o in lens)} | {speed} |")
    head = ("| file | library | loads | params (ours / PyTorch read by the forward / PyTorch all) | MACs @ samples | groups "
            "prunable / frozen (kinds) | MACs in prunable groups | MACs removed (asked 30%) | slim == gated (ORT) | (tract) | "
            "onnx.checker | runs 0.5/1/2 s | ORT CPU speed-up |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    text = (head + "\n" + "\n".join(rows) +
            f"\n\n{len(files)} files: {n_load} load, {n_ok} reach 30% +- 5 points with an exact, "
            "valid slim model.\n")
    print(text)
    if a.out:
        with open(a.out + ".tmp", "w") as f:
            f.write(text)
        os.replace(a.out + ".tmp", a.out)


if __name__ == "__main__":
    main()
