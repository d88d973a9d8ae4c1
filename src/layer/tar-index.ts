import type { Entry, EntryKind, Timestamp } from './layer'
import type { SparseMap } from './tar-headers'

// The index of one tar, in one flat buffer that is both the in-memory form and the file on disk:
// a table of fixed-size records in breadth-first order (each directory's children contiguous and
// sorted by name bytes), a heap of base names, and a heap of rarely needed extras (symlink
// targets, sparse maps, xattrs, atime/ctime). Loading it is a read and a checksum; a lookup is a
// binary search per path component; entries become objects only when asked for.

export const RECORD_BYTES = 80
const W = RECORD_BYTES / 4 // u32 words per record
const D = RECORD_BYTES / 8 // f64 slots per record
// u32 words
const K_KIND = 0, K_MODE = 1, K_UID = 2, K_GID = 3, K_NLINK = 4, K_INO = 5, K_RDEV = 6, K_PARENT = 7
const K_NAME_OFF = 8, K_NAME_LEN = 9, K_FIRST = 10, K_COUNT = 11, K_EXTRA = 12, K_MTIME_NSEC = 13
// f64 slots
const F_SIZE = 7, F_DATA = 8, F_MTIME_SEC = 9

export const KIND_CODES: readonly (EntryKind | null)[] = ['file', 'dir', 'symlink', 'char', 'block', 'fifo', 'socket', null]
export const KIND_NONE = 7 // a name that only carries a whiteout
export const FLAG_OPAQUE = 1
export const FLAG_WHITEOUT = 2
export const NO_EXTRA = 0xffffffff
export const X_TARGET = 1, X_SPARSE = 2, X_XATTRS = 4, X_ATIME = 8, X_CTIME = 16

/** An entry of a tar layer: the union's Entry plus its record number in the index. */
export interface TarEntry extends Entry {
  readonly record: number
}

/** Where a file's bytes lie in the archive. */
export interface DataLocation {
  readonly dataOffset: number
  /** Data segments of a sparse file (stored back to back from dataOffset); null when not sparse. */
  readonly sparse: SparseMap | null
}

/** The three parts of an encoded index. `table` must be 8-byte aligned in its ArrayBuffer. */
export interface IndexParts {
  readonly table: Buffer
  readonly names: Buffer
  readonly extra: Buffer
}

export class TarIndex {
  readonly count: number
  private readonly u32: Uint32Array
  private readonly f64: Float64Array

  constructor(readonly parts: IndexParts) {
    const t = parts.table
    if (t.byteOffset % 8 !== 0 || t.length % RECORD_BYTES !== 0) throw new Error('misaligned index table')
    this.count = t.length / RECORD_BYTES
    this.u32 = new Uint32Array(t.buffer, t.byteOffset, t.length / 4)
    this.f64 = new Float64Array(t.buffer, t.byteOffset, t.length / 8)
  }

  /** The record of a '/'-rooted path, or -1. */
  find(path: string): number {
    let rec = 0
    if (path === '/') return 0
    let start = 1
    while (start <= path.length) {
      let end = path.indexOf('/', start)
      if (end < 0) end = path.length
      rec = this.child(rec, path, start, end)
      if (rec < 0) return -1
      start = end + 1
    }
    return rec
  }

