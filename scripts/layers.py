#!/usr/bin/env python3
"""Lists the imports that point down the layer list of docs/design.md section 4: a module
may use the modules listed above it (onnx, ir, ops, ...), never one listed below it.
Today's modules are placed where the design puts their contents (learn/ holds what
select/, candle/ and recover/ will; verify, bench and eval belong with runtime/).
Prints one line per file with the modules it should not import; exits 1 when any."""
import collections, glob, re, sys

LAYER = {"onnx": 0, "ir": 1, "ops": 2, "analysis": 3, "inspect": 3, "gates": 4,
         "prune": 6, "learn": 7, "audio": 9, "runtime": 10, "verify": 10, "bench": 10,
         "eval": 10, "report": 11}
bad = collections.defaultdict(set)
for f in sorted(glob.glob("src/**/*.rs", recursive=True)):
    top = f[4:].split("/")[0].removesuffix(".rs")
    if top not in LAYER:
        continue  # main, cli, pipeline: the top, which may use everything; error: shared
    for m in re.finditer(r"crate::(\w+)", open(f).read()):
        dep = m.group(1)
        if dep in LAYER and dep != top and LAYER[dep] > LAYER[top]:
            bad[f].add(dep)
for f, deps in bad.items():
    print(f, "->", ", ".join(sorted(deps)))
sys.exit(1 if bad else 0)
