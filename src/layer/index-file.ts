import { createHash } from 'node:crypto'
import { readdirSync, statSync, utimesSync } from 'node:fs'
import { mkdir, open, rename, unlink } from 'node:fs/promises'
import { cacheDir } from '../cache-dir'
import { dirname, join } from 'node:path'
import { TarIndex } from './tar-index'
import { log } from '../log'
import { indexMap } from '../sys'

// A persisted tar index: "LAYERFS-INDEX\n", the format version, a JSON header (the identity of
// what it was built from, and facts for `layerfs cache ls`), the three parts of the TarIndex and
// the gzip checkpoints if any (8-byte aligned), and a 64-bit checksum of all that (native/index_map.c:
// against damage; SHA-256 cost 13 ms per load of a 200k-entry index). A reader maps the file rather
// than reading it, and trusts it only when magic, version, checksum and identity all match; else it
// rebuilds.

const MAGIC = Buffer.from('LAYERFS-INDEX\n', 'latin1')
// Bump whenever what an index holds or how members are decoded changes: old files are then rebuilt.
export const INDEX_VERSION = 5

/** What must not have changed in a loose archive for its index to be reused. */
export interface ArchiveIdentity {
  readonly path: string
  /** Where the archive lies in that file (a layer inside a docker-save archive), and its length. */
  readonly offset: number
  readonly length: number
  readonly size: number
  readonly mtimeNs: string
  readonly ctimeNs: string
  readonly dev: string
  readonly ino: string
  /** A 64-bit checksum (hash64) of the archive's first and last 64 KiB: catches a rewrite that kept size and times. */
  readonly sample: string
}

/** An image layer's index is keyed by the digest of its blob: one index for every image that shares it. */
export interface DigestIdentity {
  readonly digest: string
}

export type IndexIdentity = ArchiveIdentity | DigestIdentity

/** Facts about the indexed layer, shown by `layerfs cache ls`; not part of the identity. */
export interface IndexMeta {
  /** What it was last opened as (a path, or an image and layer). */
  readonly source: string
  readonly format: 'tar' | 'gzip'
  /** sha256 of the uncompressed tar (an image's diff_id), when computed. */
  readonly diffId: string | null
  /** Bytes of the uncompressed tar and of the stored blob. */
  readonly size: number
  readonly storedSize: number
  readonly entries: number
}

export interface IndexHeader {
  readonly identity: IndexIdentity
  readonly meta: IndexMeta
}

export interface LoadedIndex {
  readonly index: TarIndex
  readonly meta: IndexMeta
  /** The gzip checkpoint table's bytes, or null for a plain tar. */
  readonly access: Buffer | null
}

export { cacheDir }

/** The index file of a loose archive (keyed by its real path) or of a blob (keyed by its digest). */
export function indexPathFor(key: string | DigestIdentity): string {
  if (typeof key !== 'string') return join(cacheDir(), 'index', key.digest.replace(':', '-') + '.idx')
  return join(cacheDir(), 'index', createHash('sha256').update(key).digest('hex').slice(0, 32) + '.idx')
}

const align8 = (n: number): number => (n + 7) & ~7
const CHECKSUM_BYTES = 8

/** Magic, u32 version, u32 header length, header JSON, padding, u32 table/names/extra/access lengths, parts. */
export function encodeIndex(header: IndexHeader, index: TarIndex, access: Buffer | null): Buffer {
  const head = Buffer.from(JSON.stringify(header), 'utf8')
  const { table, names, extra } = index.parts
  const acc = access ?? Buffer.alloc(0)
  const headerLen = align8(MAGIC.length + 8 + head.length) + 16
  const total = headerLen + table.length + align8(names.length) + align8(extra.length) + align8(acc.length) + CHECKSUM_BYTES
  const out = Buffer.alloc(total)
  MAGIC.copy(out, 0)
  out.writeUInt32LE(INDEX_VERSION, MAGIC.length)
  out.writeUInt32LE(head.length, MAGIC.length + 4)
  head.copy(out, MAGIC.length + 8)
  let p = headerLen - 16
  out.writeUInt32LE(table.length, p)
  out.writeUInt32LE(names.length, p + 4)
  out.writeUInt32LE(extra.length, p + 8)
  out.writeUInt32LE(acc.length, p + 12)
  p = headerLen
  table.copy(out, p); p += table.length
  names.copy(out, p); p += align8(names.length)
  extra.copy(out, p); p += align8(extra.length)
  acc.copy(out, p); p += align8(acc.length)
  indexMap.hash64(out.subarray(0, p)).copy(out, p)
  return out
}

/** The header of an index file's bytes, or null when it is not an index of this version. */
export function decodeHeader(file: Buffer): { header: IndexHeader; headerLen: number } | null {
  if (file.length < MAGIC.length + 8 || !file.subarray(0, MAGIC.length).equals(MAGIC)) return null
  if (file.readUInt32LE(MAGIC.length) !== INDEX_VERSION) return null
  const idLen = file.readUInt32LE(MAGIC.length + 4)
  if (MAGIC.length + 8 + idLen > file.length) return null
  try {
    const header = JSON.parse(file.toString('utf8', MAGIC.length + 8, MAGIC.length + 8 + idLen)) as IndexHeader
    return { header, headerLen: align8(MAGIC.length + 8 + idLen) + 16 }
  } catch {
    return null
  }
}

/**
 * Decodes an index file's bytes (8-byte aligned); null when it is not a whole index of this version
 * for this identity. `checked`: its checksum was verified already (a preloaded index).
 */
