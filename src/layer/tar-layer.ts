import { closeSync, openSync, read, readSync, realpathSync, fstatSync } from 'node:fs'
import { close } from 'node:fs'
import type { DirListing, Entry, Layer, LayerFile, LayerLookup, Timestamp } from './layer'
import { shownXattrName, storedXattrName } from './layer'
import { TarIndexBuilder } from './tar-index-builder'
import { FLAG_WHITEOUT, KIND_CODES, type DataLocation, type TarEntry, TarIndex } from './tar-index'
import { FileScanInput, scanTar, type ScanInput } from './tar-scan'
import { TarFormatError } from './tar-headers'
import { indexPathFor, loadIndex, saveIndex, type ArchiveIdentity, type IndexIdentity, type IndexMeta, type LoadedIndex } from './index-file'
import { findLoaded, rememberLoaded, type ArchiveKey } from './loaded-indexes'
import { formatOf, type LayerBlob } from './blob'
import { CheckpointTable, GzipDataError, GzipReader, GzipScanInput } from './gzip-access'
import { FsError, Errno, UserError } from '../errors'
import { displayPath } from '../paths'
import { log } from '../log'
import { indexMap } from '../sys'
import { cacheDir } from '../cache-dir'

export interface TarLayerOptions {
  /** Reports indexing progress: bytes of the stored layer read out of its size. */
  onProgress?: (done: number, total: number) => void
  /** Whether to read and write the persisted index (default true). */
  persistIndex?: boolean
  /** Whether an index this process loaded before for the same, unchanged archive is taken again (a daemon's mounts). */
  reuseLoaded?: boolean
  /**
   * Only with its index in the cache: else throws IndexNotCached rather than indexing (a standby
   * preparing a mount leaves the indexing to the daemon doing it, and waits for its file).
   */
  cachedOnly?: boolean
}

/** TarLayer.open with `cachedOnly`: the archive's index is not (yet) in the cache. */
export class IndexNotCached extends Error {}

const NOTHING: LayerLookup = { entry: null, whiteout: false }
const WHITEOUT_ONLY: LayerLookup = { entry: null, whiteout: true }

/** Positional reads of the uncompressed tar stream. */
interface TarData {
  read(buf: Buffer, offset: number, length: number, position: number): Promise<number>
}

const UNSUPPORTED: Record<string, string> = {
  zstd: 'zstd-compressed layers are not supported (a zstd layer is one frame: serving it in place would mean inflating from its start for every read); decompress it with `zstd -d` or use gzip',
  bzip2: 'bzip2-compressed layers are not supported (not an OCI layer format); decompress it with `bzip2 -d`',
  xz: 'xz-compressed layers are not supported (not an OCI layer format); decompress it with `xz -d`',
}

/**
 * A tar layer served in place: an index of its members, then positional reads of their bytes,
 * straight from the file for a plain tar, through gzip checkpoints for a compressed one.
 */
export class TarLayer implements Layer {
  private constructor(readonly source: string, readonly kind: 'tar' | 'gzip', private readonly fd: number, readonly index: TarIndex,
    /** Whether the index came from the cache (for messages and tests). */
    readonly fromCache: boolean, private readonly saving: Promise<void>, private readonly data: TarData,
    /** The index file (for `layerfs cache` and tests). */
    readonly indexFile: string) {}

