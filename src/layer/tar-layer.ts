import { createHash } from 'node:crypto'
import { closeSync, openSync, read, readSync, realpathSync, fstatSync } from 'node:fs'
import { close } from 'node:fs'
import type { DirListing, Entry, Layer, LayerFile, LayerLookup } from './layer'
import { shownXattrName, storedXattrName } from './layer'
import { TarIndexBuilder } from './tar-index-builder'
import { FLAG_WHITEOUT, KIND_CODES, type DataLocation, type TarEntry, TarIndex } from './tar-index'
import { scanTar } from './tar-scan'
import { TarFormatError } from './tar-headers'
import { indexPathFor, loadIndex, saveIndex, type ArchiveIdentity } from './index-file'
import { FsError, Errno, UserError } from '../errors'
import { displayPath } from '../paths'
import { log } from '../log'

export interface TarLayerOptions {
  /** Reports indexing progress: bytes of the archive scanned out of its size. */
  onProgress?: (done: number, total: number) => void
  /** Whether to read and write the persisted index (default true). */
  persistIndex?: boolean
}

const NOTHING: LayerLookup = { entry: null, whiteout: false }
const WHITEOUT_ONLY: LayerLookup = { entry: null, whiteout: true }

/** An uncompressed tar served in place: an index of its members, then positional reads of their bytes. */
export class TarLayer implements Layer {
  readonly kind = 'tar'

  private constructor(readonly source: string, private readonly fd: number, readonly index: TarIndex,
    /** Whether the index came from the cache (for messages and tests). */
    readonly fromCache: boolean, private readonly saving: Promise<void>) {}

  /** Opens and indexes (or reloads the index of) a tar; throws UserError naming the file on bad input. */
  static async open(source: string, opts: TarLayerOptions = {}): Promise<TarLayer> {
    let fd: number
    try {
      fd = openSync(source, 'r')
    } catch (err) {
      throw new UserError(`${source}: ${(err as Error).message.replace(/^[A-Z]+: /, '').replace(/, open '.*'$/, '')}`)
    }
    try {
      const st = fstatSync(fd, { bigint: true })
      if (!st.isFile()) throw new UserError(`${source}: not a regular file`)
      const identity = identityOf(realpathSync(source), fd, st)
      const persist = opts.persistIndex !== false
      const indexFile = indexPathFor(identity.path)
      let index = persist ? loadIndex(indexFile, identity) : null
      const fromCache = index !== null
      let saving = Promise.resolve()
      if (!index) {
        index = buildIndex(source, fd, Number(st.size), { sec: Number(st.mtimeMs / 1000n), nsec: 0 }, opts.onProgress)
        // written in the background: the mount need not wait for it
        if (persist) saving = saveIndex(indexFile, identity, index).catch((err: Error) => log.index('could not save index %s: %s', indexFile, err.message))
      }
      log.tar('%s: %d records (%s)', source, index.count, fromCache ? 'cached index' : 'indexed')
      return new TarLayer(source, fd, index, fromCache, saving)
    } catch (err) {
      closeSync(fd)
      throw err
    }
  }

  /** Resolves when the index is on disk (or failed to get there). */
  saved(): Promise<void> {
    return this.saving
  }

  async lookup(path: string): Promise<LayerLookup> {
    const rec = this.index.find(path)
    if (rec < 0) return NOTHING
    const entry = this.index.entry(rec)
    const whiteout = (this.index.flags(rec) & FLAG_WHITEOUT) !== 0
    if (!entry) return whiteout ? WHITEOUT_ONLY : NOTHING
    return { entry, whiteout }
  }

  async readdir(path: string): Promise<DirListing> {
    const rec = this.index.find(path)
    if (rec < 0 || this.index.kindCode(rec) !== KIND_CODES.indexOf('dir')) throw new FsError(Errno.ENOTDIR, 'not a directory in this layer', path)
    const entries = new Map<string, Entry>()
    const whiteouts = new Set<string>()
    const [first, end] = this.index.children(rec)
    for (let c = first; c < end; c++) {
      const name = this.index.name(c)
      const entry = this.index.entry(c)
      if (entry) entries.set(name, entry)
      if (this.index.flags(c) & FLAG_WHITEOUT) whiteouts.add(name)
    }
    return { entries, whiteouts }
  }

