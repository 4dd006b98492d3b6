"""Speaker-verification EER of mel-in speaker encoders (ground truth for issue 22, in Python;
never a dependency of the tool): every same-speaker and different-speaker pair of a
directory of speaker folders (../shared/data/librispeech/test-other: 5 speakers x 10
utterances), cosine scores of the embeddings, the equal error rate.

usage: python scripts/sv_eer.py DATA MODEL.onnx [MODEL.onnx ...]

A model whose input has rank 2 takes the waveform [1, T] itself (its front end is in the
graph: scripts/export_resemblyzer.py --waveform); the others get these mel frames [1, T, 40].
Front end: Resemblyzer's, 40 mel bands (slaney), 25 ms window, 10 ms hop, power spectrum, at
16 kHz (its volume normalisation and VAD trimming are left out: the same for every model).
Needs onnxruntime, torch/torchaudio and soundfile.
"""
import glob
import os
import sys

import numpy as np
import onnxruntime as ort
import soundfile as sf
import torch
import torchaudio


def mels(path):
    wav, rate = sf.read(path, dtype="float32")
    assert rate == 16000, (path, rate)
    m = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=400, hop_length=160,
                                             n_mels=40, power=2.0, norm="slaney",
                                             mel_scale="slaney")(torch.from_numpy(wav))
    return m.T.numpy()[None].astype(np.float32)  # [1, T, 40]


def eer(scores, labels):
    order = np.argsort(-scores)
    labels = labels[order]
    pos, neg = labels.sum(), (1 - labels).sum()
    fnr = 1 - np.cumsum(labels) / pos  # same-speaker pairs rejected
    fpr = np.cumsum(1 - labels) / neg  # different-speaker pairs accepted
    i = np.argmin(np.abs(fnr - fpr))
    return float((fnr[i] + fpr[i]) / 2)


def main():
    data, models = sys.argv[1], sys.argv[2:]
    files = sorted(glob.glob(os.path.join(data, "*", "*.flac")))
    spk = [os.path.basename(os.path.dirname(f)) for f in files]
    feats = [mels(f) for f in files]
    waves = [sf.read(f, dtype="float32")[0][None] for f in files]
    for mpath in models:
        s = ort.InferenceSession(mpath, providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        xs = waves if len(s.get_inputs()[0].shape) == 2 else feats
        emb = np.stack([s.run(None, {name: x})[0][0] for x in xs])
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        scores, labels = [], []
        for i in range(len(files)):
            for j in range(i + 1, len(files)):
                scores.append(float(emb[i] @ emb[j]))
                labels.append(int(spk[i] == spk[j]))
        e = eer(np.array(scores), np.array(labels))
        print(f"{mpath}: EER {100 * e:.2f}% over {len(scores)} trials "
              f"({sum(labels)} same-speaker), {len(set(spk))} speakers")


if __name__ == "__main__":
    main()
