import { createHash, type Hash } from 'node:crypto'
import { deflateRawSync, inflateRawSync } from 'node:zlib'
import { gz, type GzCheckpoint, type GzCursor } from '../sys'
import type { ScanInput } from './tar-scan'
import { FsError, Errno } from '../errors'

// Random access into a gzip-compressed layer without inflating it to disk (the zran method): the
// one indexing pass records a checkpoint every SPAN bytes of output (inflate state at a deflate
// block boundary plus the 32 KiB window before it); a read then restarts at the checkpoint at or
// before its offset and inflates at most one span to get there. The inflating is native
// (native/gzip_access.c over zlib): Node's zlib cannot resume a stream mid-way.

/** Output bytes between checkpoints: a read inflates at most this much before its first byte. */
export const SPAN = 1 << 20

/** A checkpoint as kept in memory and on disk: its window stored deflated (about a third the size). */
export interface Checkpoint {
  /** Offset in the uncompressed stream. */
  readonly out: number
  /** Offset in the compressed data where inflation resumes. */
  readonly in: number
  /** 0: a gzip member starts here (no state needed); 1: inside a deflate stream. */
  readonly kind: number
  readonly bits: number
  readonly prevByte: number
  /** The 32 KiB (or fewer, near a member's start) of output before `out`, raw-deflated. */
  readonly window: Buffer
}

/** Checkpoints in order of `out`, with the binary search a read needs. */
export class CheckpointTable {
  constructor(readonly points: readonly Checkpoint[], /** Length of the uncompressed stream. */ readonly size: number) {}

  /** The last checkpoint at or before `pos`. */
  at(pos: number): Checkpoint {
    const p = this.points
    let lo = 0
    let hi = p.length - 1
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1
      if (p[mid].out <= pos) lo = mid
      else hi = mid - 1
    }
    return p[lo]
  }

  /** u32 count, f64 size, then per point: f64 out, f64 in, u8 kind, u8 bits, u8 prevByte, u8 0, u32 window length, window. */
  encode(): Buffer {
    const parts: Buffer[] = []
    const head = Buffer.alloc(12)
    head.writeUInt32LE(this.points.length, 0)
    head.writeDoubleLE(this.size, 4)
    parts.push(head)
    for (const cp of this.points) {
      const h = Buffer.alloc(24)
      h.writeDoubleLE(cp.out, 0)
      h.writeDoubleLE(cp.in, 8)
      h[16] = cp.kind
      h[17] = cp.bits
      h[18] = cp.prevByte
      h.writeUInt32LE(cp.window.length, 20)
      parts.push(h, cp.window)
    }
    return Buffer.concat(parts)
  }

  static decode(buf: Buffer): CheckpointTable {
    const n = buf.readUInt32LE(0)
    const size = buf.readDoubleLE(4)
    const points: Checkpoint[] = []
    let p = 12
    for (let i = 0; i < n; i++) {
      const len = buf.readUInt32LE(p + 20)
      points.push({
        out: buf.readDoubleLE(p), in: buf.readDoubleLE(p + 8), kind: buf[p + 16], bits: buf[p + 17], prevByte: buf[p + 18],
        window: buf.subarray(p + 24, p + 24 + len),
      })
      p += 24 + len
    }
    if (p !== buf.length || points.length === 0 || points[0].out !== 0) throw new Error('damaged checkpoint table')
    return new CheckpointTable(points, size)
  }
}

function packWindow(w: Buffer): Buffer {
  return w.length === 0 ? w : deflateRawSync(w, { level: 6 })
}

function unpackWindow(w: Buffer): Buffer {
  return w.length === 0 ? w : inflateRawSync(w)
}

const CHUNK = 1 << 20

/**
 * The indexing pass over a gzip stream, as the tar scanner reads it: inflates forward, hashes every
 * uncompressed byte (the layer's diff_id) and records checkpoints on the way.
 */
export class GzipScanInput implements ScanInput {
  private readonly cursor: GzCursor
  private readonly raw: GzCheckpoint[] = []
  private readonly hash: Hash = createHash('sha256')
  /** Uncompressed bytes [start, end) held in buf. */
  private buf = Buffer.allocUnsafe(4 * CHUNK)
  private start = 0
  private end = 0
  private done = false

  /** `span`: output bytes between checkpoints (tests use small ones to get many). */
  constructor(fd: number, base: number, length: number, span = SPAN) {
    this.cursor = gz.gzOpen(fd, base, length, span)
  }

  /** Compressed bytes consumed so far, of `length`. */
  get consumed(): number {
    return gz.gzState(this.cursor)[1]
  }

