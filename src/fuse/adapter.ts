import Fuse = require('fuse-native')
type FuseOps = Fuse.FuseOps
type FuseStat = Fuse.FuseStat
type FuseOptions = Fuse.FuseOptions
import type { LayerFs, Stat } from '../core/layerfs'
import type { Caller } from '../upper/upper'
import { Errno, FsError, errnoOf } from '../errors'
import { log } from '../log'

// The only importer of fuse-native: turns FUSE callbacks into LayerFs calls and FsErrors into
// negative errnos. Nothing may throw across the native boundary.

function toFuseStat(s: Stat): FuseStat {
  return {
    mode: s.mode, uid: s.uid, gid: s.gid, size: s.size, nlink: s.nlink, ino: s.ino, rdev: s.rdev,
    blksize: s.blksize, blocks: s.blocks,
    atime: new Date(s.atime.sec * 1000), atimeNsec: s.atime.nsec,
    mtime: new Date(s.mtime.sec * 1000), mtimeNsec: s.mtime.nsec,
    ctime: new Date(s.ctime.sec * 1000), ctimeNsec: s.ctime.nsec,
  }
}

function failure(op: string, path: string, err: unknown): number {
  if (!(err instanceof FsError)) log.fuse('%s %s: unexpected %s', op, path, (err as Error)?.stack ?? String(err))
  const errno = errnoOf(err)
  return -errno
}

/** A name longer than NAME_MAX: FUSE passes up to 1024 bytes, where the kernel's own filesystems stop at 255. */
function nameTooLong(path: string): boolean {
  if (path.length <= 256) return false
  for (let start = 1; start < path.length; ) {
    let end = path.indexOf('/', start)
    if (end < 0) end = path.length
    if (end - start > 255) return true
    start = end + 1
  }
  return false
}

/** Runs an async op and answers the callback exactly once, whatever happens. */
function answer<T>(op: string, path: string, work: () => Promise<T>, ok: (value: T) => void, fail: (code: number) => void): void {
  if (nameTooLong(path)) {
    fail(-Errno.ENAMETOOLONG)
    return
  }
  let p: Promise<T>
  try {
    p = work()
  } catch (err) {
    fail(failure(op, path, err))
    return
  }
  p.then(ok, (err: unknown) => fail(failure(op, path, err)))
}

/** The caller of the request being handled: valid only at the start of a handler. */
function caller(): Caller {
  const c = Fuse.callerContext()
  return { uid: c[0], gid: c[1], pid: c[2] }
}

const done = (cb: (code: number) => void) => () => cb(0)

/** The FUSE operations that change the tree (all answer EROFS on a read-only mount). */
function writeOps(fs: LayerFs): FuseOps {
  return {
    create: (path, mode, flags, cb) => {
      const who = caller()
      answer('create', path, () => fs.create(path, mode, flags, who), (fh) => cb(0, fh), cb)
    },
    write: (path, fh, buf, len, pos, cb) => answer('write', path, () => fs.write(fh, buf, len, pos), cb, cb),
    truncate: (path, size, cb) => answer('truncate', path, () => fs.truncate(path, size), done(cb), cb),
    ftruncate: (path, fh, size, cb) => answer('ftruncate', path, () => fs.ftruncate(fh, size), done(cb), cb),
    fsync: (path, datasync, fh, cb) => answer('fsync', path, () => fs.fsync(fh, datasync !== 0), done(cb), cb),
    flush: (_path, _fh, cb) => cb(0),
    mkdir: (path, mode, cb) => {
      const who = caller()
      answer('mkdir', path, () => fs.mkdir(path, mode, who), done(cb), cb)
    },
    mknod: (path, mode, dev, cb) => {
      const who = caller()
      answer('mknod', path, () => fs.mknod(path, mode, dev, who), done(cb), cb)
    },
    symlink: (target, path, cb) => {
      const who = caller()
      answer('symlink', path, () => fs.symlink(target, path, who), done(cb), cb)
    },
    link: (existing, path, cb) => answer('link', nameTooLong(existing) ? existing : path, () => fs.link(existing, path), done(cb), cb),
    unlink: (path, cb) => answer('unlink', path, () => fs.unlink(path), done(cb), cb),
    rmdir: (path, cb) => answer('rmdir', path, () => fs.rmdir(path), done(cb), cb),
    rename: (from, to, cb) => answer('rename', nameTooLong(to) ? to : from, () => fs.rename(from, to), done(cb), cb),
    chmod: (path, mode, cb) => answer('chmod', path, () => fs.chmod(path, mode), done(cb), cb),
    chown: (path, uid, gid, cb) => answer('chown', path, () => fs.chown(path, uid, gid), done(cb), cb),
    utimens: (path, atime, mtime, cb) => answer('utimens', path, () => fs.utimens(path, atime, mtime), done(cb), cb),
    setxattr: (path, name, value, _position, flags, cb) => {
      const copy = Buffer.from(value) // the binding's buffer lives only until we answer
      answer('setxattr', path, () => fs.setxattr(path, name, copy, flags), done(cb), cb)
    },
    removexattr: (path, name, cb) => answer('removexattr', path, () => fs.removexattr(path, name), done(cb), cb),
  }
}

