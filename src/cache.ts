import { closeSync, openSync, readSync } from 'node:fs'
import { readdir, readFile, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { cacheDir, decodeHeader, type ArchiveIdentity, type IndexHeader } from './layer/index-file'
import { verifiedDir } from './image/verify'

// `layerfs cache ls` and `layerfs cache prune`: the persisted indexes (one per loose archive path,
// one per image layer digest) and the markers of blobs already hashed.

export interface CacheEntry {
  readonly file: string
  /** sha256:… for an image layer, the archive's path for a loose one. */
  readonly key: string
  readonly bytes: number
  readonly lastUsed: Date
  /** Null when the file is not a readable index of this version. */
  readonly header: IndexHeader | null
  /** Why prune would remove it without --all, or null. */
  readonly stale: string | null
}

function readHead(file: string): Buffer {
  const fd = openSync(file, 'r')
  try {
    const buf = Buffer.alloc(64 << 10)
    return buf.subarray(0, readSync(fd, buf, 0, buf.length, 0))
  } finally {
    closeSync(fd)
  }
}

async function staleness(header: IndexHeader | null): Promise<string | null> {
  if (!header) return 'not an index of this version'
  const id = header.identity
  if ('digest' in id) return null
  const a = id as ArchiveIdentity
  try {
    const st = await stat(a.path, { bigint: true })
    if (Number(st.size) !== a.size || String(st.mtimeNs) !== a.mtimeNs || String(st.ino) !== a.ino) return 'its archive has changed'
    return null
  } catch {
    return 'its archive is gone'
  }
}

export async function listCache(): Promise<CacheEntry[]> {
  const dir = join(cacheDir(), 'index')
  let names: string[]
  try {
    names = (await readdir(dir)).filter((n) => n.endsWith('.idx'))
  } catch {
    return []
  }
  const out: CacheEntry[] = []
  for (const name of names.sort()) {
    const file = join(dir, name)
    let st
    try {
      st = await stat(file)
    } catch {
      continue
    }
    let header: IndexHeader | null = null
    try {
      header = decodeHeader(readHead(file))?.header ?? null
    } catch { /* unreadable: listed as such */ }
    const id = header?.identity
    const key = !id ? name : 'digest' in id ? id.digest : (id as ArchiveIdentity).path
    out.push({ file, key, bytes: st.size, lastUsed: st.mtime, header, stale: await staleness(header) })
  }
  return out
}

export interface PruneResult {
  readonly removed: CacheEntry[]
  readonly markers: number
  readonly bytes: number
}

/** Removes stale indexes (archive gone or changed, old versions), those unused for `unusedDays`, or all. */
export async function pruneCache(opts: { all: boolean; unusedDays: number | null }): Promise<PruneResult> {
  const now = Date.now()
  const removed: CacheEntry[] = []
  let bytes = 0
  for (const e of await listCache()) {
    const old = opts.unusedDays !== null && now - e.lastUsed.getTime() > opts.unusedDays * 86400_000
    if (!opts.all && !old && e.stale === null) continue
    await rm(e.file, { force: true })
    removed.push(e)
    bytes += e.bytes
  }
  // markers of hashed blobs: all of them with --all, else those whose file is gone or changed
  let markers = 0
  let names: string[] = []
  try {
    names = await readdir(verifiedDir())
  } catch { /* none */ }
  for (const name of names) {
    const file = join(verifiedDir(), name)
    let drop = opts.all || name.endsWith('.tmp')
    if (!drop) {
      try {
        const m = JSON.parse(await readFile(file, 'utf8')) as { file: { path: string; size: number; mtimeNs: string; ino: string } }
        const st = await stat(m.file.path, { bigint: true })
        drop = Number(st.size) !== m.file.size || String(st.mtimeNs) !== m.file.mtimeNs || String(st.ino) !== m.file.ino
      } catch {
        drop = true
      }
    }
    if (drop) {
      await rm(file, { force: true })
      markers++
    }
  }
  return { removed, markers, bytes }
}
