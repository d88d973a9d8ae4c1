import type { Timestamp } from './layer'
import { makeDev } from './layer'
import type { Member } from './tar-scan'
import {
  ByteWriter, FLAG_OPAQUE, FLAG_WHITEOUT, KIND_CODES, KIND_NONE, NO_EXTRA, RECORD_BYTES, RecordWriter, TarIndex,
  encodeExtra, type Extra,
} from './tar-index'
import { OPAQUE_XATTRS, decodeMarker, isOpaqueValue } from './whiteout'
import { normaliseMemberName } from '../paths'
import { log } from '../log'

const KIND_DIR = KIND_CODES.indexOf('dir')
const KIND_FILE = KIND_CODES.indexOf('file')
const KIND_SYMLINK = KIND_CODES.indexOf('symlink')
const kindOfType: Record<string, number> = {
  '0': KIND_FILE, '7': KIND_FILE, S: KIND_FILE, '2': KIND_SYMLINK, '3': KIND_CODES.indexOf('char'),
  '4': KIND_CODES.indexOf('block'), '5': KIND_DIR, D: KIND_DIR, '6': KIND_CODES.indexOf('fifo'),
}

/**
 * The tree being built, one column per attribute (a node is an index): a 200k-member archive makes
 * no 200k objects, which keeps indexing close to the speed of reading the headers.
 */
class Columns {
  capacity = 1024
  length = 0
  kind = new Uint8Array(this.capacity)
  flags = new Uint8Array(this.capacity)
  mode = new Uint32Array(this.capacity)
  uid = new Uint32Array(this.capacity)
  gid = new Uint32Array(this.capacity)
  rdev = new Uint32Array(this.capacity)
  ino = new Uint32Array(this.capacity)
  mtimeNsec = new Uint32Array(this.capacity)
  mtimeSec = new Float64Array(this.capacity)
  size = new Float64Array(this.capacity)
  dataOffset = new Float64Array(this.capacity)
  name: string[] = []
  children: (Map<string, number> | null)[] = []
  /** Targets, sparse maps, xattrs, atime/ctime: rare, so kept as objects. */
  extra: (Extra | null)[] = []

  add(name: string, kind: number): number {
    if (this.length === this.capacity) this.grow()
    const n = this.length++
    this.kind[n] = kind
    this.name.push(name)
    this.children.push(kind === KIND_DIR ? new Map() : null)
    this.extra.push(null)
    return n
  }

  private grow(): void {
    const cap = this.capacity * 2
    const widen = <T extends Uint8Array | Uint32Array | Float64Array>(a: T, make: new (n: number) => T): T => {
      const b = new make(cap)
      b.set(a)
      return b
    }
    this.kind = widen(this.kind, Uint8Array)
    this.flags = widen(this.flags, Uint8Array)
    this.mode = widen(this.mode, Uint32Array)
    this.uid = widen(this.uid, Uint32Array)
    this.gid = widen(this.gid, Uint32Array)
    this.rdev = widen(this.rdev, Uint32Array)
    this.ino = widen(this.ino, Uint32Array)
    this.mtimeNsec = widen(this.mtimeNsec, Uint32Array)
    this.mtimeSec = widen(this.mtimeSec, Float64Array)
    this.size = widen(this.size, Float64Array)
    this.dataOffset = widen(this.dataOffset, Float64Array)
    this.capacity = cap
  }

  /** Makes node `to` the same inode as `from` (a hard link): every attribute but the name. */
  copy(from: number, to: number): void {
    this.kind[to] = this.kind[from]
    this.mode[to] = this.mode[from]
    this.uid[to] = this.uid[from]
    this.gid[to] = this.gid[from]
    this.rdev[to] = this.rdev[from]
    this.ino[to] = this.ino[from]
    this.mtimeNsec[to] = this.mtimeNsec[from]
    this.mtimeSec[to] = this.mtimeSec[from]
    this.size[to] = this.size[from]
    this.dataOffset[to] = this.dataOffset[from]
    this.extra[to] = this.extra[from]
  }
}

/**
 * Turns archive members into a layer, applying what extraction would: later members replace earlier
 * ones (directories merge), missing parents appear as directories, hard links share the earlier
 * member's inode, and OCI markers become whiteouts and opaque flags instead of entries.
 */
export class TarIndexBuilder {
  private readonly c = new Columns()
  /** Directories by path. */
  private readonly dirs = new Map<string, number>()
  private nextIno = 2
  /** Inodes that got a hard link: only their link counts need counting. */
  private readonly hardLinked = new Set<number>()
  // most members land in the directory of the member before
  private lastDirPath = ''
  private lastDir = -1

  /** `implicitTime`: the mtime of directories the archive never lists (the archive's own mtime). */
  constructor(private readonly implicitTime: Timestamp) {
    const root = this.node('', KIND_DIR)
    this.c.ino[root] = 1
    this.dirs.set('/', root)
  }

