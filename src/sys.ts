import { join } from 'node:path'

// Typed access to native/layerfs_sys.c: system calls Node lacks. Paths are Buffers (any bytes);
// errors carry `.code` ('ENOENT', ...) like Node's fs errors. Calls are synchronous: keep them to
// local lower/upper directories, never paths inside a mount this process serves.

interface LayerfsSys {
  /** The attribute's value, or null when the entry has none of that name. */
  lgetxattr(path: Buffer, name: string): Buffer | null
  llistxattr(path: Buffer): string[]
  /**
   * lstat without throwing: 0, or the errno. Fills `out` (LSTAT_* positions) with the attributes and
   * a mask of the overlay.{opaque,redirect,metacopy} xattrs the entry has (OVERLAY_XATTR_BITS).
   */
  lstatEntry(path: Buffer, out: Float64Array): number
  lsetxattr(path: Buffer, name: string, value: Buffer, flags: number): void
  lremovexattr(path: Buffer, name: string): void
  mknod(path: Buffer, mode: number, major: number, minor: number): void
  utimens(path: Buffer, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): void
  renameat2(from: Buffer, to: Buffer, flags: number): void
  /** Copies `length` bytes between descriptors in the kernel (copy_file_range, else pread/pwrite); returns the bytes copied. */
  copyRange(fdIn: number, offIn: number, fdOut: number, offOut: number, length: number): number
  /** Every thread to low priority (I/O class idle; nice 10 for root), or back to the defaults. */
  standbyPriority(low: boolean): void
  /** 1 if a mount's root is at `path`, 0 if not, -1 if the kernel cannot say (before Linux 5.8). */
  mountRoot(path: Buffer): number
  /**
   * Drops the set-ID bits a write or truncation by a caller without CAP_FSETID (fsgid `gid`, process
   * `pid`) takes from the regular file at `path` (native/setids.h); whether any went.
   */
  dropSetIds(path: Buffer, gid: number, pid: number): boolean
}

/** An inflate cursor of native/gzip_access.c (opaque). */
export type GzCursor = { readonly __gzCursor: unique symbol }

/** A checkpoint as the native scan reports it (window raw, up to 32 KiB). */
export interface GzCheckpoint {
  out: number
  in: number
  kind: number
  bits: number
  prevByte: number
  window: Buffer
}

interface GzipAccess {
  /** A cursor over the gzip data at [base, base + length) of fd; a scanning cursor records a checkpoint every `span` output bytes. */
  gzOpen(fd: number, base: number, length: number, span: number): GzCursor
  gzSeek(c: GzCursor, out: number, inPos: number, kind: number, bits: number, prevByte: number, window: Buffer): void
  /** Skips `skip` output bytes, then fills buf; returns the bytes put there (fewer only at the end). Throws code EGZIP on damage. */
  gzRead(c: GzCursor, buf: Buffer, skip: number): number
  gzReadAsync(c: GzCursor, buf: Buffer, skip: number, cb: (err: Error | undefined, n: number | undefined) => void): void
  /** gzRead for the indexing pass; appends the checkpoints passed to `into`. */
  gzScan(c: GzCursor, buf: Buffer, into: GzCheckpoint[]): number
  /** [uncompressed offset, compressed offset, ended] */
  gzState(c: GzCursor): [number, number, boolean]
}

/** native/index_map.c: loading a persisted index without copying or hashing it in JavaScript. */
interface IndexMap {
  /** The file mapped read-only (page-aligned; a write faults), or null when it cannot be opened or is empty. */
  mapFile(path: string): Buffer | null
  /** A fast 64-bit checksum against damage (not tampering), 8 bytes little-endian. */
  hash64(data: Buffer): Buffer
}

/** Where the native modules are built (layerfs_sys.node, layerfs_fuse.node). */
export const NATIVE_BUILD = join(__dirname, '..', '..', 'native', 'build', 'Release')

// eslint-disable-next-line @typescript-eslint/no-require-imports
const addon = require(join(NATIVE_BUILD, 'layerfs_sys.node')) as LayerfsSys & GzipAccess & IndexMap
export const sys: LayerfsSys = addon
export const gz: GzipAccess = addon
export const indexMap: IndexMap = addon

export const RENAME_EXCHANGE = 2
export const RENAME_WHITEOUT = 4

/** Positions in lstatEntry's output. */
export const LSTAT = {
  MODE: 0, UID: 1, GID: 2, SIZE: 3, BLOCKS: 4, NLINK: 5, INO: 6, RDEV: 7,
  ATIME: 8, ATIME_NS: 9, MTIME: 10, MTIME_NS: 11, CTIME: 12, CTIME_NS: 13, OVERLAY_XATTRS: 14, COUNT: 15,
} as const
/** lstatEntry's xattr mask: the trusted form's bit, the user form's is the next. */
export const OVERLAY_XATTR_BITS = { opaque: 1, redirect: 4, metacopy: 16 } as const
