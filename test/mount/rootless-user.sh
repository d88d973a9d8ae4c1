#!/usr/bin/env bash
# Run by test/mount/rootless.test.ts as uid 1000 inside a user and mount namespace of its own: mounts
# an image writable with layerfs, changes it, then lists the tree as layerfs and as kernel overlayfs
# (-o userxattr) show it over the same layers and upper. Every mount it makes it unmounts.
# Environment: W (work dir), LAYERFS, IMAGE (OCI layout), TARS (its layers, bottom first).
set -eu
cd "$W"
export XDG_CACHE_HOME="$W/cache" HOME="$W"
mounted=()
cleanup() { for m in "${mounted[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done; }
trap cleanup EXIT
listing() { (cd "$1" && find . -printf '%p %y %m %U %G %s %l\n' | LC_ALL=C sort && find . -type f -exec md5sum {} + | LC_ALL=C sort) }
# the layers for kernel overlayfs, extracted here so that their owners go through the same map
lowers=""
for t in $TARS; do
  d="$W/k-$(basename "$t" .tar)"; mkdir "$d"
  # umoci leaves whiteouts under a path its layer makes a file (etc/was-dir/.wh.sub): tar says so, exit 2
  tar --xattrs --xattrs-include='user.*' --numeric-owner -xpf "$t" -C "$d" 2>/dev/null || test $? -eq 2
  OVERLAY_OPAQUE_XATTR=user.overlay.opaque python3 "$W/convert.py" "$t" "$d"
  lowers="$d${lowers:+:$lowers}"
done
mkdir m u w km kw
"$LAYERFS" mount "oci:$IMAGE:latest" m -o upperdir=u,workdir=w; mounted+=(m)
stat -c '%u:%g %n' m/var/www/index.html m/opt/owned m/etc/hostname > owners
echo appended >> m/etc/hostname
rm m/etc/hl-a
rm -rf m/opt/app/data; mkdir m/opt/app/data; echo new > m/opt/app/data/y
listing m > layerfs.txt
"$LAYERFS" umount m; mounted=()
stat -c '%F %t:%T' u/etc/hl-a > whiteout
getfattr --absolute-names -n user.overlay.opaque --only-values u/opt/app/data > opaque
getfattr --absolute-names -d -m '^trusted\.' -R u > trusted-xattrs 2>&1 || true
mount -t overlay overlay -o "lowerdir=$lowers,upperdir=u,workdir=kw,userxattr" km; mounted+=(km)
listing km > kernel.txt
umount km; mounted=()
"$LAYERFS" mount "oci:$IMAGE:latest" m -o upperdir=u,workdir=w; mounted+=(m)
listing m > layerfs-again.txt
"$LAYERFS" umount m; mounted=()
echo done > finished
