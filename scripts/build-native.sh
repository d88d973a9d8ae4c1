#!/usr/bin/env bash
# Patch fuse-native (latin1 names, 64-bit ino, nanosecond times; see native-notes/fuse-native.md)
# and build it from source against the libfuse it ships. Idempotent: a stamp records the patch.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=node_modules/fuse-native
patch_file=patches/fuse-native-2.2.6.patch
stamp=$dir/.layerfs-patch.sha256
want=$(sha256sum "$patch_file" | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" && -f $dir/build/Release/fuse.node ]]; then exit 0; fi
if [[ -f $stamp ]]; then
  echo "layerfs: fuse-native was patched by another patch version; reinstall it with 'npm ci'" >&2; exit 1
fi
patch -s -p1 -d "$dir" < "$patch_file"
gyp=$(dirname "$(readlink -f "$(command -v npm)")")/../node_modules/node-gyp/bin/node-gyp.js
[[ -f $gyp ]] || gyp=$(npm root -g)/npm/node_modules/node-gyp/bin/node-gyp.js
nodedir=$(npm config get nodedir 2>/dev/null || true)
( cd "$dir" && node "$gyp" rebuild ${nodedir:+--nodedir="$nodedir"} >build.log 2>&1 ) || { cat "$dir/build.log" >&2; exit 1; }
echo "$want" > "$stamp"
