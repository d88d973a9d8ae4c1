import { constants as C } from 'node:fs'
import { statfs } from 'node:fs/promises'
import type { Entry, Timestamp } from '../layer/layer'
import { modeOf } from '../layer/layer'
import type { Resolved, Union } from '../union/union'
import type { Caller, TimeSpec, Upper } from '../upper/upper'
import type { PlannedEntry } from '../upper/copy-up'
import { Errno, FsError } from '../errors'
import { parentOf } from '../paths'
import { Handles, upperFile, type DirectSpan } from './handles'

/** What getattr answers. */
export interface Stat {
  readonly ino: number
  readonly mode: number
  readonly nlink: number
  readonly uid: number
  readonly gid: number
  readonly rdev: number
  readonly size: number
  readonly blksize: number
  readonly blocks: number
  readonly atime: Timestamp
  readonly mtime: Timestamp
  readonly ctime: Timestamp
}

export interface DirEntryWithStat {
  readonly name: string
  readonly stat: Stat
  /** The stat is what getattr answers for the entry (else only its type and inode are). */
  readonly final?: boolean
}

export interface FsStats {
  readonly bsize: number
  readonly frsize: number
  readonly blocks: number
  readonly bfree: number
  readonly bavail: number
  readonly files: number
  readonly ffree: number
  readonly favail: number
  readonly namemax: number
}

const WRITE_FLAGS = C.O_WRONLY | C.O_RDWR | C.O_TRUNC | C.O_APPEND

/** What C may answer for an entry without JavaScript. */
export interface Below {
  /** Where a plain tar member's bytes lie (see LayerFs.directOf). */
  readonly span: DirectSpan | null
  /**
   * Whether it lies in the lower layers alone on a writable mount (nothing of it in the upper, as
   * far as the union knows without waiting): then only a change made through the mount changes
   * what it shows. False where it cannot tell at once.
   */
  readonly lowerOnly: boolean
}
const NOTHING_BELOW: Below = { span: null, lowerOnly: false }

/** A lower file's bytes, where its layer has them in a descriptor, as a read-only DirectSpan. */
function lowerSpan(span: { fd: number; offset: number } | null, from: Resolved['top']): DirectSpan | null {
  return span ? { fd: span.fd, offset: span.offset, length: from.entry.size, layer: from.layer, writable: false } : null
}

function statOfEntry(e: Entry, ino: number, nlink: number): Stat {
  return {
    ino, mode: modeOf(e), nlink, uid: e.uid, gid: e.gid, rdev: e.rdev,
    size: e.kind === 'dir' && e.size === 0 ? 4096 : e.size,
    blksize: 4096, blocks: Math.ceil(e.storedSize / 512),
    atime: e.atime, mtime: e.mtime, ctime: e.ctime,
  }
}

/**
 * The POSIX operations over the union: paths in, values or FsError out. Reads resolve through the
 * union; changes go through the Upper (EROFS without one). Knows nothing of FUSE.
 */
export class LayerFs {
  private readonly handles = new Handles()
  /** Reads served and their bytes, per layer position (the upper's too when writable). */
  readonly bytesRead: number[]
  readonly reads: number[]

  constructor(readonly union: Union, readonly upper: Upper | null = null) {
    this.bytesRead = union.layers.map(() => 0)
    this.reads = union.layers.map(() => 0)
    // read handles follow a file into the upper, unless only its metadata went there
    upper?.copyUp.listen((rec) => {
      if (!rec.metacopy && this.handles.readsLower) this.copiedUp(rec.path).catch(() => undefined)
    })
  }

  private writable(path: string): Upper {
    if (!this.upper) throw new FsError(Errno.EROFS, 'read-only filesystem', path)
    return this.upper
  }

  private async resolve(path: string): Promise<Resolved> {
    const r = await this.union.resolve(path)
    if (!r) throw new FsError(Errno.ENOENT, 'no such file or directory', path)
    return r
  }

  /** The entry shown for `r`: an upper entry is read afresh (it changes), a lower one never does. */
  private current(r: Resolved): Entry {
    if (r.top.layer !== 0 || !this.upper) return r.top.entry
    const found = this.union.layers[0].lookup(r.top.path)
    if (!found.entry) throw new FsError(Errno.ENOENT, 'no such file or directory', r.path)
    return found.entry
  }

