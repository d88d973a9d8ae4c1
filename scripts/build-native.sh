#!/usr/bin/env bash
# Build the native parts: fuse-native patched (latin1 names, 64-bit ino, nanosecond times; see
# native-notes/fuse-native.md) against the libfuse it ships, and our own native/layerfs_sys addon.
# Idempotent: a stamp records the patch; the addon is rebuilt when its source is newer.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=node_modules/fuse-native
patch_file=patches/fuse-native-2.2.6.patch
stamp=$dir/.layerfs-patch.sha256
want=$(sha256sum "$patch_file" | cut -d' ' -f1)
gyp=$(dirname "$(readlink -f "$(command -v npm)")")/../node_modules/node-gyp/bin/node-gyp.js
[[ -f $gyp ]] || gyp=$(npm root -g)/npm/node_modules/node-gyp/bin/node-gyp.js
nodedir=$(npm config get nodedir 2>/dev/null || true)
# build against the installed headers (no download): npm config, else the system's
[[ -n $nodedir && $nodedir != undefined ]] || { [[ -f /usr/include/node/node_api.h ]] && nodedir=/usr; } || true

addon=native/build/Release/layerfs_sys.node
fuse_addon=native/build/Release/layerfs_fuse.node
launcher=native/build/Release/layerfs-launch
stale=0
for src in native/*.c native/*.h native/binding.gyp; do [[ -f $addon && -f $fuse_addon && -f $launcher && ! $src -nt $addon && ! $src -nt $fuse_addon && ! $src -nt $launcher ]] || stale=1; done
if ((stale)); then
  # the launcher static where the C library allows it: it starts in ~0.39 ms against ~0.52 linked
  # dynamically, and it runs for every mount (native-notes/fuse-lowlevel.md)
  static=0
  echo 'int main(void){return 0;}' | cc -x c - -static -o /dev/null 2>/dev/null && static=1
  ( cd native && node "$gyp" rebuild ${nodedir:+--nodedir="$nodedir"} -- -Dstatic_launcher=$static >build.log 2>&1 ) || { cat native/build.log >&2; exit 1; }
fi

if [[ -f $stamp && $(cat "$stamp") == "$want" && -f $dir/build/Release/fuse.node ]]; then exit 0; fi
# npm 11 leaves dependency install scripts off; fuse-native needs none of them: we build it here
# keep the pristine sources once, so that a changed patch applies to them and not on top of itself
for f in index.js fuse-native.c; do
  if [[ -f $dir/$f.orig-layerfs ]]; then cp "$dir/$f.orig-layerfs" "$dir/$f"
  elif [[ -f $stamp ]]; then echo "layerfs: fuse-native is patched but its originals are gone; run 'npm ci'" >&2; exit 1
  else cp "$dir/$f" "$dir/$f.orig-layerfs"; fi
done
rm -f "$stamp"
patch -s -p1 -d "$dir" < "$patch_file"
( cd "$dir" && node "$gyp" rebuild ${nodedir:+--nodedir="$nodedir"} >build.log 2>&1 ) || { cat "$dir/build.log" >&2; exit 1; }
echo "$want" > "$stamp"
