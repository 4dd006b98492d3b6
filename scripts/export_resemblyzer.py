"""Exports Resemblyzer's trained GE2E speaker encoder (resemblyzer==0.1.4 on PyPI,
Apache-2.0) to ONNX: a 3-layer LSTM (hidden 256) over 40 mel bands, a linear layer, ReLU and
L2 normalisation; mel frames [1, T, 40] (10 ms hop, 100 frames/s) in, a 256-d embedding out.

usage: python scripts/export_resemblyzer.py [--out target/real-corpus/resemblyzer.onnx]

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="target/real-corpus/resemblyzer.onnx")
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
    torch.onnx.export(m, (torch.randn(1, 160, 40).abs(),), tmp, dynamo=False, opset_version=17,
                      input_names=["mels"], output_names=["embedding"],
                      dynamic_axes={"mels": {1: "T"}})
    os.replace(tmp, a.out)
    print(a.out)


if __name__ == "__main__":
    main()
