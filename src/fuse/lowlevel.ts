import { statSync } from 'node:fs'
import { join } from 'node:path'
import type { Below, LayerFs, Stat } from '../core/layerfs'
import type { DirectSpan } from '../core/handles'
import type { Caller } from '../upper/upper'
import type { PlannedEntry } from '../upper/copy-up'
import { Errno, FsError, errnoOf } from '../errors'
import { joinPath } from '../paths'
import { log } from '../log'
import { NATIVE_BUILD } from '../sys'
import type { FuseMount, FuseMountOptions } from './adapter'

// Mounts through our own binding of libfuse 3's low-level API (native/fuse_ll.c): the
// requests are read and answered on Node's thread, listings go out with attributes (READDIRPLUS)
// and everything is cached by the kernel for as long as the mount lives (lowers never change).
// The only importer of layerfs_fuse.node. Nodes are numbered here: nodeid -> path.

type Session = { readonly __session: unique symbol }
type Dispatch = (op: number, req: number, ino: number, a: unknown, b: unknown, c: unknown, d: unknown) => void

/** The standby's gate (native/standby_gate.c). */
export type Gate = { readonly __gate: unique symbol }

interface LowLevel {
  llMount(mountpoint: string, options: string, dispatch: Dispatch): Session
  /** A session made ahead of its mount, which the standby's gate makes; llUnmount gives it up. */
  llPrepare(options: string, dispatch: Dispatch): Session
  llGateOpen(address: Buffer, onRequest: (fd: number, uid: number, body: Buffer) => void, onMounted: (mountpoint: string) => void): Gate
  llGatePrepare(g: Gate, s: Session, canon: Buffer, mntArg: number, fsname: string, flags: number, options: string,
    checkPaths: string[], checkNums: BigUint64Array, reply: Buffer): void
  llGateUnprepare(g: Gate): boolean
  llGateClose(g: Gate): void
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
  llReplyDir(req: number, size: number, plus: boolean, names: string[], ids: Float64Array, attrs: Float64Array, first: number, timeout: number, offs?: Float64Array, endNode?: number, epoch?: number): number
  llReplyCreate(req: number, nodeid: number, attr: Float64Array, entryTimeout: number, attrTimeout: number, fh: number): void
  llReplyWrite(req: number, count: number): void
  /** [uid, gid, pid, umask] of the requesting process. */
  llCaller(req: number): [number, number, number, number]
  /**
   * READs of handle (or, byNode, node) `id` are answered in C with pread(fd, base + offset), up to
   * `limit` (-1: EOF); WRITEs too, with pwrite, when `writable`.
   */
  llDirect(s: Session, byNode: boolean, id: number, fd: number, base: number, limit: number, layer: number, writable: boolean): void
  llDirectDrop(s: Session, byNode: boolean, id: number): void
  /** Per layer position: [reads answered in C, their bytes, readaround windows stored, their bytes], each layer's four in turn (sizes the table on first call). */
  llDirectCounts(s: Session, layers: number): Float64Array
  llReaderStats(s: Session): Float64Array
  /** Node `id` has no security.capability if `fd`'s file has none: C answers the kernel's check before each write. */
  llNoCaps(s: Session, id: number, fd: number): void
  /** Forgets what llNoCaps remembered (a security.capability was set or removed somewhere). */
  llNoCapsClear(s: Session): void
  /**
   * C may answer OPEN of node `id` itself, opening its upper file at `path` (null: no more), and
   * the RELEASE of what it opened: handles numbered from NATIVE_FH, whose READs and WRITEs it serves.
   */
  llOpenable(s: Session, id: number, path: Buffer | null): void
  /** C opens nothing itself until told again (a name changed). */
  llOpenableClear(s: Session): void
  /** The kernel's cached attributes of node `ino` are stale: it asks again (notify_inval_inode, attributes only). */
  llInvalAttr(s: Session, ino: number): void
  /** fstat of a handle C opened (or, byNode, of any such handle of node `id`): [mode, nlink, uid, gid, size, blocks, atime s, ns, mtime s, ns, ctime s, ns]. */
  llNativeStat(s: Session, id: number, byNode: boolean): Float64Array | null
  /** On a handle C opened: op 1 ftruncate(arg), op 2 fsync (arg 1: data only). 0 or an errno. */
  llNativeFile(s: Session, fh: number, op: 1 | 2, arg: number): number
  /** The epoch a plan made now belongs to; -1: no plan can run (no reader thread, read-only); -2: read llNotes first. */
  llEpoch(s: Session): number
  /** Where planned copy-ups build their entries (`temp`) and put them (`upper`, joined with the path). */
  llPlanRoots(s: Session, upper: Buffer, temp: Buffer): void
  /** STATFS answered in C from the filesystem holding `path` (LayerFs.statfsPath). */
  llStatfsAt(s: Session, path: string): void
  /**
   * Read-only mounts: after a small READ that looks random, C pushes the `bytes`-aligned window
   * around it into the kernel's page cache (0: never; a power of two from 8 KiB to 16 MiB).
   */
  llReadaround(s: Session, bytes: number): void
  /** Read-only mounts: C pushes `bytes` (copied) into node `id`'s page cache at `offset`, counted for layer position `layer` (-1: none). */
  llStore(s: Session, id: number, offset: number, bytes: Buffer, layer: number): void
  /** The epoch attributes read from now on belong to (llAttrs); -1 while they cannot be given. */
  llAttrEpoch(s: Session): number
  /** C answers GETATTR of each node (0: skipped) with its attributes (A_COUNT each), read in `epoch`, until a change. */
  llAttrs(s: Session, epoch: number, nodes: Float64Array, attrs: Float64Array, timeout: number): void
  /** Writable mounts without OPEN: C answers GETATTR of a node whose upper file is open by node for writing (inode number `inoBase` + st_ino), kept `timeout` s. */
  llUpperAttrs(s: Session, inoBase: number, timeout: number): void
  /** C forgets the node's attributes (the kernel forgot the node). */
  llAttrDrop(s: Session, node: number): void
  /**
   * A copy-up C runs itself at node `id`'s OPEN for writing, if nothing changed since `epoch`: the
   * last entries of `path` (its ancestors, then it), as planFields lays them out. Its id, or 0 if stale already.
   */
  llPlan(s: Session, id: number, epoch: number, path: string, numbers: Float64Array, xattrs: Buffer | null): number
  /** JS begins (1) or ends (-1) a change: no plan runs meanwhile; if it `moves` the epoch, none made before runs. Whether notes wait. */
  llChange(s: Session, delta: 1 | -1, moves: boolean): boolean
  /**
   * What C did since the last call: per plan it ran [id, entries, entries done, errno, then each
   * entry's ns (-1: not made there)]; per LOOKUP it answered from a push [node, -1, 0, 0]; per
   * entry of the root's listing it gave [node, -2, 0, 0]; per listing made ahead it gave [node, -3, 0, 0].
   */
  llNotes(s: Session): Float64Array | null
  /** C answers LOOKUP(parent, name) with node `id` and these attributes, once, if nothing changes before (`epoch`). Whether kept. */
  llPush(s: Session, parent: number, epoch: number, name: string, id: number, attr: Float64Array, entryTimeout: number, attrTimeout: number): boolean
  llRootAttr(s: Session, attr: Float64Array, attrTimeout: number): void
  /** The root's listing for C to answer READDIRPLUS of it from (read-only mounts); no names: take it back. */
  llRootList(s: Session, names: string[], nodeids: Float64Array, attrs: Float64Array, timeout: number): void
  /** C forgets what it was to answer for LOOKUP(parent, name). */
  llUnpush(s: Session, parent: number, name: string): void
  /**
   * Node `node`'s whole listing, made ahead in attribute `epoch` (writable mounts), for C to answer
   * its READDIRPLUS from (offsets as llReplyDir's); JS is woken once no more than `wakeAt` (0: never)
   * are left. Whether C took it.
   */
  llAhead(s: Session, node: number, names: string[], nodeids: Float64Array, attrs: Float64Array, timeout: number, offs: Float64Array | undefined, epoch: number, wakeAt: number): boolean
  /** Whether node's listing made ahead was still unused in C (no longer given out now); node 0: all. */
  llAheadTake(s: Session, node: number): boolean
}

// eslint-disable-next-line @typescript-eslint/no-require-imports
const native = require(join(NATIVE_BUILD, 'layerfs_fuse.node')) as LowLevel

const OP = {
  LOOKUP: 1, FORGET: 2, GETATTR: 3, READLINK: 4, OPEN: 5, READ: 6, RELEASE: 7, OPENDIR: 8, READDIR: 9,
  RELEASEDIR: 10, STATFS: 11, GETXATTR: 12, LISTXATTR: 13, INIT: 14, DESTROY: 15,
  SETATTR: 16, MKNOD: 17, MKDIR: 18, SYMLINK: 19, LINK: 20, UNLINK: 21, RMDIR: 22, RENAME: 23, CREATE: 24,
  WRITE: 25, FLUSH: 26, FSYNC: 27, SETXATTR: 28, REMOVEXATTR: 29, NOTES: 30,
} as const
/**
 * Requests that may change the tree or the upper: 1, and 2 for those that also make plans and
 * pushes made before them stale (they rename, remove or link a name, or an OPEN makes a handle a
 * copy-up would have to re-point; see fuse_ll.c js_change).
 */
const CHANGES: readonly number[] = (() => {
  const a: number[] = []
  for (const op of [OP.SETATTR, OP.MKNOD, OP.MKDIR, OP.SYMLINK, OP.CREATE, OP.WRITE, OP.FSYNC, OP.SETXATTR, OP.REMOVEXATTR]) a[op] = 1
  for (const op of [OP.OPEN, OP.LINK, OP.UNLINK, OP.RMDIR, OP.RENAME]) a[op] = 2
  return a
})()
/** Requests on a node by its path (see `settled`): 1. */
const BY_PATH: readonly number[] = (() => {
  const a: number[] = []
  for (const op of [OP.LOOKUP, OP.GETATTR, OP.READLINK, OP.OPEN, OP.OPENDIR, OP.READDIR, OP.GETXATTR, OP.LISTXATTR, OP.SETATTR,
    OP.MKNOD, OP.MKDIR, OP.SYMLINK, OP.LINK, OP.UNLINK, OP.RMDIR, OP.RENAME, OP.CREATE, OP.SETXATTR, OP.REMOVEXATTR]) a[op] = 1
  return a
})()
/**
 * The largest file whose first write's copy-up C runs from a plan. The reader thread serves nothing
 * else meanwhile, as fuse-overlayfs's one thread does not (64 MiB: ~11 ms here, 1 MiB ~0.3); a
 * bigger one goes to JS, whose own work (~2.5 ms on a daemon that has not copied up before: the
 * 64 MiB copy-up took 15.1 ms there against 12.5 in C and fuse-overlayfs's 12.7) is small beside its copy.
 */