  /** Binary search of `dir`'s children for the name path[start, end). */
  private child(dir: number, path: string, start: number, end: number): number {
    const u = this.u32
    let lo = u[dir * W + K_FIRST]
    let hi = lo + u[dir * W + K_COUNT] - 1
    const names = this.parts.names
    const len = end - start
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1
      const off = u[mid * W + K_NAME_OFF]
      const nlen = u[mid * W + K_NAME_LEN]
      // byte-wise comparison of the latin1 path slice with the stored name
      let cmp = 0
      const n = Math.min(len, nlen)
      for (let i = 0; i < n && cmp === 0; i++) cmp = names[off + i] - path.charCodeAt(start + i)
      if (cmp === 0) cmp = nlen - len
      if (cmp === 0) return mid
      if (cmp < 0) lo = mid + 1
      else hi = mid - 1
    }
    return -1
  }

  kindCode(rec: number): number {
    return this.u32[rec * W + K_KIND] & 0xff
  }

  flags(rec: number): number {
    return this.u32[rec * W + K_KIND] >>> 8
  }

  name(rec: number): string {
    const off = this.u32[rec * W + K_NAME_OFF]
    return this.parts.names.toString('latin1', off, off + this.u32[rec * W + K_NAME_LEN])
  }

  /** Child records of a directory record: [first, first + count). */
  children(rec: number): [number, number] {
    const first = this.u32[rec * W + K_FIRST]
    return [first, first + this.u32[rec * W + K_COUNT]]
  }

  entry(rec: number): TarEntry | null {
    const u = this.u32, f = this.f64, w = rec * W, d = rec * D
    const kind = KIND_CODES[u[w + K_KIND] & 0xff]
    if (!kind) return null
    const mtime: Timestamp = { sec: f[d + F_MTIME_SEC], nsec: u[w + K_MTIME_NSEC] }
    const size = f[d + F_SIZE]
    const x = u[w + K_EXTRA] === NO_EXTRA ? null : this.extra(rec)
    return {
      record: rec, kind, mode: u[w + K_MODE], uid: u[w + K_UID], gid: u[w + K_GID], size,
      storedSize: x?.storedSize ?? (kind === 'file' ? size : 0),
      mtime, atime: x?.atime ?? mtime, ctime: x?.ctime ?? mtime,
      nlink: u[w + K_NLINK], ino: u[w + K_INO], rdev: u[w + K_RDEV],
      opaque: (this.flags(rec) & FLAG_OPAQUE) !== 0,
    }
  }

  location(rec: number): DataLocation {
    return { dataOffset: this.f64[rec * D + F_DATA], sparse: this.extra(rec)?.sparse ?? null }
  }

  target(rec: number): string | null {
    return this.extra(rec)?.target ?? null
  }

  xattrs(rec: number): ReadonlyMap<string, Buffer> | null {
    return this.extra(rec)?.xattrs ?? null
  }

  private extra(rec: number): Extra | null {
    const off = this.u32[rec * W + K_EXTRA]
    return off === NO_EXTRA ? null : decodeExtra(this.parts.extra, off)
  }
}

/** What does not fit a fixed record. */
export interface Extra {
  target: string | null
  sparse: SparseMap | null
  storedSize: number | null
  xattrs: Map<string, Buffer> | null
  atime: Timestamp | null
  ctime: Timestamp | null
}

function decodeExtra(b: Buffer, off: number): Extra {
  let p = off
  const flags = b.readUInt32LE(p); p += 4
  const str = (): string => { const n = b.readUInt32LE(p); p += 4; const s = b.toString('latin1', p, p + n); p += n; return s }
  const num = (): number => { const v = b.readDoubleLE(p); p += 8; return v }
  const time = (): Timestamp => { const sec = num(); const nsec = b.readUInt32LE(p); p += 4; return { sec, nsec } }
  const x: Extra = { target: null, sparse: null, storedSize: null, xattrs: null, atime: null, ctime: null }
  if (flags & X_TARGET) x.target = str()
  if (flags & X_SPARSE) {
    x.storedSize = num()
    const n = b.readUInt32LE(p); p += 4
    x.sparse = []
    for (let i = 0; i < n; i++) x.sparse.push([num(), num()])
  }
  if (flags & X_XATTRS) {
    const n = b.readUInt32LE(p); p += 4
    x.xattrs = new Map()
    for (let i = 0; i < n; i++) {
      const k = str()
      const len = b.readUInt32LE(p); p += 4
      x.xattrs.set(k, Buffer.from(b.subarray(p, p + len))); p += len
    }
  }
  if (flags & X_ATIME) x.atime = time()
  if (flags & X_CTIME) x.ctime = time()
  return x
}

