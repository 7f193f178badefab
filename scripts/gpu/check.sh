#!/usr/bin/env bash
# The run half of the device check (README "GPU (CUDA)"): on the GPU machine (a CUDA driver, a
# GPU, Python with PyTorch + transformers; no Rust, no network), in the folder
# scripts/gpu/build.sh made (dist/gpu):
#
#   bash dist/gpu/check.sh [results-folder]        # default: $OUT if set, else dist/gpu/results
#
#  1. finds the CUDA libraries the binaries load (libcuda from the driver; cuBLAS, cuBLASLt,
#     NVRTC, cuRAND and the runtime from PyTorch's nvidia wheels, `python3 -c 'import nvidia'`,
#     or a CUDA install) and puts their folders on LD_LIBRARY_PATH;
#  2. runs the GPU test binary (tests/gpu.rs) on CUDA: tram-kernels' ops against the CPU kernels,
#     the four architectures against the CPU and PyTorch in f32 and bf16, the golden optimizer
#     fixtures (TRAM_GOLDEN_TOLERANCE, default 1e-4 on the GPU);
#  3. runs check.py: `tram lm --profile` on a random GPT-2 small (124M, seq 512, batch 16) with
#     Adam and TRAM-x, the same steps in PyTorch (bf16 autocast), the op-level side by side
#     (tram-bench's `ops` against PyTorch's ops on the GPU), and the NCCL W = 1 check (the
#     `--features cuda,nccl` tram with distributed.allreduce = "nccl" ends with the plain run's
#     weights), and writes check.json (tokens/s, tram ÷ PyTorch step time, peak GPU memory, MFU
#     against 989 TFLOPS, each run's phase profile, the op ratios, the NCCL outcome), the tests'
#     outcome included. About 6–7 minutes on an H200, at most 8: limits TRAM_CHECK_TEST_TIMEOUT
#     (180 s) for the tests, TRAM_CHECK_TIMING_TIMEOUT (300 s) for all of check.py (check.json
#     is rewritten after each part, so a timeout keeps what was measured) and
#     TRAM_CHECK_STEP_TIMEOUT (150 s) for each `tram lm` and the ops.
#     Extra arguments for check.py go in TRAM_CHECK_ARGS (e.g. "--steps 4 --batch 8").
set -uo pipefail
here="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)"
results="${1:-${OUT:-$here/results}}"
mkdir -p "$results"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
py="${PYTHON:-python3}"
log() { echo "check.sh: $*" >&2; }

# 1. Libraries -----------------------------------------------------------------------------------
need="libcuda.so.1 libnvrtc.so.13 libcurand.so.10 libcublas.so.13 libcublasLt.so.13 libcudart.so.13"
dirs=""
cands="$("$py" - <<'PY' 2>/dev/null
import glob, os
try:
    import nvidia
    for p in nvidia.__path__:
        for d in sorted(glob.glob(os.path.join(p, "*", "lib"))):
            print(d)
except Exception:
    pass
PY
)"
cands="$cands
$(ls -d /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu /usr/lib64 2>/dev/null)"
for lib in $need; do
    found=""
    for d in $cands; do
        if [ -e "$d/$lib" ]; then found="$d"; break; fi
    done
    if [ -z "$found" ] && ldconfig -p 2>/dev/null | grep -q " $lib "; then found="(ldconfig)"; fi
    if [ -z "$found" ]; then
        log "MISSING $lib (looked in PyTorch's nvidia wheels, /usr/local/cuda*, ldconfig)"
        missing="${missing:-} $lib"
    else
        log "$lib: $found"
        case "$found" in "(ldconfig)") ;; *) case ":$dirs:" in *":$found:"*) ;; *) dirs="$dirs:$found" ;; esac ;; esac
    fi
done
export LD_LIBRARY_PATH="${dirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fallback=""
if [ -n "${missing:-}" ]; then
    case " $missing " in
    *" libcurand.so.10 "*)
        # cuRAND is loaded by every CUDA device candle opens but used only for random tensors
        # drawn on the GPU, which nothing in this check draws (dropout masks and noise come from
        # tram's own keyed ChaCha8 kernel). A stand-in whose generate calls fail loudly lets the check run; it is noted.
        if command -v cc >/dev/null; then
            mkdir -p "$work/fallback"
            printf '%s\n' 'int curandCreateGenerator(void **g, int t) { static int dummy; *g = &dummy; return 0; }' \
                'int curandDestroyGenerator(void *g) { return 0; }' 'int curandSetPseudoRandomGeneratorSeed(void *g, unsigned long long s) { return 0; }' \
                'int curandSetStream(void *g, void *s) { return 0; }' 'int curandSetGeneratorOffset(void *g, unsigned long long o) { return 0; }' \
                'int curandGenerateUniform(void) { return 101; }' 'int curandGenerateUniformDouble(void) { return 101; }' \
                'int curandGenerateNormal(void) { return 101; }' 'int curandGenerateNormalDouble(void) { return 101; }' \
                'int curandGenerate(void) { return 101; }' 'int curandGenerateLongLong(void) { return 101; }' \
                'int curandGenerateLogNormal(void) { return 101; }' 'int curandGenerateLogNormalDouble(void) { return 101; }' \
                'int curandGeneratePoisson(void) { return 101; }' 'int curandGenerateSeeds(void) { return 101; }' \
                'int curandCreateGeneratorHost(void) { return 101; }' 'int curandGetVersion(int *v) { *v = 10000; return 0; }' \
                'int curandCreatePoissonDistribution(void) { return 101; }' 'int curandDestroyDistribution(void) { return 0; }' \
                'int curandGetDirectionVectors32(void) { return 101; }' 'int curandGetDirectionVectors64(void) { return 101; }' \
                'int curandGetScrambleConstants32(void) { return 101; }' 'int curandGetScrambleConstants64(void) { return 101; }' \
                'int curandGetProperty(void) { return 101; }' 'int curandSetQuasiRandomGeneratorDimensions(void) { return 0; }' \
                'int curandSetGeneratorOrdering(void) { return 0; }' 'int curandGenerateBinomial(void) { return 101; }' \
                'int curandGenerateBinomialMethod(void) { return 101; }' 'int curandGeneratePoissonMethod(void) { return 101; }' >"$work/fallback/curand.c"
            cc -shared -fPIC -Wl,-soname,libcurand.so.10 -o "$work/fallback/libcurand.so.10" "$work/fallback/curand.c" &&
                export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$work/fallback" && fallback="libcurand.so.10 (stand-in: random numbers drawn on the GPU would fail)" &&
                log "using a cuRAND stand-in: $fallback"
        fi
        ;;
    esac
