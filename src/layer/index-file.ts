import { createHash } from 'node:crypto'
import { closeSync, fstatSync, openSync, readSync } from 'node:fs'
import { mkdir, open, rename, unlink } from 'node:fs/promises'
import { homedir } from 'node:os'
import { dirname, join } from 'node:path'
import { TarIndex } from './tar-index'
import { log } from '../log'

// A persisted tar index: "LAYERFS-INDEX\n", the format version, the JSON identity of the archive it
// was built from, the three parts of the TarIndex (8-byte aligned), and a SHA-256 of all that. A
// reader trusts a file only when magic, version, checksum and identity all match; else it rebuilds.

const MAGIC = Buffer.from('LAYERFS-INDEX\n', 'latin1')
// Bump whenever what an index holds or how members are decoded changes: old files are then rebuilt.
export const INDEX_VERSION = 3

/** What must not have changed in the archive for its index to be reused. */
export interface ArchiveIdentity {
  readonly path: string
  readonly size: number
  readonly mtimeNs: string
  readonly ctimeNs: string
  readonly dev: string
  readonly ino: string
  /** SHA-256 of the archive's first and last 64 KiB: catches a rewrite that kept size and times. */
  readonly sample: string
}

export function cacheDir(): string {
  const base = process.env.XDG_CACHE_HOME || join(homedir(), '.cache')
  return join(base, 'layerfs')
}

export function indexPathFor(key: string): string {
  return join(cacheDir(), 'index', createHash('sha256').update(key).digest('hex').slice(0, 32) + '.idx')
}

const align8 = (n: number): number => (n + 7) & ~7

/** Header: magic, u32 version, u32 identity length, identity, padding, then u32 table/names/extra lengths. */
export function encodeIndex(identity: ArchiveIdentity, index: TarIndex): Buffer {
  const id = Buffer.from(JSON.stringify(identity), 'utf8')
  const { table, names, extra } = index.parts
  const headerLen = align8(MAGIC.length + 8 + id.length) + 16
  const total = headerLen + table.length + align8(names.length) + extra.length + 32
  const out = Buffer.alloc(total)
  MAGIC.copy(out, 0)
  out.writeUInt32LE(INDEX_VERSION, MAGIC.length)
  out.writeUInt32LE(id.length, MAGIC.length + 4)
  id.copy(out, MAGIC.length + 8)
  let p = headerLen - 16
  out.writeUInt32LE(table.length, p)
  out.writeUInt32LE(names.length, p + 4)
  out.writeUInt32LE(extra.length, p + 8)
  p = headerLen
  table.copy(out, p); p += table.length
  names.copy(out, p); p += align8(names.length)
  extra.copy(out, p); p += extra.length
  createHash('sha256').update(out.subarray(0, p)).digest().copy(out, p)
  return out
}

/** Decodes an index file's bytes (8-byte aligned); null when it is not a whole index of this version for this identity. */
export function decodeIndex(file: Buffer, identity: ArchiveIdentity): TarIndex | null {
  if (file.length < MAGIC.length + 8 + 32 || !file.subarray(0, MAGIC.length).equals(MAGIC)) return null
  if (file.readUInt32LE(MAGIC.length) !== INDEX_VERSION) return null
  const idLen = file.readUInt32LE(MAGIC.length + 4)
  if (MAGIC.length + 8 + idLen > file.length) return null
  if (file.toString('utf8', MAGIC.length + 8, MAGIC.length + 8 + idLen) !== JSON.stringify(identity)) return null
  const headerLen = align8(MAGIC.length + 8 + idLen) + 16
  const tableLen = file.readUInt32LE(headerLen - 16)
  const namesLen = file.readUInt32LE(headerLen - 12)
  const extraLen = file.readUInt32LE(headerLen - 8)
  const end = headerLen + tableLen + align8(namesLen) + extraLen
  if (end + 32 !== file.length) return null
  if (!createHash('sha256').update(file.subarray(0, end)).digest().equals(file.subarray(end))) return null
  const namesAt = headerLen + tableLen
  const extraAt = namesAt + align8(namesLen)
  return new TarIndex({
    table: file.subarray(headerLen, namesAt),
    names: file.subarray(namesAt, namesAt + namesLen),
    extra: file.subarray(extraAt, extraAt + extraLen),
  })
}

/** Reads a whole file into a fresh (so 8-byte aligned) buffer. */
function readWhole(path: string): Buffer | null {
  let fd: number
  try {
    fd = openSync(path, 'r')
  } catch {
    return null
  }
  try {
    const size = fstatSync(fd).size
    const buf = Buffer.alloc(size)
    let got = 0
    while (got < size) {
      const n = readSync(fd, buf, got, size - got, got)
      if (n === 0) break
      got += n
    }
    return got === size ? buf : null
  } finally {
    closeSync(fd)
  }
}

export function loadIndex(file: string, identity: ArchiveIdentity): TarIndex | null {
  const raw = readWhole(file)
  if (!raw) return null
  try {
    const index = decodeIndex(raw, identity)
    if (!index) log.index('index %s is stale or damaged; rebuilding', file)
    return index
  } catch (err) {
    log.index('index %s unreadable (%s); rebuilding', file, (err as Error).message)
    return null
  }
}

/**
 * Writes the index atomically: a temp file in the same directory, then rename. No fsync: the index is
 * a cache, and a file torn by a crash fails its checksum and is rebuilt.
 */
export async function saveIndex(file: string, identity: ArchiveIdentity, index: TarIndex): Promise<void> {
  await mkdir(dirname(file), { recursive: true })
  const tmp = `${file}.${process.pid}.tmp`
  const fh = await open(tmp, 'w', 0o644)
  try {
    await fh.writeFile(encodeIndex(identity, index))
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
