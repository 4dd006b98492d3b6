#!/usr/bin/env python3
"""How good a teacher's estimates of a mixture's sources are, run in context or on crops (ORT).

    python3 scripts/estimate_context.py TEACHER.onnx [SET/train] [EVERY]

SET/train is a split of `sepprune mix --split-by` (default out/split/train): mix/*.wav and
the clean s1/*.wav, 16 kHz. For every EVERY-th file (default 8), the teacher's speech
estimate is made as label-free remixing makes it (`src/learn/augment.rs`, `estimate`):
- on 0.5 s windows, each window's output rescaled to the window by least squares (the
  estimates before 2026-11-27),
- on the whole mixture, zero-padded to a multiple of 0.5 s, rescaled once (now).
Printed (dB, mean over files): the mixture's SI-SDR against the clean speech, each
estimate's SI-SDR against it, and the SNR of each leftover noise (mixture minus estimate)
against the true noise (mixture minus clean speech). The references are read only to
score; the tool never sees them label-free.
"""
import glob
import sys

import numpy as np
import soundfile as sf

from context_gap import run, session, si_sdr

CROP = 8000


def align(y, x):
    """`y` at the gain that best explains `x` (least squares)."""
    g = np.dot(y, y)
    return y * (np.dot(y, x) / g if g > 0 else 0.0)


def snr(e, r):
    return 10 * np.log10(np.dot(r, r) / (np.dot(e - r, e - r) + 1e-12))


def windowed(sess, x):
    out = np.zeros_like(x)
    for start in range(0, len(x), CROP):
        w = x[start:start + CROP]
        y = run(sess, np.pad(w, (0, CROP - len(w))))[:len(w)]
        out[start:start + len(w)] = align(y, w)
    return out


def whole(sess, x):
    n = -(-len(x) // CROP) * CROP
    return align(run(sess, np.pad(x, (0, n - len(x))))[:len(x)], x)


def main():
    teacher = sys.argv[1]
    split = sys.argv[2] if len(sys.argv) > 2 else "out/split/train"
    every = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    sess = session(teacher)
    rows = []
    for f in sorted(glob.glob(f"{split}/mix/*.wav"))[::every]:
        x, _ = sf.read(f, dtype="float32")
        s, _ = sf.read(f.replace("/mix/", "/s1/"), dtype="float32")
        a, b = windowed(sess, x), whole(sess, x)
        rows.append([si_sdr(x, s), si_sdr(a, s), si_sdr(b, s), snr(x - a, x - s), snr(x - b, x - s)])
    m = np.mean(rows, axis=0)
    print(f"{len(rows)} mixtures of {split}")
    print(f"mixture against the clean speech:        {m[0]:6.2f} dB SI-SDR")
    print(f"estimate on 0.5 s windows / whole:       {m[1]:6.2f} / {m[2]:6.2f} dB SI-SDR")
    print(f"leftover noise, 0.5 s windows / whole:   {m[3]:6.2f} / {m[4]:6.2f} dB SNR")


if __name__ == "__main__":
    main()
