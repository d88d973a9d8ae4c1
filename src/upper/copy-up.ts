import { closeSync, constants as C, chmodSync, ftruncateSync, lchownSync, mkdirSync, openSync, renameSync, rmSync, symlinkSync, writeSync } from 'node:fs'
import type { Entry, EntryKind, Layer } from '../layer/layer'
import { majorOf, minorOf, storedXattrName } from '../layer/layer'
import type { Resolved, Union } from '../union/union'
import { Errno, FsError, errnoOf } from '../errors'
import { ancestorsOf, parentOf } from '../paths'
import { LSTAT, sys } from '../sys'
import type { UpperDir } from './upper-dir'
import { log } from '../log'

/** Why something was copied up: the operation that needed it in the upper. */
export type CopyUpReason =
  | 'write' | 'truncate' | 'chmod' | 'chown' | 'utimens' | 'setxattr' | 'removexattr' | 'link' | 'rename'
  | 'parent' | 'create'

export interface CopyUpRecord {
  readonly path: string
  /** Position of the source layer in the stack (0 is the upper). */
  readonly layer: number
  readonly source: string
  readonly reason: CopyUpReason
  readonly bytes: number
  readonly durationMs: number
  /** False when only metadata was copied (a directory, a symlink, or data not needed). */
  readonly data: boolean
  /** A metacopy file was made: the data stays below. */
  readonly metacopy: boolean
}

const CHUNK = 1 << 20
/** Where a file's bytes lie, in order, in a descriptor (Layer.spanOf, LayerFile.span). */
type Span = { fd: number; offset: number }
/** One entry of a planned copy-up (CopyUp.planNow), which native code makes as finishEntry does. */
export interface PlannedEntry {
  readonly r: Resolved
  readonly reason: CopyUpReason
  /** Where a file's bytes lie (null: a directory). */
  readonly span: Span | null
  /** The source's xattrs, by the names they are stored under. */
  readonly xattrs: ReadonlyArray<readonly [string, Buffer]>
}

/** Operations that change only metadata: with metacopy, a lower file's data is not copied for them. */
const METADATA_ONLY: ReadonlySet<CopyUpReason> = new Set(['chmod', 'chown', 'utimens', 'setxattr', 'removexattr'])
const TYPE_BITS: Partial<Record<EntryKind, number>> = { char: C.S_IFCHR, block: C.S_IFBLK, fifo: C.S_IFIFO, socket: C.S_IFSOCK }

/**
 * Copies lower entries into the upper: parents first, each built in the work dir (data, owner,
 * mode, xattrs, times) and renamed into place, so a crash leaves either nothing or a whole entry.
 * Concurrent requests for one path share one copy.
 */
export class CopyUp {
  private readonly inflight = new Map<string, Promise<void>>()
  /** An entry as made in the work dir (lstatEntry's output). */
  private readonly made = new Float64Array(LSTAT.COUNT)
  /** The times of the directory a copy-up renames into, as they were before it. */
  private readonly parentTimes = new Float64Array(LSTAT.COUNT)
  private readonly listeners: Array<(rec: CopyUpRecord) => void> = []

  /** `metacopy`: metadata-only copy-up for chmod, chown, utimens and xattr changes (kernel overlayfs's metacopy=on). */
  constructor(private readonly union: Union, private readonly dir: UpperDir, private readonly metacopy = false) {}

  /** Calls `fn` after each copy-up (open handles follow the file; statistics count it). */
  listen(fn: (rec: CopyUpRecord) => void): void {
    this.listeners.push(fn)
  }

  /** Makes `path` an upper entry; `data: false` skips file contents (the caller truncates to 0). */
  async ensure(path: string, reason: CopyUpReason, opts: { data?: boolean } = {}): Promise<void> {
    for (;;) {
      const r = await this.union.resolve(path)
      if (!r) throw new FsError(Errno.ENOENT, 'no such file or directory', path)
      const metaOnly = this.metacopy && METADATA_ONLY.has(reason) && r.top.entry.kind === 'file'
      // an upper metacopy file gets its data when anything but its metadata changes
      if (r.top.layer === 0 && (!r.top.entry.metacopy || metaOnly)) return
      const pending = this.inflight.get(path)
      if (pending) {
        await pending // another request's copy: what it made is looked at again
        continue
      }
      const work = this.copy(r, reason, opts.data !== false || r.top.layer === 0, metaOnly)
      this.inflight.set(path, work)
      try {
        await work
      } finally {
        this.inflight.delete(path)
      }
      // our own copy made what was asked for: not resolved again here (~0.1 ms a copy-up; the
      // next request that needs it resolves it)
      return
    }
  }

  /** Makes every directory above `path` an upper directory. */
  async ensureParents(path: string): Promise<void> {
    for (const dir of ancestorsOf(path).reverse()) if (dir !== '/') await this.ensure(dir, 'parent')
  }

