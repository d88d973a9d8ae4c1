#!/usr/bin/env bash
# bench/fixtures.sh OUTDIR — the benchmark's inputs, written by GNU tar (nothing here writes tar bytes):
#   OUTDIR/small-files.tar   SMALL_FILES files of 0–4 KiB in a tree of directories (default 200000)
#   OUTDIR/large-files.tar   lower files for reads and copy-up: f4k, f1m, f64m, f1g (random bytes;
#                            f1g only when LARGE=1, the default)
#   OUTDIR/X.dir/            each tar extracted, for kernel overlayfs and fuse-overlayfs
# Idempotent: a stamp names the parameters; other parameters build a fresh set.
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
OUT=$1
SMALL_FILES=${SMALL_FILES:-200000}
LARGE=${LARGE:-1}
EPOCH=1700000000
stamp="$OUT/.stamp-v1-$SMALL_FILES-$LARGE"
[[ -e $stamp ]] && exit 0
log() { printf '[bench fixtures %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
rm -rf "$OUT"; mkdir -p "$OUT"
T=$OUT/src; mkdir -p "$T/small" "$T/large/large"

log "small-files: $SMALL_FILES files"
python3 - "$T/small" "$SMALL_FILES" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(20240601)
text = bytes(rnd.randrange(32, 127) for _ in range(1 << 20))
for i in range(n):
    d, parts = i // 20, []
    while True:
        parts.append("d%d" % (d % 6)); d //= 6
        if d == 0: break
    dpath = os.path.join(root, "tree", *parts)
    os.makedirs(dpath, exist_ok=True)
    size = rnd.choice([rnd.randint(0, 100), rnd.randint(100, 1024), rnd.randint(1024, 4096)])
    off = rnd.randint(0, len(text) - size - 1)
    with open(os.path.join(dpath, "f%06d.txt" % i), "wb") as f: f.write(text[off:off + size])
PY
tar --format=gnu --sort=name --owner=0 --group=0 --numeric-owner --mtime=@"$EPOCH" -C "$T/small" -cf "$OUT/small-files.tar" tree

log "large-files"
head -c 4096 /dev/urandom > "$T/large/large/f4k"
head -c 1M /dev/urandom > "$T/large/large/f1m"
head -c 64M /dev/urandom > "$T/large/large/f64m"
cp "$T/large/large/f64m" "$T/large/large/f64m-meta"   # for the metadata-only copy-up
[[ $LARGE == 1 ]] && head -c 1G /dev/urandom > "$T/large/large/f1g"
tar --format=gnu --owner=0 --group=0 --numeric-owner --mtime=@"$EPOCH" -C "$T/large" -cf "$OUT/large-files.tar" large

for t in small-files large-files; do
  log "extracting $t.tar for the peers"
  mkdir -p "$OUT/$t.dir"; tar -xf "$OUT/$t.tar" -C "$OUT/$t.dir"
done
rm -rf "$T"
date -u +%FT%TZ > "$stamp"