  /** A node with the attributes tar extraction by root (umask 022) gives a missing parent directory. */
  private node(name: string, kind: number): number {
    const c = this.c
    const n = c.add(name, kind)
    c.flags[n] = 0
    c.mode[n] = 0o755
    c.uid[n] = 0
    c.gid[n] = 0
    c.rdev[n] = 0
    c.ino[n] = this.nextIno++
    c.mtimeSec[n] = this.implicitTime.sec
    c.mtimeNsec[n] = this.implicitTime.nsec
    c.size[n] = 0
    c.dataOffset[n] = 0
    return n
  }

  /** The directory at `path`, made (with its parents) where missing; -1 if something there is not a directory. */
  private ensureDir(path: string): number {
    if (path === this.lastDirPath && this.lastDir >= 0) return this.lastDir
    const dir = this.ensureDirUncached(path)
    this.lastDirPath = path
    this.lastDir = dir
    return dir
  }

  private ensureDirUncached(path: string): number {
    const known = this.dirs.get(path)
    if (known !== undefined) return known
    const slash = path.lastIndexOf('/')
    const parent = this.ensureDir(slash <= 0 ? '/' : path.slice(0, slash))
    if (parent < 0) return -1
    const name = path.slice(slash + 1)
    const siblings = this.c.children[parent]!
    const existing = siblings.get(name)
    if (existing !== undefined && this.c.kind[existing] !== KIND_NONE) {
      if (this.c.kind[existing] !== KIND_DIR) return -1
      this.dirs.set(path, existing)
      return existing
    }
    const made = this.node(name, KIND_DIR)
    if (existing !== undefined) this.c.flags[made] = this.c.flags[existing] & FLAG_WHITEOUT
    siblings.set(name, made)
    this.dirs.set(path, made)
    return made
  }

  private nodeAt(path: string): number | undefined {
    if (path === '/') return 0
    const slash = path.lastIndexOf('/')
    const dir = this.dirs.get(slash <= 0 ? '/' : path.slice(0, slash))
    return dir === undefined ? undefined : this.c.children[dir]!.get(path.slice(slash + 1))
  }

  add(m: Member): void {
    const c = this.c
    const path = normaliseMemberName(m.name)
    if (path === null) {
      log.tar('skipping member with a ".." component: %s', m.name)
      return
    }
    if (path === '/') {
      if (kindOfType[m.typeflag] === KIND_DIR) this.setAttributes(0, m)
      return
    }
    const slash = path.lastIndexOf('/')
    const parentPath = slash <= 0 ? '/' : path.slice(0, slash)
    const name = path.slice(slash + 1)
    const parent = this.ensureDir(parentPath)
    if (parent < 0) {
      log.tar('skipping %s: a parent is not a directory', path)
      return
    }
    const siblings = c.children[parent]!
    const existing = siblings.get(name)
    const marker = name.startsWith('.wh.') ? decodeMarker(name) : null
    if (marker) {
      if (marker.type === 'opaque') c.flags[parent] |= FLAG_OPAQUE
      else if (marker.type === 'whiteout') {
        const hidden = siblings.get(marker.name)
        if (hidden !== undefined) c.flags[hidden] |= FLAG_WHITEOUT
        else {
          const only = this.node(marker.name, KIND_NONE)
          c.flags[only] = FLAG_WHITEOUT
          siblings.set(marker.name, only)
        }
      }
      return
    }

    let n: number
    if (m.typeflag === '1') {
      const targetPath = normaliseMemberName(m.linkname)
      const target = targetPath === null ? undefined : this.nodeAt(targetPath)
      if (target === undefined || c.kind[target] === KIND_NONE || c.kind[target] === KIND_DIR) {
        log.tar('skipping hard link %s to a missing or directory target %s', m.name, m.linkname)
        return
      }
      // a hard link is the same inode: same data, mode, owner and times as its target
      n = c.add(name, c.kind[target])
      c.copy(target, n)
      c.flags[n] = 0
      this.hardLinked.add(c.ino[target])
    } else {
      let kind = kindOfType[m.typeflag] ?? KIND_FILE
      if (kind === KIND_FILE && m.name.endsWith('/')) kind = KIND_DIR // pre-POSIX tars mark directories so
      if (kind === KIND_DIR && existing !== undefined && c.kind[existing] === KIND_DIR) {
        // a directory listed again keeps its contents and flags; its attributes are the last ones
        this.setAttributes(existing, m)
        return
      }
      if (m.typeflag === '3' && m.devmajor === 0 && m.devminor === 0) {
        // kernel overlayfs's whiteout, as found in a tarred upper dir: a whiteout, not an entry
        const only = existing ?? this.node(name, KIND_NONE)
        if (existing !== undefined && c.kind[existing] === KIND_DIR) this.forgetDirs(parentPath === '/' ? '/' + name : parentPath + '/' + name)
        c.kind[only] = KIND_NONE
        c.children[only] = null
        c.flags[only] = FLAG_WHITEOUT
        siblings.set(name, only)
        return
      }
      n = this.node(name, kind)
      this.setAttributes(n, m)
      c.size[n] = kind === KIND_FILE ? m.size : kind === KIND_SYMLINK ? m.linkname.length : 0
      c.dataOffset[n] = m.dataOffset
      c.rdev[n] = m.typeflag === '3' || m.typeflag === '4' ? makeDev(m.devmajor, m.devminor) : 0
      const sparse = kind === KIND_FILE ? m.sparse : null
      const target = kind === KIND_SYMLINK ? m.linkname : null
      const atime = sameTime(m.atime, m.mtime) ? null : m.atime
      const ctime = sameTime(m.ctime, m.mtime) ? null : m.ctime
      if (sparse || target !== null || m.xattrs || atime || ctime) {
        c.extra[n] = { target, sparse, storedSize: sparse ? m.storedSize : null, xattrs: m.xattrs, atime, ctime }
      }
    }
    if (existing !== undefined) {
      c.flags[n] |= c.flags[existing] & FLAG_WHITEOUT
      if (c.kind[existing] === KIND_DIR) this.forgetDirs(parentPath === '/' ? '/' + name : parentPath + '/' + name)
    }
    siblings.set(name, n)
    if (c.kind[n] === KIND_DIR) this.dirs.set(parentPath === '/' ? '/' + name : parentPath + '/' + name, n)
  }

