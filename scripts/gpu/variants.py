#!/usr/bin/env python3
"""Graph variants of a Conv-TasNet-style ONNX export, for measuring what a GPU runtime
rewards (fewer kernels, fewer blocks) before building it into sepprune. Measurement
scaffolding only: quality is not preserved by `--drop`, and the block naming it relies on
(`TCN.{b}.res_conv`, `TCN.{b}.skip_conv`) is Asteroid's.

    variants.py IN.onnx OUT.onnx [--instance-norm] [--drop 0,2,4]

--instance-norm  rewrites each decomposed global layer norm (ReduceMean over [1, 2], Sub,
                 Mul, ReduceMean, Add eps, Sqrt, Div, then Transpose, Mul gamma, Add beta,
                 Transpose) as Reshape [0, 1, -1] -> InstanceNormalization -> Reshape
                 [0, C, -1] -> Mul gamma[C, 1] -> Add beta[C, 1]: the same function in 5
                 nodes instead of 11.
--drop B,...     removes residual blocks B (their residual and skip contributions).
"""
import argparse
import numpy as np
import onnx
from onnx import helper, numpy_helper


def consumers(g):
    c = {}
    for n in g.node:
        for i in n.input:
            c.setdefault(i, []).append(n)
    return c


def instance_norm(m):
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    cons = consumers(g)
    remove, add_after = set(), {}
    k = 0
    for rm in list(g.node):
        if rm.op_type != "ReduceMean":
            continue
        axes = [a for a in rm.attribute if a.name == "axes"]
        if not axes or list(axes[0].ints) != [1, 2]:
            continue
        x = rm.input[0]
        subs = [n for n in cons.get(rm.output[0], []) if n.op_type == "Sub"]
        if len(subs) != 1:
            continue
        sub = subs[0]
        d = sub.output[0]
        dc = cons[d]
        mul = next((n for n in dc if n.op_type == "Mul" and n.input[0] == n.input[1] == d), None)
        div = next((n for n in dc if n.op_type == "Div"), None)
        if mul is None or div is None:
            continue
        rm2 = cons[mul.output[0]][0]
        addeps = cons[rm2.output[0]][0]
        sqrt = cons[addeps.output[0]][0]
        eps_name = addeps.input[1]
        eps = float(numpy_helper.to_array(inits[eps_name]).reshape(-1)[0]) if eps_name in inits else None
        if eps is None:
            c = prod.get(eps_name)
            eps = float(numpy_helper.to_array(c.attribute[0].t).reshape(-1)[0])
        t1 = cons[div.output[0]]
        if len(t1) != 1 or t1[0].op_type != "Transpose":
            continue
        t1 = t1[0]
        gm = cons[t1.output[0]][0]
        bt = cons[gm.output[0]][0]
        t2 = cons[bt.output[0]][0]
        gamma = [i for i in gm.input if i in inits][0]
        beta = [i for i in bt.input if i in inits][0]
        gv = numpy_helper.to_array(inits[gamma]).reshape(-1, 1).astype(np.float32)
        bv = numpy_helper.to_array(inits[beta]).reshape(-1, 1).astype(np.float32)
        C = gv.shape[0]
        p = f"_in{k}"
        k += 1
        new_inits = [
            numpy_helper.from_array(np.array([0, 1, -1], np.int64), p + "_s1"),
            numpy_helper.from_array(np.array([0, C, -1], np.int64), p + "_s2"),
            numpy_helper.from_array(np.ones(1, np.float32), p + "_one"),
            numpy_helper.from_array(np.zeros(1, np.float32), p + "_zero"),
            numpy_helper.from_array(gv, p + "_gamma"),
            numpy_helper.from_array(bv, p + "_beta"),
        ]
        g.initializer.extend(new_inits)
        nodes = [
            helper.make_node("Reshape", [x, p + "_s1"], [p + "_r1"]),
            helper.make_node("InstanceNormalization", [p + "_r1", p + "_one", p + "_zero"], [p + "_n"], epsilon=eps),
            helper.make_node("Reshape", [p + "_n", p + "_s2"], [p + "_r2"]),
            helper.make_node("Mul", [p + "_r2", p + "_gamma"], [p + "_g"]),
            helper.make_node("Add", [p + "_g", p + "_beta"], [t2.output[0]]),
        ]
        for n in (rm, sub, mul, rm2, addeps, sqrt, div, t1, gm, bt, t2):
            remove.add(id(n))
        add_after[id(t2)] = nodes
    out = []
    for n in g.node:
        if id(n) in add_after:
            out.extend(add_after[id(n)])
        if id(n) not in remove:
            out.append(n)
    del g.node[:]
    g.node.extend(out)
    print(f"instance-norm: {k} norms rewritten")


def drop_blocks(m, blocks):
    g = m.graph
    rename = {}
    keep = []
    for n in g.node:
        if n.op_type == "Add":
            for b in blocks:
                for part in ("res_conv", "skip_conv"):
                    src = f"/masker/TCN.{b}/{part}/Conv_output_0"
                    if src in n.input:
                        other = [i for i in n.input if i != src][0]
                        rename[n.output[0]] = other
        keep.append(n)
    def resolve(v):
        while v in rename:
            v = rename[v]
        return v
    for n in keep:
        for i, v in enumerate(n.input):
            n.input[i] = resolve(v)
    for o in g.output:
        o.name = resolve(o.name)
    # dead-code elimination
    live = {o.name for o in g.output}
    alive = []
    for n in reversed(keep):
        if any(o in live for o in n.output):
            alive.append(n)
            live.update(n.input)
    del g.node[:]
    g.node.extend(reversed(alive))
    used = set(live)
    inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)
    print(f"drop: blocks {blocks} removed, {len(alive)} nodes left")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("--instance-norm", action="store_true")
    ap.add_argument("--drop", default="")
    a = ap.parse_args()
    m = onnx.load(a.inp)
    if a.drop:
        drop_blocks(m, [int(b) for b in a.drop.split(",")])
    if a.instance_norm:
        instance_norm(m)
    del m.graph.value_info[:]
    used = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
    inits = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    onnx.checker.check_model(m)
    onnx.save(m, a.out)


if __name__ == "__main__":
    main()