const PLAN_MAX_BYTES = 64 << 20
/**
 * Listings made ahead of the walker (see listAhead) and not yet used, at most; JS is woken to make
 * more once this many are left; and the most entries one may have.
 */
const AHEAD_MAX = 64
const AHEAD_WAKE = 32
const AHEAD_ENTRIES = 128
/** Directories with more entries than this get no LOOKUP answers pushed ahead (see pushFiles). */
const PUSH_MAX_ENTRIES = 16
/**
 * Pushing an answer costs ~10 µs of a warm daemon; each one C gives saves a call into
 * JavaScript (30-170 µs). Pushes spend credit, answers given earn it back, and each directory
 * looked up adds a little: a walk whose pushes go unused soon pushes about one file a directory.
 */
const PUSH_CREDIT_MAX = 512
const PUSH_CREDIT_PER_USE = 4
/** Pushed answers not yet used, at most (their nodes wait in the table until the epoch moves). */
const PUSHED_MAX = 4096
/** Answers pushed for one directory's LOOKUP at most: its files, its subdirectories and theirs. */
const PUSH_BUDGET = 32
/** Numbers per planned entry (fuse_ll.c PLAN_FIELDS). */
const PLAN_FIELDS = 12

/** `base` with every reply followed by `after(req)` (a change of JS's ends when it is answered). */
function replying(base: LowLevel, after: (req: number) => void): LowLevel {
  // (the binding's functions are not enumerable, and not writable: a prototype, not a copy)
  const hook = <A extends unknown[]>(f: (req: number, ...rest: A) => void) => ({
    value: (req: number, ...rest: A): void => {
      f(req, ...rest)
      after(req)
    },
  })
  return Object.create(base, {
    llReplyErr: hook(base.llReplyErr), llReplyEntry: hook(base.llReplyEntry), llReplyAttr: hook(base.llReplyAttr),
    llReplyOpen: hook(base.llReplyOpen), llReplyCreate: hook(base.llReplyCreate), llReplyWrite: hook(base.llReplyWrite),
  }) as LowLevel
}

/** A plan's numbers as llPlan takes them ([entries, then PLAN_FIELDS each]) and its xattrs' bytes (null: none). */
function planFields(plan: readonly PlannedEntry[]): [Float64Array, Buffer | null] {
  const nums = new Float64Array(1 + plan.length * PLAN_FIELDS)
  nums[0] = plan.length
  let parts: Buffer[] | null = null
  for (let i = 0; i < plan.length; i++) {
    const { r, span, xattrs } = plan[i]
    const e = r.top.entry
    let xattrBytes = 0
    for (const [name, value] of xattrs) {
      const head = Buffer.alloc(Buffer.byteLength(name, 'latin1') + 5)
      head.write(name, 0, 'latin1')
      head.writeUInt32LE(value.length, head.length - 4)
      ;(parts ??= []).push(head, value)
      xattrBytes += head.length + value.length
    }
    const at = 1 + i * PLAN_FIELDS
    nums[at] = e.kind === 'dir' ? 1 : 0; nums[at + 1] = e.mode; nums[at + 2] = e.uid; nums[at + 3] = e.gid
    nums[at + 4] = e.atime.sec; nums[at + 5] = e.atime.nsec; nums[at + 6] = e.mtime.sec; nums[at + 7] = e.mtime.nsec
    nums[at + 8] = span ? span.fd : -1; nums[at + 9] = span ? span.offset : 0; nums[at + 10] = span ? e.size : 0
    nums[at + 11] = xattrBytes
  }
  return [nums, parts && Buffer.concat(parts)]
}

// fuse_lowlevel.h's FUSE_SET_ATTR_* bits
// KILL_SUIDGID: the kernel's FATTR_KILL_SUIDGID, which libfuse passes on as FUSE_SET_ATTR_KILL_SUID
const SET = { MODE: 1, UID: 2, GID: 4, SIZE: 8, ATIME: 16, MTIME: 32, ATIME_NOW: 128, MTIME_NOW: 256, KILL_SUIDGID: 2048 } as const
const UTIME_NOW = (1 << 30) - 1
const UTIME_OMIT = (1 << 30) - 2
const A_COUNT = 15
/** Entries in one READDIR answer at most (the kernel's buffer takes fewer; the rest come next time). */
const DIR_CHUNK = 512

const O_ACCMODE = 3
const O_RDWR = 2
/** Handles C opened itself (llOpenable) are numbered from here; ours stay below (Handles: uint32). */
const NATIVE_FH = 2 ** 32

/** Open files a read-only mount without OPEN reads by node (their descriptors stay open while listed). */
const NODE_FILES = 256

/** Writes a Stat in the layout fuse_ll.c reads (see its A_* enum). */
function fill(a: Float64Array, at: number, s: Stat): void {
  a[at] = s.ino; a[at + 1] = s.mode; a[at + 2] = s.nlink; a[at + 3] = s.uid; a[at + 4] = s.gid; a[at + 5] = s.rdev
  a[at + 6] = s.size; a[at + 7] = s.blocks; a[at + 8] = s.blksize
  a[at + 9] = s.atime.sec; a[at + 10] = s.atime.nsec; a[at + 11] = s.mtime.sec; a[at + 12] = s.mtime.nsec
  a[at + 13] = s.ctime.sec; a[at + 14] = s.ctime.nsec
}

const S_IFMT = 0o170000
const S_IFDIR = 0o040000
const S_IFREG = 0o100000

/** The kernel's nodeids and the paths they stand for; a node lives while the kernel holds lookups on it. */
class Nodes {
  private readonly byId = new Map<number, { path: string; lookups: number; kind: number; last?: Stat; gone?: boolean }>([[1, { path: '/', lookups: 1, kind: S_IFDIR }]])
  private readonly byPath = new Map<string, number>([['/', 1]])
  private next = 2

  path(id: number): string {
    const n = this.byId.get(id)
    if (!n) throw new FsError(Errno.ESTALE, 'unknown node')
    return n.path
  }

  has(id: number): boolean {
    return this.byId.has(id)
  }

  /** The node of `path`, if there is one. */
  find(path: string): number | undefined {
    return this.byPath.get(path)
  }

  /**
   * The node of `path`, made if needed, without counting a lookup. `mode`: what the path holds now;
   * a node that stood for a file of another type stood for another file, whose name went without
   * this table hearing of it: it is left as gone and the path gets a node of its own (the kernel
   * would take the old node's new type for a stale inode and fail every use of it with EIO).
   */
  idOf(path: string, mode?: number): number {
    let id = this.byPath.get(path)
    if (id !== undefined && mode !== undefined && this.otherKind(id, mode)) {
      log.fuse('%s: node %d was a %o, the path holds a %o: a node of its own', path, id, this.kindOf(id), mode & S_IFMT)
      this.unlinked(path)
      id = undefined
    }
    if (id === undefined) {
      id = this.next++
      this.byPath.set(path, id)
      this.byId.set(id, { path, lookups: 0, kind: (mode ?? 0) & S_IFMT })
    } else if (mode !== undefined) {
      this.byId.get(id)!.kind = mode & S_IFMT
    }
    return id
  }

  /** Whether nodes keep their last attributes (writable mounts: for open files whose name goes). */
  constructor(private readonly keepLast: boolean) {}

  /** What getattr last answered for the node: an open file that was unlinked still has it. */
  remember(id: number, st: Stat): void {
    const n = this.byId.get(id)
    if (!n) return
    n.kind = st.mode & S_IFMT
    if (this.keepLast) n.last = st
  }

  /** Whether the node was last shown to the kernel as a file of another type than `mode`'s. */
  otherKind(id: number, mode: number): boolean {
    const kind = this.kindOf(id)
    return kind !== 0 && kind !== (mode & S_IFMT)
  }

  /** The type bits of what the node was last shown as (0: not known). */
  kindOf(id: number): number {
    return this.byId.get(id)?.kind ?? 0
  }

  /** The node's name is gone, whatever its path holds now (see idOf). */
  detach(id: number): void {
    const n = this.byId.get(id)
    if (!n || id === 1) return
    if (this.byPath.get(n.path) === id) this.byPath.delete(n.path)
    n.gone = true
  }

  /** Whether the node's name is gone (unlinked, or renamed over). */
  isGone(id: number): boolean {
    return this.byId.get(id)?.gone === true
  }

  /** The last attributes of a node whose name is gone, or null while its name stands. */
  lastOf(id: number): Stat | null {
    const n = this.byId.get(id)
    return n?.gone && n.last ? { ...n.last, nlink: 0 } : null
  }

  /** The path is gone (unlink, rmdir): its node stays until forgotten, but no new lookup finds it. */
  unlinked(path: string): void {
    const id = this.byPath.get(path)
    if (id !== undefined) this.detach(id)
  }

  /** A rename: the node at `from` and every node below it now live under `to`. */
  renamed(from: string, to: string): void {
    this.unlinked(to)
    const moved: Array<[string, number]> = []
    for (const [p, id] of this.byPath) if (p === from || p.startsWith(from + '/')) moved.push([p, id])
    for (const [p, id] of moved) {
      const np = to + p.slice(from.length)
      this.byPath.delete(p)
      this.byPath.set(np, id)
      const n = this.byId.get(id)
      if (n) n.path = np
    }
  }