  private recordOf(entry: Entry): number {
    return (entry as TarEntry).record
  }

  async open(path: string, entry: Entry): Promise<LayerFile> {
    if (entry.kind !== 'file') throw new FsError(Errno.EINVAL, 'not a regular file', path)
    return new TarFile(this.fd, entry.size, this.index.location(this.recordOf(entry)))
  }

  async readlink(path: string, entry: Entry): Promise<string> {
    const target = entry.kind === 'symlink' ? this.index.target(this.recordOf(entry)) : null
    if (target === null) throw new FsError(Errno.EINVAL, 'not a symlink', path)
    return target
  }

  async listXattrs(_path: string, entry: Entry): Promise<string[]> {
    const x = this.index.xattrs(this.recordOf(entry))
    return x ? [...x.keys()].map(shownXattrName).filter((n): n is string => n !== null) : []
  }

  async getXattr(_path: string, entry: Entry, name: string): Promise<Buffer | null> {
    return this.index.xattrs(this.recordOf(entry))?.get(storedXattrName(name)) ?? null
  }

  async close(): Promise<void> {
    await this.saving
    await new Promise<void>((resolve) => close(this.fd, () => resolve()))
  }
}


/** Reads of one file's bytes inside the archive; holes of sparse files read as zeros. */
class TarFile implements LayerFile {
  constructor(private readonly fd: number, private readonly size: number, private readonly at: DataLocation) {}

  async read(buf: Buffer, length: number, position: number): Promise<number> {
    const size = this.size
    const { sparse, dataOffset } = this.at
    if (position >= size) return 0
    const n = Math.min(length, size - position)
    if (!sparse) return readFully(this.fd, buf, 0, n, dataOffset + position)
    buf.fill(0, 0, n)
    let stored = dataOffset
    for (const [segOffset, segLength] of sparse) {
      const from = Math.max(position, segOffset)
      const to = Math.min(position + n, segOffset + segLength)
      if (from < to) await readFully(this.fd, buf, from - position, to - from, stored + (from - segOffset))
      stored += segLength
    }
    return n
  }

  async close(): Promise<void> {}
}

function readFully(fd: number, buf: Buffer, offset: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const step = (done: number): void => {
      if (done >= length) return resolve(done)
      read(fd, buf, offset + done, length - done, position + done, (err, n) => {
        if (err) return reject(new FsError(Errno.EIO, `read failed: ${err.message}`))
        if (n === 0) return reject(new FsError(Errno.EIO, 'archive shorter than its index says'))
        step(done + n)
      })
    }
    step(0)
  })
}

function buildIndex(source: string, fd: number, size: number, mtime: { sec: number; nsec: number },
  onProgress?: (done: number, total: number) => void): TarIndex {
  const builder = new TarIndexBuilder(mtime)
  const t0 = Date.now()
  try {
    scanTar(fd, size, (m) => builder.add(m), { onProgress: onProgress && ((pos) => onProgress(Math.min(pos, size), size)) })
  } catch (err) {
    if (err instanceof TarFormatError) throw new UserError(`${source}: ${err.message}`)
    throw err
  }
  const index = builder.finish()
  log.index('%s: indexed %d records in %d ms', displayPath(source), index.count, Date.now() - t0)
  return index
}

const SAMPLE = 64 << 10

function identityOf(path: string, fd: number, st: { size: bigint; mtimeNs: bigint; ctimeNs: bigint; dev: bigint; ino: bigint }): ArchiveIdentity {
  const size = Number(st.size)
  const hash = createHash('sha256')
  const buf = Buffer.alloc(Math.min(SAMPLE, size))
  hash.update(buf.subarray(0, readSync(fd, buf, 0, buf.length, 0)))
  if (size > SAMPLE) hash.update(buf.subarray(0, readSync(fd, buf, 0, buf.length, size - buf.length)))
  return {
    path, size, mtimeNs: String(st.mtimeNs), ctimeNs: String(st.ctimeNs), dev: String(st.dev), ino: String(st.ino),
    sample: hash.digest('hex'),
  }
}
