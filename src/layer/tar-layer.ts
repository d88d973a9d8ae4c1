import { createHash } from 'node:crypto'
import { closeSync, openSync, read, readSync, realpathSync, fstatSync } from 'node:fs'
import { close } from 'node:fs'
import type { DirListing, Entry, Layer, LayerFile, LayerLookup } from './layer'
import { isOverlayXattr } from './layer'
import { TarIndexBuilder, type TarEntry, type TarIndexData } from './tar-index'
import { scanTar } from './tar-scan'
import { TarFormatError } from './tar-headers'
import { indexPathFor, loadIndex, saveIndex, type ArchiveIdentity } from './index-file'
import { FsError, Errno, UserError } from '../errors'
import { baseOf, displayPath, parentOf } from '../paths'
import { log } from '../log'

export interface TarLayerOptions {
  /** Reports indexing progress: bytes of the archive scanned out of its size. */
  onProgress?: (done: number, total: number) => void
  /** Whether to read and write the persisted index (default true). */
  persistIndex?: boolean
}

const NOTHING: LayerLookup = { entry: null, whiteout: false }

/** An uncompressed tar served in place: an index of its members, then positional reads of their bytes. */
export class TarLayer implements Layer {
  readonly kind = 'tar'
  private readonly byPath = new Map<string, TarEntry>()
  private readonly children = new Map<string, TarEntry[]>()
  private readonly hidden = new Map<string, Set<string>>()
  private readonly whiteoutPaths: Set<string>
  /** Whether the index came from the cache (for messages and tests). */
  readonly fromCache: boolean

  private constructor(readonly source: string, private readonly fd: number, data: TarIndexData, fromCache: boolean) {
    this.fromCache = fromCache
    for (const e of data.entries) this.byPath.set(e.path, e)
    for (const e of data.entries) {
      if (e.path === '/') continue
      const parent = parentOf(e.path)
      let list = this.children.get(parent)
      if (!list) this.children.set(parent, (list = []))
      list.push(e)
    }
    this.whiteoutPaths = new Set(data.whiteouts)
    for (const p of data.whiteouts) {
      const dir = parentOf(p)
      let set = this.hidden.get(dir)
      if (!set) this.hidden.set(dir, (set = new Set()))
      set.add(baseOf(p))
    }
  }

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
      let data = persist ? await loadIndex(indexFile, identity) : null
      const fromCache = data !== null
      if (!data) {
        data = buildIndex(source, fd, Number(st.size), { sec: Number(st.mtimeMs / 1000n), nsec: 0 }, opts.onProgress)
        if (persist) {
          await saveIndex(indexFile, identity, data).catch((err: Error) => log.index('could not save index %s: %s', indexFile, err.message))
        }
      }
      log.tar('%s: %d entries, %d whiteouts (%s)', source, data.entries.length, data.whiteouts.length, fromCache ? 'cached index' : 'indexed')
      return new TarLayer(source, fd, data, fromCache)
    } catch (err) {
      closeSync(fd)
      throw err
    }
  }

  get entryCount(): number {
    return this.byPath.size
  }

  async lookup(path: string): Promise<LayerLookup> {
    return this.lookupSync(path)
  }

  lookupSync(path: string): LayerLookup {
    const entry = this.byPath.get(path) ?? null
    const whiteout = this.whiteoutPaths.size > 0 && this.whiteoutPaths.has(path)
    return entry === null && !whiteout ? NOTHING : { entry, whiteout }
  }

  async readdir(path: string): Promise<DirListing> {
    const dir = this.byPath.get(path)
    if (!dir || dir.kind !== 'dir') throw new FsError(Errno.ENOTDIR, 'not a directory in this layer', path)
    const entries = new Map<string, Entry>()
    for (const e of this.children.get(path) ?? []) entries.set(baseOf(e.path), e)
    return { entries, whiteouts: this.hidden.get(path) ?? EMPTY_SET }
  }

  async open(path: string, entry: Entry): Promise<LayerFile> {
    const e = this.byPath.get(path)
    if (!e || e !== entry || e.kind !== 'file') throw new FsError(Errno.ENOENT, 'no such file in this layer', path)
    return new TarFile(this.fd, e)
  }

  async readlink(path: string, entry: Entry): Promise<string> {
    const e = this.byPath.get(path)
    if (!e || e !== entry || e.target === null) throw new FsError(Errno.EINVAL, 'not a symlink', path)
    return e.target
  }

  async listXattrs(path: string): Promise<string[]> {
    const x = this.byPath.get(path)?.xattrs
    return x ? [...x.keys()].filter((k) => !isOverlayXattr(k)) : []
  }

  async getXattr(path: string, _entry: Entry, name: string): Promise<Buffer | null> {
    if (isOverlayXattr(name)) return null
    return this.byPath.get(path)?.xattrs?.get(name) ?? null
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => close(this.fd, () => resolve()))
  }
}

const EMPTY_SET: ReadonlySet<string> = new Set()

/** Reads of one file's bytes inside the archive; holes of sparse files read as zeros. */
class TarFile implements LayerFile {
  constructor(private readonly fd: number, private readonly entry: TarEntry) {}

  async read(buf: Buffer, length: number, position: number): Promise<number> {
    const { size, sparse, dataOffset } = this.entry
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
  onProgress?: (done: number, total: number) => void): TarIndexData {
  const builder = new TarIndexBuilder(mtime)
  const t0 = Date.now()
  try {
    scanTar(fd, size, (m) => builder.add(m), { onProgress: onProgress && ((pos) => onProgress(Math.min(pos, size), size)) })
  } catch (err) {
    if (err instanceof TarFormatError) throw new UserError(`${source}: ${err.message}`)
    throw err
  }
  const data = builder.finish()
  log.index('%s: indexed %d entries in %d ms', displayPath(source), data.entries.length, Date.now() - t0)
  return data
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
