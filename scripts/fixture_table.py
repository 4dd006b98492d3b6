"""Issue 4's table over the fixtures (and any other models given): params, MACs, separator
coverage, `prune --ratio 0.5` (default budget: residual streams pruned only when the other
groups cannot meet it; the table says when), exactness of the slimmed model, ORT and tract
latency ratios (original / slimmed, 1 s of input, one thread), and what onnxsim's
structured pruning (its `apply_structured_pruning`, asked for 30% sparsity) removes from
the same file.

usage: python3 scripts/fixture_table.py [MODEL.onnx ...]   (default: fixtures/models/*.onnx)
Needs target/release/sepprune (cargo build --release); onnxsim is optional.
"""
import glob, json, os, subprocess, sys, tempfile

BIN = os.path.join(os.path.dirname(__file__), "..", "target", "release", "sepprune")


def run(*args):
    out = subprocess.run([BIN, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed")
    return json.loads(out.stdout)


def prune(model, out, *extra):
    r = run("prune", model, "-o", out, "--ratio", "0.5", "--force", "--json", *extra)
    err = max(t["rel_err"] for t in r["check"]["trials"])
    return r["separator_macs_ratio"], err, r["residual_streams_pruned"]


def onnxsim_sparsity(model, tmp):
    try:
        import onnx, onnxsim
    except ImportError:
        return "n/a (onnxsim missing)"
    try:
        pruned = onnxsim.apply_structured_pruning(onnx.load(model), sparsity=0.3)
        path = os.path.join(tmp, "onnxsim.onnx")
        onnx.save(pruned, path)
        a, b = run("inspect", model, "--json"), run("inspect", path, "--json")
        sep = lambda r: r["regions"]["separator"]["macs"]
        return f"{1 - b['params'] / a['params']:.1%} params, {1 - sep(b) / sep(a):.1%} sep. MACs"
    except Exception as e:  # onnxsim refusing a model is a result too
        return f"error: {str(e).splitlines()[0][:60]}"


def main():
    models = sys.argv[1:] or sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "fixtures", "models", "*.onnx")))
    print("| model | params | MACs (1 s) | coverage | sep. MACs kept at 0.5 | residual streams | rel. err | ORT speedup | tract speedup | onnxsim 30% removes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for m in models:
            name = os.path.basename(m)
            try:
                r = run("inspect", m, "--json")
                out = os.path.join(tmp, "p.onnx")
                kept, err, streams = prune(m, out)
                resid, outs = ("pruned" if streams else "whole"), [out]
                b = run("bench", m, *outs, "--seconds", "1", "--runs", "20", "--json")
                speed = lambda rt: " / ".join(
                    f"{x['speedup']:.2f}x" for o in outs for x in b if x["model"] == o and x["runtime"] == rt)
                print(f"| {name} | {r['params']:,} | {r['macs'] / 1e6:.1f} M | {r['separator_coverage']:.1%} "
                      f"| {kept:.1%} | {resid} | {err:.1e} | {speed('ort')} | {speed('tract')} "
                      f"| {onnxsim_sparsity(m, tmp)} |", flush=True)
            except Exception as e:
                print(f"| {name} | error: {e} |", flush=True)


if __name__ == "__main__":
    main()