  /** The lookups the kernel holds on the node (0 for one it does not know). */
  lookupsOf(id: number): number {
    return this.byId.get(id)?.lookups ?? 0
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
  /** The attribute epoch the stats were read in (see attrsToC), or -1. */
  readonly attrEpoch: number
  /** Each entry's offset (see byCookie), ascending; without them, entry i's is i + 1. */
  readonly cookies?: Float64Array
}

/**
 * A listing in the order of its names' cookies: 1 and 2 for "." and "..", then a 52-bit hash of the
 * name (above 2), so that a READDIR continuing after an entry continues there however many others
 * came or went meanwhile. A writable mount makes a listing again once anything changed, while a
 * reader may be part-way through (rm -rf of a directory the kernel has not cached): with offsets
 * counted in entries it would skip or repeat some.
 */
function byCookie(d: DirHandle): DirHandle {
  const cookies = d.names.map((name, i) => (d.paths[i] === null ? (name === '.' ? 1 : 2) : cookieOf(name)))
  const order = cookies.map((_, i) => i).sort((x, y) => cookies[x] - cookies[y] || (d.names[x] < d.names[y] ? -1 : 1))
  const sorted = new Float64Array(order.length)
  for (let k = 0; k < order.length; k++) {
    // equal hashes (one pair in ~10^9 of a 100k-entry directory) made distinct, in name order
    sorted[k] = k > 0 && cookies[order[k]] <= sorted[k - 1] ? sorted[k - 1] + 1 : cookies[order[k]]
  }
  return {
    names: order.map((i) => d.names[i]),
    paths: order.map((i) => d.paths[i]),
    stats: order.map((i) => d.stats[i]),
    attrEpoch: d.attrEpoch,
    cookies: sorted,
  }
}

/** Two 32-bit FNV-1a hashes of a name (latin1, as names travel), 52 bits of them, above 2. */
function cookieOf(name: string): number {
  let h1 = 0x811c9dc5
  let h2 = 0x050c5d1f
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i)
    h1 = Math.imul(h1 ^ c, 0x01000193)
    h2 = Math.imul(h2 ^ c, 0x01000193) ^ (h2 >>> 15)
  }
  return (h1 >>> 0) * 0x100000 + ((h2 >>> 0) >>> 12) + 3
}

/** The index of the first entry after offset `off` (0: the first) of a listing with cookies. */
function afterCookie(cookies: Float64Array, off: number): number {
  let lo = 0
  let hi = cookies.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (cookies[mid] <= off) lo = mid + 1
    else hi = mid
  }
  return lo
}

/** Mounts `fs`; resolves once the mount is live. */
export function mountLowLevel(fs: LayerFs, mountpoint: string, opts: FuseMountOptions, onEnd: () => void): Promise<FuseMount> {
  try {
    return Promise.resolve(lowLevelSession(fs, opts, onEnd, (options, dispatch) => native.llMount(mountpoint, options, dispatch)).mounted())
  } catch (err) {
    return Promise.reject(err)
  }
}

/** A read-only mount of `fs` made ready for the standby's gate to mount (see standby.ts). */
export interface PreparedSession {
  readonly session: Session
  /** What the gate's mount(2) takes, as libfuse would mount it. */
  readonly fsname: string
  readonly flags: number
  readonly options: string
  /** The gate mounted it: the mount is live. */
  mounted(): FuseMount
  /** Never mounted: given up. */
  discard(): void
}

/**
 * Prepares a read-only mount of `fs` (as root: the gate calls mount(2) itself); null where it cannot
 * be prepared (not root, writable, no reader thread).
 */
export function prepareLowLevel(fs: LayerFs, opts: FuseMountOptions, onEnd: () => void): PreparedSession | null {
  if (!preparable(opts)) return null
  const { session, mounted } = lowLevelSession(fs, opts, onEnd, (options, dispatch) => native.llPrepare(options, dispatch))
  return {
    session,
    // ro, and as root dev and suid: MS_RDONLY alone; default_permissions and allow_other as libfuse orders them
    fsname: fsnameOf(opts),
    flags: 1,
    options: 'default_permissions,allow_other,',
    mounted,
    discard: () => native.llUnmount(session),
  }
}

/** Whether a mount with these options can be prepared (prepareLowLevel). */
export function preparable(opts: FuseMountOptions): boolean {
  return opts.readOnly && process.getuid?.() === 0 && opts.allowOther && !opts.debug
}

const fsnameOf = (opts: FuseMountOptions): string => opts.fsname.replace(/[,\\]/g, '_')

