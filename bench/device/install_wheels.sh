#!/usr/bin/env bash
# On the GPU machine: once every bin that bench/device/pack_wheels.py made has been carried into
# .whl/, join the cut wheels and install them all into /tmp/site (use with PYTHONPATH=/tmp/site:.).
# WHEEL_BINS and WHEEL_SITE override those two paths.
# Exits 10, naming the missing bins, while some have not arrived yet.
set -euo pipefail
cd "$(dirname "$0")/../.."
whl=${WHEEL_BINS:-.whl}
site=${WHEEL_SITE:-/tmp/site}
manifest=$(ls "$whl"/*/MANIFEST 2>/dev/null | head -1)
[[ -n $manifest ]] || { echo "no $whl/N/MANIFEST: carry a bin made by bench/device/pack_wheels.py" >&2; exit 2; }
missing=$(while read -r bin name; do [[ -f $whl/$bin/$name ]] || echo "$whl/$bin"; done < "$manifest" | sort -u | tr '\n' ' ')
if [[ -n $missing ]]; then
  echo "waiting for $missing(carry them in the next call)"
  exit 10
fi
wheels=$(mktemp -d)
while read -r bin name; do
  case $name in
    *.part-*) cat "$whl/$bin/$name" >> "$wheels/${name%.part-*}" ;;  # sorted: pieces in order
    *) cp "$whl/$bin/$name" "$wheels/" ;;
  esac
done < <(sort -k2 "$manifest")
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl
echo "installed $(ls "$wheels" | wc -l) wheels into $site"
