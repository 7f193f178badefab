#!/usr/bin/env bash
# The build half of the device check (README "GPU (CUDA)"): on this machine (no GPU, no CUDA
# install), build the release `tram` and the GPU test binary with `--features cuda`, tram-bench's
# `ops` (op-level timings) with `--features cuda`, and a second `tram` with `--features cuda,nccl`
# (the NCCL W = 1 check), and put them, stripped and xz-compressed, with their small fixtures, the
# Open MPI runtime libraries the NCCL build loads (lib/openmpi) and the run-there scripts into one
# folder (default dist/gpu, under 60 MiB), which scripts/gpu/check.sh runs on the GPU machine.
#
#   scripts/gpu/build.sh [folder]
#
# CUDA comes from .ci/cuda-env.sh (nvcc 13.0 and headers from PyPI). candle's CUDA binding
# (cudarc, `dynamic-linking`) links against libcuda, libnvrtc, libcurand, libcublas and
# libcublasLt, and candle-kernels against libcudart; no wheel here has libcuda (it comes with the
# driver), so the link uses stub libraries generated from cudarc's own function list, named for
# the sonames the GPU machine provides (libcuda.so.1, lib*.so.13, libcurand.so.10). The binaries
# then load the real libraries there (check.sh finds them); the NCCL build links libnccl.so.2
# (a stub here; PyTorch's nvidia-nccl wheel there) and Open MPI's libmpi.so.40 (rsmpi links it;
# the GPU machine has no MPI, so Debian's runtime libraries travel in lib/openmpi; the W = 1 check
# does not initialise MPI, so no mpirun or MCA components are needed). Needs here: Open MPI
# (libopenmpi-dev) and libclang for the `mpi` feature. Settings: CUDA_COMPUTE_CAP (90),
# CARGO_TARGET_DIR, TRAM_GPU_BUILD_JOBS (cargo -j; default: cargo's), TRAM_GPU_BUILD_NCCL=0 to
# leave the NCCL build out (check.sh then records the NCCL check as skipped).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
out="${1:-dist/gpu}"
start=$SECONDS
. .ci/cuda-env.sh
target="${CARGO_TARGET_DIR:-$root/target}"
jobs=()
[ -n "${TRAM_GPU_BUILD_JOBS:-}" ] && jobs=(-j "$TRAM_GPU_BUILD_JOBS")

# --- link stubs -------------------------------------------------------------------------------
cudarc_src="$(cargo metadata --format-version 1 --features cuda --manifest-path apps/cli/Cargo.toml 2>/dev/null |
    python3 -c 'import json,sys; m=json.load(sys.stdin); print(next(p["manifest_path"] for p in m["packages"] if p["name"]=="cudarc").rsplit("/",1)[0])')"
stubs="$CUDA_ROOT/lib"   # in cudarc's link search path (it searches $CUDA_ROOT/lib)
# A stub library `lib<name>.so` (soname <soname>) defining every function of cudarc's <module>.
make_stub() {
    local name=$1 soname=$2 module=$3 c
    c="$(mktemp --suffix=.c)"
    grep -ohE 'pub unsafe fn [A-Za-z0-9_]+\(' "$cudarc_src/src/$module/sys/mod.rs" | sed -E 's/pub unsafe fn ([A-Za-z0-9_]+)\(/int \1(void) { return 999; }/' | sort -u >"$c"
    cc -shared -fPIC -Wl,-soname,"$soname" -o "$stubs/lib$name.so" "$c"
    rm -f "$c"
}
make_stub cuda libcuda.so.1 driver
make_stub nvrtc libnvrtc.so.13 nvrtc
make_stub curand libcurand.so.10 curand
make_stub cublas libcublas.so.13 cublas
make_stub cublasLt libcublasLt.so.13 cublaslt
make_stub nccl libnccl.so.2 nccl
ln -sf libcudart.so.13 "$stubs/libcudart.so"

# --- build ------------------------------------------------------------------------------------
# Each binary is copied out as soon as it is built: the NCCL build writes target/release/tram too.
staged="$(mktemp -d)"
trap 'rm -rf "$staged"' EXIT
echo "build.sh: cargo build --release -p tram-cli --features cuda" >&2
nice cargo build --release "${jobs[@]}" -p tram-cli --features cuda
cp "$target/release/tram" "$staged/tram"
echo "build.sh: cargo build --release -p tram-bench --bin ops --features cuda" >&2
nice cargo build --release "${jobs[@]}" -p tram-bench --bin ops --features cuda
cp "$target/release/ops" "$staged/ops"
echo "build.sh: cargo test --release --no-run -p tram-tests --test gpu --features cuda" >&2
gpu_test="$(nice cargo test --release "${jobs[@]}" --no-run -p tram-tests --test gpu --features cuda --message-format=json |
    python3 -c 'import json,sys