  /**
   * ensure() done at once, for a write: where nothing is being copied and every entry to copy (the
   * path and the ancestors not yet in the upper) is a directory or a plain file whose attributes
   * and bytes its layer has at hand (a tar's index and a known offset; see Layer.xattrsNow). Then
   * no step waits for a promise: a first copy-up of a small file spent more in the promise chains
   * of ensure() than in its syscalls. False, having done nothing, where it cannot: the caller then
   * awaits ensure().
   */
  ensureNow(path: string, reason: CopyUpReason, data: boolean): boolean {
    const todo = this.todoNow(path, reason, data)
    if (!todo) return false
    for (const [r, span] of todo) this.copyNow(r, r.path === path ? reason : 'parent', span)
    return true
  }

  /**
   * What a first write to `path` would copy at once (ensureNow's entries: the ancestors not yet in
   * the upper, then the file), planned for native code to run when the write's OPEN comes, without
   * a call into JavaScript (see native/fuse_ll.c plan_open; it builds each in the work dir and
   * renames it to the upper path, both under UpperDir.planRoots()): each entry's source, xattrs as
   * stored, and where its bytes lie. Null where ensureNow could not copy it, where nothing is to be
   * copied, or where the file is larger than `maxBytes`. Nothing is changed here; plannedDone() is
   * told what ran.
   */
  planNow(path: string, maxBytes: number, above?: readonly PlannedEntry[]): PlannedEntry[] | null {
    let todo: Array<[Resolved, Span | null]> | null
    if (above) { // the directories above it, planned already (planAboveNow): only the file's own entry
      const r = this.union.resolveNow(path)
      const span = r && r.top.layer !== 0 && this.inflight.size === 0 ? this.copyableNow(r, true) : false
      todo = span === false ? null : [[r!, span]]
    } else {
      todo = this.todoNow(path, 'write', true)
    }
    if (!todo || todo.length === 0 || !this.dir.fits(path)) return null
    const file = todo[todo.length - 1][0].top.entry
    if (file.kind !== 'file' || file.size > maxBytes) return null
    const plan: PlannedEntry[] = above ? [...above] : []
    for (const [r, span] of todo) plan.push(this.planned(r, r.path === path ? 'write' : 'parent', span))
    return plan
  }

  /**
   * The entries a first write to any file in directory `dir` would copy before the file's own (the
   * directories not yet in the upper, `dir` last): for planNow's `above`, when several are planned
   * at once. Null where ensureNow could not copy them, or where `dir` is in the upper already.
   */
  planAboveNow(dir: string): PlannedEntry[] | null {
    const todo = this.todoNow(dir, 'parent', false)
    if (!todo || todo.length === 0) return null
    return todo.map(([r, span]) => this.planned(r, 'parent', span))
  }

  private planned(r: Resolved, reason: CopyUpReason, span: Span | null): PlannedEntry {
    const xattrs = this.union.layers[r.top.layer].xattrsNow!(r.top.path, r.top.entry)
    return { r, reason, span, xattrs: xattrs.length === 0 ? xattrs : xattrs.map(([name, value]) => [storedXattrName(name), value] as const) }
  }

  /**
   * Native code ran a plan's first `done` entries: those it made took `ns[i]` nanoseconds each
   * (-1: one an earlier plan had made). Their records, as if copied here.
   */
  plannedDone(plan: readonly PlannedEntry[], done: number, ns: readonly number[]): void {
    for (let i = 0; i < plan.length; i++) this.union.forget(plan[i].r.path)
    for (let i = 0; i < done && i < plan.length; i++) {
      const { r, reason, span } = plan[i]
      if (ns[i] >= 0) this.copied(r, reason, ns[i] / 1e6, span ? r.top.entry.size : 0, span !== null, false)
    }
  }

  /** The entries ensureNow() copies for `path` (the ancestors not yet in the upper, then it), or null where it cannot. */
  private todoNow(path: string, reason: CopyUpReason, data: boolean): Array<[Resolved, Span | null]> | null {
    if (this.inflight.size > 0 || (this.metacopy && METADATA_ONLY.has(reason))) return null
    const todo: Array<[Resolved, Span | null]> = []
    const dirs = ancestorsOf(path).reverse()
    for (let i = 1; i <= dirs.length; i++) { // dirs[0] is the root, always in the upper
      const at = i < dirs.length ? dirs[i] : path
      const r = this.union.resolveNow(at)
      if (!r) return null
      if (r.top.layer === 0) {
        if (r.top.entry.metacopy) return null
        continue
      }
      const span = this.copyableNow(r, at === path && data)
      if (span === false) return null
      todo.push([r, span])
    }
    return todo
  }

