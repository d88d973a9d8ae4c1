import { createHash } from 'node:crypto'
import { mkdir, open, readFile, rename, unlink } from 'node:fs/promises'
import { homedir } from 'node:os'
import { join } from 'node:path'
import type { EntryKind, Timestamp } from './layer'
import type { TarEntry, TarIndexData } from './tar-index'
import type { SparseMap } from './tar-headers'
import { log } from '../log'

// A persisted tar index: "LAYERFS-INDEX\n", format version, the JSON identity of the archive it was
// built from, the binary entry records, and a SHA-256 of all that. A reader trusts a file only when
// the magic, version, checksum and identity all match; anything else means "rebuild".

const MAGIC = Buffer.from('LAYERFS-INDEX\n', 'latin1')
export const INDEX_VERSION = 1

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

const KINDS: EntryKind[] = ['file', 'dir', 'symlink', 'char', 'block', 'fifo', 'socket']
const F_OPAQUE = 1, F_TARGET = 2, F_SPARSE = 4, F_XATTRS = 8, F_ATIME = 16, F_CTIME = 32

class Writer {
  private buf = Buffer.allocUnsafe(1 << 20)
  private pos = 0
  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n))
    this.buf.copy(next, 0, 0, this.pos)
    this.buf = next
  }
  u8(v: number): void { this.room(1); this.buf[this.pos++] = v }
  u32(v: number): void { this.room(4); this.buf.writeUInt32LE(v >>> 0, this.pos); this.pos += 4 }
  f64(v: number): void { this.room(8); this.buf.writeDoubleLE(v, this.pos); this.pos += 8 }
  bytes(b: Buffer): void { this.u32(b.length); this.room(b.length); b.copy(this.buf, this.pos); this.pos += b.length }
  str(s: string): void {
    this.u32(s.length); this.room(s.length); this.pos += this.buf.write(s, this.pos, s.length, 'latin1')
  }
  time(t: Timestamp): void { this.f64(t.sec); this.u32(t.nsec) }
  done(): Buffer { return this.buf.subarray(0, this.pos) }
}

class Reader {
  pos = 0
  constructor(private readonly buf: Buffer) {}
  u8(): number { return this.buf[this.pos++] }
  u32(): number { const v = this.buf.readUInt32LE(this.pos); this.pos += 4; return v }
  f64(): number { const v = this.buf.readDoubleLE(this.pos); this.pos += 8; return v }
  bytes(): Buffer { const n = this.u32(); const b = Buffer.from(this.buf.subarray(this.pos, this.pos + n)); this.pos += n; return b }
  str(): string { const n = this.u32(); const s = this.buf.toString('latin1', this.pos, this.pos + n); this.pos += n; return s }
  time(): Timestamp { return { sec: this.f64(), nsec: this.u32() } }
}

export function encodeIndex(identity: ArchiveIdentity, data: TarIndexData): Buffer {
  const w = new Writer()
  w.u32(INDEX_VERSION)
  w.bytes(Buffer.from(JSON.stringify(identity), 'utf8'))
  w.u32(data.entries.length)
  for (const e of data.entries) {
    const sameA = e.atime.sec === e.mtime.sec && e.atime.nsec === e.mtime.nsec
    const sameC = e.ctime.sec === e.mtime.sec && e.ctime.nsec === e.mtime.nsec
    const flags = (e.opaque ? F_OPAQUE : 0) | (e.target !== null ? F_TARGET : 0) | (e.sparse ? F_SPARSE : 0)
      | (e.xattrs ? F_XATTRS : 0) | (sameA ? 0 : F_ATIME) | (sameC ? 0 : F_CTIME)
    w.str(e.path)
    w.u8(KINDS.indexOf(e.kind))
    w.u8(flags)
    w.u32(e.mode); w.u32(e.uid); w.u32(e.gid)
    w.f64(e.size); w.f64(e.storedSize); w.f64(e.dataOffset)
    w.time(e.mtime)
    if (!sameA) w.time(e.atime)
    if (!sameC) w.time(e.ctime)
    w.u32(e.nlink); w.u32(e.ino); w.u32(e.rdev)
    if (e.target !== null) w.str(e.target)
    if (e.sparse) {
      w.u32(e.sparse.length)
      for (const [o, n] of e.sparse) { w.f64(o); w.f64(n) }
    }
    if (e.xattrs) {
      w.u32(e.xattrs.size)
      for (const [k, v] of e.xattrs) { w.str(k); w.bytes(v) }
    }
  }
  w.u32(data.whiteouts.length)
  for (const p of data.whiteouts) w.str(p)
  const body = w.done()
  const sum = createHash('sha256').update(MAGIC).update(body).digest()
  return Buffer.concat([MAGIC, body, sum])
}