for l in sys.stdin:
    try: m=json.loads(l)
    except ValueError: continue
    if m.get("reason")=="compiler-artifact" and m.get("profile",{}).get("test") and m["target"]["name"]=="gpu": print(m["executable"])' | tail -1)"
[ -x "$gpu_test" ] || { echo "build.sh: no GPU test binary was built" >&2; exit 1; }
cp "$gpu_test" "$staged/gpu-tests"
if [ "${TRAM_GPU_BUILD_NCCL:-1}" != 0 ]; then
    echo "build.sh: cargo build --release -p tram-cli --features cuda,nccl" >&2
    nice cargo build --release "${jobs[@]}" -p tram-cli --features cuda,nccl
    cp "$target/release/tram" "$staged/tram-nccl"
fi

# --- the folder -------------------------------------------------------------------------------
rm -rf "$out"
mkdir -p "$out/bin" "$out/fixtures/models" "$out/fixtures/golden" "$out/data/quickstart" "$out/models/quickstart" "$out/scripts/gpu"
for b in tram gpu-tests ops tram-nccl; do
    [ -e "$staged/$b" ] || continue
    strip -o "$out/bin/$b" "$staged/$b"
    xz -T0 -6 -f "$out/bin/$b"
done
if [ -e "$staged/tram-nccl" ]; then
    # The Open MPI runtime libmpi.so.40 needs (and what they need beyond glibc / zlib), so that
    # the NCCL build loads on a machine without MPI.
    mkdir -p "$out/lib/openmpi"
    libmpi="$(ldd "$staged/tram-nccl" | awk '$1 == "libmpi.so.40" {print $3}')"
    [ -n "$libmpi" ] || { echo "build.sh: the NCCL build does not load libmpi.so.40 (ldd above)" >&2; exit 1; }
    for lib in "$libmpi" $(ldd "$libmpi" | awk '$3 ~ /^\// {print $3}'); do
        case "$(basename "$lib")" in
        libc.so* | libm.so* | libdl.so* | libpthread.so* | librt.so* | libgcc_s.so* | libstdc++.so* | ld-linux* | libz.so*) ;;
        *) cp -L "$lib" "$out/lib/openmpi/" ;;
        esac
    done
fi
for m in gpt2 vit bert xlm-roberta; do
    mkdir -p "$out/fixtures/models/$m"
    cp apps/runtime/models/tests/fixtures/$m/{config.json,model.safetensors,reference.safetensors} "$out/fixtures/models/$m/"
done
cp tests/golden/fixtures/*.safetensors "$out/fixtures/golden/"
cp -r data/quickstart/novels "$out/data/quickstart/"
cp models/quickstart/tokenizer.json "$out/models/quickstart/"
cp scripts/gpu/check.sh scripts/gpu/check.py "$out/scripts/gpu/"
ln -sf scripts/gpu/check.sh "$out/check.sh"
{
    echo "built $(date -u +%FT%TZ) from $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!dist' || echo '+dirty')"
    echo "nvcc: $(nvcc --version | grep -o 'release [0-9.]*'), CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
    echo "needs at run time: libcuda.so.1 libnvrtc.so.13 libcurand.so.10 libcublas.so.13 libcublasLt.so.13 libcudart.so.13"
    echo "tram-nccl also: libnccl.so.2 and Open MPI's libmpi.so.40 (bundled in lib/openmpi: $(ls "$out/lib/openmpi" 2>/dev/null | tr '\n' ' '))"
    (cd "$out" && find . -type f | sort | xargs ls -l | awk '{print $5, $9}')
} >"$out/MANIFEST"
size=$(du -sm "$out" | cut -f1)
echo "build.sh: $out: ${size} MiB in $((SECONDS - start)) s"
if [ "$size" -ge 60 ]; then
    echo "build.sh: $out is ${size} MiB, over the 60 MiB the GPU machine's copy allows" >&2
    exit 1
fi