  /**
   * Whether ensureNow() can copy `r` at once: false where not; else where its bytes lie (null for a
   * directory, or a file whose data is not wanted).
   */
  private copyableNow(r: Resolved, withData: boolean): Span | null | false {
    const { entry, layer, path } = r.top
    const source = this.union.layers[layer]
    if (!source.xattrsNow) return false
    if (entry.kind === 'dir') return null
    if (entry.kind !== 'file' || entry.metacopy) return false
    if (!withData) return null
    return (entry.storedSize >= entry.size && source.spanOf?.(path, entry)) || false
  }

  /** Copies `r` with its data from `span`, or without data (a directory, or a file made empty). */
  private copyNow(r: Resolved, reason: CopyUpReason, span: Span | null): void {
    const started = process.hrtime.bigint()
    const { entry, layer, path } = r.top
    const xattrs = this.union.layers[layer].xattrsNow!(path, entry)
    const tmp = this.dir.temp()
    let bytes = 0
    try {
      if (entry.kind === 'dir') mkdirSync(tmp, { mode: entry.mode & 0o777 })
      else if (!span) this.emptyFile(tmp, entry.mode)
      else bytes = this.copySpan(r, span, tmp)
      this.finishEntry(r, tmp, xattrs, false)
    } catch (err) {
      throw this.discard(r, tmp, err)
    }
    this.copied(r, reason, elapsedMs(started), bytes, span !== null, false)
  }

  private async copy(r: Resolved, reason: CopyUpReason, withData: boolean, metaOnly = false): Promise<void> {
    const started = process.hrtime.bigint()
    await this.ensureParents(r.path)
    const { entry, layer } = r.top
    const source = this.union.layers[layer]
    const tmp = this.dir.temp()
    let bytes = 0
    try {
      switch (entry.kind) {
        case 'file':
          if (metaOnly) this.metacopyFile(tmp, entry.size, entry.mode)
          else bytes = withData ? await this.copyData(r, tmp) : this.emptyFile(tmp, entry.mode)
          break
        case 'dir':
          mkdirSync(tmp, { mode: entry.mode & 0o777 })
          break
        case 'symlink':
          symlinkSync(Buffer.from(await source.readlink(r.top.path, entry), 'latin1'), tmp)
          break
        default:
          sys.mknod(tmp, TYPE_BITS[entry.kind]! | 0o600, majorOf(entry.rdev), minorOf(entry.rdev))
      }
      this.finishEntry(r, tmp, await xattrsOf(source, r.top.path, entry), metaOnly)
    } catch (err) {
      throw this.discard(r, tmp, err)
    }
    this.copied(r, reason, elapsedMs(started), bytes, withData, metaOnly)
  }

  /** Owner, mode, xattrs and times of the source onto the entry built at `tmp`, then into place. */
  private finishEntry(r: Resolved, tmp: Buffer, xattrs: ReadonlyArray<readonly [string, Buffer]>, metaOnly: boolean): void {
    const { entry } = r.top
    // as made: owner from the work dir (our ids, or its group if setgid), mode after umask and
    // any default ACL. Each chown or chmod is an inode update (~5-10 µs on ext4); a lstat is not.
    const made = this.made
    const err = sys.lstatEntry(tmp, made)
    const chown = err !== 0 || made[LSTAT.UID] !== entry.uid || made[LSTAT.GID] !== entry.gid
    if (chown) lchownSync(tmp, entry.uid, entry.gid)
    // after chown, which clears setuid and setgid
    if (entry.kind !== 'symlink' && (chown || (made[LSTAT.MODE] & 0o7777) !== (entry.mode & 0o7777))) chmodSync(tmp, entry.mode)
    for (const [name, value] of xattrs) {
      try {
        sys.lsetxattr(tmp, storedXattrName(name), value, 0)
      } catch (err) {
        // security.* or trusted.* the upper filesystem refuses: the entry stays usable without it
        log.union('copy-up %s: cannot copy xattr %s: %s', r.path, name, (err as Error).message)
      }
    }
    setTimes(tmp, entry)
    if (metaOnly) sys.lsetxattr(tmp, this.dir.xattrName('metacopy'), Buffer.alloc(0), 0)
    // the parent's times are put back after the rename, as kernel overlayfs does: in the merged
    // view nothing in it changed (a copy-up of /a/b/f leaves /a/b's mtime the lower's)
    const parent = this.dir.real(parentOf(r.path))
    const times = this.parentTimes
    const known = sys.lstatEntry(parent, times) === 0
    renameSync(tmp, this.dir.real(r.path))
    if (known) sys.utimens(parent, times[LSTAT.ATIME], times[LSTAT.ATIME_NS], times[LSTAT.MTIME], times[LSTAT.MTIME_NS])
  }

