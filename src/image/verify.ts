import { createHash } from 'node:crypto'
import { mkdir, open, readFile, rename, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { UserError } from '../errors'
import type { LayerBlob } from '../layer/blob'
import { cacheDir } from '../layer/index-file'
import type { Progress } from '../progress'
import { log } from '../log'

// A layer's blob is hashed once: a marker in the cache then says "these bytes of this file, as
// they were (size, times, inode), have this digest". A changed file is hashed again.

interface VerifiedMarker {
  readonly file: BlobFileIdentity
  readonly digest: string
}

interface BlobFileIdentity {
  readonly path: string
  readonly offset: number
  readonly length: number
  readonly size: number
  readonly mtimeNs: string
  readonly ctimeNs: string
  readonly ino: string
}

export function verifiedDir(): string {
  return join(cacheDir(), 'verified')
}

async function fileIdentity(blob: LayerBlob): Promise<BlobFileIdentity> {
  const st = await stat(blob.path, { bigint: true })
  return { path: blob.path, offset: blob.offset, length: blob.length, size: Number(st.size), mtimeNs: String(st.mtimeNs), ctimeNs: String(st.ctimeNs), ino: String(st.ino) }
}

function markerPath(id: BlobFileIdentity): string {
  return join(verifiedDir(), createHash('sha256').update(JSON.stringify(id)).digest('hex').slice(0, 32) + '.json')
}

/** sha256 of the blob's bytes, read in 4 MiB steps. */
async function hashRange(blob: LayerBlob, progress: Progress): Promise<string> {
  const fh = await open(blob.path, 'r')
  try {
    const hash = createHash('sha256')
    const buf = Buffer.allocUnsafe(4 << 20)
    let done = 0
    while (done < blob.length) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, blob.length - done), blob.offset + done)
      if (bytesRead === 0) throw new UserError(`${blob.name}: blob is truncated (${done} of ${blob.length} bytes)`)
      hash.update(buf.subarray(0, bytesRead))
      done += bytesRead
      progress.update(done, blob.length)
    }
    return 'sha256:' + hash.digest('hex')
  } finally {
    await fh.close()
  }
}

/**
 * The blob with its digest known and checked: the one the image declares (a mismatch is an error
 * naming the layer), or for a docker-save layer (which declares none) the one its bytes have.
 */
export async function verifyBlob(blob: LayerBlob, progress: (label: string) => Progress): Promise<LayerBlob> {
  const id = await fileIdentity(blob)
  const marker = markerPath(id)
  try {
    const seen = JSON.parse(await readFile(marker, 'utf8')) as VerifiedMarker
    if (JSON.stringify(seen.file) === JSON.stringify(id) && (!blob.digest || seen.digest === blob.digest)) {
      return { ...blob, digest: seen.digest }
    }
  } catch { /* not verified yet */ }
  const bar = progress(`checking ${blob.name}`)
  let digest: string
  try {
    digest = await hashRange(blob, bar)
  } finally {
    bar.finish()
  }
  if (blob.digest && blob.digest.startsWith('sha256:') && digest !== blob.digest) {
    throw new UserError(`${blob.name}: digest mismatch: the manifest says ${blob.digest}, the blob is ${digest}`)
  }
  try {
    await mkdir(verifiedDir(), { recursive: true })
    const tmp = `${marker}.${process.pid}.tmp`
    await writeFile(tmp, JSON.stringify({ file: id, digest } satisfies VerifiedMarker))
    await rename(tmp, marker)
  } catch (err) {
    log.index('could not record verified blob: %s', (err as Error).message)
  }
  return { ...blob, digest }
}
