import { closeSync, constants as C, openSync } from 'node:fs'
import { chmod, lchown, link, lstat, mkdir, symlink, truncate, unlink } from 'node:fs/promises'
import type { Union, Resolved } from '../union/union'
import { Errno, FsError, errnoOf } from '../errors'
import { baseOf, parentOf } from '../paths'
import { sys } from '../sys'
import { storedXattrName } from '../layer/layer'
import { CopyUp, type PlannedEntry } from './copy-up'
import { UpperDir } from './upper-dir'
import { PathLocks } from './path-locks'
import { isShort } from '../long-paths'

/**
 * Added to every open of an upper file for a handle: a request whose node the kernel still takes
 * for a regular file while its name is now a fifo (the soak found a daemon blocked for good in
 * such an open) must not block Node's thread; regular files ignore it.
 */
const UPPER_OPEN = C.O_NONBLOCK

/** Kernel overlayfs's default redirect_max: the longest absolute redirect it writes, in bytes. */
const REDIRECT_MAX = 256

/** Who asks: the calling process's identity, from the FUSE request. */
export interface Caller {
  readonly uid: number
  readonly gid: number
  readonly pid: number
}

export interface TimeSpec {
  readonly sec: number
  readonly nsec: number
}

const UTIME_NOW = (1 << 30) - 1
const UTIME_OMIT = (1 << 30) - 2
const S_ISGID = 0o2000

/**
 * The writable upper: every change to the merged tree, applied to the upper dir with kernel
 * overlayfs's semantics (copy-up first, whiteouts where a lower entry must stay hidden, opaque
 * directories where a lower directory was replaced, redirects for renamed directories).
 * Namespace changes are serialised; the union forgets what each change touched.
 */
export class Upper {
  readonly copyUp: CopyUp
  private readonly locks = new PathLocks()

  constructor(readonly dir: UpperDir, private readonly union: Union, opts: { metacopy?: boolean } = {}) {
    this.copyUp = new CopyUp(union, dir, opts.metacopy ?? false)
  }

  /** One change at a time, with long paths reachable for its duration. */
  private run<T>(work: () => Promise<T>): Promise<T> {
    return this.locks.run(() => this.dir.change(work))
  }

  private async resolve(path: string): Promise<Resolved> {
    const r = await this.union.resolve(path)
    if (!r) throw new FsError(Errno.ENOENT, 'no such file or directory', path)
    return r
  }

  private async mustBeAbsent(path: string): Promise<void> {
    if (await this.union.resolve(path)) throw new FsError(Errno.EEXIST, 'file exists', path)
    const parent = await this.union.resolve(parentOf(path))
    if (!parent) throw new FsError(Errno.ENOENT, 'no such directory', parentOf(path))
    if (parent.top.entry.kind !== 'dir') throw new FsError(Errno.ENOTDIR, 'not a directory', parentOf(path))
  }

  /** Owner and group of a new entry: the caller's, the group from a setgid parent. */
  private async ownerFor(path: string, caller: Caller): Promise<{ uid: number; gid: number; setgid: boolean }> {
    const parent = await lstat(this.dir.real(parentOf(path)))
    const setgid = (parent.mode & S_ISGID) !== 0
    return { uid: caller.uid, gid: setgid ? parent.gid : caller.gid, setgid }
  }

  /**
   * Builds a new entry with `make(at)` and puts it at `path`: directly when the upper has nothing
   * there, through the work dir over the whiteout when it has one (a directory made over a
   * whiteout is opaque: what lay below is gone).
   */
  private async createEntry(path: string, caller: Caller, make: (at: Buffer) => Promise<void>, mode: number | null): Promise<void> {
    await this.copyUp.ensureParents(path)
    await this.copyUp.ensure(parentOf(path), 'parent')
    const owner = await this.ownerFor(path, caller)
    const overWhiteout = await this.dir.isWhiteout(path)
    const at = overWhiteout ? this.dir.temp() : this.dir.real(path)
    await make(at)
    try {
      await lchown(at, owner.uid, owner.gid)
      const st = await lstat(at)
      // a directory made in a setgid directory is setgid too
      if (mode !== null) await chmod(at, mode | (st.isDirectory() && owner.setgid ? S_ISGID : 0))
      // as kernel overlayfs: a directory made over a whiteout, or in a merged directory, is opaque
      if (st.isDirectory() && (overWhiteout || (await this.parentIsMerged(path)))) await this.dir.setOpaque(at)
      if (overWhiteout) {
        if (st.isDirectory()) {
          sys.renameat2(at, this.dir.real(path), 2 /* RENAME_EXCHANGE */)
          await unlink(at)
        } else {
          await this.dir.renameReal(at, this.dir.real(path))
        }
      }
    } catch (err) {
      await this.dir.removeReal(at).catch(() => undefined)
      throw err
    }
    this.union.forget(path)
  }

