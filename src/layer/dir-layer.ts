import { constants as C, lstatSync, type BigIntStats } from 'node:fs'
import { open, readdir, readlink, stat } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import type { DirListing, Entry, Layer, LayerFile, LayerLookup, Timestamp } from './layer'
import { kindOfMode, shownXattrName, storedXattrName } from './layer'
import { OCI_OPAQUE_MARKER, OCI_WHITEOUT_PREFIX, OPAQUE_XATTRS, REDIRECT_XATTRS, METACOPY_XATTRS, decodeMarker, isOpaqueValue, isOverlayWhiteout } from './whiteout'
import { Errno, FsError, UserError, errnoOf, isErrno } from '../errors'
import { fsPath, joinPath } from '../paths'
import { PathScope, withScope } from '../long-paths'
import { sys } from '../sys'

const NOTHING: LayerLookup = { entry: null, whiteout: false }
const INO_SPACE = 2 ** 40

/**
 * A directory lower: an extracted layer or a kernel-overlay lower/upper dir. It reads both whiteout
 * dialects: char 0/0 devices and overlay.opaque xattrs (kernel form), `.wh.` marker files (OCI form).
 */
export class DirLayer implements Layer {
  readonly kind = 'dir'

  private constructor(readonly source: string, private readonly root: string) {}

  static async open(source: string): Promise<DirLayer> {
    let st
    try {
      st = await stat(source)
    } catch (err) {
      throw new UserError(`${source}: ${isErrno(err, 'ENOENT') ? 'no such file or directory' : (err as Error).message}`)
    }
    if (!st.isDirectory()) throw new UserError(`${source}: not a directory or tar archive`)
    return new DirLayer(source, source)
  }

  /** The on-disk path, reachable past PATH_MAX through the scope of the call. */
  private real(scope: PathScope, path: string): Buffer {
    return scope.short(fsPath(this.root, path))
  }

  async lookup(path: string): Promise<LayerLookup> {
    return withScope(async (scope) => {
      if (path === '/') {
        const root = lstatOrNull(this.real(scope, '/'))
        if (!root) throw new FsError(Errno.ENOENT, 'layer directory is gone', this.source)
        return { entry: await this.entryAt(scope, '/', root), whiteout: false }
      }
      const slash = path.lastIndexOf('/')
      if (decodeMarker(path.slice(slash + 1))) return NOTHING // a marker itself is never an entry
      const markerPath = path.slice(0, slash + 1) + OCI_WHITEOUT_PREFIX + path.slice(slash + 1)
      const st = lstatOrNull(this.real(scope, path))
      const marker = lstatOrNull(this.real(scope, markerPath))
      const ociWhiteout = marker !== null
      if (!st) return ociWhiteout ? { entry: null, whiteout: true } : NOTHING
      if (st.isCharacterDevice() && isOverlayWhiteout('char', Number(st.rdev))) return { entry: null, whiteout: true }
      return { entry: await this.entryAt(scope, path, st), whiteout: ociWhiteout }
    })
  }

  private async entryAt(scope: PathScope, path: string, st: BigIntStats): Promise<Entry> {
    const kind = kindOfMode(Number(st.mode))
    if (!kind) throw new FsError(Errno.EIO, 'unknown file type', path)
    let opaque = false
    let redirect: string | null = null
    let metacopy = false
    if (kind === 'file') {
      const real = this.real(scope, path)
      metacopy = METACOPY_XATTRS.some((name) => xattrOrNull(real, name) !== null)
      // a metacopy file renamed: where the layers below hold its data
      if (metacopy) for (const name of REDIRECT_XATTRS) redirect ??= xattrOrNull(real, name)?.toString('latin1') ?? null
    }
    if (kind === 'dir') {
      const real = this.real(scope, path)
      for (const name of OPAQUE_XATTRS) if (isOpaqueValue(xattrOrNull(real, name))) opaque = true
      if (!opaque) opaque = lstatOrNull(this.real(scope, joinPath(path, OCI_OPAQUE_MARKER))) !== null
      for (const name of REDIRECT_XATTRS) redirect ??= xattrOrNull(real, name)?.toString('latin1') ?? null
    }
    return {
      kind, mode: Number(st.mode) & 0o7777, uid: Number(st.uid), gid: Number(st.gid),
      size: Number(st.size), storedSize: Number(st.blocks) * 512,
      mtime: ts(st.mtimeNs), atime: ts(st.atimeNs), ctime: ts(st.ctimeNs),
      nlink: Number(st.nlink), ino: Number(st.ino % BigInt(INO_SPACE)) || 1, rdev: Number(st.rdev),
      opaque, redirect, metacopy,
    }
  }