  /** Opens and indexes (or reloads the index of) a tar; throws UserError naming the layer on bad input. */
  static async open(what: string | LayerBlob, opts: TarLayerOptions = {}): Promise<TarLayer> {
    const path = typeof what === 'string' ? what : what.path
    let fd: number
    try {
      fd = openSync(path, 'r')
    } catch (err) {
      throw new UserError(`${path}: ${(err as Error).message.replace(/^[A-Z]+: /, '').replace(/, open '.*'$/, '')}`)
    }
    try {
      const st = fstatSync(fd, { bigint: true })
      if (!st.isFile()) throw new UserError(`${path}: not a regular file`)
      const blob: LayerBlob = typeof what === 'string' ? { path, offset: 0, length: Number(st.size), name: path } : what
      const name = blob.name
      if (blob.offset + blob.length > Number(st.size)) throw new UserError(`${name}: ends past the end of ${path}`)
      const head = Buffer.alloc(8)
      const format = formatOf(head.subarray(0, readSync(fd, head, 0, Math.min(8, blob.length), blob.offset)))
      if (format !== 'tar' && format !== 'gzip') throw new UserError(`${name}: ${UNSUPPORTED[format]}`)
      const persist = opts.persistIndex !== false
      // a daemon's next mount of the same unchanged archive takes the index it loaded (loaded-indexes.ts)
      const archive: ArchiveKey | null = persist && opts.reuseLoaded === true
        ? { path, offset: blob.offset, length: blob.length, digest: blob.digest, cacheDir: cacheDir(), st }
        : null
      const known = archive ? findLoaded(archive) : null
      let identity: IndexIdentity
      let indexFile: string
      let loaded: LoadedIndex | null
      if (known) {
        ;({ identity, indexFile, loaded } = known)
      } else {
        const real = realpathSync.native(path)
        const whole = blob.offset === 0 && blob.length === Number(st.size)
        identity = blob.digest ? { digest: blob.digest } : identityOf(real, fd, st, blob.offset, blob.length)
        indexFile = indexPathFor(blob.digest ? { digest: blob.digest } : whole ? real : `${real}@${blob.offset}+${blob.length}`)
        loaded = persist ? loadIndex(indexFile, identity) : null
        if (archive && loaded) rememberLoaded(archive, { identity, indexFile, loaded })
      }
      if (loaded && loaded.meta.format !== format) loaded = null
      if (loaded && blob.diffId && loaded.meta.diffId && loaded.meta.diffId !== blob.diffId) {
        throw new UserError(`${name}: diff_id mismatch: the image config says ${blob.diffId}, the layer's tar is ${loaded.meta.diffId}`)
      }
      const fromCache = loaded !== null
      if (!fromCache && opts.cachedOnly) throw new IndexNotCached(`${name}: no cached index`)
      let saving = Promise.resolve()
      let index: TarIndex
      let table: CheckpointTable | null = null
      if (loaded) {
        index = loaded.index
        if (format === 'gzip') {
          if (!loaded.access) throw new UserError(`${name}: cached index ${indexFile} lacks its gzip checkpoints; remove it`)
          table = CheckpointTable.decode(loaded.access)
        }
      } else {
        const mtime = { sec: Number(st.mtimeMs / 1000n), nsec: 0 }
        const built = format === 'gzip' ? buildGzipIndex(fd, blob, mtime, opts.onProgress) : buildIndex(fd, blob, mtime, opts.onProgress)
        index = built.index
        table = built.table
        const diffId = built.diffId ?? (blob.digest && format === 'tar' ? blob.digest : null)
        if (blob.diffId && diffId && diffId !== blob.diffId) {
          throw new UserError(`${name}: diff_id mismatch: the image config says ${blob.diffId}, the layer's tar is ${diffId}`)
        }
        const meta: IndexMeta = {
          source: name, format, diffId, size: table ? table.size : blob.length, storedSize: blob.length, entries: index.count,
        }
        // written in the background: the mount need not wait for it
        if (persist) {
          saving = saveIndex(indexFile, { identity, meta }, index, table ? table.encode() : null)
            .catch((err: Error) => log.index('could not save index %s: %s', indexFile, err.message))
        }
      }
      log.tar('%s: %d records (%s)', name, index.count, fromCache ? 'cached index' : 'indexed')
      const data: TarData = table ? new GzipReader(fd, blob.offset, blob.length, table) : new PlainData(fd, blob.offset)
      return new TarLayer(name, format, fd, index, fromCache, saving, data, indexFile)
    } catch (err) {
      closeSync(fd)
      throw err
    }
  }

  /** Resolves when the index is on disk (or failed to get there). */
  saved(): Promise<void> {
    return this.saving
  }

