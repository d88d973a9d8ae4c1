import { constants as C, statSync } from 'node:fs'
import { open, readdir, readlink } from 'node:fs/promises'
import type { FileHandle } from 'node:fs/promises'
import type { DirListing, Entry, Layer, LayerFile, LayerLookup } from './layer'
import { kindOfMode, shownXattrName, storedXattrName } from './layer'
import { OCI_OPAQUE_MARKER, OCI_WHITEOUT_PREFIX, OPAQUE_XATTRS, REDIRECT_XATTRS, METACOPY_XATTRS, decodeMarker, isOpaqueValue, isOverlayWhiteout } from './whiteout'
import { Errno, FsError, UserError, errnoOf, isErrno } from '../errors'
import { fsPath, joinPath } from '../paths'
import { PathScope, withScope, withScopeSync } from '../long-paths'
import { LSTAT, OVERLAY_XATTR_BITS, sys } from '../sys'

const NOTHING: LayerLookup = { entry: null, whiteout: false }

/**
 * A directory lower: an extracted layer or a kernel-overlay lower/upper dir. It reads both whiteout
 * dialects: char 0/0 devices and overlay.opaque xattrs (kernel form), `.wh.` marker files (OCI form).
 */
export class DirLayer implements Layer {
  readonly kind = 'dir'

  private readonly rootBytes: Buffer

  /** `ociMarkers`: whether `.wh.` files are whiteouts here (lowers: yes; an upper dir, kernel form only: no). */
  private constructor(readonly source: string, root: string, private readonly ociMarkers: boolean) {
    this.rootBytes = Buffer.from(root, 'utf8')
  }

  static async open(source: string, opts: { ociMarkers?: boolean } = {}): Promise<DirLayer> {
    let st
    try {
      st = statSync(source) // a local directory: no thread-pool round trip while a mount waits
    } catch (err) {
      throw new UserError(`${source}: ${isErrno(err, 'ENOENT') ? 'no such file or directory' : (err as Error).message}`)
    }
    if (!st.isDirectory()) throw new UserError(`${source}: not a directory or tar archive`)
    return new DirLayer(source, source, opts.ociMarkers ?? true)
  }

  /** The on-disk path, reachable past PATH_MAX through the scope of the call. */
  private real(scope: PathScope, path: string): Buffer {
    return scope.short(fsPath(this.rootBytes, path))
  }

  // The union's every lookup comes here for the upper and each directory layer: local lstats, in a
  // synchronous scope.
  lookup(path: string): LayerLookup {
    return withScopeSync((scope) => this.lookupIn(scope, path))
  }

  private lookupIn(scope: PathScope, path: string): LayerLookup {
    if (path === '/') {
      const root = lstatOrNull(this.real(scope, '/'))
      if (!root) throw new FsError(Errno.ENOENT, 'layer directory is gone', this.source)
      return { entry: this.entryAt(scope, '/', root), whiteout: false }
    }
    let ociWhiteout = false
    if (this.ociMarkers) {
      const slash = path.lastIndexOf('/')
      if (decodeMarker(path.slice(slash + 1))) return NOTHING // a marker itself is never an entry
      const markerPath = path.slice(0, slash + 1) + OCI_WHITEOUT_PREFIX + path.slice(slash + 1)
      ociWhiteout = lstatOrNull(this.real(scope, markerPath)) !== null
    }
    const st = lstatOrNull(this.real(scope, path))
    if (!st) return ociWhiteout ? { entry: null, whiteout: true } : NOTHING
    if (isWhiteoutDevice(st)) return { entry: null, whiteout: true }
    return { entry: this.entryAt(scope, path, st), whiteout: ociWhiteout }
  }

