#!/usr/bin/env bash
# perplexity_plans.sh: what MixAttention plans cost SmolLM2-135M without retraining: perplexity on the
# Python tutorial text that Debian's python3.11-doc installs, under the standard plan and MixAttention presets.
# Usage: bench/perplexity_plans.sh [CTX] [WINDOW] [CHUNKS]   (defaults 1024, 256, 12)
set -euo pipefail
cd "$(dirname "$0")/.."
CTX=${1:-1024}
WINDOW=${2:-256}
CHUNKS=${3:-12}
SRC=/usr/share/doc/python3.11/html/_sources/tutorial
[ -d "$SRC" ] || { echo "needs Debian's python3.11-doc (apt-get install python3.11-doc)" >&2; exit 1; }
TEXT=$(mktemp)
trap 'rm -f "$TEXT"' EXIT
cat "$SRC"/*.rst.txt > "$TEXT"
echo "| plan | perplexity (ctx $CTX, window $WINDOW, $CHUNKS chunks of the Python tutorial) | KV bytes/token fp32 |"
echo "| --- | --- | ---: |"
# ma-offset's layout without any sharing (its full layers full, every other layer a window over its own
# cache) separates what the windows cost from what cross-layer sharing costs.
WINDOWS_ONLY=$(build/mixatt info --plan ma-offset --layers 2>/dev/null | awk '/^ +[0-9]+ +mha/ {print ($3 == "full") ? "G" : "S"}' | paste -sd,)
for plan in standard "$WINDOWS_ONLY" ma-offset ma-pairs ma ma-offset-slideshare; do
    ppl=$(build/mixatt perplexity -f "$TEXT" --ctx "$CTX" --chunks "$CHUNKS" --plan "$plan" --window "$WINDOW" \
          2>/dev/null | sed -n 's/^perplexity: //p')
    kv=$(build/mixatt info --plan "$plan" --window "$WINDOW" --ctx "$CTX" 2>/dev/null | sed -n 's/^  per token: *\([0-9]*\) bytes fp32.*/\1/p')
    name=$plan
    [ "$plan" = "$WINDOWS_ONLY" ] && name="ma-offset layout, windows only (no sharing)"
    echo "| $name | $ppl | $kv |"
done