  lookup(path: string): LayerLookup {
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

  childrenNow(path: string, max: number): { files: string[]; dirs: string[] } | null {
    const rec = this.index.find(path)
    if (rec < 0 || this.index.kindCode(rec) !== KIND_CODES.indexOf('dir')) return null
    const [first, end] = this.index.children(rec)
    if (end - first > max) return null
    const files: string[] = []
    const dirs: string[] = []
    for (let c = first; c < end; c++) {
      const kind = this.index.entry(c)?.kind
      if (kind === 'file') files.push(this.index.name(c))
      else if (kind === 'dir') dirs.push(this.index.name(c))
    }
    return { files, dirs }
  }

  private recordOf(entry: Entry): number {
    return (entry as TarEntry).record
  }

  async open(path: string, entry: Entry): Promise<LayerFile> {
    if (entry.kind !== 'file') throw new FsError(Errno.EINVAL, 'not a regular file', path)
    return new TarFile(this.data, entry.size, this.index.location(this.recordOf(entry)), this.data instanceof PlainData ? this.data : null)
  }

  spanOf(_path: string, entry: Entry): { fd: number; offset: number } | null {
    if (entry.kind !== 'file' || !(this.data instanceof PlainData)) return null
    return plainSpan(this.data, this.index.location(this.recordOf(entry)))
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

  xattrsNow(_path: string, entry: Entry): Array<[string, Buffer]> {
    const out: Array<[string, Buffer]> = []
    for (const [stored, value] of this.index.xattrs(this.recordOf(entry)) ?? []) {
      const name = shownXattrName(stored)
      if (name !== null) out.push([name, value])
    }
    return out
  }

  async close(): Promise<void> {
    await this.saving
    await new Promise<void>((resolve) => close(this.fd, () => resolve()))
  }
}


/** Reads of one file's bytes inside the archive; holes of sparse files read as zeros. */
class TarFile implements LayerFile {
  constructor(private readonly data: TarData, private readonly size: number, private readonly at: DataLocation,
    private readonly plain: PlainData | null) {}

  span(): { fd: number; offset: number } | null {
    return this.plain ? plainSpan(this.plain, this.at) : null
  }

  async read(buf: Buffer, length: number, position: number): Promise<number> {
    const size = this.size
    const { sparse, dataOffset } = this.at
    if (position >= size) return 0
    const n = Math.min(length, size - position)
    if (!sparse) return readFully(this.data, buf, 0, n, dataOffset + position)
    buf.fill(0, 0, n)
    let stored = dataOffset
    for (const [segOffset, segLength] of sparse) {
      const from = Math.max(position, segOffset)
      const to = Math.min(position + n, segOffset + segLength)
      if (from < to) await readFully(this.data, buf, from - position, to - from, stored + (from - segOffset))
      stored += segLength
    }
    return n
  }

  async close(): Promise<void> {}
}

async function readFully(data: TarData, buf: Buffer, offset: number, length: number, position: number): Promise<number> {
  let done = 0
  while (done < length) {
    const n = await data.read(buf, offset + done, length - done, position + done)
    if (n === 0) throw new FsError(Errno.EIO, 'archive shorter than its index says')
    done += n
  }
  return done
}

/** Reads up to this size are made on the calling thread: a thread-pool round trip costs more than a cached pread. */
const SYNC_READ_MAX = 256 << 10

/** A plain tar at `base` in a file. */
/** Where a member's bytes lie in the archive's descriptor: all in order unless it is sparse. */
function plainSpan(plain: PlainData, at: DataLocation): { fd: number; offset: number } | null {
  return at.sparse ? null : { fd: plain.fd, offset: plain.base + at.dataOffset }
}

class PlainData implements TarData {
  constructor(readonly fd: number, readonly base: number) {}

  read(buf: Buffer, offset: number, length: number, position: number): Promise<number> {
    if (length <= SYNC_READ_MAX) {
      try {
        return Promise.resolve(readSync(this.fd, buf, offset, length, this.base + position))
      } catch (err) {
        return Promise.reject(new FsError(Errno.EIO, `read failed: ${(err as Error).message}`))
      }
    }
    return new Promise((resolve, reject) => {
      read(this.fd, buf, offset, length, this.base + position, (err, n) => {
        if (err) reject(new FsError(Errno.EIO, `read failed: ${err.message}`))
        else resolve(n)
      })
    })
  }
}

interface Built {
  index: TarIndex
  table: CheckpointTable | null
  diffId: string | null
}

function scanInto(blob: LayerBlob, input: ScanInput, mtime: Timestamp, onProgress?: (pos: number) => void): TarIndex {
  const builder = new TarIndexBuilder(mtime)
  const t0 = Date.now()
  try {
    scanTar(input, (m) => builder.add(m), { onProgress })
  } catch (err) {
    if (err instanceof TarFormatError) throw new UserError(`${blob.name}: ${err.message}`)
    if (err instanceof GzipDataError) throw new UserError(`${blob.name}: ${err.message} (near compressed offset ${err.offset})`)
    throw err
  }
  const index = builder.finish()
  log.index('%s: indexed %d records in %d ms', displayPath(blob.name), index.count, Date.now() - t0)
  return index
}

function buildIndex(fd: number, blob: LayerBlob, mtime: Timestamp, onProgress?: (done: number, total: number) => void): Built {
  const index = scanInto(blob, new FileScanInput(fd, blob.offset, blob.length), mtime, onProgress && ((pos) => onProgress(Math.min(pos, blob.length), blob.length)))
  onProgress?.(blob.length, blob.length)
  return { index, table: null, diffId: null }
}

function buildGzipIndex(fd: number, blob: LayerBlob, mtime: Timestamp, onProgress?: (done: number, total: number) => void): Built {
  const input = new GzipScanInput(fd, blob.offset, blob.length)
  const index = scanInto(blob, input, mtime, onProgress && (() => onProgress(input.consumed, blob.length)))
  let finished
  try {
    finished = input.finish()
  } catch (err) {
    if (err instanceof GzipDataError) throw new UserError(`${blob.name}: ${err.message} (near compressed offset ${err.offset})`)
    throw err
  }
  onProgress?.(blob.length, blob.length)
  return { index, table: finished.checkpoints, diffId: finished.diffId }
}

const SAMPLE = 64 << 10
const sampleBuffer = Buffer.allocUnsafe(2 * SAMPLE)

function identityOf(path: string, fd: number, st: { size: bigint; mtimeNs: bigint; ctimeNs: bigint; dev: bigint; ino: bigint },
  offset: number, length: number): ArchiveIdentity {
  // into a kept buffer: a fresh one cost its page faults, ~80 us of a mount's 0.1 ms here
  const first = readSync(fd, sampleBuffer, 0, Math.min(SAMPLE, length), offset)
  const last = length > SAMPLE ? readSync(fd, sampleBuffer, first, SAMPLE, offset + length - SAMPLE) : 0
  return {
    path, offset, length, size: Number(st.size), mtimeNs: String(st.mtimeNs), ctimeNs: String(st.ctimeNs), dev: String(st.dev), ino: String(st.ino),
    sample: indexMap.hash64(sampleBuffer.subarray(0, first + last)).toString('hex'),
  }
}