  private statOf(r: Resolved): Stat {
    const e = this.current(r)
    // kernel overlayfs shows 1 for a merged directory rather than counting subdirectories
    return statOfEntry(e, r.ino, e.kind === 'dir' && r.parts.length > 1 ? 1 : e.nlink)
  }

  async getattr(path: string): Promise<Stat> {
    return this.getattrNow(path)
  }

  /** getattr(), answered at once (see Union.resolveNow); throws FsError. */
  getattrNow(path: string): Stat {
    const r = this.union.resolveNow(path)
    if (!r) throw new FsError(Errno.ENOENT, 'no such file or directory', path)
    return this.statOf(r)
  }

  /**
   * The attributes of an open file whose name is gone (unlinked while open): its upper file's
   * own, with `last` (what its name showed) for the rest. A lower file cannot change: `last`.
   */
  async fgetattr(fh: number, last: Stat): Promise<Stat> {
    const st = await this.handles.get(fh).stat?.()
    if (!st) return { ...last, nlink: 0 }
    const t = (ns: bigint): { sec: number; nsec: number } => ({ sec: Number(ns / 1000000000n), nsec: Number(ns % 1000000000n) })
    return {
      ...last, mode: Number(st.mode), nlink: Number(st.nlink), uid: Number(st.uid), gid: Number(st.gid), size: Number(st.size),
      blocks: Number(st.blocks), atime: t(st.atimeNs), mtime: t(st.mtimeNs), ctime: t(st.ctimeNs),
    }
  }

  async readdir(path: string): Promise<DirEntryWithStat[]> {
    const dir = await this.resolve(path)
    const merged = await this.union.readdir(path)
    const parent = path === '/' ? dir : await this.resolve(parentOf(path))
    const out: DirEntryWithStat[] = [
      { name: '.', stat: await this.statOf(dir) },
      { name: '..', stat: await this.statOf(parent) },
    ]
    // the kernel takes only the type and inode from these; getattr answers the rest (the same, for
    // an entry the listing settles: no layer below merges with it)
    for (const m of merged) out.push({ name: m.name, stat: statOfEntry(m.part.entry, m.ino, m.part.entry.nlink), final: m.settled })
    return out
  }

  async open(path: string, flags: number): Promise<number> {
    if (flags & WRITE_FLAGS) {
      const fh = await this.writable(path).openForWrite(path, flags)
      return this.handles.add(upperFile(fh))
    }
    const r = await this.resolve(path)
    if (r.top.entry.kind === 'dir') throw new FsError(Errno.EISDIR, 'is a directory', path)
    if (r.top.entry.metacopy && !r.data) throw new FsError(Errno.EIO, 'metacopy file without data below', path)
    if (r.top.layer === 0 && this.upper && !r.data) return this.handles.add(upperFile(await this.upper.openUpperForRead(path), false))
    // a metacopy file reads its lower data (and follows the file into the upper once it has it)
    const from = r.data ?? r.top
    const file = await this.union.layers[from.layer].open(from.path, from.entry)
    const layer = from.layer
    return this.handles.add({
      layer,
      read: async (buf, length, position) => {
        const n = await file.read(buf, length, position)
        this.reads[layer]++
        this.bytesRead[layer] += n
        return n
      },
      direct: () => lowerSpan(file.span?.() ?? null, from),
      close: () => file.close(),
    }, path)
  }

  /**
   * open() for writing done at once where the upper can (Upper.openForWriteNow): the handle, or
   * null where it cannot (or for reading): the caller then awaits open().
   */
  openNow(path: string, flags: number): number | null {
    if (!(flags & WRITE_FLAGS) || !this.upper) return null
    const fd = this.upper.openForWriteNow(path, flags)
    return fd === null ? null : this.handles.add(upperFile(fd))
  }

  /**
   * The copy-up a first write to `path` would need, planned for the FUSE binding to run at the
   * write's OPEN (Upper.planWriteNow); null where there is none to plan.
   */
  planWriteNow(path: string, maxBytes: number, above?: readonly PlannedEntry[]): PlannedEntry[] | null {
    return this.upper?.planWriteNow(path, maxBytes, above) ?? null
  }

  /** The part of such plans for the files of directory `dir` that copies the directories above them (Upper.planAboveNow). */
  planAboveNow(dir: string): PlannedEntry[] | null {
    return this.upper?.planAboveNow(dir) ?? null
  }

