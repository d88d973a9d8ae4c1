#!/usr/bin/env bash
# bench/fixtures.sh OUTDIR — the benchmark's inputs, written by GNU tar (nothing here writes tar bytes):
#   OUTDIR/small-files.tar   SMALL_FILES files of 0–4 KiB in a tree of directories (default 200000)
#   OUTDIR/large-files.tar   lower files for reads and copy-up: large/f4k, f1m, f64m, f1g (random
#                            bytes; f1g only when LARGE=1, the default), and COPY_SAMPLES pairs
#                            large/cu/NN/{f4k,f1m}: one first copy-up each, so the cheap rows get
#                            several samples per run
#   OUTDIR/X.dir/            each tar extracted, for kernel overlayfs and fuse-overlayfs
# Idempotent: a stamp per set names its parameters; other parameters build that set afresh.
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
OUT=$1
SMALL_FILES=${SMALL_FILES:-200000}
LARGE=${LARGE:-1}
EPOCH=1700000000
COPY_SAMPLES=${COPY_SAMPLES:-8}
small_stamp="$OUT/.stamp-small-v1-$SMALL_FILES"
large_stamp="$OUT/.stamp-large-v2-$LARGE-$COPY_SAMPLES"
log() { printf '[bench fixtures %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
mkdir -p "$OUT"
T=$OUT/src; rm -rf "$T"

extract() { # the tar $1.tar extracted to $1.dir
  log "extracting $1.tar for the peers"
  rm -rf "$OUT/$1.dir"; mkdir -p "$OUT/$1.dir"; tar -xf "$OUT/$1.tar" -C "$OUT/$1.dir"
}

if [[ ! -e $small_stamp ]]; then
rm -f "$OUT"/.stamp-small-*
mkdir -p "$T/small"
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
rm -rf "$T"
extract small-files
date -u +%FT%TZ > "$small_stamp"
fi

if [[ ! -e $large_stamp ]]; then
rm -f "$OUT"/.stamp-large-*
mkdir -p "$T/large/large"
log "large-files"
head -c 4096 /dev/urandom > "$T/large/large/f4k"
head -c 1M /dev/urandom > "$T/large/large/f1m"
head -c 64M /dev/urandom > "$T/large/large/f64m"
cp "$T/large/large/f64m" "$T/large/large/f64m-meta"   # for the metadata-only copy-up
[[ $LARGE == 1 ]] && head -c 1G /dev/urandom > "$T/large/large/f1g"
for i in $(seq -w 1 "$COPY_SAMPLES"); do
  mkdir -p "$T/large/large/cu/$i"
  head -c 4096 /dev/urandom > "$T/large/large/cu/$i/f4k"
  head -c 1M /dev/urandom > "$T/large/large/cu/$i/f1m"
done
tar --format=gnu --sort=name --owner=0 --group=0 --numeric-owner --mtime=@"$EPOCH" -C "$T/large" -cf "$OUT/large-files.tar" large
rm -rf "$T"
extract large-files
date -u +%FT%TZ > "$large_stamp"
fi