  /** A failed copy: what was built is removed; the error, as an FsError, for the caller to throw. */
  private discard(r: Resolved, tmp: Buffer, err: unknown): FsError {
    try { rmSync(tmp, { recursive: true, force: true }) } catch { /* best effort */ }
    return err instanceof FsError ? err : new FsError(errnoOf(err), `copy-up failed (${(err as Error).message})`, r.path)
  }

  private copied(r: Resolved, reason: CopyUpReason, durationMs: number, bytes: number, withData: boolean, metaOnly: boolean): void {
    this.union.forget(r.path)
    if (log.union.enabled) log.union('copied up %s (%s, %d bytes, %d ms)', r.path, reason, bytes, durationMs.toFixed(2))
    const { entry, layer } = r.top
    const rec: CopyUpRecord = { path: r.path, layer, source: this.union.layers[layer].source, reason, bytes, durationMs, data: entry.kind === 'file' && withData && !metaOnly, metacopy: metaOnly }
    for (const fn of this.listeners) fn(rec)
  }

  // Copy-up works on the daemon's thread with synchronous calls on the local upper and work dirs:
  // a thread-pool round trip per step cost more than the steps themselves.

  // Entries are made in the work dir with their own permission bits (no one else can reach it):
  // copyMetadata then changes owner and mode only where they differ.

  /** A metacopy file: the size of its data, no data (a hole), as kernel overlayfs writes it. */
  private metacopyFile(tmp: Buffer, size: number, mode: number): void {
    const fd = openSync(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL, mode & 0o777)
    try {
      ftruncateSync(fd, size)
    } finally {
      closeSync(fd)
    }
  }

  private emptyFile(tmp: Buffer, mode: number): number {
    closeSync(openSync(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL, mode & 0o777))
    return 0
  }

  /** The file's bytes from its layer: copied by the kernel where they lie in a local file, else streamed; a sparse source keeps its holes. */
  private async copyData(r: Resolved, tmp: Buffer): Promise<number> {
    // a metacopy file's data is the lower file's; its size and everything else are its own
    const from = r.data ?? r.top
    if (r.top.entry.metacopy && !r.data) throw new FsError(Errno.EIO, 'metacopy file without data below', r.path)
    const entry = { ...from.entry, size: r.top.entry.size }
    const src = await this.union.layers[from.layer].open(from.path, from.entry)
    const out = openSync(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL, r.top.entry.mode & 0o777)
    const sparse = entry.storedSize < entry.size
    let copied = 0
    try {
      const span = sparse ? null : src.span?.() ?? null
      if (span) return copyAll(span, out, entry.size, r.path)
      const buf = Buffer.allocUnsafe(CHUNK)
      for (let pos = 0; pos < entry.size; ) {
        const n = await src.read(buf, Math.min(CHUNK, entry.size - pos), pos)
        if (n === 0) break
        const chunk = buf.subarray(0, n)
        if (!(sparse && isZero(chunk))) {
          let done = 0
          while (done < n) done += writeSync(out, chunk, done, n - done, pos + done)
        }
        pos += n
        copied += n
      }
      if (sparse) ftruncateSync(out, entry.size)
    } finally {
      closeSync(out)
      await src.close()
    }
    return copied
  }

  /** A plain file's bytes from where its layer keeps them in order (a plain tar member). */
  private copySpan(r: Resolved, span: Span, tmp: Buffer): number {
    const out = openSync(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL, r.top.entry.mode & 0o777)
    try {
      return copyAll(span, out, r.top.entry.size, r.path)
    } finally {
      closeSync(out)
    }
  }
}

/** `size` bytes from a span into `out` at 0, copied by the kernel; EIO when the layer has fewer. */
function copyAll(span: Span, out: number, size: number, path: string): number {
  const copied = sys.copyRange(span.fd, span.offset, out, 0, size)
  if (copied !== size) throw new FsError(Errno.EIO, `layer file shorter than its entry (${copied} of ${size} bytes)`, path)
  return copied
}

/** An entry's extended attributes, by the names shown, with their values. */
async function xattrsOf(source: Layer, path: string, entry: Entry): Promise<Array<[string, Buffer]>> {
  if (source.xattrsNow) return source.xattrsNow(path, entry)
  const out: Array<[string, Buffer]> = []
  for (const name of await source.listXattrs(path, entry)) {
    const value = await source.getXattr(path, entry, name)
    if (value !== null) out.push([name, value])
  }
  return out
}

function elapsedMs(started: bigint): number {
  return Number(process.hrtime.bigint() - started) / 1e6
}

export function setTimes(real: Buffer, entry: Pick<Entry, 'atime' | 'mtime'>): void {
  sys.utimens(real, entry.atime.sec, entry.atime.nsec, entry.mtime.sec, entry.mtime.nsec)
}

/** Whether a chunk is all zeros (a hole to keep); chunks with data usually fail at their first bytes. */
function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false
  return true
}
