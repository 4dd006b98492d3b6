#!/usr/bin/env python3
"""Where a slim student loses against its teacher, noise by noise (ground-truth check, ORT).

    python3 scripts/per_noise.py TEACHER.onnx STUDENT.onnx SET/test [NOISE_DIR]

Each held-out utterance of SET/test (the clean s1/ reference of its *_snr0.wav mixture) is
mixed with each recording of NOISE_DIR (default ../shared/data/noise) at -5, 0, 5 and 10 dB,
three times each (seeded random offsets in the noise). Prints, per noise, the teacher's and the student's
mean SI-SDRi (dB) and the student's SI-SDR against the teacher's output ("agreement").
"""
import glob
import os
import struct
import sys

import numpy as np
import onnxruntime as ort


def read_wav(path):
    """Mono WAV (PCM16, float32 or float64, WAVE_FORMAT_EXTENSIBLE too) as float32."""
    b = open(path, "rb").read()
    i, bits = 12, 16
    while i + 8 <= len(b):
        cid, size = b[i : i + 4], struct.unpack("<I", b[i + 4 : i + 8])[0]
        if cid == b"fmt ":
            bits = struct.unpack("<H", b[i + 22 : i + 24])[0]
        if cid == b"data":
            d = b[i + 8 : i + 8 + size]
            dtype = {16: "<i2", 32: "<f4", 64: "<f8"}[bits]
            x = np.frombuffer(d, dtype).astype(np.float32)
            return x / 32768 if bits == 16 else x
        i += 8 + size + (size & 1)
    raise ValueError(f"{path}: no data chunk")


def si_sdr(est, ref):
    est, ref = est - est.mean(), ref - ref.mean()
    target = (est @ ref) / (ref @ ref) * ref
    return 10 * np.log10((target @ target) / ((est - target) @ (est - target)))


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    teacher_path, student_path, test = sys.argv[1:4]
    noise_dir = sys.argv[4] if len(sys.argv) > 4 else "../shared/data/noise"
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    models = [ort.InferenceSession(p, so) for p in (teacher_path, student_path)]

    def run(m, x):
        y = m.run(None, {m.get_inputs()[0].name: x[None, None, :]})[0]
        return y.reshape(-1)[: len(x)]

    speech = [read_wav(p) for p in sorted(glob.glob(os.path.join(test, "s1", "*_snr0.wav")))]
    if not speech:
        sys.exit(f"{test}/s1: no *_snr0.wav references")
    rng = np.random.default_rng(0)
    for noise_path in sorted(glob.glob(os.path.join(noise_dir, "*.wav"))):
        noise = read_wav(noise_path)
        rows = []
        for s in speech:
            for snr in (-5, 0, 5, 10) * 3:
                start = rng.integers(0, max(1, len(noise) - len(s)))
                n = np.resize(noise[start : start + len(s)], len(s))
                g = np.sqrt((s @ s) / (n @ n) / 10 ** (snr / 10))
                x = (s + g * n).astype(np.float32)
                t, y = (run(m, x) for m in models)
                base = si_sdr(x, s)
                rows.append((si_sdr(t, s) - base, si_sdr(y, s) - base, si_sdr(y, t)))
        t, y, agree = np.mean(rows, axis=0)
        print(
            f"{os.path.basename(noise_path)}: teacher SI-SDRi {t:.2f} dB, "
            f"student {y:.2f} dB, agreement {agree:.2f} dB ({len(rows)} mixtures)"
        )


if __name__ == "__main__":
    main()