  private async parentIsMerged(path: string): Promise<boolean> {
    const parent = await this.union.resolve(parentOf(path))
    return parent !== null && parent.parts.some((p) => p.layer > 0)
  }

  async mkdir(path: string, mode: number, caller: Caller): Promise<void> {
    await this.run(async () => {
      await this.mustBeAbsent(path)
      await this.createEntry(path, caller, (at) => mkdir(at, 0o700).then(() => undefined), mode & 0o7777)
    })
  }

  /** Creates and opens a regular file; returns the open upper file's descriptor. */
  async create(path: string, mode: number, flags: number, caller: Caller): Promise<number> {
    return this.run(async () => {
      await this.mustBeAbsent(path)
      await this.createEntry(path, caller, async (at) => closeSync(openSync(at, C.O_WRONLY | C.O_CREAT | C.O_EXCL, 0o600)), mode & 0o7777)
      const accmode = flags & (C.O_RDONLY | C.O_WRONLY | C.O_RDWR)
      return openSync(this.dir.real(path), accmode | (flags & C.O_APPEND) | UPPER_OPEN)
    })
  }

  async mknod(path: string, mode: number, rdev: number, caller: Caller): Promise<void> {
    await this.run(async () => {
      await this.mustBeAbsent(path)
      const major = (rdev >>> 8) & 0xfff
      const minor = (rdev & 0xff) | ((rdev >>> 12) & 0xfff00)
      await this.createEntry(path, caller, async (at) => sys.mknod(at, (mode & C.S_IFMT) | 0o600, major, minor), mode & 0o7777)
    })
  }

  async symlink(target: string, path: string, caller: Caller): Promise<void> {
    await this.run(async () => {
      await this.mustBeAbsent(path)
      await this.createEntry(path, caller, (at) => symlink(Buffer.from(target, 'latin1'), at), null)
    })
  }

  async link(existing: string, path: string): Promise<void> {
    await this.run(async () => {
      const src = await this.resolve(existing)
      if (src.top.entry.kind === 'dir') throw new FsError(Errno.EPERM, 'hard link to a directory', existing)
      await this.mustBeAbsent(path)
      await this.copyUp.ensure(existing, 'link')
      await this.copyUp.ensureParents(path)
      await this.copyUp.ensure(parentOf(path), 'parent')
      if (await this.dir.isWhiteout(path)) {
        const tmp = this.dir.temp()
        await link(this.dir.real(existing), tmp)
        await this.dir.renameReal(tmp, this.dir.real(path))
      } else {
        await link(this.dir.real(existing), this.dir.real(path))
      }
      this.union.forget(existing)
      this.union.forget(path)
    })
  }

  async unlink(path: string): Promise<void> {
    await this.run(async () => {
      const r = await this.resolve(path)
      if (r.top.entry.kind === 'dir') throw new FsError(Errno.EISDIR, 'is a directory', path)
      await this.remove(path, r)
    })
  }

  async rmdir(path: string): Promise<void> {
    await this.run(async () => {
      if (path === '/') throw new FsError(Errno.EBUSY, 'cannot remove the root', path)
      const r = await this.resolve(path)
      if (r.top.entry.kind !== 'dir') throw new FsError(Errno.ENOTDIR, 'not a directory', path)
      if ((await this.union.readdir(path)).length > 0) throw new FsError(Errno.ENOTEMPTY, 'directory not empty', path)
      if (r.top.layer === 0) await this.dir.clearDir(path)
      await this.remove(path, r)
      this.union.invalidateTree(path)
    })
  }

  /** Removes an entry from the merged view: from the upper, with a whiteout where a lower one shows. */
  private async remove(path: string, r: Resolved): Promise<void> {
    const below = await this.union.presentBelow(path)
    if (below) {
      await this.copyUp.ensureParents(path)
      await this.dir.putWhiteout(path)
    } else if (r.top.layer === 0) {
      await this.dir.removeEntry(path)
    }
    this.union.forget(path)
  }

