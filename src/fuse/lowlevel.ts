import { join } from 'node:path'
import type { LayerFs, Stat } from '../core/layerfs'
import { Errno, FsError, errnoOf } from '../errors'
import { joinPath } from '../paths'
import { log } from '../log'
import type { FuseMount, FuseMountOptions } from './adapter'

// Read-only mounts through our own binding of libfuse 3's low-level API (native/fuse_ll.c): the
// requests are read and answered on Node's thread, listings go out with attributes (READDIRPLUS)
// and everything is cached by the kernel for as long as the mount lives (lowers never change).
// The only importer of layerfs_fuse.node. Nodes are numbered here: nodeid -> path.

type Session = { readonly __session: unique symbol }
type Dispatch = (op: number, req: number, ino: number, a: unknown, b: unknown, c: unknown) => void

interface LowLevel {
  llMount(mountpoint: string, options: string, dispatch: Dispatch): Session
  llUnmount(s: Session): void
  llReplyErr(req: number, errno: number): void
  llReplyEntry(req: number, nodeid: number, attr: Float64Array, entryTimeout: number, attrTimeout: number): void
  llReplyNegative(req: number, timeout: number): void
  llReplyAttr(req: number, attr: Float64Array, timeout: number): void
  llReplyBuf(req: number, buf: Buffer, length: number): void
  llReplyReadlink(req: number, target: string): void
  llReplyOpen(req: number, fh: number, keepCache: boolean, cacheDir: boolean): void
  llReplyStatfs(req: number, s: Float64Array): void
  llReplyXattr(req: number, size: number, value: Buffer | null): void
  llReplyDir(req: number, size: number, plus: boolean, names: string[], ids: Float64Array, attrs: Float64Array, first: number, timeout: number): number
}

// eslint-disable-next-line @typescript-eslint/no-require-imports
const ll = require(join(__dirname, '..', '..', '..', 'native', 'build', 'Release', 'layerfs_fuse.node')) as LowLevel

const OP = {
  LOOKUP: 1, FORGET: 2, GETATTR: 3, READLINK: 4, OPEN: 5, READ: 6, RELEASE: 7, OPENDIR: 8, READDIR: 9,
  RELEASEDIR: 10, STATFS: 11, GETXATTR: 12, LISTXATTR: 13, INIT: 14, DESTROY: 15,
} as const
const A_COUNT = 15
/** Entries in one READDIR answer at most (the kernel's buffer takes fewer; the rest come next time). */
const DIR_CHUNK = 512

/** Writes a Stat in the layout fuse_ll.c reads (see its A_* enum). */
function fill(a: Float64Array, at: number, s: Stat): void {
  a[at] = s.ino; a[at + 1] = s.mode; a[at + 2] = s.nlink; a[at + 3] = s.uid; a[at + 4] = s.gid; a[at + 5] = s.rdev
  a[at + 6] = s.size; a[at + 7] = s.blocks; a[at + 8] = s.blksize
  a[at + 9] = s.atime.sec; a[at + 10] = s.atime.nsec; a[at + 11] = s.mtime.sec; a[at + 12] = s.mtime.nsec
  a[at + 13] = s.ctime.sec; a[at + 14] = s.ctime.nsec
}

/** The kernel's nodeids and the paths they stand for; a node lives while the kernel holds lookups on it. */
class Nodes {
  private readonly byId = new Map<number, { path: string; lookups: number }>([[1, { path: '/', lookups: 1 }]])
  private readonly byPath = new Map<string, number>([['/', 1]])
  private next = 2

  path(id: number): string {
    const n = this.byId.get(id)
    if (!n) throw new FsError(Errno.ESTALE, 'unknown node')
    return n.path
  }

  /** The node of `path`, made if needed, without counting a lookup. */
  idOf(path: string): number {
    let id = this.byPath.get(path)
    if (id === undefined) {
      id = this.next++
      this.byPath.set(path, id)
      this.byId.set(id, { path, lookups: 0 })
    }
    return id
  }

  /** One more lookup the kernel holds on the node. */
  count(id: number): void {
    const n = this.byId.get(id)
    if (n) n.lookups++
  }

  forget(id: number, n: number): void {
    const node = this.byId.get(id)
    if (!node || id === 1) return
    node.lookups -= n
    if (node.lookups <= 0) this.drop(id)
  }

  /** A node made for a listing entry the reply had no room for. */
  dropIfUnused(id: number): void {
    const node = this.byId.get(id)
    if (node && node.lookups <= 0 && id !== 1) this.drop(id)
  }

  private drop(id: number): void {
    const node = this.byId.get(id)!
    this.byId.delete(id)
    if (this.byPath.get(node.path) === id) this.byPath.delete(node.path)
  }
}

interface DirHandle {
  readonly names: string[]
  readonly paths: (string | null)[]
  readonly stats: Stat[]
}

