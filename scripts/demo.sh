#!/usr/bin/env bash
# make demo: build a small sample image (a base layer and three change layers, written by GNU tar),
# mount it read-only with layerfs straight from the tars, show the merged tree with the layer serving
# each entry, and unmount. No network needed.
set -euo pipefail
cd "$(dirname "$0")/.."
LAYERFS=$PWD/bin/layerfs
work=$(mktemp -d /tmp/layerfs-demo.XXXXXX)
mnt=$work/mnt
cleanup() {
  if grep -q " $mnt fuse.layerfs " /proc/self/mountinfo 2>/dev/null; then "$LAYERFS" umount "$mnt" || umount -l "$mnt" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
export TZ=UTC LC_ALL=C.UTF-8
pack() { # pack NAME DIR: a layer tar as image builders write them (pax, numeric owners, ./ prefixed)
  tar --format=pax --numeric-owner --sort=name --mtime='2024-06-01 12:00:00' -C "$2" -cf "$work/$1.tar" .
}

echo "== building the sample image in $work"
b=$work/src/01-base; mkdir -p "$b/etc" "$b/data" "$b/usr/share/doc/app" "$b/usr/bin"
printf 'colour=blue\nworkers=2\n' > "$b/etc/app.conf"
printf 'Welcome to the layerfs demo\n' > "$b/etc/motd"
printf 'old data, deleted by layer 3\n' > "$b/data/old.txt"
printf 'kept data\n' > "$b/data/kept.txt"
printf 'base README\n' > "$b/usr/share/doc/app/README"
printf 'base CHANGES\n' > "$b/usr/share/doc/app/CHANGES"
printf '#!/bin/sh\necho hello from the base layer\n' > "$b/usr/bin/hello"; chmod 755 "$b/usr/bin/hello"
ln -s hello "$b/usr/bin/hi"
pack 01-base "$b"

o=$work/src/02-override; mkdir -p "$o/etc"
printf 'colour=green\nworkers=8\n' > "$o/etc/app.conf"                 # overrides the base file
pack 02-override "$o"

d=$work/src/03-delete; mkdir -p "$d/data"
: > "$d/data/.wh.old.txt"                                               # OCI whiteout: deletes data/old.txt
pack 03-delete "$d"

q=$work/src/04-opaque; mkdir -p "$q/usr/share/doc/app"
: > "$q/usr/share/doc/app/.wh..wh..opq"                                 # opaque: hides the base docs
printf 'the docs, replaced whole by layer 4\n' > "$q/usr/share/doc/app/README.md"
pack 04-opaque "$q"
for t in 01-base 02-override 03-delete 04-opaque; do echo "   $t.tar: $(tar -tf "$work/$t.tar" | grep -v '/$' | sed 's|^\./||' | paste -sd' ')"; done

mkdir -p "$mnt"
lower=$work/04-opaque.tar:$work/03-delete.tar:$work/02-override.tar:$work/01-base.tar
echo; echo "== layerfs mount -o lowerdir=04-opaque.tar:03-delete.tar:02-override.tar:01-base.tar $mnt"
"$LAYERFS" mount -o "lowerdir=$lower" "$mnt"
grep " $mnt " /proc/self/mountinfo | awk '{print "   mounted:", $5, $(NF-2), $(NF-1)}'

echo; echo "== the merged tree, with the layer serving each entry ([0] is the topmost)"
"$LAYERFS" tree "$mnt" | sed 's/^/   /'

echo; echo "== reading through the mount"
echo "   \$ cat etc/app.conf      (overridden by 02-override)"; sed 's/^/     /' "$mnt/etc/app.conf"
echo "   \$ ls data               (old.txt deleted by a whiteout in 03-delete)"; ls "$mnt/data" | sed 's/^/     /'
echo "   \$ ls usr/share/doc/app  (opaque in 04-opaque: the base docs are hidden)"; ls "$mnt/usr/share/doc/app" | sed 's/^/     /'
echo "   \$ usr/bin/hi"; "$mnt/usr/bin/hi" | sed 's/^/     /'

echo; echo "== layerfs umount $mnt"
"$LAYERFS" umount "$mnt"
grep -q " $mnt " /proc/self/mountinfo && { echo "still mounted!" >&2; exit 1; }
# after a mount one more daemon waits to serve the next mount at once (README: the standby daemon);
# the demo leaves nothing running
"$LAYERFS" standby stop >/dev/null
echo "   unmounted (and the standby daemon waiting for a next mount ended); demo done"
