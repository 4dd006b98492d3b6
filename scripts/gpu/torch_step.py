#!/usr/bin/env python3
"""PyTorch eager training step of a Conv-TasNet shaped like the real model in
../shared/models (asteroid ConvTasNet: 512 filters of 32 taps, stride 16; bottleneck 128,
hidden 512, skip 128; 3 repeats of 8 blocks; one source; scalar PReLU slopes), the baseline
for `sepprune bench --train --cuda` (issue 23). A step: forward, negative SI-SDR, backward,
Adam (torch's default implementation, foreach on CUDA). gLN is written as asteroid writes it
(elementary ops) and, as a second variant, with F.group_norm(x, 1) (one fused kernel).

    python3 scripts/gpu/torch_step.py [--device cuda] [--batch 1,8] [--seconds 1] [--runs 30]
Prints one JSON line per (device, gLN form, batch): median, p10, p90 ms.
"""
import argparse, json, time
import torch
import torch.nn as nn
import torch.nn.functional as F


class GLN(nn.Module):
    def __init__(self, c, fused):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(c))
        self.beta = nn.Parameter(torch.zeros(c))
        self.fused = fused

    def forward(self, x):  # [B, C, T]
        if self.fused:
            return F.group_norm(x, 1, self.gamma, self.beta, 1e-8)
        mean = x.mean(dim=(1, 2), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(1, 2), keepdim=True)
        y = (x - mean) / (var + 1e-8).sqrt()
        return (self.gamma * y.transpose(1, -1) + self.beta).transpose(1, -1)


class Block(nn.Module):
    def __init__(self, dil, fused):
        super().__init__()
        self.shared = nn.Sequential(
            nn.Conv1d(128, 512, 1), nn.PReLU(), GLN(512, fused),
            nn.Conv1d(512, 512, 3, padding=dil, dilation=dil, groups=512),
            nn.PReLU(), GLN(512, fused))
        self.res = nn.Conv1d(512, 128, 1)
        self.skip = nn.Conv1d(512, 128, 1)

    def forward(self, x):
        h = self.shared(x)
        return self.res(h), self.skip(h)


class ConvTasNet(nn.Module):
    def __init__(self, fused):
        super().__init__()
        self.enc = nn.Conv1d(1, 512, 32, stride=16, bias=False)
        self.norm = GLN(512, fused)
        self.bottleneck = nn.Conv1d(512, 128, 1)
        self.blocks = nn.ModuleList(Block(2 ** x, fused) for _ in range(3) for x in range(8))
        self.out = nn.Sequential(nn.PReLU(), nn.Conv1d(128, 512, 1))
        self.dec = nn.ConvTranspose1d(512, 1, 32, stride=16, bias=False)

    def forward(self, wav):  # [B, 1, T]
        w = F.relu(self.enc(wav))
        x = self.bottleneck(self.norm(w))
        skip = 0
        for b in self.blocks:
            res, s = b(x)
            x = x + res
            skip = skip + s
        mask = F.relu(self.out(skip))
        return self.dec(w * mask)


def neg_si_sdr(est, ref):
    est, ref = est.flatten(1), ref.flatten(1)
    n = min(est.shape[1], ref.shape[1])
    est, ref = est[:, :n], ref[:, :n]
    a = (est * ref).sum(1, keepdim=True) / (ref * ref).sum(1, keepdim=True).clamp_min(1e-8)
    t = a * ref
    return -(10 * torch.log10((t * t).sum(1) / ((est - t) ** 2).sum(1).clamp_min(1e-8))).mean()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    a = p.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    for fused in (False, True):
        for b in map(int, a.batch.split(",")):
            m = ConvTasNet(fused).to(dev)
            opt = torch.optim.Adam(m.parameters(), lr=1e-5)
            n = int(a.seconds * 16000)
            x = torch.randn(b, 1, n, device=dev)
            ref = 0.8 * x

            def step():
                opt.zero_grad(set_to_none=True)
                loss = neg_si_sdr(m(x), ref)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(m.parameters(), 5.0)
                opt.step()
                return loss

            sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
            for _ in range(a.warmup):
                step()
            sync()
            ms = []
            for _ in range(a.runs):
                t = time.perf_counter()
                step().item()
                sync()
                ms.append((time.perf_counter() - t) * 1e3)
            ms.sort()
            q = lambda f: ms[round((len(ms) - 1) * f)]
            params = sum(p.numel() for p in m.parameters())
            print(json.dumps(dict(impl="pytorch-eager", device=name, gln="group_norm" if fused else "asteroid",
                                  batch=b, seconds=a.seconds, params=params,
                                  median_ms=q(0.5), p10_ms=q(0.1), p90_ms=q(0.9))), flush=True)


if __name__ == "__main__":
    main()
