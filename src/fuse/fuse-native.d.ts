// The part of fuse-native's API that layerfs uses (the package ships no types). Callbacks take a
// negative errno or 0 first; read's callback takes the byte count instead.
declare module 'fuse-native' {
  namespace Fuse {
  type Cb = (code: number) => void
  type ValueCb<T> = (code: number, value?: T) => void

  interface FuseStat {
    mode: number; uid: number; gid: number; size: number; dev?: number; nlink: number; ino: number
    rdev: number; blksize: number; blocks: number
    atime: Date; mtime: Date; ctime: Date
    /** Added by layerfs's patch: the nanosecond part of each time. */
    atimeNsec?: number; mtimeNsec?: number; ctimeNsec?: number
  }

  interface FuseStatfs {
    bsize: number; frsize: number; blocks: number; bfree: number; bavail: number
    files: number; ffree: number; favail: number; fsid: number; flag: number; namemax: number
  }

  interface FuseOps {
    init?(cb: Cb): void
    access?(path: string, mode: number, cb: Cb): void
    statfs?(path: string, cb: ValueCb<FuseStatfs>): void
    getattr?(path: string, cb: ValueCb<FuseStat>): void
    readdir?(path: string, cb: (code: number, names?: string[], stats?: FuseStat[]) => void): void
    open?(path: string, flags: number, cb: ValueCb<number>): void
    release?(path: string, fh: number, cb: Cb): void
    read?(path: string, fh: number, buf: Buffer, len: number, pos: number, cb: (bytesOrErrno: number) => void): void
    readlink?(path: string, cb: ValueCb<string>): void
    getxattr?(path: string, name: string, position: number, cb: (code: number, value?: Buffer | null) => void): void
    listxattr?(path: string, cb: ValueCb<string[]>): void
    create?(path: string, mode: number, flags: number, cb: ValueCb<number>): void
    write?(path: string, fh: number, buf: Buffer, len: number, pos: number, cb: (bytesOrErrno: number) => void): void
    truncate?(path: string, size: number, cb: Cb): void
    ftruncate?(path: string, fh: number, size: number, cb: Cb): void
    fsync?(path: string, datasync: number, fh: number, cb: Cb): void
    flush?(path: string, fh: number, cb: Cb): void
    mkdir?(path: string, mode: number, cb: Cb): void
    mknod?(path: string, mode: number, dev: number, cb: Cb): void
    symlink?(target: string, path: string, cb: Cb): void
    link?(existing: string, path: string, cb: Cb): void
    unlink?(path: string, cb: Cb): void
    rmdir?(path: string, cb: Cb): void
    rename?(from: string, to: string, cb: Cb): void
    chmod?(path: string, mode: number, cb: Cb): void
    chown?(path: string, uid: number, gid: number, cb: Cb): void
    utimens?(path: string, atime: { sec: number; nsec: number }, mtime: { sec: number; nsec: number }, cb: Cb): void
    setxattr?(path: string, name: string, value: Buffer, position: number, flags: number, cb: Cb): void
    removexattr?(path: string, name: string, cb: Cb): void
  }

  interface FuseOptions {
    timeout?: number | false
    force?: boolean
    mkdir?: boolean
    debug?: boolean
    allowOther?: boolean
    defaultPermissions?: boolean
    kernelCache?: boolean
    autoCache?: boolean
    entryTimeout?: number
    attrTimeout?: number
    fsname?: string
    subtype?: string
    maxRead?: number
  }

  }

  class Fuse {
    constructor(mnt: string, ops: Fuse.FuseOps, opts?: Fuse.FuseOptions)
    mount(cb: (err: Error | null) => void): void
    unmount(cb: (err: Error | null) => void): void
    static unmount(mnt: string, cb: (err: Error | null) => void): void
    /** Added by layerfs's patch: [uid, gid, pid, umask] of the request whose handler is starting. */
    static callerContext(): Uint32Array
  }
  export = Fuse
}