export function decodeIndex(file: Buffer, identity: IndexIdentity, checked = false): LoadedIndex | null {
  const h = decodeHeader(file)
  if (!h || JSON.stringify(h.header.identity) !== JSON.stringify(identity)) return null
  const { headerLen } = h
  if (headerLen > file.length) return null
  const tableLen = file.readUInt32LE(headerLen - 16)
  const namesLen = file.readUInt32LE(headerLen - 12)
  const extraLen = file.readUInt32LE(headerLen - 8)
  const accessLen = file.readUInt32LE(headerLen - 4)
  const namesAt = headerLen + tableLen
  const extraAt = namesAt + align8(namesLen)
  const accessAt = extraAt + align8(extraLen)
  const end = accessAt + align8(accessLen)
  if (end + CHECKSUM_BYTES !== file.length) return null
  if (!checked && !checksumOk(file, end)) return null
  const index = new TarIndex({
    table: file.subarray(headerLen, namesAt),
    names: file.subarray(namesAt, namesAt + namesLen),
    extra: file.subarray(extraAt, extraAt + extraLen),
  })
  return { index, meta: h.header.meta, access: accessLen > 0 ? file.subarray(accessAt, accessAt + accessLen) : null }
}

function checksumOk(file: Buffer, end: number): boolean {
  return indexMap.hash64(file.subarray(0, end)).equals(file.subarray(end))
}

/** Index files mapped and checked ahead of need, with what identified the file then. */
interface FileId { dev: number; ino: number; size: number; mtimeMs: number }
const preloaded = new Map<string, FileId & { raw: Buffer }>()

/**
 * Maps and checks the most recently used indexes (a standby does, while it waits): the mount that
 * comes next most likely uses one of them, and then skips the checksum (2 ms for 200k entries).
 * A file is taken as checked only while it is the same file, unchanged (device, inode, size, mtime).
 * Ones this process already holds are left as they are: a standby is given back after every
 * mount, and mapping and checking a 200k-entry index again each round cost 19 MB more resident
 * (until collected) and a pass over all of it.
 */
export function preloadRecentIndexes(held: (file: string) => boolean = () => false, maxFiles = 4, maxBytes = 256 << 20): void {
  const dir = join(cacheDir(), 'index')
  let names: string[]
  try {
    names = readdirSync(dir).filter((n) => n.endsWith('.idx'))
  } catch {
    return
  }
  const files = names.flatMap((n) => {
    try {
      const st = statSync(join(dir, n))
      return [{ file: join(dir, n), dev: st.dev, ino: st.ino, size: st.size, mtimeMs: st.mtimeMs }]
    } catch {
      return []
    }
  }).sort((a, b) => b.mtimeMs - a.mtimeMs)
  let bytes = 0
  const wanted = new Set<string>()
  for (const f of files.slice(0, maxFiles)) {
    if (bytes + f.size > maxBytes) break
    if (held(f.file)) continue // loaded by a mount of this process, and kept (loaded-indexes.ts)
    const pre = preloaded.get(f.file)
    if (!pre || !sameFile(pre, f)) {
      const raw = indexMap.mapFile(f.file)
      const h = raw && decodeHeader(raw)
      if (!raw || !h || raw.length !== f.size || f.size < CHECKSUM_BYTES || !checksumOk(raw, f.size - CHECKSUM_BYTES)) continue
      preloaded.set(f.file, { ...f, raw })
    }
    wanted.add(f.file)
    bytes += f.size
  }
  for (const file of preloaded.keys()) if (!wanted.has(file)) preloaded.delete(file) // unmapped when collected
}

/** Whether a file is still the one a preload checked (device, inode, size, mtime). */
function sameFile(a: FileId, b: FileId): boolean {
  return a.dev === b.dev && a.ino === b.ino && a.size === b.size && a.mtimeMs === b.mtimeMs
}

/** A preloaded index file's bytes, if the file is still the one that was checked. */
function takePreloaded(file: string): Buffer | null {
  const pre = preloaded.get(file)
  if (!pre) return null
  preloaded.delete(file)
  try {
    const st = statSync(file)
    return sameFile(st, pre) ? pre.raw : null
  } catch {
    return null
  }
}

export function loadIndex(file: string, identity: IndexIdentity): LoadedIndex | null {
  const pre = takePreloaded(file)
  const raw = pre ?? indexMap.mapFile(file) // page-aligned, so the typed views over it are aligned
  if (!raw) return null
  try {
    const loaded = decodeIndex(raw, identity, pre !== null)
    if (!loaded) log.index('index %s is stale or damaged; rebuilding', file)
    else markUsed(file)
    return loaded
  } catch (err) {
    log.index('index %s unreadable (%s); rebuilding', file, (err as Error).message)
    return null
  }
}

/** An index file's mtime says when it was last used, for `layerfs cache prune`. */
export function markUsed(file: string): void {
  const now = new Date()
  try { utimesSync(file, now, now) } catch { /* a read-only cache still serves */ }
}

/**
 * Writes the index atomically: a temp file in the same directory, then rename. No fsync: the index is
 * a cache, and a file torn by a crash fails its checksum and is rebuilt.
 */
export async function saveIndex(file: string, header: IndexHeader, index: TarIndex, access: Buffer | null): Promise<void> {
  await mkdir(dirname(file), { recursive: true })
  const tmp = `${file}.${process.pid}.tmp`
  const fh = await open(tmp, 'w', 0o644)
  try {
    await fh.writeFile(encodeIndex(header, index, access))
  } finally {
    await fh.close()
  }
  try {
    await rename(tmp, file)
  } catch (err) {
    await unlink(tmp).catch(() => undefined)
    throw err
  }
}