  async rename(from: string, to: string): Promise<void> {
    await this.run(async () => {
      const src = await this.resolve(from)
      if (from === to) return
      if (to.startsWith(from + '/')) throw new FsError(Errno.EINVAL, 'cannot move a directory into itself', to)
      const dst = await this.union.resolve(to)
      const isDir = src.top.entry.kind === 'dir'
      if (dst) {
        const dstDir = dst.top.entry.kind === 'dir'
        if (isDir && !dstDir) throw new FsError(Errno.ENOTDIR, 'not a directory', to)
        if (!isDir && dstDir) throw new FsError(Errno.EISDIR, 'is a directory', to)
        if (dstDir && (await this.union.readdir(to)).length > 0) throw new FsError(Errno.ENOTEMPTY, 'directory not empty', to)
      }
      const srcBelow = await this.union.presentBelow(from)
      // the source in the upper: a file whole; a directory by itself, its contents staying where they are
      await this.copyUp.ensure(from, 'rename')
      await this.copyUp.ensureParents(to)
      await this.copyUp.ensure(parentOf(to), 'parent')
      if (isDir) await this.prepareMovedDir(from, to, src, srcBelow)
      if (dst && dst.top.layer === 0) {
        if (dst.top.entry.kind === 'dir') await this.dir.clearDir(to)
      } else if (await this.dir.isWhiteout(to)) {
        await unlink(this.dir.real(to))
      }
      await this.dir.rename(from, to, srcBelow)
      if (isDir) {
        this.union.invalidateTree(from)
        this.union.invalidateTree(to)
      } else {
        this.union.forget(from)
        this.union.forget(to)
      }
    })
  }

  /**
   * A directory keeps its lower contents across a rename through a redirect to where they lie
   * (kernel overlayfs's redirect_dir); a directory only the upper has becomes opaque when it lands
   * in a merged directory, so that nothing below its new name shows through.
   */
  private async prepareMovedDir(from: string, to: string, src: Resolved, srcBelow: boolean): Promise<void> {
    const real = this.dir.real(from)
    const lowerPart = src.parts.find((p) => p.layer > 0)
    if (lowerPart) {
      const samedir = parentOf(from) === parentOf(to)
      const existing = src.top.layer === 0 ? src.top.entry.redirect ?? null : null
      const target = samedir && !existing && lowerPart.path === from ? baseOf(from) : lowerPart.path
      // kernel overlayfs makes an absolute redirect only for a move to another directory (a kept
      // absolute one is not made again), and refuses one longer than its redirect_max (256 bytes
      // by default) with EXDEV, after the copy-ups: mv then copies the tree itself
      const absoluteMade = !samedir && !existing?.startsWith('/')
      if (absoluteMade && Buffer.byteLength(target, 'latin1') > REDIRECT_MAX) {
        throw new FsError(Errno.EXDEV, 'redirect longer than redirect_max', from)
      }
      await this.dir.setRedirect(real, target)
    } else if (!srcBelow && !src.top.entry.opaque) {
      const newParent = await this.union.resolve(parentOf(to))
      if (newParent && newParent.parts.some((p) => p.layer > 0)) await this.dir.setOpaque(real)
    }
  }

  async chmod(path: string, mode: number): Promise<void> {
    await this.run(async () => {
      await this.copyUp.ensure(path, 'chmod')
      await chmod(this.dir.real(path), mode & 0o7777)
    })
  }

  async chown(path: string, uid: number, gid: number): Promise<void> {
    await this.run(async () => {
      await this.copyUp.ensure(path, 'chown')
      // -1 (as uint32) leaves that id unchanged
      const st = await lstat(this.dir.real(path))
      await lchown(this.dir.real(path), uid === 0xffffffff ? st.uid : uid, gid === 0xffffffff ? st.gid : gid)
    })
  }

  async utimens(path: string, atime: TimeSpec, mtime: TimeSpec): Promise<void> {
    await this.run(async () => {
      await this.copyUp.ensure(path, 'utimens')
      const fix = (t: TimeSpec): TimeSpec => (t.nsec === UTIME_NOW || t.nsec === UTIME_OMIT ? { sec: 0, nsec: t.nsec } : t)
      const a = fix(atime)
      const m = fix(mtime)
      sys.utimens(this.dir.real(path), a.sec, a.nsec, m.sec, m.nsec)
    })
  }