  /** Inflates the next chunk onto the end of buf, dropping what lies before `keepFrom`. */
  private pull(keepFrom: number): boolean {
    if (this.done) return false
    const keep = Math.max(0, this.end - Math.max(keepFrom, this.start))
    if (keep > 0 && this.end - keep > this.start) this.buf.copy(this.buf, 0, this.end - keep - this.start, this.end - this.start)
    this.start = this.end - keep
    if (this.buf.length - keep < CHUNK) {
      const bigger = Buffer.allocUnsafe(keep + 2 * CHUNK)
      this.buf.copy(bigger, 0, 0, keep)
      this.buf = bigger
    }
    const room = this.buf.subarray(keep)
    let n: number
    try {
      n = gz.gzScan(this.cursor, room, this.raw)
    } catch (err) {
      throw new GzipDataError((err as Error).message, this.consumed)
    }
    if (n === 0) {
      this.done = true
      return false
    }
    this.hash.update(room.subarray(0, n))
    this.end += n
    return true
  }

  get(pos: number, len: number): Buffer {
    if (pos < this.start) throw new Error(`gzip scan went backwards (${pos} < ${this.start})`)
    while (this.end < pos + len && this.pull(pos)) { /* inflate until the bytes are there */ }
    if (pos >= this.end) return this.buf.subarray(0, 0)
    return this.buf.subarray(pos - this.start, Math.min(pos + len, this.end) - this.start)
  }

  reaches(end: number): boolean {
    while (this.end < end && this.pull(end)) { /* skip through the member's data */ }
    return this.end >= end
  }

  /** Inflates whatever follows the tar (end blocks, padding) to the end; the stream's whole story. */
  finish(): { checkpoints: CheckpointTable; diffId: string } {
    while (this.pull(Infinity)) { /* drain */ }
    const points = this.raw.map((r): Checkpoint => ({ ...r, window: packWindow(r.window) }))
    return { checkpoints: new CheckpointTable(points, this.end), diffId: 'sha256:' + this.hash.digest('hex') }
  }
}

/** Damage in the compressed data, found while indexing. */
export class GzipDataError extends Error {
  constructor(message: string, readonly offset: number) {
    super(message)
  }
}

interface PooledCursor {
  cursor: GzCursor
  /** Uncompressed offset it stands at, or -1 before its first seek. */
  pos: number
  busy: boolean
  lastUse: number
}

const POOL = 4

/**
 * Reads at any uncompressed offset. A few cursors are kept where their last read ended, so that
 * sequential reads (a file read front to back, or the next file of the archive) continue inflating
 * instead of restarting at a checkpoint.
 */
export class GzipReader {
  private readonly pool: PooledCursor[] = []
  private tick = 0

  constructor(private readonly fd: number, private readonly base: number, private readonly length: number,
    readonly table: CheckpointTable) {}

  /** Reads up to `length` bytes at uncompressed offset `position` into buf[offset..]. */
  async read(buf: Buffer, offset: number, length: number, position: number): Promise<number> {
    const n = Math.min(length, this.table.size - position)
    if (n <= 0) return 0
    const cp = this.table.at(position)
    const c = this.pick(position, cp)
    c.busy = true
    c.lastUse = ++this.tick
    try {
      if (c.pos < 0 || c.pos > position || c.pos < cp.out) {
        gz.gzSeek(c.cursor, cp.out, cp.in, cp.kind, cp.bits, cp.prevByte, unpackWindow(cp.window))
        c.pos = cp.out
      }
      const skip = position - c.pos
      c.pos = -1 // unknown until the read succeeds
      const got = await new Promise<number>((resolve, reject) => {
        gz.gzReadAsync(c.cursor, buf.subarray(offset, offset + n), skip, (err, count) => (err ? reject(err) : resolve(count ?? 0)))
      })
      c.pos = position + got
      if (got < n) throw new FsError(Errno.EIO, 'gzip stream shorter than its index says')
      return got
    } catch (err) {
      if (err instanceof FsError) throw err
      throw new FsError(Errno.EIO, `gzip read failed: ${(err as Error).message}`)
    } finally {
      c.busy = false
    }
  }

  /** An idle cursor that can reach `position` without a seek, else the least recently used idle one. */
  private pick(position: number, cp: Checkpoint): PooledCursor {
    let best: PooledCursor | null = null
    for (const c of this.pool) {
      if (c.busy) continue
      if (c.pos >= cp.out && c.pos <= position) {
        if (!best || best.pos < c.pos || !(best.pos >= cp.out && best.pos <= position)) best = c
      } else if (!best || (!(best.pos >= cp.out && best.pos <= position) && c.lastUse < best.lastUse)) best = c
    }
    if (best && best.pos >= cp.out && best.pos <= position) return best
    if (this.pool.length < POOL) {
      const c: PooledCursor = { cursor: gz.gzOpen(this.fd, this.base, this.length, 0), pos: -1, busy: false, lastUse: 0 }
      this.pool.push(c)
      return c
    }
    if (best) return best
    // every cursor is busy: a fresh one for this read only
    const extra: PooledCursor = { cursor: gz.gzOpen(this.fd, this.base, this.length, 0), pos: -1, busy: false, lastUse: 0 }
    return extra
  }
}
