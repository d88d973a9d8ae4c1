import { mkdir, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { createHash } from 'node:crypto'
import { must, run } from './run'

// The oracle's side: layers as kernel overlayfs takes them. A tar is extracted by GNU tar (bsdtar
// where GNU tar fails, as on archives without end blocks) and its OCI markers are turned into
// overlay form. Member names are listed by Python's tarfile, a third implementation.

/** Turns an extracted layer's OCI markers into overlay form; $OVERLAY_OPAQUE_XATTR names the opaque xattr. */
export const CONVERT = String.raw`
import os, sys, stat, tarfile
from decimal import Decimal
tarpath, root = sys.argv[1], os.fsencode(sys.argv[2])
OPAQUE = os.environ.get('OVERLAY_OPAQUE_XATTR', 'trusted.overlay.opaque')
tar_mtime = int(os.stat(tarpath).st_mtime)
# directories the archive lists, with the mtime it records (the last listing wins, as extraction does)
explicit = {}
with tarfile.open(tarpath, 'r:', errorlevel=0) as t:
    try:
        for m in t:
            parts = [p for p in os.fsencode(m.name).split(b'/') if p not in (b'', b'.')]
            if b'..' in parts: continue
            if m.isdir():
                pax = m.pax_headers.get('mtime')
                explicit[b'/'.join(parts)] = int(Decimal(pax) * 10**9) if pax else int(m.mtime) * 10**9
    except tarfile.ReadError:
        pass
for dp, dns, fns in os.walk(root, topdown=False):
    for n in list(fns) + list(dns):
        if not n.startswith(b'.wh.'): continue
        p = os.path.join(dp, n)
        if n == b'.wh..wh..opq':
            os.unlink(p); os.setxattr(dp, OPAQUE, b'y', follow_symlinks=False)
            continue
        if n.startswith(b'.wh..wh.'):
            os.unlink(p); continue
        os.unlink(p)
        hidden = os.path.join(dp, n[4:])
        try:
            st = os.lstat(hidden)
        except FileNotFoundError:
            os.mknod(hidden, stat.S_IFCHR | 0o600, os.makedev(0, 0))
            continue
        # the same layer has the name too: it stays, and hides the layers below (a directory: opaque)
        if stat.S_ISDIR(st.st_mode): os.setxattr(hidden, OPAQUE, b'y', follow_symlinks=False)
# directory times as the archive records them: extraction moves them (a child written after its
# parent's times were set), and a parent the archive never lists gets the archive's mtime, as in layerfs
for dp, dns, fns in os.walk(root):
    rel = os.path.relpath(dp, root)
    rel = b'' if rel == b'.' else rel
    t = explicit.get(rel, tar_mtime * 10**9)
    os.utime(dp, ns=(t, t), follow_symlinks=False)
`

/** Extracts a layer tar for kernel overlayfs into `dest` (created; must not exist). */
export async function extractForOverlay(tarPath: string, dest: string): Promise<void> {
  await mkdir(dest, { recursive: true })
  const gnu = await run('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '--same-permissions', '-xf', tarPath, '-C', dest])
  // GNU tar's complaints about members that cannot exist (under a name that is a file) are fine:
  // those members are not in the layer. An archive cut short (no end blocks) is not: GNU tar then
  // truncates the last file, where bsdtar reads it whole.
  if (gnu.code !== 0 && /Unexpected EOF|Skipping to next header|Archive contains obsolescent/.test(gnu.stderr)) {
    await rm(dest, { recursive: true, force: true })
    await mkdir(dest)
    // bsdtar reads such an archive whole but still complains of the missing padding: not an error here
    const bsd = await run('bsdtar', ['--xattrs', '--numeric-owner', '-xpf', tarPath, '-C', dest])
    if (bsd.code !== 0 && !/Truncated input file/.test(bsd.stderr)) throw new Error(`bsdtar -x ${tarPath}: ${bsd.stderr.trim()}`)
  }
  await must('python3', ['-c', CONVERT, tarPath, dest])
}

const extracted = new Map<string, Promise<string>>()

/** The extraction of a tar, made once per tar content and kept under `cacheDir`. */
export async function extractedLayer(tarPath: string, cacheDir: string): Promise<string> {
  const st = await stat(tarPath)
  const id = createHash('sha256').update(`${tarPath}:${st.size}:${st.mtimeMs}:${st.ino}`).digest('hex').slice(0, 16)
  let p = extracted.get(id)
  if (!p) {
    p = (async () => {
      const dest = join(cacheDir, `x-${id}`)
      await rm(dest, { recursive: true, force: true })
      await extractForOverlay(tarPath, dest)
      return dest
    })()
    extracted.set(id, p)
  }
  return p
}