  /**
   * The names of the regular files and directories in directory `path`, where it lies in one lower
   * layer only (no upper directory, nothing merged) that has its listing at hand, with at most
   * `max` entries; null otherwise. Their answers can then be given ahead of the kernel's LOOKUPs:
   * nothing but a change made through the mount can change them.
   */
  lowerChildrenNow(path: string, max: number): { files: string[]; dirs: string[] } | null {
    const r = this.union.resolveNow(path)
    if (!r || r.top.entry.kind !== 'dir' || r.parts.length !== 1 || (this.upper && r.top.layer === 0)) return null
    return this.union.layers[r.top.layer].childrenNow?.(r.top.path, max) ?? null
  }

  /** What an upper file's inode number is shown as, less its own (st_ino); null without an upper. */
  upperInoBase(): number | null {
    return this.upper ? this.union.inoBase(0) : null
  }

  /** Where a planned copy-up's entries are built and put (UpperDir.planRoots); null without an upper. */
  planRoots(): { upper: Buffer; temp: Buffer } | null {
    return this.upper?.dir.planRoots() ?? null
  }

  /** The binding ran `plan`'s first `done` entries (in `ns[i]` ns each): the union and the stats learn of them. */
  plannedDone(plan: readonly PlannedEntry[], done: number, ns: readonly number[]): void {
    this.upper?.plannedDone(plan, done, ns)
  }

  private async copiedUp(path: string): Promise<void> {
    const upper = this.upper
    if (upper) await this.handles.repoint(path, async () => upperFile(await upper.openUpperForRead(path), false))
  }

  async create(path: string, mode: number, flags: number, caller: Caller): Promise<number> {
    const fh = await this.writable(path).create(path, mode, flags, caller)
    return this.handles.add(upperFile(fh))
  }

  /**
   * The upper file of `path` on disk, for a FUSE binding that opens it itself until a name changes;
   * null without an upper, or where the path is too long to open as one (see long-paths.ts).
   */
  upperFilePath(path: string): Buffer | null {
    const dir = this.upper?.dir
    return dir?.fits(path) ? dir.real(path) : null
  }

  /** Where handle `fh`'s bytes lie in a local descriptor, if they do (valid until it changes or is released). */
  direct(fh: number): DirectSpan | null {
    return this.handles.get(fh).direct?.() ?? null
  }

  /**
   * Where a file's bytes lie in a descriptor its lower layer holds open anyway (a plain tar member),
   * for reads without an open handle; null for anything else, and for bytes in the upper. On a
   * writable mount this holds until the file is copied up (onCopiedUp).
   */
  directOf(path: string): DirectSpan | null {
    const r = this.union.resolveNow(path)
    return r ? this.spanOf(r) : null
  }

  /**
   * What C may answer for `path` without JavaScript (a listing's entry, whose attributes it has);
   * nothing where the path does not resolve at once.
   */
  belowNow(path: string): Below {
    try {
      const r = this.union.resolveNow(path)
      return r ? { span: this.spanOf(r), lowerOnly: this.lowerOnly(r) } : NOTHING_BELOW
    } catch {
      return NOTHING_BELOW
    }
  }

  /** getattrNow with belowNow, from one resolution (a LOOKUP's answer); throws FsError. */
  entryNow(path: string): { readonly stat: Stat; readonly below: Below } {
    const r = this.union.resolveNow(path)
    if (!r) throw new FsError(Errno.ENOENT, 'no such file or directory', path)
    return { stat: this.statOf(r), below: { span: this.spanOf(r), lowerOnly: this.lowerOnly(r) } }
  }

  private spanOf(r: Resolved): DirectSpan | null {
    if (r.top.entry.kind !== 'file') return null
    const from = r.data ?? r.top
    if (this.upper && from.layer === 0) return null
    return lowerSpan(this.union.layers[from.layer].spanOf?.(from.path, from.entry) ?? null, from)
  }

  // every part below the upper (a metacopy's data part is then below too)
  private lowerOnly(r: Resolved): boolean {
    return !!this.upper && r.parts.every((p) => p.layer !== 0)
  }

  /** Calls `fn` with each path whose bytes a copy-up moved into the upper (not a metacopy: its bytes stay below). */
  onCopiedUp(fn: (path: string) => void): void {
    this.upper?.copyUp.listen((rec) => {
      if (!rec.metacopy) fn(rec.path)
    })
  }

  /** Calls `fn` when a handle's file changes under it (a read handle re-pointed after a copy-up). */
  onHandleChange(fn: (fh: number) => void): void {
    this.handles.onChange = fn
  }