/** A session for `fs`, started by `start` (mounted, or prepared); `mounted` once the mount is live. */
function lowLevelSession(fs: LayerFs, opts: FuseMountOptions, onEnd: () => void, start: (options: string, dispatch: Dispatch) => Session): { session: Session; mounted: () => FuseMount } {
  const ro = opts.readOnly
  // Names and attributes cached for opts.cacheSeconds. Writable mounts rely on the kernel dropping
  // what a change made through the mount touches (its own inode, the parent dirs), except for other
  // names of a hard-linked file, which are separate nodes here: those attributes are asked for each
  // time. An open file whose name is gone: each time too.
  const t = opts.cacheSeconds
  const ta = (st: Stat): number => (ro || ((st.mode & S_IFMT) === S_IFDIR || st.nlink <= 1) ? t : 0)
  const nodes = new Nodes(!ro)
  // GETATTR answered by C for entries that lie in the lower layers alone, where every change is an
  // llChange (planning): fuse_ll.c answer_getattr. The epoch is read before the attributes are.
  const attrEpochNow = (): number => (planning && session ? ll.llAttrEpoch(session) : -1)
  const one = new Float64Array(1)
  const attrsToC = (epoch: number, id: number, below: Below, a: Float64Array, timeout: number): void => {
    if (epoch < 0 || timeout <= 0 || !below.lowerOnly) return
    one[0] = id
    ll.llAttrs(session!, epoch, one, a, timeout)
  }
  // whether the kernel may keep a file's page cache across its opens on a writable mount: only where
  // nothing but this node writes it (a hard link's other names are separate nodes here)
  const singleName = (ino: number): boolean => {
    try {
      return !nodes.lastOf(ino) && fs.getattrNow(nodes.path(ino)).nlink <= 1
    } catch {
      return false
    }
  }
  const dirs = new Map<number, DirHandle>()
  // on kernels that allow it, no OPENDIR/RELEASEDIR at all: listings by node. Read-only mounts, and
  // writable ones where every change is an llChange (planning): a listing made before the attribute
  // epoch last moved is stale there (fuse_ll.c init_no_opendir)
  let skipOpendir = false
  // ... and no OPEN/RELEASE: reads come by node (fh 0); the kernel keeps the page cache as with keep_cache.
  // Read-only mounts, and writable ones that copy up at the first write (copyUpAtWrite): there the
  // WRITEs come by node too, and a file's first one copies it up (nodeWriter)
  const copyUpAtWrite = !ro && opts.copyUpAtWrite === true
  let skipOpen = false
  // copyUpAtWrite where the kernel sends no OPEN (INIT tells): WRITEs, truncations and fsyncs by node
  let writesByNode = false
  const nodeFiles = new Map<number, Promise<number>>() // node -> handle, oldest first
  const nodeWriters = new Set<number>() // nodes whose handle in nodeFiles is the upper file's, for writing
  // nodes whose name went while the kernel held them (copyUpAtWrite): their handle, opened before,
  // is the file's only way in until the kernel forgets them; never dropped for room
  const pinned = new Set<number>()
  // read-only mounts: the window a random READ answered here reads (see OP.READ), and where the last
  // READs of recent nodes (or handles, negated) ended, oldest first
  const readaround = ro ? opts.readaround : 0
  const readEnds = new Map<number, number>()
  // node -> its listing, and the attribute epoch it was begun in
  const listings = new Map<number, { readonly list: Promise<DirHandle>; readonly epoch: number }>()
  let nextDir = 1
  // listings made ahead (see listAhead) that C holds unused: by directory node, its entries' nodes
  const ahead = new Map<number, { readonly ids: Float64Array; readonly d: DirHandle }>()
  const aheadTodo: number[] = [] // directories to list ahead, the next last
  let aheadSoon = false // a step is on its way
  // directories listed (by JS, or by C from a listing made ahead) since the epoch last moved
  const listed = new Set<number>()
  const attr = new Float64Array(A_COUNT)
  let session: Session | null = null
  let ended = false

  // First writes' copy-ups run by C (see CopyUp.planNow, fuse_ll.c plan_open): a plan is made when
  // a LOOKUP finds a lower file, and runs at its OPEN for writing if nothing changed in between.
  // Every request that may change something is a change from dispatch to answer (llChange).
  const roots = ro || process.env.LAYERFS_NATIVE_COPYUP === '0' ? null : fs.planRoots()
  const planning = roots !== null
  const changing = new Map<number, boolean>() // request -> whether it moves the epoch
  const plans = new Map<number, { readonly entries: readonly PlannedEntry[]; readonly node: number }>() // by id, oldest first
  // copyUpAtWrite: nodes whose upper file C opened at the WRITE that ran their plan (plan_write),
  // and reads and writes by node, until JS registers a handle of its own or drops the node's
  const cWriters = new Set<number>()
  const ll = replying(native, (req) => {
    if (changing.size > 0) endChange(req)
  })
  // Paths an unlink, rmdir or rename is changing, each with that change's end. The kernel locks the
  // parent directories and the inodes named for such a change, not a GETATTR or OPEN of the node
  // whose name goes, nor anything below a renamed directory: those, answered by path here, would
  // find the path half changed (make soak: a fifo renamed over a file's name answered GETATTR for
  // the file's node; the kernel took the inode for a stale one, and whoever held it open got EIO).
  // A request on a node at or below one of them waits for the change to end (see settled).
  const unsettled = new Set<{ readonly paths: readonly string[]; readonly done: Promise<void> }>()
  const unsettling = async (paths: readonly string[], work: () => Promise<void>): Promise<void> => {
    let end!: () => void
    const u = { paths, done: new Promise<void>((resolve) => { end = resolve }) }
    unsettled.add(u)
    try {
      await work()
    } finally {
      unsettled.delete(u)
      end()
    }
  }
  /** The end of a change under way at or above node `ino`'s path, if one is. */
  const unsettledAt = (ino: number): Promise<void> | null => {
    if (!nodes.has(ino)) return null
    const path = nodes.path(ino)
    for (const u of unsettled) {
      for (const p of u.paths) if (path === p || (path.startsWith(p) && path[p.length] === '/')) return u.done
    }
    return null
  }
  const endChange = (req: number): void => {
    const moves = changing.get(req)
    if (moves === undefined) return
    changing.delete(req)
    native.llChange(session!, -1, moves)
  }
  // LOOKUP answers pushed to C ahead of the kernel's asking (see pushFiles), by node, until used
  const pushed = new Map<number, { parent: number; name: string; stat: Stat }>()
  const pushedFiles = new Map<number, number>() // directory node -> the epoch its files were pushed in
  const pushedDirs = new Map<number, number>() // directory node -> the epoch its subdirectories were pushed in
  const pushedNodes = new Set<number>() // subdirectories' nodes made for pushes
  const takenDirs: number[] = [] // pushed directories C has answered, still to push below
  let pushCredit = PUSH_CREDIT_MAX
  const pushAttr = new Float64Array(A_COUNT)
  /** What C did: the lookups it gave out are counted; the union forgets what its plans changed; the stats count them. */
  const readNotes = (): void => {
    const a = ll.llNotes(session!)
    for (let i = 0; a && i < a.length; i += 4 + Math.max(0, a[i + 1])) {
      if (a[i + 1] === -2) { // an entry of the root's listing C gave out (see giveRootList)
        nodes.count(a[i])
        continue
      }
      if (a[i + 1] === -3) { // a listing made ahead that C gave out: its entries' lookups
        const given = ahead.get(a[i])
        ahead.delete(a[i])
        listed.add(a[i])
        if (given) for (const id of given.ids) if (id !== 0) counted(id)
        continue
      }
      if (a[i + 1] < 0) { // a LOOKUP C answered from a push
        const p = pushed.get(a[i])
        pushed.delete(a[i])
        pushCredit = Math.min(PUSH_CREDIT_MAX, pushCredit + PUSH_CREDIT_PER_USE)
        nodes.count(a[i])
        if (p) nodes.remember(a[i], p.stat)
        if (p && (p.stat.mode & S_IFMT) === S_IFDIR) takenDirs.push(a[i])
        continue
      }
      const plan = plans.get(a[i])
      plans.delete(a[i])
      // run at a WRITE (fuse_ll.c plan_write): C reads and writes the node's upper file by node now
      if (plan && writesByNode && a[i + 2] === a[i + 1] && !a[i + 3]) cWriters.add(plan.node)
      if (a[i + 3]) log.fuse('a planned copy-up stopped after %d of %d entries: errno %d', a[i + 2], a[i + 1], a[i + 3])
      if (plan) fs.plannedDone(plan.entries, a[i + 2], Array.from(a.subarray(i + 4, i + 4 + a[i + 1])))
    }
  }
  /** Plans the copy-up of `path` (node `id`, a lower file without handles) for C, in `epoch`. */
  const plan = (id: number, path: string, epoch: number, above?: readonly PlannedEntry[]): void => {
    const entries = fs.planWriteNow(path, PLAN_MAX_BYTES, above)
    if (!entries) return
    const [nums, xattrs] = planFields(entries)
    const planId = ll.llPlan(session!, id, epoch, path, nums, xattrs)
    if (planId === 0) return
    plans.set(planId, { entries, node: id })
    // C keeps 64; older ones can only be gone there
    if (plans.size > 256) plans.delete(plans.keys().next().value as number)
  }
  /**
   * Directory `path` (node `id`) was looked up: the answers to the LOOKUPs of the regular files in
   * it, of its subdirectories and of the regular files in those, with the files' copy-ups planned,
   * go to C ahead (where each lies in one lower layer, with few entries): a first write to one of
   * them then makes no call into JavaScript. Their nodes are made now, without a lookup: unused
   * ones go when the epoch moves (dropPushed). A subdirectory's answer holds until the epoch moves:
   * nothing can change it before the kernel has looked it up, but a rename or removal of it.
   */
  const pushFiles = (id: number, path: string, epoch: number): void => {
    pushCredit = Math.min(PUSH_CREDIT_MAX, pushCredit + 1)
    if (pushedDirs.get(id) === epoch) return
    const kids = fs.lowerChildrenNow(path, PUSH_MAX_ENTRIES)
    if (!kids) return
    pushedDirs.set(id, epoch)
    let budget = pushDirFiles(id, path, kids.files, epoch, PUSH_BUDGET) // unless pushed at its parent's LOOKUP
    for (const name of kids.dirs) {
      if (budget <= 0) return
      const sub = joinPath(path, name)
      const subFiles = fs.lowerChildrenNow(sub, PUSH_MAX_ENTRIES)?.files
      // the subdirectory's own answer, and its files' where they all fit
      if (!pushOne(id, path, name, S_IFDIR, epoch, null)) return
      budget--
      if (!subFiles || subFiles.length > budget || subFiles.length > pushCredit) continue
      const sid = nodes.idOf(sub, S_IFDIR)
      if (nodes.lookupsOf(sid) === 0) pushedNodes.add(sid)
      budget = pushDirFiles(sid, sub, subFiles, epoch, budget)
    }
  }
  /**
   * Pushes the answers for `names`, regular files in directory `path` (node `id`), once an epoch,
   * their plans sharing the part that copies the directories above. The budget left; 0 once no
   * more can be pushed now.
   */
  const pushDirFiles = (id: number, path: string, names: readonly string[], epoch: number, budget: number): number => {
    if (pushedFiles.get(id) === epoch || names.length === 0) return budget
    pushedFiles.set(id, epoch)
    const above = fs.planAboveNow(path)
    for (const name of names) {
      if (budget <= 0 || !pushOne(id, path, name, S_IFREG, epoch, above)) return 0
      budget--
    }
    return budget
  }
  /**
   * Pushes the answer for `name` in directory `path` (node `id`) if it is of `kind` and the kernel
   * holds no lookup of it; a file's copy-up is planned (`above`: its directories' entries). False
   * when no more can be pushed now.
   */
  const pushOne = (id: number, path: string, name: string, kind: number, epoch: number, above: readonly PlannedEntry[] | null): boolean => {
    if (pushCredit <= 0 || pushed.size >= PUSHED_MAX) return false
    const p = joinPath(path, name)
    let st: Stat
    try {
      st = fs.getattrNow(p)
    } catch {
      return true
    }
    const cid = nodes.idOf(p, st.mode)
    if (pushed.has(cid)) return true
    if ((st.mode & S_IFMT) !== kind || nodes.lookupsOf(cid) > 0 || openFiles.has(cid)) {
      if (!pushedNodes.has(cid)) nodes.dropIfUnused(cid)
      return true
    }
    fill(pushAttr, 0, st)
    if (!ll.llPush(session!, id, epoch, name, cid, pushAttr, t, ta(st))) {
      nodes.dropIfUnused(cid)
      return false
    }
    pushCredit--
    pushed.set(cid, { parent: id, name, stat: st })
    if (kind === S_IFDIR) pushedNodes.add(cid)
    else {
      if (above) plan(cid, p, epoch, above)
      if (skipOpen || !ro) byNode(cid, p) // as after JS's LOOKUP
    }
    return true
  }
  /**
   * The root's children pushed once the mount is live and INIT told whether OPEN comes (see
   * pushFiles): a fresh mount's first path walk, two levels down, makes no call into JavaScript.
   * Read-only mounts push nowhere else (a walk's LOOKUPs come with READDIRPLUS anyway): their epoch
   * never moves.
   */
  let rootPush = 0 // 1 mounted, 2 INIT seen too: pushed
  const pushRoot = (): void => {
    if (++rootPush !== 2 || ended || !(ro || planning)) return
    try {
      const epoch = ro ? 0 : planEpoch()
      if (epoch >= 0) pushFiles(1, '/', epoch)
    } catch (err) {
      log.fuse('root pushes: %s', (err as Error).message)
    }
  }
  /** The epoch moves: the pushed answers C can no longer give; the nodes made for them, unused, go. */
  const dropPushed = (): void => {
    for (const id of pushed.keys()) nodes.dropIfUnused(id)
    for (const id of pushedNodes) nodes.dropIfUnused(id)
    pushed.clear()
    pushedNodes.clear()
    pushedFiles.clear()
    pushedDirs.clear()
  }
  /** The kernel holds one more lookup on node `id`, given by JS: C is not to give it again from a push. */
  const counted = (id: number): void => {
    nodes.count(id)
    const p = pushed.size > 0 ? pushed.get(id) : undefined
    if (!p) return
    pushed.delete(id)
    ll.llUnpush(session!, p.parent, p.name)
  }
  /** The epoch a LOOKUP's plan would belong to, after what C did is known here; -1: none. */
  const planEpoch = (): number => {
    if (!planning || changing.size > 0) return -1
    let epoch = ll.llEpoch(session!)
    if (epoch === -2) {
      readNotes()
      epoch = ll.llEpoch(session!)
    }
    return epoch
  }

  const fail = (req: number, op: string, err: unknown): void => {
    // a system call's error (it has its code) is an answer like ours; anything else is a fault
    if (!(err instanceof FsError) && typeof (err as { code?: unknown } | null)?.code !== 'string') log.fuse('%s: unexpected %s', op, (err as Error)?.stack ?? String(err))
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

  /** Lets C answer the handle's READs (and an upper file's WRITEs) where its bytes lie in a local descriptor (or stop doing so). */
  const direct = (fh: number, byNode = false, id = fh): DirectSpan | null => register(byNode, id, fs.direct(fh))
  const register = (byNode: boolean, id: number, span: DirectSpan | null): DirectSpan | null => {
    if (span) ll.llDirect(session!, byNode, id, span.fd, span.offset, span.length, span.layer, span.writable)
    else ll.llDirectDrop(session!, byNode, id)
    return span
  }
  /** An upper file opened for writing: whether it has security.capability, known in C (see llNoCaps). */
  const writing = (ino: number, span: DirectSpan | null): void => {
    if (span?.writable) ll.llNoCaps(session!, ino, span.fd)
  }
  fs.onHandleChange((fh) => direct(fh))
  // a file copied up: C no longer opens or reads it by node from its lower bytes (see directOf)
  fs.onCopiedUp((path) => {
    const id = nodes.find(path)
    if (id !== undefined && session && !cWriters.has(id)) ll.llDirectDrop(session, true, id)
  })
  /** The handle a node is read through when the kernel sends no OPEN: opened on first read, kept for the next. */
  const nodeFile = (ino: number): Promise<number> => {
    let p = nodeFiles.get(ino)
    if (p) {
      nodeFiles.delete(ino) // to the young end
      nodeFiles.set(ino, p)
      return p
    }
    // a node whose name is gone, with no handle kept: whatever has that name now is another file
    if (nodes.isGone(ino)) return Promise.reject(new FsError(Errno.ENOENT, 'no such file', nodes.path(ino)))
    return openNodeFile(ino, 0)
  }
  const openNodeFile = (ino: number, flags: number): Promise<number> => {
    const p = fs.open(nodes.path(ino), flags)
    const before = nodeFiles.get(ino)
    nodeFiles.delete(ino)
    nodeFiles.set(ino, p)
    if (flags === O_RDWR) nodeWriters.add(ino)
    else nodeWriters.delete(ino)
    cWriters.delete(ino)
    // C reads (and writes) through the new handle once it is open; the old one then closes
    p.then((fh) => {
      if (nodeFiles.get(ino) === p) {
        const span = direct(fh, true, ino)
        if (flags === O_RDWR) writing(ino, span)
      }
      before?.then((old) => fs.release(old), () => undefined).catch(() => undefined)
    }, () => {
      if (nodeFiles.get(ino) !== p) return
      nodeFiles.delete(ino)
      nodeWriters.delete(ino)
      if (before) nodeFiles.set(ino, before)
    })
    trimNodeFiles()
    return p
  }
  const trimNodeFiles = (): void => {
    if (nodeFiles.size <= NODE_FILES + pinned.size) return
    for (const id of nodeFiles.keys()) {
      if (pinned.has(id)) continue
      dropNodeFile(id)
      return
    }
  }
  /**
   * The handle a node is written through when the kernel sends no OPEN (copyUpAtWrite): the upper
   * file, opened for reading and writing at the node's first WRITE (or truncation through a
   * descriptor), which copies a lower file up; kept with the node's reads.
   */
  const nodeWriter = (ino: number): Promise<number> => {
    const p = nodeFiles.get(ino)
    if (p && nodeWriters.has(ino)) return p
    // unlinked while open, and only in a lower layer when its name went (see pinNode): no upper file to write
    if (nodes.isGone(ino)) return Promise.reject(new FsError(Errno.EIO, 'cannot copy up a file whose name is gone', nodes.path(ino)))
    return openNodeFile(ino, O_RDWR)
  }
  /**
   * A name goes (unlink, or a rename over it) while the kernel may hold its node open
   * (copyUpAtWrite: no OPEN told us): a handle on the file is opened first, to read, write and fstat
   * it through until the kernel forgets the node.
   */
  const pinNode = async (path: string): Promise<void> => {
    if (!writesByNode) return
    const id = nodes.find(path)
    if (id === undefined || nodes.lookupsOf(id) === 0 || nodes.kindOf(id) !== S_IFREG) return
    try {
      const upper = fs.upperFilePath(path) !== null
      if (!nodeFiles.has(id) || (upper && !nodeWriters.has(id))) await openNodeFile(id, upper ? O_RDWR : 0)
      else await nodeFiles.get(id)
      pinned.add(id)
    } catch (err) {
      log.fuse('%s: no handle kept for its node: %s', path, (err as Error).message)
    }
  }
  /** C answers the node's READs, and on a writable mount its OPENs for reading, where its bytes lie in a lower tar (LayerFs.directOf). */
  const byNode = (id: number, path: string): void => {
    try {
      register(true, id, fs.directOf(path))
    } catch { /* read by JS then */ }
  }
  /** C stops answering the node's READs (registered here or at LOOKUP); its file, if open, is closed. */
  const dropNodeFile = (ino: number): void => {
    ll.llDirectDrop(session!, true, ino) // before its descriptor closes
    cWriters.delete(ino)
    const p = nodeFiles.get(ino)
    if (!p) return
    nodeFiles.delete(ino)
    nodeWriters.delete(ino)
    pinned.delete(ino)
    p.then((fh) => fs.release(fh), () => undefined).catch(() => undefined)
  }

  /** Open handles per node (writable mounts: fstat of an unlinked file asks without one). */
  const openFiles = new Map<number, Set<number>>()
  const opened = (ino: number, fh: number): void => {
    if (ro) return
    let set = openFiles.get(ino)
    if (!set) openFiles.set(ino, (set = new Set()))
    set.add(fh)
  }
  /**
   * Node `ino` is an upper file opened by its name: C opens it itself from now on (OPEN and RELEASE
   * without a call into JS: a second write to a file, ~0.15 ms less), until a name changes.
   */
  const openable = (ino: number): void => {
    // not while a name changes: an OPEN answered meanwhile (queued ahead of the change) would let
    // C open by a path that the change then gives to another file
    if (ro || namesChanging > 0 || nodes.lastOf(ino)) return
    const real = fs.upperFilePath(nodes.path(ino))
    if (real) ll.llOpenable(session!, ino, real)
  }
  let namesChanging = 0
  /** A name changes: C opens nothing itself until JS opens each file again (from the request to its answer). */
  const renaming = <T>(work: () => Promise<T>): (() => Promise<T>) => {
    namesChanging++
    ll.llOpenableClear(session!)
    return () => work().finally(() => {
      namesChanging--
      ll.llOpenableClear(session!)
    })
  }
  /** The attributes of a node unlinked while open: from one of its handles (`fh`, or any), else as last shown. */
  const goneStat = (ino: number, fh: number, gone: Stat): Promise<Stat> | Stat => {
    if (fh <= 0 && writesByNode) { // no handles: the node's own, kept since its name went (pinNode)
      const p = nodeFiles.get(ino)
      return p ? p.then((h) => fs.fgetattr(h, gone), () => gone) : gone
    }
    if (fh === 0) return gone // opened by C from the node's lower bytes (open_by_node), which never change
    const h = fh > 0 ? fh : openFiles.get(ino)?.values().next().value
    if (h !== undefined && h >= NATIVE_FH) return nativeStat(h, false, gone) ?? { ...gone, nlink: 0 }
    if (h === undefined) return nativeStat(ino, true, gone) ?? gone
    return fs.fgetattr(h, gone)
  }
  /** fstat through a handle C opened, as Stat over what the node last showed. */
  const nativeStat = (id: number, byNode: boolean, last: Stat): Stat | null => {
    const a = ll.llNativeStat(session!, id, byNode)
    if (!a) return null
    return {
      ...last, mode: a[0], nlink: a[1], uid: a[2], gid: a[3], size: a[4], blocks: a[5],
      atime: { sec: a[6], nsec: a[7] }, mtime: { sec: a[8], nsec: a[9] }, ctime: { sec: a[10], nsec: a[11] },
    }
  }
  /** On handle `fh`, C's or ours: op 1 ftruncate(arg), op 2 fsync (arg 1: data only). */
  const onHandle = async (fh: number, op: 1 | 2, arg: number, ino = 0): Promise<void> => {
    if (fh === 0 && writesByNode) { // by node (no OPEN): truncation copies up as a write does
      if (op === 1) return fs.ftruncate(await nodeWriter(ino), arg)
      const p = nodeWriters.has(ino) ? nodeFiles.get(ino) : undefined
      return p ? fs.fsync(await p, arg !== 0) : undefined // nothing written through the mount since it was opened here
    }
    if (fh === 0) { // opened for reading by C from a lower file's bytes (open_by_node)
      if (op === 1) throw new FsError(Errno.EINVAL, 'not open for writing')
      return
    }
    if (fh < NATIVE_FH) return op === 1 ? fs.ftruncate(fh, arg) : fs.fsync(fh, arg !== 0)
    const err = ll.llNativeFile(session!, fh, op, arg)
    if (err) throw new FsError(err, op === 1 ? 'ftruncate failed' : 'fsync failed')
  }
  /** Answers a request that made `path` with its entry (a new node, one lookup). */
  const entry = (req: number, path: string, fh?: number): void => {
    handle(req, 'entry', () => fs.getattr(path), (st) => {
      const id = nodes.idOf(path, st.mode)
      counted(id)
      nodes.remember(id, st)
      if (fh !== undefined) {
        opened(id, fh)
        const span = direct(fh)
        writing(id, span)
        if (span?.writable) openable(id)
      }
      fill(attr, 0, st)
      if (fh === undefined) ll.llReplyEntry(req, id, attr, t, ta(st))
      else ll.llReplyCreate(req, id, attr, t, ta(st), fh)
    })
  }
  const caller = (req: number): Caller => {
    const c = ll.llCaller(req)
    return { uid: c[0], gid: c[1], pid: c[2] }
  }
  const child = (ino: number, name: string): string => {
    if (name.length > 255) throw new FsError(Errno.ENAMETOOLONG, 'name too long')
    return joinPath(nodes.path(ino), name)
  }
  /** A change: runs it, then answers 0, or the entry it made. */
  const change = (req: number, op: string, work: () => Promise<string | void>): void => {
    handle(req, op, work, (made) => (typeof made === 'string' ? entry(req, made) : ll.llReplyErr(req, 0)))
  }

  /** A directory's entries with the attributes getattr answers for each (what READDIRPLUS sends). */
  const listing = async (path: string): Promise<DirHandle> => (await listingUpTo(path, Infinity))!
  /** listing(), or null where the directory has more than `max` entries (their attributes not read). */
  const listingUpTo = async (path: string, max: number): Promise<DirHandle | null> => {
    const attrEpoch = attrEpochNow()
    const list = await fs.readdir(path)
    if (list.length > max) return null
    const paths = list.map((e) => (e.name === '.' || e.name === '..' ? null : joinPath(path, e.name)))
    const stats = list.map((e, i) => {
      if (paths[i] === null || e.final) return e.stat
      try {
        return fs.getattrNow(paths[i]!)
      } catch {
        return e.stat
      }
    })
    return { names: list.map((e) => e.name), paths, stats, attrEpoch }
  }
  /** Entries first..end of a listing as llReplyDir takes them; nodes made (not counted) when `plus`. */
  const dirFields = (d: DirHandle, first: number, end: number, plus: boolean) => {
    const names = d.names.slice(first, end)
    const ids = new Float64Array(names.length)
    const attrs = new Float64Array(names.length * A_COUNT)
    let cacheable = true // the attributes, as one timeout for all: none if any entry's must be asked for
    for (let i = first; i < end; i++) {
      const p = d.paths[i]
      ids[i - first] = plus && p !== null ? nodes.idOf(p, d.stats[i].mode) : 0
      fill(attrs, (i - first) * A_COUNT, d.stats[i])
      if (ta(d.stats[i]) === 0) cacheable = false
    }
    return { names, ids, attrs, timeout: cacheable ? t : 0 }
  }
  // The root's listing, given to C once the mount is live (read-only): a fresh mount's first `ls`
  // then makes no call into Node. Taken back before JS answers a listing of the root itself, since
  // that may drop nodes of entries C would give out (readdirReply).
  let rootList: Float64Array | null = null // its nodes, while C may hold it
  let rootListedHere = false // JS answered a listing of the root: C is given none
  const giveRootList = (d: DirHandle): void => {
    if (rootListedHere || ended || d.names.length > DIR_CHUNK) return
    const { names, ids, attrs, timeout } = dirFields(d, 0, d.names.length, true)
    rootList = ids
    ll.llRootList(session!, names, ids, attrs, timeout)
  }
  const takeRootList = (): void => {
    rootListedHere = true
    const ids = rootList
    if (!ids) return
    rootList = null
    ll.llRootList(session!, [], new Float64Array(0), new Float64Array(0), 0)
    readNotes() // entries C gave out meanwhile are counted before the unused nodes go
    for (const id of ids) if (id !== 0) nodes.dropIfUnused(id)
  }
  /**
   * Answers a READDIR (plus when `sizeArg` > 0) from entry `first` of a listing; of node `ino`'s, kept
   * by node (no handle), or 0. C answers the READDIR after a node's last entries (fuse_ll.c dir_end).
   */
  const readdirReply = (req: number, d: DirHandle, sizeArg: number, first: number, ino: number): void => {
    if (ino !== 0 && ahead.size > 0) takeAhead(ino)
    const plus = sizeArg > 0
    const end = Math.min(d.names.length, first + DIR_CHUNK)
    const { names, ids, attrs, timeout } = dirFields(d, first, end, plus)
    const offs = d.cookies?.subarray(first, end)
    const added = ll.llReplyDir(req, Math.abs(sizeArg), plus, names, ids, attrs, first, timeout, offs, end === d.names.length ? ino : 0, d.attrEpoch)
    if (!plus) return
    // attributes C may answer GETATTR with (writable mounts: see attrsToC), for the entries that went out
    const given = d.attrEpoch >= 0 && timeout > 0 ? ids.slice(0, added) : null
    // each entry that went out is a lookup the kernel now holds; the others are not
    for (let i = 0; i < names.length; i++) {
      if (ids[i] === 0) continue
      if (i >= added) {
        if (!pushed.has(ids[i])) nodes.dropIfUnused(ids[i])
        continue
      }
      counted(ids[i])
      if (!ro) entryToC(d, first + i, ids[i], given, i)
    }
    if (given) ll.llAttrs(session!, d.attrEpoch, given, attrs, timeout)
    if (ino !== 0 && first === 0 && (ro || d.attrEpoch >= 0)) {
      listed.add(ino)
      listAhead(d)
    }
  }

  /**
   * Writable mounts: what C needs of entry `at` of listing `d` (node `id`, going out): its
   * attributes (given[i]) only where it lies below the upper alone; a plain tar member's OPENs for
   * reading and READs, as after a LOOKUP.
   */
  const entryToC = (d: DirHandle, at: number, id: number, given: Float64Array | null, i: number): void => {
    const below = fs.belowNow(d.paths[at]!)
    if (given && !below.lowerOnly) given[i] = 0
    if ((d.stats[at].mode & S_IFMT) === S_IFREG) register(true, id, below.span)
  }

  /**
   * A directory was listed: its subdirectories are listed ahead, depth first as a walk takes them,
   * one a turn of the event loop while the walker works on what it got, and each given to C whole
   * (fuse_ll.c ahead_readdir). The walker's READDIRPLUS of one then makes no call into JavaScript,
   * and the JavaScript it would have waited for ran meanwhile on the other core. At most AHEAD_MAX
   * wait unused; C wakes JS (NOTES) once AHEAD_WAKE are left. Listings by node only (no OPENDIR).
   */
  const listAhead = (d: DirHandle): void => {
    if (!skipOpendir || ended) return
    for (let i = d.names.length - 1; i >= 0; i--) {
      const p = d.paths[i]
      const id = p !== null && (d.stats[i].mode & S_IFMT) === S_IFDIR ? nodes.find(p) : undefined
      if (id !== undefined && !listed.has(id)) aheadTodo.push(id)
    }
    if (aheadTodo.length > 4096) aheadTodo.splice(0, aheadTodo.length - 4096) // the oldest, least likely next
    aheadNext()
  }
  const aheadNext = (): void => {
    if (aheadSoon || ended || aheadTodo.length === 0 || ahead.size >= AHEAD_MAX) return
    aheadSoon = true
    setImmediate(aheadStep)
  }
  const aheadStep = (): void => {
    aheadSoon = false
    while (aheadTodo.length > 0 && ahead.size < AHEAD_MAX && !ended) {
      const id = aheadTodo.pop()!
      if (ahead.has(id) || listed.has(id) || !nodes.has(id)) continue
      aheadSoon = true
      listingUpTo(nodes.path(id), AHEAD_ENTRIES).then((d) => d && giveAhead(id, d)).catch((err: Error) => log.fuse('listing ahead: %s', err.message)).finally(() => {
        aheadSoon = false
        aheadNext()
      })
      return
    }
  }
  /** Node `id`'s listing `d0`, made ahead, to C; its subdirectories next. */
  const giveAhead = (id: number, d0: DirHandle): void => {
    if (ended || !nodes.has(id) || ahead.has(id) || listed.has(id) || (!ro && d0.attrEpoch < 0)) return
    const d = ro ? d0 : byCookie(d0)
    const { names, ids, attrs, timeout } = dirFields(d, 0, d.names.length, true)
    const given = !ro && timeout > 0 ? ids.slice() : null
    for (let i = 0; !ro && i < ids.length; i++) if (ids[i] !== 0) entryToC(d, i, ids[i], given, i)
    if (!ll.llAhead(session!, id, names, ids, attrs, timeout, d.cookies, d.attrEpoch, ahead.size + 1 >= AHEAD_MAX ? AHEAD_WAKE : 0)) {
      for (const c of ids) if (c !== 0) dropUnlisted(c)
      return
    }
    ahead.set(id, { ids, d })
    if (given) ll.llAttrs(session!, d.attrEpoch, given, attrs, timeout)
    listAhead(d)
  }
  /**
   * Node `id`'s listing made ahead is not to be given out (JS answers it, or the kernel forgot the
   * directory). Returned if still unused and `reuse` says so, its nodes kept, for JS's own answer
   * (the walker came before C had it); else its nodes go.
   */
  const takeAhead = (id: number, reuse?: (d: DirHandle) => boolean): DirHandle | null => {
    const given = ahead.get(id)
    if (!given) return null
    const unused = ll.llAheadTake(session!, id)
    readNotes() // C may have given it out meanwhile: then its lookups are counted now
    ahead.delete(id)
    if (unused && reuse?.(given.d)) return given.d
    if (unused) for (const c of given.ids) if (c !== 0) dropUnlisted(c)
    return null
  }
  /** Every listing made ahead: C gives none out any more (a change begins on a writable mount). */
  const dropAhead = (): void => {
    aheadTodo.length = 0
    listed.clear()
    if (ahead.size === 0) return
    ll.llAheadTake(session!, 0)
    readNotes()
    const lists = [...ahead.values()]
    ahead.clear()
    for (const { ids } of lists) for (const c of ids) if (c !== 0) dropUnlisted(c)
  }
  /** A node made for a listing made ahead that did not go out: it goes unless the kernel holds it or a push waits on it. */
  const dropUnlisted = (id: number): void => {
    if (pushed.has(id) || pushedNodes.has(id)) return
    nodes.dropIfUnused(id)
    if (nodes.has(id)) return
    listed.delete(id)
    if (!ro) ll.llDirectDrop(session!, true, id)
    takeAhead(id)
  }

  /**
   * Set-ID bits dropped for a write or truncation by a caller without CAP_FSETID (native/fuse_ll.c
   * kills_setids), and the kernel's cached mode of node `ino` with them, before the reply.
   */
  const dropSetIds = async (req: number, ino: number | null, path: string): Promise<void> => {
    if (await fs.dropSetIds(path, caller(req)).catch(() => false) && ino !== null) ll.llInvalAttr(session!, ino)
  }

  const dispatch: Dispatch = (op, req, ino, a, b, c, d) => {
    switch (op) {
      // LOOKUP and GETATTR are answered synchronously (see Union.resolveNow)
      case OP.LOOKUP: {
        const name = a as string
        if (name.length > 255) return ll.llReplyErr(req, Errno.ENAMETOOLONG)
        const epoch = planEpoch() // before anything is resolved: a plan C runs meanwhile makes this one stale
        const aepoch = attrEpochNow() // so too for the attributes C may answer GETATTR with
        let path: string
        let stat: Stat
        let below: Below
        try {
          path = joinPath(nodes.path(ino), name)
          ;({ stat, below } = fs.entryNow(path))
        } catch (err) {
          if (errnoOf(err) === Errno.ENOENT) return ll.llReplyNegative(req, t)
          return fail(req, 'lookup', err)
        }
        const id = nodes.idOf(path, stat.mode)
        counted(id)
        nodes.remember(id, stat)
        // a plain tar member's READs go to C from the first (and, on a writable mount, its OPENs
        // for reading: fuse_ll.c open_by_node), until it is copied up
        if (below.span && (skipOpen || !ro)) register(true, id, below.span)
        // a lower file: its first write's copy-up, ready for C (a handle of ours would have to follow it)
        const kind = stat.mode & S_IFMT
        try {
          // before the answer: the OPEN, or the LOOKUP of a file in it, may come at once (pushed
          // after the answer instead, a LOOKUP that came first waited in the queue for the pushes:
          // slower, 121 against 13 µs)
          if (epoch >= 0 && kind === S_IFREG && !openFiles.has(id)) plan(id, path, epoch)
          else if (epoch >= 0 && kind === S_IFDIR) pushFiles(id, path, epoch)
        } catch (err) {
          log.fuse('lookup %s: nothing planned: %s', path, (err as Error).message)
        }
        fill(attr, 0, stat)
        attrsToC(aepoch, id, below, attr, ta(stat))
        ll.llReplyEntry(req, id, attr, t, ta(stat))
        return
      }
      case OP.NOTES: {
        readNotes()
        aheadNext() // C woke JS to list more ahead, or a listing made ahead went out
        if (takenDirs.length === 0) return
        // directories whose LOOKUPs C answered: what JS's own answer would have pushed (the
        // kernel's next LOOKUP in one may come first: JS then answers it)
        const epoch = planEpoch()
        for (const id of takenDirs.splice(0)) if (epoch >= 0 && nodes.has(id)) pushFiles(id, nodes.path(id), epoch)
        return
      }
      case OP.FORGET:
        nodes.forget(ino, a as number)
        if (nodes.has(ino)) return
        listed.delete(ino)
        takeAhead(ino)
        if (skipOpen || !ro) dropNodeFile(ino)
        if (!ro) {
          ll.llOpenable(session!, ino, null)
          if (planning) ll.llAttrDrop(session!, ino)
        }
        return
      case OP.GETATTR: {
        const gone = nodes.lastOf(ino)
        if (gone) {
          // unlinked while open: fstat and reads still need its size (fstat comes without a handle)
          return handle(req, 'getattr', async () => goneStat(ino, a as number, gone), (s) => {
            fill(attr, 0, s)
            ll.llReplyAttr(req, attr, 0)
          })
        }
        const aepoch = attrEpochNow()
        let st: Stat
        let below: Below
        try {
          ;({ stat: st, below } = fs.entryNow(nodes.path(ino)))
        } catch (err) {
          return fail(req, 'getattr', err)
        }
        if (nodes.otherKind(ino, st.mode)) {
          // the path holds another file now (see Nodes.idOf): the node's own is gone
          log.fuse('getattr %s: a %o where node %d was a %o: its name is gone', nodes.path(ino), st.mode & S_IFMT, ino, nodes.kindOf(ino))
          nodes.detach(ino)
          if (nodes.lastOf(ino)) return dispatch(op, req, ino, a, b, c, d)
          return ll.llReplyErr(req, Errno.ENOENT)
        }
        nodes.remember(ino, st)
        fill(attr, 0, st)
        attrsToC(aepoch, ino, below, attr, ta(st))
        return ll.llReplyAttr(req, attr, ta(st))
      }
      case OP.READLINK:
        return handle(req, 'readlink', () => fs.readlink(nodes.path(ino)), (target) => ll.llReplyReadlink(req, target))
      case OP.OPEN: {
        if (skipOpen) return ll.llReplyErr(req, Errno.ENOSYS)
        // a node whose name is gone (its file unlinked while the kernel held it, then opened again,
        // as through /proc/PID/fd): whatever is at that path now is another file (make soak opened
        // a fifo made there since, and blocked on it). Kernel overlayfs opens the unlinked file;
        // with nodes by path the nearest true answer is that the name is gone
        if (nodes.isGone(ino)) return ll.llReplyErr(req, Errno.ENOENT)
        const flags = a as number
        const answer = (fh: number): void => {
          opened(ino, fh)
          const span = direct(fh)
          if ((flags & O_ACCMODE) !== 0) writing(ino, span)
          if (span && span.length < 0) openable(ino) // an upper file (lower spans have their length)
          ll.llReplyOpen(req, fh, ro || singleName(ino), false)
        }
        // a write's copy-up, at once where it can be (LayerFs.openNow), else awaited
        let path: string
        let fh: number | null
        /**
         * An open awaited: a read's resolves the path before it waits its turn behind changes, so
         * an unlink and a mknod may give the name to another file meanwhile (make soak: a fifo
         * opened for a file's node). A name that changed while it opened: the handle goes, and the
         * OPEN is taken again (ENOENT for a name now gone).
         */
        const answerIfStands = (fh: number): void => {
          if (nodes.has(ino) && !nodes.isGone(ino) && nodes.path(ino) === path) return answer(fh)
          void fs.release(fh).catch(() => undefined)
          retry(op, req, ino, a, b, c, d)
        }
        try {
          path = nodes.path(ino)
          // a truncation by a caller without CAP_FSETID (b, see kills_setids): set-ID bits go too
          if (b === 1) return handle(req, 'open', async () => { const opened = await fs.open(path, flags); await dropSetIds(req, ino, path); return opened }, answerIfStands)
          fh = fs.openNow(path, flags)
        } catch (err) {
          return fail(req, 'open', err)
        }
        if (fh !== null) {
          try {
            return answer(fh)
          } catch (err) {
            return fail(req, 'open', err)
          }
        }
        return handle(req, 'open', () => fs.open(path, flags), answerIfStands)
      }
      case OP.READ: {
        // what C did not answer itself: gzip data, sparse members, the first read of a node. On a
        // read-only mount a small read that looks random reads the aligned window around it, and C
        // pushes the rest into the page cache (as fuse_ll.c want_store does for the reads it answers)
        const size = b as number
        const fh = a as number
        const off = c as number
        const key = fh === 0 ? ino : -fh
        const last = readEnds.get(key)
        const wide = readaround > 0 && size < readaround && off !== 0 && off !== last
        const from = wide ? off - (off % readaround) : off
        // the whole request, also where it runs past the window's end (a short read means EOF)
        const buf = Buffer.allocUnsafe(wide ? Math.max(readaround, off - from + size) : size)
        let layer = -1
        return handle(req, 'read', async () => {
          const file = fh === 0 ? await nodeFile(ino) : fh
          const n = await fs.read(file, buf, buf.length, from)
          if (wide) layer = fs.layerOf(file)
          return n
        }, (n) => {
          const at = off - from
          const got = Math.max(0, Math.min(size, n - at))
          readEnds.delete(key) // to the young end
          readEnds.set(key, off + got)
          if (readEnds.size > NODE_FILES) readEnds.delete(readEnds.keys().next().value as number)
          ll.llReplyBuf(req, at === 0 ? buf : buf.subarray(at), got)
          if (wide && n > got) ll.llStore(session!, ino, from, buf.subarray(0, n), layer)
        })
      }
      case OP.RELEASE:
        ll.llDirectDrop(session!, false, a as number) // before its descriptor closes
        openFiles.get(ino)?.delete(a as number)
        if (openFiles.get(ino)?.size === 0) openFiles.delete(ino)
        return handle(req, 'release', () => fs.release(a as number), () => ll.llReplyErr(req, 0))
      case OP.INIT:
        skipOpendir = (ro || planning) && (a as number) === 1
        skipOpen = (ro || copyUpAtWrite) && (b as number) === 1
        writesByNode = copyUpAtWrite && skipOpen
        // C answers GETATTR of a node whose upper file it writes by node (fuse_ll.c upper_getattr)
        const upperIno = writesByNode ? fs.upperInoBase() : null
        if (upperIno !== null) ll.llUpperAttrs(session!, upperIno, t)
        pushRoot()
        return
      case OP.OPENDIR:
        if (skipOpendir) return ll.llReplyErr(req, Errno.ENOSYS)
        if (!ro) {
          // as fuse_ll.c open_dir, which answers it unless Node's thread reads /dev/fuse itself: the
          // kernel keeps the listing it read, which is made at the first READDIR, if one comes
          return ll.llReplyOpen(req, nextDir++, true, true)
        }
        return handle(req, 'opendir', () => listing(nodes.path(ino)), (d) => {
          const fh = nextDir++
          dirs.set(fh, d)
          // a listing the kernel may keep (and reuse on the next open) only where nothing changes
          ll.llReplyOpen(req, fh, ro, ro)
        })
      case OP.READDIR: {
        if (ino === 1) takeRootList()
        if (skipOpendir && (a as number) === 0) {
          // no handle: the listing of the node, kept while the kernel reads it in pieces (and while
          // nothing changed, on a writable mount, whose listings carry their entries' cookies: see
          // byCookie). Handles C opened before INIT reached JS go below
          const off = c as number
          const epoch = attrEpochNow()
          let kept = listings.get(ino)
          // a listing made ahead that C had not given out yet (the walker came first): this one
          const early = off === 0 && ahead.size > 0 ? takeAhead(ino, (d) => ro || d.attrEpoch === epoch) : null
          if (early) {
            listings.delete(ino)
            kept = { list: Promise.resolve(early), epoch }
            listings.set(ino, kept)
          } else if (!kept || (ro ? off === 0 : kept.epoch !== epoch || epoch < 0)) {
            // (epoch -1: a change was under way when it was made, or is now: nothing says it still holds)
            listings.delete(ino)
            kept = { list: ro ? listing(nodes.path(ino)) : listing(nodes.path(ino)).then(byCookie), epoch }
            listings.set(ino, kept)
            if (listings.size > 64) listings.delete(listings.keys().next().value as number)
          }
          const p = kept.list
          const path = nodes.path(ino)
          return handle(req, 'readdir', () => p, (list) => {
            // the directory renamed (or its name given to another) while it was listed by path:
            // the listing may be another directory's, so it is made again (the kernel locks a
            // directory it lists, but not against a rename of it or of one above it)
            if (!ro && (nodes.isGone(ino) || nodes.path(ino) !== path)) {
              if (listings.get(ino) === kept) listings.delete(ino)
              return retry(op, req, ino, a, b, c, d)
            }
            readdirReply(req, list, b as number, list.cookies ? afterCookie(list.cookies, off) : off, ino)
          })
        }
        const fh = a as number
        const d = dirs.get(fh)
        if (!d && !ro) {
          // a writable mount's handle (C's: fuse_ll.c open_dir, or the OPENDIR below): the node's
          // listing, made at the first READDIR the kernel's cache did not spare
          return handle(req, 'readdir', async () => {
            const made = await listing(nodes.path(ino))
            dirs.set(fh, made)
            return made
          }, (made) => readdirReply(req, made, b as number, c as number, 0))
        }
        if (!d) return ll.llReplyErr(req, Errno.EBADF)
        return readdirReply(req, d, b as number, c as number, 0)
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
      case OP.SETATTR: {
        const [valid, mode, uid, gid, size, asec, ansec, msec, mnsec, fh] = a as number[]
        return handle(req, 'setattr', async () => {
          const gone = nodes.lastOf(ino)
          if (gone) {
            // unlinked while open: what its descriptor can do (ftruncate, whose time change comes with it)
            if (!(valid & SET.SIZE) || fh < 0 || (valid & (SET.MODE | SET.UID | SET.GID))) throw new FsError(Errno.ENOENT, 'no such file', nodes.path(ino))
            await onHandle(fh, 1, size, ino)
            return goneStat(ino, fh, gone)
          }
          const path = nodes.path(ino)
          // by node where no OPEN came (fh 0): by name, which stands (a truncation's copy-up)
          if (valid & SET.SIZE) await (fh > 0 || (fh === 0 && !writesByNode) ? onHandle(fh, 1, size) : fs.truncate(path, size))
          // a truncation by a caller without CAP_FSETID: set-ID bits go (the reply shows the mode)
          if ((valid & SET.SIZE) && (valid & SET.KILL_SUIDGID)) await fs.dropSetIds(path, caller(req))
          if (valid & SET.MODE) await fs.chmod(path, mode & 0o7777)
          if (valid & (SET.UID | SET.GID)) await fs.chown(path, valid & SET.UID ? uid : 0xffffffff, valid & SET.GID ? gid : 0xffffffff)
          if (valid & (SET.ATIME | SET.MTIME)) {
            const at = !(valid & SET.ATIME) ? { sec: 0, nsec: UTIME_OMIT } : valid & SET.ATIME_NOW ? { sec: 0, nsec: UTIME_NOW } : { sec: asec, nsec: ansec }
            const mt = !(valid & SET.MTIME) ? { sec: 0, nsec: UTIME_OMIT } : valid & SET.MTIME_NOW ? { sec: 0, nsec: UTIME_NOW } : { sec: msec, nsec: mnsec }
            await fs.utimens(path, at, mt)
          }
          const st = await fs.getattr(path)
          nodes.remember(ino, st)
          return st
        }, (st) => {
          fill(attr, 0, st)
          ll.llReplyAttr(req, attr, nodes.lastOf(ino) ? 0 : ta(st))
        })
      }
      case OP.MKNOD: {
        const who = caller(req)
        return change(req, 'mknod', async () => { const p = child(ino, a as string); await fs.mknod(p, b as number, c as number, who); return p })
      }
      case OP.MKDIR: {
        const who = caller(req)
        return change(req, 'mkdir', async () => { const p = child(ino, a as string); await fs.mkdir(p, b as number, who); return p })
      }
      case OP.SYMLINK: {
        const who = caller(req)
        return change(req, 'symlink', async () => { const p = child(ino, a as string); await fs.symlink(b as string, p, who); return p })
      }
      case OP.LINK:
        // the new name is a node of its own here: the kernel still holds the old name's attributes
        // (nlink 1, and size and times that writes through the new name will change) for as long as
        // they were given for, so they are dropped once the link is made
        return handle(req, 'link', renaming(async () => { const p = child(a as number, b as string); await fs.link(nodes.path(ino), p); return p }), (made) => {
          entry(req, made)
          ll.llInvalAttr(session!, ino)
        })
      case OP.UNLINK:
        return change(req, 'unlink', renaming(async () => {
          const p = child(ino, a as string)
          await unsettling([p], async () => {
            await pinNode(p)
            await fs.unlink(p)
            nodes.unlinked(p)
          })
        }))
      case OP.RMDIR:
        return change(req, 'rmdir', renaming(async () => {
          const p = child(ino, a as string)
          await unsettling([p], async () => { await fs.rmdir(p); nodes.unlinked(p) })
        }))
      case OP.RENAME:
        // RENAME_NOREPLACE and RENAME_EXCHANGE are not offered (as through libfuse 2 before)
        if ((d as number) !== 0) return ll.llReplyErr(req, Errno.EINVAL)
        return change(req, 'rename', renaming(async () => {
          const from = child(ino, a as string)
          const to = child(b as number, c as string)
          await unsettling([from, to], async () => {
            if (from !== to) await pinNode(to)
            await fs.rename(from, to)
            nodes.renamed(from, to)
          })
        }))
      case OP.CREATE: {
        const who = caller(req)
        let path = ''
        return handle(req, 'create', async () => {
          path = child(ino, a as string)
          const fh = await fs.create(path, b as number, c as number, who)
          if (d === 1) await dropSetIds(req, null, path) // O_TRUNC of a file that was there, by a caller without CAP_FSETID
          return fh
        }, (fh) => entry(req, path, fh))
      }
      case OP.WRITE: {
        const buf = b as Buffer
        return handle(req, 'write', async () => {
          // by node where no OPEN came (copyUpAtWrite): the first copies the file up
          const file = (a as number) === 0 && writesByNode ? await nodeWriter(ino) : a as number
          if (d === 1 && !nodes.lastOf(ino)) await dropSetIds(req, ino, nodes.path(ino)) // a caller without CAP_FSETID (see kills_setids)
          return fs.write(file, buf, buf.length, c as number)
        }, (n) => ll.llReplyWrite(req, n))
      }
      case OP.FSYNC:
        return change(req, 'fsync', () => onHandle(a as number, 2, b as number, ino))
      case OP.SETXATTR:
        if ((a as string) === 'security.capability') ll.llNoCapsClear(session!)
        return change(req, 'setxattr', renaming(() => fs.setxattr(nodes.path(ino), a as string, b as Buffer, c as number)))
      case OP.REMOVEXATTR:
        if ((a as string) === 'security.capability') ll.llNoCapsClear(session!)
        return change(req, 'removexattr', renaming(() => fs.removexattr(nodes.path(ino), a as string)))
      case OP.DESTROY:
        if (planning) readNotes() // a last write's copy-up, for the stats written at unmount
        if (!ended) {
          ended = true
          onEnd()
        }
        return
      default:
        ll.llReplyErr(req, Errno.ENOSYS)
    }
  }

  /** dispatch, with each request that may change something a change (llChange) until it is answered. */
  const planned: Dispatch = (op, req, ino, a, b, c, d) => {
    const change = CHANGES[op]
    if (change !== undefined) {
      const moves = change === 2
      changing.set(req, moves)
      if (ll.llChange(session!, 1, moves)) readNotes()
      if (moves) dropPushed()
      dropAhead()
    }
    try {
      dispatch(op, req, ino, a, b, c, d)
    } catch (err) {
      endChange(req) // C answers EIO for a dispatch that threw: the change ends here
      throw err
    }
  }

  /**
   * dispatch, where a request on a node by its path waits for a change under way at or above that
   * path (see unsettled); those by handle, and the bookkeeping, never wait.
   */
  const settled = (next: Dispatch): Dispatch => {
    const serve: Dispatch = (op, req, ino, a, b, c, d) => {
      // READs, WRITEs and FSYNCs without a handle (no OPEN) open the node's file by its path when
      // none is kept: they wait as well (a WRITE opened what a rename had half put there: ENOENT)
      if (unsettled.size > 0 && (BY_PATH[op] || (!ro && (op === OP.READ || op === OP.WRITE || op === OP.FSYNC) && a === 0))) {
        const wait = unsettledAt(ino) ?? (op === OP.RENAME ? unsettledAt(b as number) : op === OP.LINK ? unsettledAt(a as number) : null)
        if (wait) {
          void wait.then(() => {
            try {
              serve(op, req, ino, a, b, c, d)
            } catch (err) {
              fail(req, 'request', err)
            }
          })
          return
        }
      }
      next(op, req, ino, a, b, c, d)
    }
    return serve
  }
  /**
   * A request taken again (its node's name changed while it was answered): past the wait for a
   * change under way, as any request, but not counted as a change again (see planned).
   */
  const retry = settled(dispatch)

  const options = [ro ? 'ro' : 'rw', 'default_permissions', `fsname=${fsnameOf(opts)}`, 'subtype=layerfs']
  if (opts.allowOther) options.push('allow_other')
  if (opts.debug) options.push('debug') // libfuse prints each request and reply on stderr
  // as root, behave as kernel overlayfs: devices and setuid bits work
  if (process.getuid?.() === 0) options.push('dev', 'suid')
  const started = start((copyUpAtWrite ? 'w:' : '') + options.join(','), ro ? dispatch : settled(planning ? planned : dispatch))
  session = started
  if (roots) ll.llPlanRoots(started, roots.upper, roots.temp)
  ll.llStatfsAt(started, fs.statfsPath())
  ll.llReadaround(started, opts.readaround)
  const layers = fs.union.layers.length
  ll.llDirectCounts(started, layers)
  const mounted = (): FuseMount => {
    // the root's attributes for C, which then answers the kernel's first GETATTR of it (a fresh
    // mount's first path walk asks it): once the launcher has its answer, and only where every change
    // JS begins is an llChange, which drops them
    if (ro || planning) {
      setImmediate(() => {
        try {
          const st = fs.getattrNow('/')
          const a = new Float64Array(A_COUNT)
          fill(a, 0, st)
          if (session && !ended) ll.llRootAttr(session, a, ta(st))
        } catch (err) {
          log.fuse('root attributes: %s', (err as Error).message)
        }
        if (ro) listing('/').then(giveRootList).catch((err: Error) => log.fuse('root listing: %s', err.message))
        pushRoot()
      })
    }
    return {
      unmount: async () => {
        if (session && !ended) ll.llUnmount(session)
      },
      catchUp: () => {
        if (session && !ended) readNotes()
      },
      directReads: () => {
        // per layer: reads, bytes, windows the readaround stored, their bytes (fuse_ll.c LAYER_COUNTS)
        const c = ll.llDirectCounts(started, layers)
        const at = (k: number): number[] => fs.union.layers.map((_, i) => c[4 * i + k])
        // the reader thread: requests it read, whether it polls after one now, trials (fuse_ll.c Poller)
        const r = ll.llReaderStats(started)
        return { reads: at(0), bytes: at(1), stored: at(2), storedBytes: at(3), reader: { requests: r[0], polling: r[1] === 1, pollTrials: r[2] } }
      },
    }
  }
  return { session: started, mounted }
}

/** The standby's gate (native/standby_gate.c): the thread that takes the launchers' requests. */
export interface StandbyGate {
  /**
   * The gate mounts `p` itself for a request whose canonical form is `canon` (standby.ts
   * canonicalRequest), wherever its argument `mntArg` says, while every path in `checks` is as it
   * is now (a directory's: the same directory), and sends the launcher `reply`. Throws if a check's
   * path cannot be looked at.
   */
  prepare(p: PreparedSession, canon: Buffer, mntArg: number, checks: ReadonlyArray<{ path: string; identityOnly: boolean }>, reply: Buffer): void
  /** No prepared mount is taken from now on; false if one was taken already (onMounted is due). */
  unprepare(): boolean
  /** No more requests; the name is free. */
  close(): void
}

/**
 * Listens on the standby's abstract socket `address` (a NUL first). Each request the gate does not
 * answer itself goes to `onRequest` (the connection's descriptor, the peer's uid checked, the
 * request's bytes); `onMounted` once it mounted the prepared mount (where, resolved). Throws (code EADDRINUSE) when
 * another standby listens.
 */
export function openGate(address: string, onRequest: (fd: number, body: Buffer) => void, onMounted: (mountpoint: string) => void): StandbyGate {
  const gate = native.llGateOpen(Buffer.from(address, 'utf8'), (fd, _uid, body) => onRequest(fd, body), onMounted)
  return {
    prepare: (p, canon, mntArg, checks, reply) => {
      const nums = new BigUint64Array(checks.length * 8)
      checks.forEach((c, i) => {
        const st = statSync(c.path, { bigint: true })
        nums.set([c.identityOnly ? 1n : 0n, st.dev, st.ino, st.size, st.mtimeNs / NS, st.mtimeNs % NS, st.ctimeNs / NS, st.ctimeNs % NS], i * 8)
      })
      native.llGatePrepare(gate, p.session, canon, mntArg, p.fsname, p.flags, p.options, checks.map((c) => c.path), nums, reply)
    },
    unprepare: () => native.llGateUnprepare(gate),
    close: () => native.llGateClose(gate),
  }
}
const NS = 1_000_000_000n

/** Whether mounts use this binding ($LAYERFS_ADAPTER=fuse-native picks the old path, to compare). */
export function lowLevelWanted(): boolean {
  return process.env.LAYERFS_ADAPTER !== 'fuse-native'
}