  private entryAt(scope: PathScope, path: string, st: Float64Array): Entry {
    const mode = st[LSTAT.MODE]
    const kind = kindOfMode(mode)
    if (!kind) throw new FsError(Errno.EIO, 'unknown file type', path)
    let opaque = false
    let redirect: string | null = null
    let metacopy = false
    // the overlay xattrs the entry has (one llistxattr in lstatEntry): most have none, and are read no further
    const has = st[LSTAT.OVERLAY_XATTRS]
    const read = (names: readonly string[], bit: number): Array<Buffer | null> => {
      const real = this.real(scope, path)
      return names.map((name, i) => (has & (bit << i) ? xattrOrNull(real, name) : null))
    }
    if (kind === 'file' && has) {
      metacopy = read(METACOPY_XATTRS, OVERLAY_XATTR_BITS.metacopy).some((v) => v !== null)
      // a metacopy file renamed: where the layers below hold its data
      if (metacopy) redirect = read(REDIRECT_XATTRS, OVERLAY_XATTR_BITS.redirect).find((v) => v !== null)?.toString('latin1') ?? null
    }
    if (kind === 'dir') {
      if (has) {
        opaque = read(OPAQUE_XATTRS, OVERLAY_XATTR_BITS.opaque).some(isOpaqueValue)
        redirect = read(REDIRECT_XATTRS, OVERLAY_XATTR_BITS.redirect).find((v) => v !== null)?.toString('latin1') ?? null
      }
      if (!opaque && this.ociMarkers) opaque = lstatOrNull(this.real(scope, joinPath(path, OCI_OPAQUE_MARKER))) !== null
    }
    return {
      kind, mode: mode & 0o7777, uid: st[LSTAT.UID], gid: st[LSTAT.GID],
      size: st[LSTAT.SIZE], storedSize: st[LSTAT.BLOCKS] * 512,
      mtime: { sec: st[LSTAT.MTIME], nsec: st[LSTAT.MTIME_NS] },
      atime: { sec: st[LSTAT.ATIME], nsec: st[LSTAT.ATIME_NS] },
      ctime: { sec: st[LSTAT.CTIME], nsec: st[LSTAT.CTIME_NS] },
      nlink: st[LSTAT.NLINK], ino: st[LSTAT.INO] || 1, rdev: st[LSTAT.RDEV],
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
    for (const raw of names) {
      const name = raw.toString('latin1')
      const marker = this.ociMarkers ? decodeMarker(name) : null
      if (marker) {
        if (marker.type === 'whiteout') whiteouts.add(marker.name)
        continue
      }
      const child = joinPath(path, name)
      const st = lstatOrNull(this.real(scope, child))
      if (!st) continue
      if (isWhiteoutDevice(st)) {
        whiteouts.add(name)
        continue
      }
      entries.set(name, this.entryAt(scope, child, st))
    }
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

/**
 * lstat (with the overlay xattr mask), synchronously: a thread-pool round trip costs more than the
 * call on a local directory, and a lookup makes several; a miss is null, not an exception. (Never
 * on a path inside this process's own mount: a layer or upper dir is not.)
 */
function lstatOrNull(p: Buffer): Float64Array | null {
  const out = new Float64Array(LSTAT.COUNT)
  const err = sys.lstatEntry(p, out)
  if (err === 0) return out
  // ENAMETOOLONG: the '.wh.' marker of a 252+ byte name cannot exist
  if (err === Errno.ENOENT || err === Errno.ENOTDIR || err === Errno.ENAMETOOLONG) return null
  throw new FsError(err, 'cannot stat', p.toString('latin1'))
}

function isWhiteoutDevice(st: Float64Array): boolean {
  return (st[LSTAT.MODE] & C.S_IFMT) === C.S_IFCHR && isOverlayWhiteout('char', st[LSTAT.RDEV])
}

function xattrOrNull(p: Buffer, name: string): Buffer | null {
  try {
    return sys.lgetxattr(p, name)
  } catch (err) {
    throw new FsError(errnoOf(err), 'cannot read extended attribute', p.toString('latin1'))
  }
}
