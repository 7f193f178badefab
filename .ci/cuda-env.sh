# shellcheck shell=bash
# Source this file (`. .ci/cuda-env.sh`) to compile tram's `cuda` feature on a machine without
# a CUDA install (CI, no GPU). It installs NVIDIA's nvcc and CUDA headers from PyPI wheels into
# a cache folder (once; later runs reuse it) and exports what candle's build scripts read:
#   - candle-kernels (cudaforge): `nvcc` via NVCC / PATH / CUDA_HOME, CUDA_COMPUTE_CAP (else it
#     asks nvidia-smi, which a GPU-less machine lacks);
#   - cudarc (`cuda-version-from-build-system`): runs `nvcc --version` from PATH, and links
#     against CUDA_HOME / CUDA_PATH / CUDA_ROOT (a link needs libcuda and cuBLAS, not installed
#     here: `cargo check`, which links nothing, is what this environment is for).
# The compiler is pinned to 13.0.x: PTX from a newer nvcc does not load on a CUDA 13.0 driver
# (the GPU machine this project is lent has driver 580 = CUDA 13.0).
# Settings: TRAM_CUDA_CACHE (default ~/.cache/tram-cuda), CUDA_COMPUTE_CAP (default 90, H100/H200).

TRAM_CUDA_WHEELS_VERSION=13.0.88
# CCCL (libcu++, `<nv/target>`, which cuda_fp16.h includes) has its own 13.0 release number.
TRAM_CUDA_CCCL_VERSION=13.0.85
# The folder is named for the whole set: changing a pin installs afresh beside the old set.
_tram_cuda_dir="${TRAM_CUDA_CACHE:-$HOME/.cache/tram-cuda}/nvcc-$TRAM_CUDA_WHEELS_VERSION-cccl-$TRAM_CUDA_CCCL_VERSION"
if [ ! -x "$_tram_cuda_dir/nvidia/cu13/bin/nvcc" ]; then
    echo "cuda-env: installing nvcc $TRAM_CUDA_WHEELS_VERSION from PyPI into $_tram_cuda_dir" >&2
    rm -rf "$_tram_cuda_dir.partial"
    # Every wheel pinned: nvcc's own requirements (crt, nvvm) are unversioned, and pip would
    # pick the newest 13.x headers, which a 13.0 nvcc does not compile.
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-warn-script-location \
        --target "$_tram_cuda_dir.partial" \
        "nvidia-cuda-nvcc==$TRAM_CUDA_WHEELS_VERSION" \
        "nvidia-cuda-crt==$TRAM_CUDA_WHEELS_VERSION" \
        "nvidia-nvvm==$TRAM_CUDA_WHEELS_VERSION" \
        "nvidia-cuda-runtime==$TRAM_CUDA_WHEELS_VERSION" \
        "nvidia-cuda-cccl==$TRAM_CUDA_CCCL_VERSION" || {
        echo "cuda-env: pip install of the CUDA $TRAM_CUDA_WHEELS_VERSION wheels into $_tram_cuda_dir.partial failed" >&2
        return 1
    }
    # Renamed only when complete, so an interrupted install is never taken for a cached one.
    rm -rf "$_tram_cuda_dir" && mv "$_tram_cuda_dir.partial" "$_tram_cuda_dir" || return 1
fi
export CUDA_ROOT="$_tram_cuda_dir/nvidia/cu13"
export CUDA_HOME="$CUDA_ROOT" CUDA_PATH="$CUDA_ROOT" CUDA_TOOLKIT_ROOT_DIR="$CUDA_ROOT"
export NVCC="$CUDA_ROOT/bin/nvcc"
case ":$PATH:" in *":$CUDA_ROOT/bin:"*) ;; *) export PATH="$CUDA_ROOT/bin:$PATH" ;; esac
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
unset _tram_cuda_dir
