import { join } from 'node:path'

// Typed access to native/layerfs_sys.c: system calls Node lacks. Paths are Buffers (any bytes);
// errors carry `.code` ('ENOENT', ...) like Node's fs errors. Calls are synchronous: keep them to
// local lower/upper directories, never paths inside a mount this process serves.

interface LayerfsSys {
  /** The attribute's value, or null when the entry has none of that name. */
  lgetxattr(path: Buffer, name: string): Buffer | null
  llistxattr(path: Buffer): string[]
  lsetxattr(path: Buffer, name: string, value: Buffer, flags: number): void
  lremovexattr(path: Buffer, name: string): void
  mknod(path: Buffer, mode: number, major: number, minor: number): void
  utimens(path: Buffer, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number): void
  renameat2(from: Buffer, to: Buffer, flags: number): void
}

// eslint-disable-next-line @typescript-eslint/no-require-imports
export const sys = require(join(__dirname, '..', '..', 'native', 'build', 'Release', 'layerfs_sys.node')) as LayerfsSys

export const RENAME_EXCHANGE = 2
export const RENAME_WHITEOUT = 4