/** Appends bytes to a growing buffer (for building an index). */
export class ByteWriter {
  private buf: Buffer
  length = 0
  constructor(initial = 1 << 16) {
    this.buf = Buffer.alloc(initial)
  }
  private room(n: number): void {
    if (this.length + n <= this.buf.length) return
    const next = Buffer.alloc(Math.max(this.buf.length * 2, this.length + n))
    this.buf.copy(next, 0, 0, this.length)
    this.buf = next
  }
  u32(v: number): void { this.room(4); this.buf.writeUInt32LE(v >>> 0, this.length); this.length += 4 }
  f64(v: number): void { this.room(8); this.buf.writeDoubleLE(v, this.length); this.length += 8 }
  latin1(s: string): void { this.room(s.length); this.length += this.buf.write(s, this.length, s.length, 'latin1') }
  bytes(b: Buffer): void { this.room(b.length); b.copy(this.buf, this.length); this.length += b.length }
  str(s: string): void { this.u32(s.length); this.latin1(s) }
  time(t: Timestamp): void { this.f64(t.sec); this.u32(t.nsec) }
  done(): Buffer { return this.buf.subarray(0, this.length) }
}

export function encodeExtra(w: ByteWriter, x: Extra): number {
  const off = w.length
  const flags = (x.target !== null ? X_TARGET : 0) | (x.sparse ? X_SPARSE : 0) | (x.xattrs ? X_XATTRS : 0)
    | (x.atime ? X_ATIME : 0) | (x.ctime ? X_CTIME : 0)
  w.u32(flags)
  if (x.target !== null) w.str(x.target)
  if (x.sparse) {
    w.f64(x.storedSize ?? 0)
    w.u32(x.sparse.length)
    for (const [o, n] of x.sparse) { w.f64(o); w.f64(n) }
  }
  if (x.xattrs) {
    w.u32(x.xattrs.size)
    for (const [k, v] of x.xattrs) { w.str(k); w.u32(v.length); w.bytes(v) }
  }
  if (x.atime) w.time(x.atime)
  if (x.ctime) w.time(x.ctime)
  return off
}

export interface RecordFields {
  kindCode: number
  flags: number
  mode: number
  uid: number
  gid: number
  nlink: number
  ino: number
  rdev: number
  parent: number
  nameOff: number
  nameLen: number
  first: number
  count: number
  extra: number
  mtime: Timestamp
  size: number
  dataOffset: number
}

/** Writes records through typed-array views (the table buffer must be 8-byte aligned). */
export class RecordWriter {
  private readonly u32: Uint32Array
  private readonly f64: Float64Array
  constructor(table: Buffer) {
    this.u32 = new Uint32Array(table.buffer, table.byteOffset, table.length / 4)
    this.f64 = new Float64Array(table.buffer, table.byteOffset, table.length / 8)
  }
  write(rec: number, r: RecordFields): void {
    const u = this.u32, w = rec * W, d = rec * D
    u[w + K_KIND] = r.kindCode | (r.flags << 8)
    u[w + K_MODE] = r.mode
    u[w + K_UID] = r.uid
    u[w + K_GID] = r.gid
    u[w + K_NLINK] = r.nlink
    u[w + K_INO] = r.ino
    u[w + K_RDEV] = r.rdev
    u[w + K_PARENT] = r.parent
    u[w + K_NAME_OFF] = r.nameOff
    u[w + K_NAME_LEN] = r.nameLen
    u[w + K_FIRST] = r.first
    u[w + K_COUNT] = r.count
    u[w + K_EXTRA] = r.extra
    u[w + K_MTIME_NSEC] = r.mtime.nsec
    this.f64[d + F_SIZE] = r.size
    this.f64[d + F_DATA] = r.dataOffset
    this.f64[d + F_MTIME_SEC] = r.mtime.sec
  }
}
