"""Exports Resemblyzer's trained GE2E speaker encoder (resemblyzer==0.1.4 on PyPI,
Apache-2.0) to ONNX: a 3-layer LSTM (hidden 256) over 40 mel bands, a linear layer, ReLU and
L2 normalisation; mel frames [1, T, 40] (10 ms hop, 100 frames/s) in, a 256-d embedding out.

usage: python scripts/export_resemblyzer.py [--out target/real-corpus/resemblyzer.onnx] [--waveform]

--waveform puts the 40-band mel front end inside the graph, so the model takes 16 kHz audio
[1, T]: a 400-tap periodic-Hann DFT as two strided Conv1d (real and imaginary parts, 201 bins,
hop 160, no centring pad), the power spectrum, and the slaney mel filterbank as a MatMul
(the front end of scripts/sv_eer.py without its centring pad).

Needs torch (fixture generation only; never a dependency of the tool). The network is
rebuilt here as in resemblyzer/voice_encoder.py (whose package also imports webrtcvad and
librosa for its front end) and loaded from the package's pretrained.pt. TorchScript at
opset 17, the frame axis dynamic; the mel front end stays outside the graph.
"""
import argparse
import glob
import io
import os
import subprocess
import sys
import tempfile
import zipfile

import torch
from torch import nn


class VoiceEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(40, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, 256)
        self.relu = nn.ReLU()

    def forward(self, mels):
        _, (hidden, _) = self.lstm(mels)
        e = self.relu(self.linear(hidden[-1]))
        return e / torch.norm(e, dim=1, keepdim=True)


class MelFrontEnd(nn.Module):
    """[1, T] audio at 16 kHz -> [1, frames, 40] mel power (25 ms window, 10 ms hop)."""

    def __init__(self, n_fft=400, hop=160, n_mels=40):
        super().__init__()
        import torchaudio
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
        win = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
        ang = 2 * torch.pi * k * n / n_fft
        self.re = nn.Conv1d(1, n_fft // 2 + 1, n_fft, stride=hop, bias=False)
        self.im = nn.Conv1d(1, n_fft // 2 + 1, n_fft, stride=hop, bias=False)
        self.re.weight.data = (torch.cos(ang) * win)[:, None, :].float()
        self.im.weight.data = (-torch.sin(ang) * win)[:, None, :].float()
        fb = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, 0.0, 8000.0, n_mels, 16000,
                                                   norm="slaney", mel_scale="slaney")
        self.register_buffer("fb", fb.float())  # [bins, mels]

    def forward(self, wav):
        x = wav[:, None, :]
        power = self.re(x) ** 2 + self.im(x) ** 2  # [1, bins, frames]
        return torch.matmul(power.transpose(1, 2), self.fb)  # [1, frames, mels]


class WaveformEncoder(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.front = MelFrontEnd()
        self.encoder = encoder

    def forward(self, wav):
        return self.encoder(self.front(wav))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="target/real-corpus/resemblyzer.onnx")
    ap.add_argument("--waveform", action="store_true",
                    help="the mel front end inside the graph: 16 kHz audio [1, T] in")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "resemblyzer==0.1.4", "-d", tmp], check=True)
        w = glob.glob(os.path.join(tmp, "*.whl"))[0]
        data = zipfile.ZipFile(w).read("resemblyzer/pretrained.pt")
    state = torch.load(io.BytesIO(data), map_location="cpu")["model_state"]
    m = VoiceEncoder().eval()
    missing, unexpected = m.load_state_dict(state, strict=False)
    assert not missing, missing
    print(f"Resemblyzer: {sum(p.numel() for p in m.parameters())} params "
          f"(ignored from the checkpoint: {unexpected})")
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    tmp = a.out + ".part"
    if a.waveform:
        torch.onnx.export(WaveformEncoder(m).eval(), (torch.randn(1, 16000),), tmp, dynamo=False,
                          opset_version=17, input_names=["wav"], output_names=["embedding"],
                          dynamic_axes={"wav": {1: "T"}})
    else:
        torch.onnx.export(m, (torch.randn(1, 160, 40).abs(),), tmp, dynamo=False,
                          opset_version=17, input_names=["mels"], output_names=["embedding"],
                          dynamic_axes={"mels": {1: "T"}})
    os.replace(tmp, a.out)
    print(a.out)


if __name__ == "__main__":
    main()
