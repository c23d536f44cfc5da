#!/usr/bin/env bash
# Build apigen-mt with the `cuda` feature on a machine that has no GPU and no CUDA installation.
#
#   scripts/build-cuda.sh [CARGO ARGS...]
#
# What it does, each step skipped when its result is already in the cache:
#   1. downloads NVIDIA's CUDA 13.0 wheels from the package index (pip download, no install):
#      nvcc, its crt headers, nvvm (cicc), the runtime headers, CCCL, cuBLAS, cuRAND, NVRTC;
#   2. unpacks them into one toolkit tree, $APIGEN_MT_CUDA (default
#      ~/.cache/apigen-mt/cuda-13.0), with the unversioned library links the linker wants;
#   3. makes a link stub for the driver library (libcuda.so, soname libcuda.so.1) from the
#      driver functions cudarc binds: the real one comes with the GPU machine's driver;
#   4. runs `cargo build --release --features cuda` for each compute capability in
#      $CUDA_COMPUTE_CAPS (default "80 90": A100-class and H100/H200-class GPUs) into
#      target/cuda-sm<CAP>/, leaving the CPU build in target/ untouched.
#
# 13.0, the first CUDA 13, because a driver refuses PTX newer than itself: candle's element-wise
# kernels are PTX that the driver compiles at load, and a 580 driver (CUDA 13.0) refuses the PTX
# of nvcc 13.4. A binary built with 13.0 runs on every CUDA 13 driver.
#
# candle's static quantized kernels are compiled for one architecture per build (SASS only),
# hence one binary per capability; pick yours with CUDA_COMPUTE_CAPS=90. The binaries need, at
# run time, the driver (580 or newer for CUDA 13) and the libraries in
# $APIGEN_MT_CUDA/nvidia/cu13/lib (LD_LIBRARY_PATH); scripts/gpu-check.sh carries them along.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${APIGEN_MT_CUDA:-$HOME/.cache/apigen-mt/cuda-13.0}
caps=${CUDA_COMPUTE_CAPS:-80 90}
wheels=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-nvrtc==13.0.88
    nvidia-cuda-cccl==13.0.85
    nvidia-cublas==13.0.2.14
    nvidia-curand==10.4.0.35
)
say() { echo "build-cuda: $*" >&2; }

mkdir -p "$cache/wheels"
tree=$cache/tree
root=$tree/nvidia/cu13
if [ ! -f "$cache/.unpacked" ]; then
    say "downloading ${#wheels[@]} CUDA wheels into $cache/wheels"
    python3 -m pip download --quiet --no-deps --dest "$cache/wheels" "${wheels[@]}"
    rm -rf "$tree"
    mkdir -p "$tree"
    for w in "$cache"/wheels/*.whl; do
        python3 -m zipfile -e "$w" "$tree"
    done
    chmod +x "$root"/bin/* "$root"/nvvm/bin/* 2>/dev/null || true
    (
        cd "$root/lib"
        for so in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
            [ -e "$so" ] || { say "missing $so in the wheels"; exit 1; }
            ln -sf "$so" "${so%.so.*}.so"
        done
    )
    touch "$cache/.unpacked"
else
    say "reusing the toolkit in $tree"
fi

# The driver library's link stub: every cu* function cudarc declares, each a dummy. Linking
# against it records the dependency on libcuda.so.1; the GPU machine's driver provides it.
stub=$cache/stub
if [ ! -f "$stub/libcuda.so" ]; then
    cargo fetch --quiet
    cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | head -1)
    [ -d "$cudarc" ] || { say "cudarc sources not found after cargo fetch"; exit 1; }
    mkdir -p "$stub"
    grep -ohE '^pub unsafe fn cu[A-Za-z0-9_]+' "$cudarc/src/driver/sys/mod.rs" |
        awk '{print $4}' | sort -u |
        awk '{printf "int %s(void) { return 999; }\n", $1}' >"$stub/cuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/cuda_stub.c"
    # For starting the binary here (`--help`, the CPU device) with the stub on LD_LIBRARY_PATH.
    ln -sf libcuda.so "$stub/libcuda.so.1"
    say "driver stub: $(wc -l <"$stub/cuda_stub.c") functions"
fi

export PATH=$root/bin:$root/nvvm/bin:$PATH
export CUDA_ROOT=$root CUDA_HOME=$root CUDA_PATH=$root
export LIBRARY_PATH=$root/lib:$stub${LIBRARY_PATH:+:$LIBRARY_PATH}
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$root/lib -L native=$stub"
nvcc --version | tail -2 >&2
for cap in $caps; do
    say "cargo build --release --features cuda for sm_$cap into target/cuda-sm$cap"
    start=$(date +%s)
    CUDA_COMPUTE_CAP=$cap cargo build --release --features cuda --target-dir "target/cuda-sm$cap" "$@"
    say "sm_$cap: built in $(( $(date +%s) - start )) s: target/cuda-sm$cap/release/apigen-mt"
done