  async readdir(path: string): Promise<DirListing> {
    return withScope((scope) => this.readdirIn(scope, path))
  }

  private async readdirIn(scope: PathScope, path: string): Promise<DirListing> {
    let names: Buffer[]
    try {
      names = await readdir(this.real(scope, path), { encoding: 'buffer' })
    } catch (err) {
      throw new FsError(errnoOf(err), 'cannot list directory', path)
    }
    const entries = new Map<string, Entry>()
    const whiteouts = new Set<string>()
    await Promise.all(names.map(async (raw) => {
      const name = raw.toString('latin1')
      const marker = decodeMarker(name)
      if (marker) {
        if (marker.type === 'whiteout') whiteouts.add(marker.name)
        return
      }
      const child = joinPath(path, name)
      const st = lstatOrNull(this.real(scope, child))
      if (!st) return
      if (st.isCharacterDevice() && isOverlayWhiteout('char', Number(st.rdev))) {
        whiteouts.add(name)
        return
      }
      entries.set(name, await this.entryAt(scope, child, st))
    }))
    return { entries, whiteouts }
  }

  async open(path: string): Promise<LayerFile> {
    let fh: FileHandle
    try {
      fh = await withScope((scope) => open(this.real(scope, path), C.O_RDONLY | C.O_NOFOLLOW))
    } catch (err) {
      throw new FsError(errnoOf(err), 'cannot open', path)
    }
    return {
      read: async (buf, length, position) => (await fh.read(buf, 0, length, position)).bytesRead,
      span: () => ({ fd: fh.fd, offset: 0 }),
      close: () => fh.close(),
    }
  }

  async readlink(path: string): Promise<string> {
    try {
      return (await withScope((scope) => readlink(this.real(scope, path), { encoding: 'buffer' }))).toString('latin1')
    } catch (err) {
      throw new FsError(errnoOf(err), 'cannot read link', path)
    }
  }

  async listXattrs(path: string): Promise<string[]> {
    try {
      return await withScope(async (scope) => sys.llistxattr(this.real(scope, path)).map(shownXattrName).filter((n): n is string => n !== null))
    } catch (err) {
      throw new FsError(errnoOf(err), 'cannot list extended attributes', path)
    }
  }

  async getXattr(path: string, _entry: Entry, name: string): Promise<Buffer | null> {
    return withScope(async (scope) => xattrOrNull(this.real(scope, path), storedXattrName(name)))
  }

  async close(): Promise<void> {}
}

function ts(ns: bigint): Timestamp {
  const sec = ns / 1_000_000_000n
  let nsec = ns % 1_000_000_000n
  let s = sec
  if (nsec < 0n) {
    nsec += 1_000_000_000n
    s -= 1n
  }
  return { sec: Number(s), nsec: Number(nsec) }
}

/**
 * lstat, synchronously: a thread-pool round trip costs more than the call on a local directory,
 * and a lookup makes several. (Never on a path inside this process's own mount: a layer or upper
 * dir is not.)
 */
function lstatOrNull(p: Buffer): BigIntStats | null {
  try {
    return lstatSync(p, { bigint: true })
  } catch (err) {
    // ENAMETOOLONG: the '.wh.' marker of a 252+ byte name cannot exist
    if (isErrno(err, 'ENOENT') || isErrno(err, 'ENOTDIR') || isErrno(err, 'ENAMETOOLONG')) return null
    throw new FsError(errnoOf(err), 'cannot stat', p.toString('latin1'))
  }
}

function xattrOrNull(p: Buffer, name: string): Buffer | null {
  try {
    return sys.lgetxattr(p, name)
  } catch (err) {
    throw new FsError(errnoOf(err), 'cannot read extended attribute', p.toString('latin1'))
  }
}
