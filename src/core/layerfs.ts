import { constants as C } from 'node:fs'
import { statfs } from 'node:fs/promises'
import type { Timestamp } from '../layer/layer'
import { modeOf } from '../layer/layer'
import type { Resolved, Union } from '../union/union'
import { Errno, FsError } from '../errors'
import { Handles } from './handles'
import { parentOf } from '../paths'

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

const WRITE_FLAGS = C.O_WRONLY | C.O_RDWR | C.O_TRUNC | C.O_APPEND | C.O_CREAT

/**
 * The POSIX operations over the union: paths in, values or FsError out. Read-only for now: every
 * operation that would change the tree answers EROFS. Knows nothing of FUSE.
 */
export class LayerFs {
  private readonly handles = new Handles()
  /** Bytes served, per layer position. */
  readonly bytesRead: number[]

  constructor(readonly union: Union) {
    this.bytesRead = union.layers.map(() => 0)
  }

  private async resolve(path: string): Promise<Resolved> {
    const r = await this.union.resolve(path)
    if (!r) throw new FsError(Errno.ENOENT, 'no such file or directory', path)
    return r
  }

  private statOf(r: Resolved): Stat {
    const e = r.top.entry
    return {
      ino: r.ino,
      mode: modeOf(e),
      // kernel overlayfs shows 1 for a merged directory rather than counting subdirectories
      nlink: e.kind === 'dir' && r.parts.length > 1 ? 1 : e.nlink,
      uid: e.uid, gid: e.gid, rdev: e.rdev,
      size: e.kind === 'dir' && e.size === 0 ? 4096 : e.size,
      blksize: 4096,
      blocks: Math.ceil(e.storedSize / 512),
      atime: e.atime, mtime: e.mtime, ctime: e.ctime,
    }
  }

  async getattr(path: string): Promise<Stat> {
    return this.statOf(await this.resolve(path))
  }

  async readdir(path: string): Promise<DirEntryWithStat[]> {
    const dir = await this.resolve(path)
    const merged = await this.union.readdir(path)
    const parent = path === '/' ? dir : await this.resolve(parentOf(path))
    const out: DirEntryWithStat[] = [
      { name: '.', stat: this.statOf(dir) },
      { name: '..', stat: this.statOf(parent) },
    ]
    for (const m of merged) {
      const e = m.part.entry
      // the kernel takes only the type and inode from these; getattr answers the rest
      out.push({ name: m.name, stat: {
        ino: m.ino, mode: modeOf(e), nlink: e.nlink, uid: e.uid, gid: e.gid, rdev: e.rdev, size: e.size,
        blksize: 4096, blocks: Math.ceil(e.storedSize / 512), atime: e.atime, mtime: e.mtime, ctime: e.ctime,
      } })
    }
    return out
  }

  async open(path: string, flags: number): Promise<number> {
    if (flags & WRITE_FLAGS) throw new FsError(Errno.EROFS, 'read-only filesystem', path)
    const r = await this.resolve(path)
    if (r.top.entry.kind === 'dir') throw new FsError(Errno.EISDIR, 'is a directory', path)
    const layer = this.union.layers[r.top.layer]
    const file = await layer.open(r.top.path, r.top.entry)
    const fh = this.handles.add({
      read: async (buf, length, position) => {
        const n = await file.read(buf, length, position)
        this.bytesRead[r.top.layer] += n
        return n
      },
      close: () => file.close(),
    })
    return fh
  }

  read(fh: number, buf: Buffer, length: number, position: number): Promise<number> {
    return this.handles.get(fh).read(buf, length, position)
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
    if (mode & C.W_OK) throw new FsError(Errno.EROFS, 'read-only filesystem', path)
  }

  /** The figures of the filesystem holding the topmost layer, as kernel overlayfs reports them. */
  async statfs(): Promise<FsStats> {
    const s = await statfs(this.union.layers[0].source)
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