/** Mounts `fs` read-only; resolves once the mount is live. */
export function mountLowLevel(fs: LayerFs, mountpoint: string, opts: FuseMountOptions, onEnd: () => void): Promise<FuseMount> {
  const t = opts.cacheSeconds
  const nodes = new Nodes()
  const dirs = new Map<number, DirHandle>()
  let nextDir = 1
  const attr = new Float64Array(A_COUNT)
  let session: Session | null = null
  let ended = false
  let live!: () => void
  const isLive = new Promise<void>((resolve) => (live = resolve))

  const fail = (req: number, op: string, err: unknown): void => {
    if (!(err instanceof FsError)) log.fuse('%s: unexpected %s', op, (err as Error)?.stack ?? String(err))
    ll.llReplyErr(req, errnoOf(err))
  }
  /** Runs `work` for a request and answers exactly once. */
  const handle = <T>(req: number, op: string, work: () => Promise<T>, ok: (v: T) => void): void => {
    let p: Promise<T>
    try {
      p = work()
    } catch (err) {
      fail(req, op, err)
      return
    }
    p.then((v) => {
      try {
        ok(v)
      } catch (err) {
        fail(req, op, err)
      }
    }, (err: unknown) => fail(req, op, err))
  }

  const dispatch: Dispatch = (op, req, ino, a, b, c) => {
    switch (op) {
      case OP.LOOKUP: {
        const name = a as string
        if (name.length > 255) return ll.llReplyErr(req, Errno.ENAMETOOLONG)
        handle(req, 'lookup', async () => {
          const path = joinPath(nodes.path(ino), name)
          try {
            return { path, stat: await fs.getattr(path) }
          } catch (err) {
            if (errnoOf(err) === Errno.ENOENT) return null
            throw err
          }
        }, (r) => {
          if (!r) return ll.llReplyNegative(req, t)
          const id = nodes.idOf(r.path)
          nodes.count(id)
          fill(attr, 0, r.stat)
          ll.llReplyEntry(req, id, attr, t, t)
        })
        return
      }
      case OP.FORGET:
        nodes.forget(ino, a as number)
        return
      case OP.GETATTR:
        return handle(req, 'getattr', () => fs.getattr(nodes.path(ino)), (s) => {
          fill(attr, 0, s)
          ll.llReplyAttr(req, attr, t)
        })
      case OP.READLINK:
        return handle(req, 'readlink', () => fs.readlink(nodes.path(ino)), (target) => ll.llReplyReadlink(req, target))
      case OP.OPEN:
        return handle(req, 'open', () => fs.open(nodes.path(ino), a as number), (fh) => ll.llReplyOpen(req, fh, true, false))
      case OP.READ: {
        const size = b as number
        const buf = Buffer.allocUnsafe(size)
        return handle(req, 'read', () => fs.read(a as number, buf, size, c as number), (n) => ll.llReplyBuf(req, buf, n))
      }
      case OP.RELEASE:
        return handle(req, 'release', () => fs.release(a as number), () => ll.llReplyErr(req, 0))
      case OP.OPENDIR:
        return handle(req, 'opendir', async () => {
          const path = nodes.path(ino)
          const list = await fs.readdir(path)
          // the attributes that go out with the names are what getattr answers for each
          const paths = list.map((e) => (e.name === '.' || e.name === '..' ? null : joinPath(path, e.name)))
          const stats = await Promise.all(list.map((e, i) => (paths[i] === null ? e.stat : fs.getattr(paths[i]!).catch(() => e.stat))))
          return { names: list.map((e) => e.name), paths, stats }
        }, (d) => {
          const fh = nextDir++
          dirs.set(fh, d)
          ll.llReplyOpen(req, fh, false, true)
        })
      case OP.READDIR: {
        const d = dirs.get(a as number)
        if (!d) return ll.llReplyErr(req, Errno.EBADF)
        const plus = (b as number) > 0
        const size = Math.abs(b as number)
        const first = c as number
        const end = Math.min(d.names.length, first + DIR_CHUNK)
        const names = d.names.slice(first, end)
        const ids = new Float64Array(names.length)
        const attrs = new Float64Array(names.length * A_COUNT)
        for (let i = first; i < end; i++) {
          const p = d.paths[i]
          ids[i - first] = plus && p !== null ? nodes.idOf(p) : 0
          fill(attrs, (i - first) * A_COUNT, d.stats[i])
        }
        const added = ll.llReplyDir(req, size, plus, names, ids, attrs, first, t)
        if (plus) {
          // each entry that went out is a lookup the kernel now holds; the others are not
          for (let i = 0; i < names.length; i++) {
            if (ids[i] === 0) continue
            if (i < added) nodes.count(ids[i])
            else nodes.dropIfUnused(ids[i])
          }
        }
        return
      }
      case OP.RELEASEDIR:
        dirs.delete(a as number)
        return ll.llReplyErr(req, 0)
      case OP.STATFS:
        return handle(req, 'statfs', () => fs.statfs(), (s) => {
          ll.llReplyStatfs(req, Float64Array.from([s.bsize, s.frsize, s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.namemax]))
        })
      case OP.GETXATTR:
        return handle(req, 'getxattr', () => fs.getxattr(nodes.path(ino), a as string), (v) => {
          if (v === null) ll.llReplyErr(req, Errno.ENODATA)
          else ll.llReplyXattr(req, b as number, v)
        })
      case OP.LISTXATTR:
        return handle(req, 'listxattr', () => fs.listxattr(nodes.path(ino)), (names) => {
          ll.llReplyXattr(req, a as number, Buffer.from(names.map((n) => n + '\0').join(''), 'latin1'))
        })
      case OP.DESTROY:
        if (!ended) {
          ended = true
          onEnd()
        }
        return
      default:
        ll.llReplyErr(req, Errno.ENOSYS)
    }
  }

  const options = ['ro', 'default_permissions', `fsname=${opts.fsname.replace(/[,\\]/g, '_')}`, 'subtype=layerfs']
  if (opts.allowOther) options.push('allow_other')
  // as root, behave as kernel overlayfs: devices and setuid bits work
  if (process.getuid?.() === 0) options.push('dev', 'suid')
  try {
    session = ll.llMount(mountpoint, options.join(','), dispatch)
  } catch (err) {
    return Promise.reject(err)
  }
  live()
  return isLive.then(() => ({
    unmount: async () => {
      if (session && !ended) ll.llUnmount(session)
    },
  }))
}

/** Whether read-only mounts use this binding ($LAYERFS_ADAPTER=fuse-native picks the old path, for comparison). */
export const lowLevelWanted = (): boolean => process.env.LAYERFS_ADAPTER !== 'fuse-native'