  read(fh: number, buf: Buffer, length: number, position: number): Promise<number> {
    return this.handles.get(fh).read(buf, length, position)
  }

  /** The layer position an open lower file is read from, or -1 (an upper file). */
  layerOf(fh: number): number {
    return this.handles.get(fh).layer ?? -1
  }

  async write(fh: number, buf: Buffer, length: number, position: number): Promise<number> {
    const file = this.handles.get(fh)
    if (!file.write) throw new FsError(Errno.EBADF, 'not open for writing')
    return file.write(buf, length, position)
  }

  async ftruncate(fh: number, size: number): Promise<void> {
    const file = this.handles.get(fh)
    if (!file.truncate) throw new FsError(Errno.EBADF, 'not open for writing')
    await file.truncate(size)
  }

  async fsync(fh: number, dataOnly: boolean): Promise<void> {
    await this.handles.get(fh).sync?.(dataOnly)
  }

  release(fh: number): Promise<void> {
    return this.handles.release(fh)
  }

  async readlink(path: string): Promise<string> {
    const r = await this.resolve(path)
    if (r.top.entry.kind !== 'symlink') throw new FsError(Errno.EINVAL, 'not a symlink', path)
    return this.union.layers[r.top.layer].readlink(r.top.path, r.top.entry)
  }

  async listxattr(path: string): Promise<string[]> {
    const r = await this.resolve(path)
    return this.union.layers[r.top.layer].listXattrs(r.top.path, r.top.entry)
  }

  /** The value, or null when the entry has no such attribute (ENODATA). */
  async getxattr(path: string, name: string): Promise<Buffer | null> {
    const r = await this.resolve(path)
    return this.union.layers[r.top.layer].getXattr(r.top.path, r.top.entry, name)
  }

  async access(path: string, mode: number): Promise<void> {
    await this.resolve(path)
    if (mode & C.W_OK && !this.upper) throw new FsError(Errno.EROFS, 'read-only filesystem', path)
  }

  mkdir(path: string, mode: number, caller: Caller): Promise<void> { return this.writable(path).mkdir(path, mode, caller) }
  mknod(path: string, mode: number, rdev: number, caller: Caller): Promise<void> { return this.writable(path).mknod(path, mode, rdev, caller) }
  symlink(target: string, path: string, caller: Caller): Promise<void> { return this.writable(path).symlink(target, path, caller) }
  link(existing: string, path: string): Promise<void> { return this.writable(path).link(existing, path) }
  unlink(path: string): Promise<void> { return this.writable(path).unlink(path) }
  rmdir(path: string): Promise<void> { return this.writable(path).rmdir(path) }
  rename(from: string, to: string): Promise<void> { return this.writable(from).rename(from, to) }
  chmod(path: string, mode: number): Promise<void> { return this.writable(path).chmod(path, mode) }
  chown(path: string, uid: number, gid: number): Promise<void> { return this.writable(path).chown(path, uid, gid) }
  utimens(path: string, atime: TimeSpec, mtime: TimeSpec): Promise<void> { return this.writable(path).utimens(path, atime, mtime) }
  truncate(path: string, size: number): Promise<void> { return this.writable(path).truncate(path, size) }
  /** See Upper.dropSetIds: for a write or truncation by a caller without CAP_FSETID. */
  dropSetIds(path: string, caller: Caller): Promise<boolean> { return this.writable(path).dropSetIds(path, caller) }
  setxattr(path: string, name: string, value: Buffer, flags: number): Promise<void> { return this.writable(path).setxattr(path, name, value, flags) }
  removexattr(path: string, name: string): Promise<void> { return this.writable(path).removexattr(path, name) }

  /** Figures of the filesystem holding the upper (or, read-only, the topmost layer), as kernel overlayfs reports. */
  /** The path whose filesystem statfs reports: the upper dir's, or the top layer's. */
  statfsPath(): string {
    return this.upper ? this.upper.dir.upper : this.union.layers[0].source
  }

  async statfs(): Promise<FsStats> {
    const s = await statfs(this.statfsPath())
    return {
      bsize: s.bsize, frsize: s.bsize, blocks: s.blocks, bfree: s.bfree, bavail: s.bavail,
      files: s.files, ffree: s.ffree, favail: s.ffree, namemax: 255,
    }
  }

  get openFiles(): number {
    return this.handles.size
  }

  async close(): Promise<void> {
    await this.handles.closeAll()
    await this.union.close()
  }
}
