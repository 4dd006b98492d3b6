#!/usr/bin/env python3
"""Ground truth for `sepprune bench --runtime ort-cuda`: the same models timed through
onnxruntime-gpu's Python API with IO binding (input in device memory, output left there),
batch 1, HEURISTIC cuDNN search, TF32 off, median of N runs after warm-up, interleaved.

    ort_py_bench.py SECONDS RUNS MODEL...
"""
import sys, time
import numpy as np
import onnxruntime as ort

sec, runs, models = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
ort.preload_dlls()
opts = {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"}
x = np.random.default_rng(0).standard_normal((1, 1, int(sec * 16000))).astype(np.float32)
sessions = []
for m in models:
    so = ort.SessionOptions()
    s = ort.InferenceSession(m, so, providers=[("CUDAExecutionProvider", opts)])
    assert "CUDAExecutionProvider" in s.get_providers(), s.get_providers()
    b = s.io_binding()
    xd = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
    b.bind_ortvalue_input(s.get_inputs()[0].name, xd)
    b.bind_output(s.get_outputs()[0].name, "cuda")
    for _ in range(10):
        s.run_with_iobinding(b)
    sessions.append((m, s, b, xd))
times = {m: [] for m in models}
for _ in range(runs):
    for m, s, b, _ in sessions:
        t = time.perf_counter()
        s.run_with_iobinding(b)
        b.synchronize_outputs()
        times[m].append((time.perf_counter() - t) * 1e3)
base = np.median(times[models[0]])
for m in models:
    med = np.median(times[m])
    print(f"python ort-cuda {sec} s  {m:40s} median {med:7.3f} ms  speed-up {base / med:5.2f}x")