  /**
   * Drops the set-ID bits a write or truncation by `caller`, without CAP_FSETID, takes from an upper
   * file (native/setids.h: the kernel leaves that to us once it handles "killpriv", and the daemon's
   * own syscalls keep them when it runs as root). Whether any went.
   */
  async dropSetIds(path: string, caller: Caller): Promise<boolean> {
    return this.run(async () => sys.dropSetIds(this.dir.real(path), caller.gid, caller.pid))
  }

  async truncate(path: string, size: number): Promise<void> {
    await this.run(async () => {
      const r = await this.resolve(path)
      if (r.top.entry.kind === 'dir') throw new FsError(Errno.EISDIR, 'is a directory', path)
      await this.copyUp.ensure(path, 'truncate', { data: size > 0 })
      await truncate(this.dir.real(path), size)
    })
  }

  async setxattr(path: string, name: string, value: Buffer, flags: number): Promise<void> {
    await this.run(async () => {
      await this.copyUp.ensure(path, 'setxattr')
      sys.lsetxattr(this.dir.real(path), storedXattrName(name), value, flags)
    })
  }

  async removexattr(path: string, name: string): Promise<void> {
    await this.run(async () => {
      const r = await this.resolve(path)
      const has = await this.union.layers[r.top.layer].getXattr(r.top.path, r.top.entry, name)
      if (has === null) throw new FsError(Errno.ENODATA, 'no such attribute', path)
      await this.copyUp.ensure(path, 'removexattr')
      sys.lremovexattr(this.dir.real(path), storedXattrName(name))
    })
  }

  /** Opens the upper file of `path` for writing, copying it up first (without data for O_TRUNC). */
  async openForWrite(path: string, flags: number): Promise<number> {
    return this.run(async () => {
      const r = await this.resolve(path)
      if (r.top.entry.kind === 'dir') throw new FsError(Errno.EISDIR, 'is a directory', path)
      await this.copyUp.ensure(path, 'write', { data: (flags & C.O_TRUNC) === 0 })
      try {
        // descriptors of the local upper are used synchronously (see handles.ts)
        return openSync(this.dir.real(path), (flags & ~(C.O_CREAT | C.O_EXCL)) | UPPER_OPEN)
      } catch (err) {
        throw new FsError(errnoOf(err), 'cannot open', path)
      }
    })
  }

  /**
   * openForWrite() done at once (see CopyUp.ensureNow) where no other change is queued; null,
   * having done nothing, where it cannot: the caller then awaits openForWrite().
   */
  openForWriteNow(path: string, flags: number): number | null {
    if (this.locks.busy) return null
    const r = this.union.resolveNow(path)
    const real = this.dir.real(path)
    // errors (a directory, a missing path) and long paths (a change's scope reaches them) go the other way
    if (!r || r.top.entry.kind === 'dir' || !isShort(real)) return null
    if (!this.copyUp.ensureNow(path, 'write', (flags & C.O_TRUNC) === 0)) return null
    try {
      return openSync(real, (flags & ~(C.O_CREAT | C.O_EXCL)) | UPPER_OPEN)
    } catch (err) {
      throw new FsError(errnoOf(err), 'cannot open', path)
    }
  }

  /**
   * The copy-up a first write to `path` would make at once (CopyUp.planNow), for native code to
   * run at the write's OPEN; null where openForWriteNow() could not copy it at once, where there
   * is nothing to copy, or where the file is larger than `maxBytes`.
   */
  planWriteNow(path: string, maxBytes: number, above?: readonly PlannedEntry[]): PlannedEntry[] | null {
    return this.locks.busy ? null : this.copyUp.planNow(path, maxBytes, above)
  }

  /** What a first write to any file in `dir` would copy before the file itself (CopyUp.planAboveNow). */
  planAboveNow(dir: string): PlannedEntry[] | null {
    return this.locks.busy ? null : this.copyUp.planAboveNow(dir)
  }

  /** What native code made of a plan (see CopyUp.plannedDone). */
  plannedDone(plan: readonly PlannedEntry[], done: number, ns: readonly number[]): void {
    this.copyUp.plannedDone(plan, done, ns)
  }

  /** Opens the upper file of an already copied-up path for reading (re-pointing a read handle). */
  async openUpperForRead(path: string): Promise<number> {
    return this.run(async () => openSync(this.dir.real(path), C.O_RDONLY | UPPER_OPEN))
  }
}
