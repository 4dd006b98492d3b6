#!/usr/bin/env python3
"""How much a separator gains from context, and where a student loses it (ground truth, ORT).

    python3 scripts/context_gap.py TEACHER.onnx [STUDENT.onnx] [SET/test]

SET/test is a split of `sepprune mix --split-by` (default out/split/test): mix/*.wav and
the clean s1/*.wav, 16 kHz, 4 s. For every third 4 s file, the 0.5 s chunks at 1.0, 1.5,
2.0, 2.5 and 3.0 s (the middle of the file) are scored (SI-SDRi, dB, mean over chunks)
when each model runs:
- on the chunk alone (what a 0.5 s training crop shows),
- on the chunk with 0.125, 0.25, 0.5 and 0.75 s of context on each side, the centre kept,
- on the whole file (the use a deployment sees), the chunk cut from its output.
A model that needs context scores much lower on chunks alone than inside the file.
"""
import glob
import sys

import numpy as np
import onnxruntime as ort
import soundfile as sf

CHUNK = 8000
CONTEXTS = [0, 2000, 4000, 8000, 12000]


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(path, so)


def run(sess, x):
    y = sess.run(None, {sess.get_inputs()[0].name: x[None, None, :].astype(np.float32)})[0]
    return y.reshape(-1, len(x))[0]


def si_sdr(e, r):
    e, r = e - e.mean(), r - r.mean()
    t = np.dot(e, r) / (np.dot(r, r) + 1e-12) * r
    n = e - t
    return 10 * np.log10((t @ t + 1e-12) / (n @ n + 1e-12))


def main():
    models = [a for a in sys.argv[1:] if a.endswith(".onnx")]
    rest = [a for a in sys.argv[1:] if not a.endswith(".onnx")]
    split = rest[0] if rest else "out/split/test"
    files = sorted(glob.glob(f"{split}/mix/*.wav"))[1::3]
    for path in models:
        sess = session(path)
        acc = {c: [] for c in CONTEXTS}
        whole = []
        for f in files:
            x, _ = sf.read(f, dtype="float32")
            s, _ = sf.read(f.replace("/mix/", "/s1/"), dtype="float32")
            if len(x) < 64000:
                continue
            y = run(sess, x)
            for st in range(16000, 48000, CHUNK):
                sl = slice(st, st + CHUNK)
                base = si_sdr(x[sl], s[sl])
                whole.append(si_sdr(y[sl], s[sl]) - base)
                for c in CONTEXTS:
                    yc = run(sess, x[st - c:st + CHUNK + c])[c:c + CHUNK]
                    acc[c].append(si_sdr(yc, s[sl]) - base)
        print(f"{path}: {len(whole)} chunks of 0.5 s, SI-SDRi (dB)")
        for c in CONTEXTS:
            print(f"  context {c / 16000:.3f} s each side: {np.mean(acc[c]):.2f}")
        print(f"  inside the whole file:      {np.mean(whole):.2f}")


if __name__ == "__main__":
    main()
