#!/usr/bin/env bash
# Rebuild the quickstart corpus (data/quickstart/<domain>/{train,validation,test}.txt) from
# Debian packages: download them with apt-get, unpack them with dpkg-deb (nothing is
# installed), extract and clean the text with build.py, split it deterministically.
#
#   bash data/quickstart/build.sh            # rebuild in place, then check SHA256SUMS
#   bash data/quickstart/build.sh OUTDIR     # build into another directory
#
# Needs apt-get (Debian or a derivative with the bookworm archive), dpkg-deb, python3 and groff
# (for the man pages; `apt-get install groff-base`). The packages and versions below are the
# ones the shipped files were built from; another version may change the text, which the
# checksum check then reports.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here}"

# package=version (Debian 12 "bookworm")
packages=(
  sword-text-web=426.0-1
  r-cran-janeaustenr=1.0.0-1
  jargon-text=4.4.7-4.1
  dict-gcide=0.48.5+nmu2
  coreutils=9.1-1
  bash=5.2.15-2+b13
  grep=3.8-5
  sed=4.9-1+deb12u1
  tar=1.34+dfsg-1.2+deb12u1
  diffutils=1:3.8-4
  make=4.3-4.1
)

for tool in apt-get dpkg-deb python3 groff; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is required" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debs" "$work/root"
cd "$work/debs"
for p in "${packages[@]}"; do
  name="${p%%=*}"
  if ! apt-get download "$p" >/dev/null 2>&1; then
    echo "build.sh: $p is not available; downloading the archive's current $name (the text may differ)" >&2
    apt-get download "$name" >/dev/null
  fi
done
for deb in "$work"/debs/*.deb; do
  name="$(dpkg-deb -f "$deb" Package)"
  echo "unpacking $name $(dpkg-deb -f "$deb" Version)"
  dpkg-deb -x "$deb" "$work/root/$name"
done

python3 "$here/build.py" "$work/root" "$out"

if [ "$out" = "$here" ]; then
  cd "$here" && sha256sum -c --quiet SHA256SUMS && echo "build.sh: the rebuilt files match SHA256SUMS"
else
  cd "$out" && sha256sum -c --quiet "$here/SHA256SUMS" && echo "build.sh: the built files match SHA256SUMS"
fi
