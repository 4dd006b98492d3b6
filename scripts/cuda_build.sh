#!/usr/bin/env bash
# Builds sepprune with `--features cuda` (Candle on CUDA GPUs) on a machine without a GPU
# or a CUDA install, and fails when it does not compile or link. CI runs it after the tests.
#
# - CUDA 13 toolkit from PyPI wheels (nvcc, nvvm, headers, cudart, cuBLAS, cuRAND, NVRTC),
#   installed under target/cuda-toolkit (or $CUDA_WHEELS);
# - the driver library libcuda has no wheel: the link uses a stub with one empty function
#   per driver symbol that cudarc references (the real driver is loaded at run time);
# - kernels are compiled for $CUDA_COMPUTE_CAP (default 90: Hopper, the H100 and H200).
#
# Usage: scripts/cuda_build.sh [--release] [--lib-tests]   (the binary:
# target/{debug,release}/sepprune; --lib-tests also builds the library's unit tests, which
# hold the CPU/CUDA parity tests, and prints the test executable's path)
# Running the binary needs libcudart.so.13, libcublas.so.13, libcurand.so.10 on
# LD_LIBRARY_PATH (a PyTorch cu130 environment has them in nvidia/cu13/lib).
set -euo pipefail
cd "$(dirname "$0")/.."
flags=(--locked --features cuda --bins)
lib_tests=0
for a in "$@"; do
  case $a in
    --release) flags+=(--release) ;;
    --lib-tests) lib_tests=1 ;;
    *) echo "cuda_build: unknown argument $a"; exit 2 ;;
  esac
done
wheels=${CUDA_WHEELS:-target/cuda-toolkit}
if [ ! -x "$wheels/nvidia/cu13/bin/nvcc" ]; then
  echo "cuda_build: installing the CUDA 13 toolkit wheels into $wheels"
  python3 -m pip install --quiet --disable-pip-version-check --target "$wheels" \
    "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cublas==13.*" \
    "nvidia-curand==10.*" "nvidia-cuda-nvrtc==13.0.*"
fi
tk=$(cd "$wheels/nvidia/cu13" && pwd)
# the linker wants unversioned names
for lib in cudart cublas cublasLt curand nvrtc; do
  so=$(cd "$tk/lib" && ls "lib$lib.so."* | grep -v builtins | sort | head -1)
  ln -sf "$so" "$tk/lib/lib$lib.so"
done
export PATH="$tk/bin:$tk/nvvm/bin:$PATH"
export CUDA_ROOT="$tk" CUDA_PATH="$tk" CUDA_HOME="$tk"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export NVCC_PREPEND_FLAGS="-I$tk/include"
stub=$(mkdir -p target/cuda-stub && cd target/cuda-stub && pwd)
export LIBRARY_PATH="$stub:$tk/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"

make_stub() {
  local rlib
  rlib=$(ls -t target/*/deps/libcudarc-*.rlib 2>/dev/null | head -1)
  [ -n "$rlib" ] || { echo "cuda_build: cudarc was not compiled"; return 1; }
  nm -u "$rlib" 2>/dev/null | awk '$1 == "U" && $2 ~ /^cu[A-Z]/ { print $2 }' | sort -u \
    | awk '{ printf "void %s(void) {}\n", $1 }' > "$stub/libcuda_stub.c"
  [ -s "$stub/libcuda_stub.c" ] || { echo "cuda_build: no driver symbols in $rlib"; return 1; }
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/libcuda_stub.c"
  echo "cuda_build: libcuda stub with $(wc -l < "$stub/libcuda_stub.c") driver symbols"
}

[ -f "$stub/libcuda.so" ] || make_stub 2>/dev/null || true
if ! cargo build "${flags[@]}" 2> "$stub/build.log"; then
  # the first build compiles cudarc; the stub needs its symbols, then the link is redone
  if grep -q "cannot find -lcuda\|unable to find library -lcuda\|undefined reference to \`cu" "$stub/build.log"; then
    make_stub
    cargo build "${flags[@]}"
  else
    tail -40 "$stub/build.log"
    exit 1
  fi
fi
echo "cuda_build: built ${flags[*]}"
if [ $lib_tests = 1 ]; then
  test_flags=("${flags[@]/--bins/--lib}")
  cargo test "${test_flags[@]}" --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]:
        print("cuda_build: unit tests", m["executable"])'
fi