fi

# 2. Binaries --------------------------------------------------------------------------------------
for b in tram gpu-tests ops tram-nccl; do
    [ -e "$here/bin/$b.xz" ] || continue
    "$py" -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as f, open(sys.argv[2], "wb") as g: shutil.copyfileobj(f, g)' "$here/bin/$b.xz" "$work/$b" && chmod +x "$work/$b"
done
ldd "$work/tram" | grep -E "not found" && log "the binaries cannot load every library (above); LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

# The NCCL build also loads libnccl.so.2 (PyTorch's nvidia-nccl wheel, or a system NCCL) and
# Open MPI's libraries (bundled: lib/openmpi).
nccl_args=()
if [ -x "$work/tram-nccl" ]; then
    nccl_dir=""
    for d in $cands; do
        if [ -e "$d/libnccl.so.2" ]; then nccl_dir="$d"; break; fi
    done
    nccl_path="$LD_LIBRARY_PATH${nccl_dir:+:$nccl_dir}:$here/lib/openmpi"
    if [ -z "$nccl_dir" ] && ! ldconfig -p 2>/dev/null | grep -q " libnccl.so.2 "; then
        nccl_args=(--nccl-skip "libnccl.so.2 not found (PyTorch's nvidia wheels, /usr/local/cuda*, ldconfig)")
    elif LD_LIBRARY_PATH="$nccl_path" ldd "$work/tram-nccl" | grep -q "not found"; then
        nccl_args=(--nccl-skip "tram-nccl cannot load: $(LD_LIBRARY_PATH="$nccl_path" ldd "$work/tram-nccl" | grep "not found" | tr -s ' \t\n' ' ')")
    else
        log "libnccl.so.2: ${nccl_dir:-(ldconfig)}"
        nccl_args=(--tram-nccl "$work/tram-nccl" --library-path-nccl "$nccl_path")
    fi
    [ "${nccl_args[0]}" = --nccl-skip ] && log "NCCL check skipped: ${nccl_args[1]}"
else
    nccl_args=(--nccl-skip "no tram-nccl in $here/bin (built with TRAM_GPU_BUILD_NCCL=0)")
fi
ops_args=()
[ -x "$work/ops" ] && ops_args=(--ops "$work/ops")
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true

# 3. GPU tests ------------------------------------------------------------------------------------
log "GPU tests ..."
t0=$SECONDS
TRAM_TEST_DEVICE="${TRAM_TEST_DEVICE:-cuda}" TRAM_GOLDEN_DIR="$here/fixtures/golden" TRAM_GOLDEN_TOLERANCE="${TRAM_GOLDEN_TOLERANCE:-1e-4}" \
    TRAM_MODELS_FIXTURES="$here/fixtures/models" timeout "${TRAM_CHECK_TEST_TIMEOUT:-180}" \
    "$work/gpu-tests" --nocapture --test-threads=1 >"$results/gpu-tests.log" 2>&1
tests_rc=$?
log "GPU tests: exit $tests_rc in $((SECONDS - t0)) s ($(grep -E '^test result' "$results/gpu-tests.log" | tail -1))"

# 4. Timing side by side, phase profiles, ops, NCCL ----------------------------------------------
log "tram lm vs PyTorch, ops, NCCL ..."
t0=$SECONDS
# shellcheck disable=SC2086
timeout "${TRAM_CHECK_TIMING_TIMEOUT:-300}" "$py" "$here/scripts/gpu/check.py" --tram "$work/tram" --out "$results/check.json" --logs "$results" \
    --data "$here/data/quickstart" --tokenizer "$here/models/quickstart/tokenizer.json" --timeout "${TRAM_CHECK_STEP_TIMEOUT:-150}" \
    --tests-log "$results/gpu-tests.log" --tests-rc "$tests_rc" --library-path "$LD_LIBRARY_PATH" --fallback "$fallback" \
    "${ops_args[@]}" "${nccl_args[@]}" ${TRAM_CHECK_ARGS:-}
check_rc=$?
log "timing, ops and NCCL: exit $check_rc in $((SECONDS - t0)) s; whole check $SECONDS s"
log "results in $results (check.json, gpu-tests.log, tram-*.log, tram-ops.json)"
[ "$tests_rc" -eq 0 ] && [ "$check_rc" -eq 0 ]
