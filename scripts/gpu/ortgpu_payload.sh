#!/usr/bin/env bash
# Packs onnxruntime-gpu 1.31.1's libraries for one GPU architecture, to carry them to a GPU
# machine that cannot download (the device tool carries at most 64 MiB a call): the CUDA
# provider's cubins for other architectures are zeroed (a driver never loads them on this
# GPU), which takes the xz'd libraries from 204 MB to 60 MB for sm_90 (H100, H200).
# A transport aid for measurements, not part of the tool.
#
# Usage: scripts/gpu/ortgpu_payload.sh OUTDIR [ARCH=90] [PART_BYTES=46000000]
# Writes OUTDIR/ortgpu.tar.xz.00, .01, ...; on the GPU machine:
#   cat ortgpu.tar.xz.* | xz -dc | tar x -C DIR   (then ORT_DYLIB_PATH=DIR/onnxruntime/capi/libonnxruntime.so.1.31.1)
set -euo pipefail
out=${1:?OUTDIR}; arch=${2:-90}; part=${3:-46000000}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
  --platform manylinux_2_28_x86_64 onnxruntime-gpu==1.31.1 -d "$tmp"
(cd "$tmp" && unzip -q onnxruntime_gpu-*.whl 'onnxruntime/capi/*.so*')
capi=$tmp/onnxruntime/capi
rm -f "$capi"/onnxruntime_pybind11_state*.so "$capi"/libonnxruntime_providers_tensorrt.so
python3 - "$capi/libonnxruntime_providers_cuda.so" "$arch" <<'PY'
# .nv_fatbin: blobs (magic 0xBA55ED50, u16 version, u16 header size, u64 size) of entries
# (u16 kind: 1 PTX, 2 ELF; u16; u32 header size; u64 payload size; ...; u32 arch at +28)
import struct, sys
path, keep = sys.argv[1], int(sys.argv[2])
data = bytearray(open(path, "rb").read())
shoff, = struct.unpack_from("<Q", data, 0x28)
shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
sh = lambda i: struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
names = sh(shstrndx)[4]
for i in range(shnum):
    s = sh(i)
    if data[names + s[0]:data.index(b"\0", names + s[0])] == b".nv_fatbin":
        off, size = s[4], s[5]
p, end, zeroed, kept = off, off + size, 0, 0
while p < end:
    magic, _, hsz, fsz = struct.unpack_from("<IHHQ", data, p)
    if magic != 0xBA55ED50:
        p += 8
        continue
    q, bend = p + hsz, p + hsz + fsz
    while q < bend:
        kind, _, ehs, psz = struct.unpack_from("<HHIQ", data, q)
        arch, = struct.unpack_from("<I", data, q + 28)
        if kind == 2 and arch != keep:
            data[q + ehs:q + ehs + psz] = bytes(psz)
            zeroed += psz
        else:
            kept += psz
        q += ehs + psz
    p = bend
if kept == 0:
    sys.exit(f"no code for sm_{keep} in {path}")
open(path, "wb").write(data)
print(f"sm_{keep}: kept {kept / 1e6:.1f} MB of device code, zeroed {zeroed / 1e6:.1f} MB")
PY
mkdir -p "$out"
tar c -C "$tmp" onnxruntime | xz -6 -T0 | split -b "$part" -d - "$out/ortgpu.tar.xz."
ls -l "$out"/ortgpu.tar.xz.*