export function fuseOps(fs: LayerFs): FuseOps {
  return {
    ...(fs.upper ? writeOps(fs) : {}),
    init: (cb) => cb(0),
    getattr: (path, cb) => answer('getattr', path, () => fs.getattr(path), (s) => cb(0, toFuseStat(s)), cb),
    readdir: (path, cb) => answer('readdir', path, () => fs.readdir(path),
      (list) => cb(0, list.map((e) => e.name), list.map((e) => toFuseStat(e.stat))), cb),
    open: (path, flags, cb) => answer('open', path, () => fs.open(path, flags), (fh) => cb(0, fh), cb),
    release: (path, fh, cb) => answer('release', path, () => fs.release(fh), () => cb(0), cb),
    read: (path, fh, buf, len, pos, cb) => answer('read', path, () => fs.read(fh, buf, len, pos), cb, cb),
    readlink: (path, cb) => answer('readlink', path, () => fs.readlink(path), (t) => cb(0, t), cb),
    getxattr: (path, name, _position, cb) => answer('getxattr', path, () => fs.getxattr(path, name),
      (v) => (v === null ? cb(-Errno.ENODATA) : cb(0, v)), cb),
    listxattr: (path, cb) => answer('listxattr', path, () => fs.listxattr(path), (names) => cb(0, names), cb),
    access: (path, mode, cb) => answer('access', path, () => fs.access(path, mode), () => cb(0), cb),
    statfs: (path, cb) => answer('statfs', path, () => fs.statfs(),
      (s) => cb(0, { ...s, fsid: 0, flag: 0 }), cb),
  }
}

export interface FuseMountOptions {
  /** Shown as the mount's source in /proc/mounts. */
  fsname: string
  readOnly: boolean
  /** Let other users in (root mounts for everyone, as kernel overlayfs does). */
  allowOther: boolean
  /** Seconds the kernel may cache entries (and, read-only, attributes: lowers never change). */
  cacheSeconds: number
  /** Read-only mounts: the window a random read brings into the page cache, in bytes (0: none; low-level binding only). */
  readaround: number
  /**
   * Writable mounts: copy a lower file up at its first write (truncate, chmod, ...), not at an open
   * for writing (low-level binding only: the kernel then sends no OPEN or RELEASE).
   */
  copyUpAtWrite?: boolean
  debug: boolean
}

/**
 * Per layer position: the reads a FUSE binding answered itself (they never reach LayerFs), their
 * bytes, and the windows its readaround pushed into the page cache with their bytes (-o readaround).
 */
export interface DirectReads {
  readonly reads: number[]
  readonly bytes: number[]
  readonly stored: number[]
  readonly storedBytes: number[]
  /** The low-level binding's reader thread (fuse-native has none). */
  readonly reader?: ReaderStats
}

export interface ReaderStats {
  /** FUSE requests it read from /dev/fuse (those it answered and those it queued for Node's thread). */
  readonly requests: number
  /** Whether it polls /dev/fuse for a while after a request now, rather than sleep at once. */
  readonly polling: boolean
  /** Trials of polling against sleeping run so far. */
  readonly pollTrials: number
}

export interface FuseMount {
  unmount(): Promise<void>
  /** What the binding answered itself (the low-level one; fuse-native answers nothing itself). */
  directReads?(): DirectReads
  /** What the binding did on its own thread (copy-ups), made known to LayerFs and its stats now. */
  catchUp?(): void
}

/** Mounts `fs` at `mountpoint`; resolves once the kernel has sent INIT (the mount is live). */
export function mountFuse(fs: LayerFs, mountpoint: string, opts: FuseMountOptions): Promise<FuseMount> {
  // fuse-native's option list is a whitelist; the rest rides in the fsname string
  const extra = ['use_ino', 'big_writes', `negative_timeout=${opts.cacheSeconds}`]
  // fuse-native drops a timeout of 0 (falsy), so a writable mount states it here
  if (opts.readOnly) extra.push('ro')
  else extra.push('attr_timeout=0')
  // as root, behave as kernel overlayfs: devices and setuid bits work, non-empty mountpoints are fine
  if (process.getuid?.() === 0) extra.push('nonempty', 'dev', 'suid')
  const options: FuseOptions = {
    timeout: false,
    mkdir: false,
    force: false,
    debug: opts.debug,
    allowOther: opts.allowOther,
    defaultPermissions: true,
    kernelCache: opts.readOnly,
    entryTimeout: opts.cacheSeconds,
    // writable: attributes are asked for each time (hard links and copy-ups change them behind a name)
    attrTimeout: opts.readOnly ? opts.cacheSeconds : undefined,
    subtype: 'layerfs',
    fsname: [opts.fsname.replace(/[,\\]/g, '_'), ...extra].join(','),
  }
  const fuse = new Fuse(mountpoint, fuseOps(fs), options)
  // fuse-native turns on libfuse's own debug output when DEBUG holds '*': keep that opt-in only
  const savedDebug = process.env.DEBUG
  delete process.env.DEBUG
  return new Promise((resolve, reject) => {
    fuse.mount((err) => {
      if (savedDebug !== undefined) process.env.DEBUG = savedDebug
      if (err) return reject(err)
      resolve({
        unmount: () => new Promise((res, rej) => fuse.unmount((e) => (e ? rej(e) : res()))),
      })
    })
  })
}