/** Decodes an index file; null when it is not a whole index of this version for this identity. */
export function decodeIndex(file: Buffer, identity: ArchiveIdentity): TarIndexData | null {
  if (file.length < MAGIC.length + 36 || !file.subarray(0, MAGIC.length).equals(MAGIC)) return null
  const body = file.subarray(MAGIC.length, file.length - 32)
  const sum = createHash('sha256').update(MAGIC).update(body).digest()
  if (!sum.equals(file.subarray(file.length - 32))) return null
  const r = new Reader(body)
  if (r.u32() !== INDEX_VERSION) return null
  const stored = r.bytes().toString('utf8')
  if (stored !== JSON.stringify(identity)) return null
  const count = r.u32()
  const entries: TarEntry[] = new Array(count)
  for (let i = 0; i < count; i++) {
    const path = r.str()
    const kind = KINDS[r.u8()]
    const flags = r.u8()
    const mode = r.u32(), uid = r.u32(), gid = r.u32()
    const size = r.f64(), storedSize = r.f64(), dataOffset = r.f64()
    const mtime = r.time()
    const atime = flags & F_ATIME ? r.time() : mtime
    const ctime = flags & F_CTIME ? r.time() : mtime
    const nlink = r.u32(), ino = r.u32(), rdev = r.u32()
    const target = flags & F_TARGET ? r.str() : null
    let sparse: SparseMap | null = null
    if (flags & F_SPARSE) {
      const n = r.u32()
      sparse = []
      for (let j = 0; j < n; j++) sparse.push([r.f64(), r.f64()])
    }
    let xattrs: Map<string, Buffer> | null = null
    if (flags & F_XATTRS) {
      const n = r.u32()
      xattrs = new Map()
      for (let j = 0; j < n; j++) xattrs.set(r.str(), r.bytes())
    }
    entries[i] = {
      path, kind, mode, uid, gid, size, storedSize, dataOffset, mtime, atime, ctime, nlink, ino, rdev,
      opaque: (flags & F_OPAQUE) !== 0, target, sparse, xattrs,
    }
  }
  const whiteouts: string[] = new Array(r.u32())
  for (let i = 0; i < whiteouts.length; i++) whiteouts[i] = r.str()
  return { entries, whiteouts }
}

export async function loadIndex(file: string, identity: ArchiveIdentity): Promise<TarIndexData | null> {
  let raw: Buffer
  try {
    raw = await readFile(file)
  } catch {
    return null
  }
  try {
    const data = decodeIndex(raw, identity)
    if (!data) log.index('index %s is stale or damaged; rebuilding', file)
    return data
  } catch (err) {
    log.index('index %s unreadable (%s); rebuilding', file, (err as Error).message)
    return null
  }
}

/** Writes the index atomically: a temp file in the same directory, fsync, rename. */
export async function saveIndex(file: string, identity: ArchiveIdentity, data: TarIndexData): Promise<void> {
  const dir = join(file, '..')
  await mkdir(dir, { recursive: true })
  const tmp = `${file}.${process.pid}.tmp`
  const fh = await open(tmp, 'w', 0o644)
  try {
    await fh.writeFile(encodeIndex(identity, data))
    await fh.sync()
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
