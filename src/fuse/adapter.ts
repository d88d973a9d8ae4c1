import Fuse = require('fuse-native')
type FuseOps = Fuse.FuseOps
type FuseStat = Fuse.FuseStat
type FuseOptions = Fuse.FuseOptions
import type { LayerFs, Stat } from '../core/layerfs'
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

/** Runs an async op and answers the callback exactly once, whatever happens. */
function answer<T>(op: string, path: string, work: () => Promise<T>, ok: (value: T) => void, fail: (code: number) => void): void {
  let p: Promise<T>
  try {
    p = work()
  } catch (err) {
    fail(failure(op, path, err))
    return
  }
  p.then(ok, (err: unknown) => fail(failure(op, path, err)))
}

export function fuseOps(fs: LayerFs): FuseOps {
  return {
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
  /** Seconds the kernel may cache entries and attributes (lowers never change). */
  cacheSeconds: number
  debug: boolean
}

export interface FuseMount {
  unmount(): Promise<void>
}

/** Mounts `fs` at `mountpoint`; resolves once the kernel has sent INIT (the mount is live). */
export function mountFuse(fs: LayerFs, mountpoint: string, opts: FuseMountOptions): Promise<FuseMount> {
  // fuse-native's option list is a whitelist; the rest rides in the fsname string
  const extra = ['use_ino', 'big_writes', `negative_timeout=${opts.cacheSeconds}`]
  if (opts.readOnly) extra.push('ro')
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
    attrTimeout: opts.cacheSeconds,
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