  private setAttributes(n: number, m: Member): void {
    const c = this.c
    c.mode[n] = m.mode
    c.uid[n] = m.uid
    c.gid[n] = m.gid
    c.mtimeSec[n] = m.mtime.sec
    c.mtimeNsec[n] = m.mtime.nsec
    if (c.kind[n] === KIND_DIR) {
      // kernel overlayfs's opaque mark, as found in a tarred upper dir
      for (const x of OPAQUE_XATTRS) if (isOpaqueValue(m.xattrs?.get(x) ?? null)) c.flags[n] |= FLAG_OPAQUE
      const atime = sameTime(m.atime, m.mtime) ? null : m.atime
      const ctime = sameTime(m.ctime, m.mtime) ? null : m.ctime
      c.extra[n] = m.xattrs || atime || ctime ? { target: null, sparse: null, storedSize: null, xattrs: m.xattrs, atime, ctime } : null
    }
  }

  /** A directory was replaced by a non-directory: its subtree is gone. */
  private forgetDirs(path: string): void {
    const prefix = path + '/'
    for (const p of [...this.dirs.keys()]) if (p === path || p.startsWith(prefix)) this.dirs.delete(p)
    this.lastDir = -1
  }

  /** Lays the tree out breadth-first (children contiguous, sorted by name bytes) and encodes it. */
  finish(): TarIndex {
    const c = this.c
    const order: number[] = [0]
    const parentOf: number[] = [0]
    const firstChild: number[] = []
    const links = new Map<number, number>()
    for (let i = 0; i < order.length; i++) {
      const n = order[i]
      firstChild.push(order.length)
      if (this.hardLinked.has(c.ino[n]) && c.kind[n] !== KIND_NONE) links.set(c.ino[n], (links.get(c.ino[n]) ?? 0) + 1)
      const children = c.children[n]
      if (!children) continue
      // latin1 strings: one char per byte, so the default code-unit order is byte order
      for (const name of [...children.keys()].sort()) {
        order.push(children.get(name)!)
        parentOf.push(i)
      }
    }
    const tableBytes = Buffer.alloc(order.length * RECORD_BYTES) // its own ArrayBuffer: aligned
    const table = new RecordWriter(tableBytes)
    let names = ''
    const extra = new ByteWriter()
    for (let i = 0; i < order.length; i++) {
      const n = order[i]
      const children = c.children[n]
      let subdirs = 0
      if (children) for (const child of children.values()) if (c.kind[child] === KIND_DIR) subdirs++
      const x = c.extra[n]
      table.write(i, {
        kindCode: c.kind[n], flags: c.flags[n], mode: c.mode[n], uid: c.uid[n], gid: c.gid[n],
        nlink: c.kind[n] === KIND_DIR ? 2 + subdirs : links.get(c.ino[n]) ?? 1,
        ino: c.ino[n], rdev: c.rdev[n], parent: parentOf[i], nameOff: names.length, nameLen: c.name[n].length,
        first: firstChild[i], count: children ? children.size : 0,
        extra: x ? encodeExtra(extra, x) : NO_EXTRA,
        mtime: { sec: c.mtimeSec[n], nsec: c.mtimeNsec[n] }, size: c.size[n], dataOffset: c.dataOffset[n],
      })
      names += c.name[n]
    }
    return new TarIndex({ table: tableBytes, names: Buffer.from(names, 'latin1'), extra: Buffer.from(extra.done()) })
  }
}

function sameTime(t: Timestamp | null, m: Timestamp): boolean {
  return t === null || (t.sec === m.sec && t.nsec === m.nsec)
}

