import type { Entry, EntryKind, Timestamp } from './layer'
import { makeDev } from './layer'
import type { Member } from './tar-scan'
import type { SparseMap } from './tar-headers'
import { decodeMarker } from './whiteout'
import { baseOf, joinPath, normaliseMemberName, parentOf } from '../paths'
import { log } from '../log'

/** An entry of a tar layer: the union's Entry plus where its bytes lie in the archive. */
export interface TarEntry extends Entry {
  readonly path: string
  /** Archive offset of the file's stored bytes. */
  readonly dataOffset: number
  /** Data segments of a sparse file (stored back to back from dataOffset); null when not sparse. */
  readonly sparse: SparseMap | null
  /** Symlink target (byte string); null for other kinds. */
  readonly target: string | null
  readonly xattrs: ReadonlyMap<string, Buffer> | null
}

/** The decoded contents of one tar: what is persisted, and what TarLayer serves from. */
export interface TarIndexData {
  readonly entries: readonly TarEntry[]
  /** Paths this layer hides in the layers below (from `.wh.NAME` markers). */
  readonly whiteouts: readonly string[]
}

interface Draft {
  path: string
  kind: EntryKind
  mode: number
  uid: number
  gid: number
  size: number
  storedSize: number
  dataOffset: number
  mtime: Timestamp
  atime: Timestamp
  ctime: Timestamp
  rdev: number
  ino: number
  opaque: boolean
  implicit: boolean
  sparse: SparseMap | null
  target: string | null
  xattrs: Map<string, Buffer> | null
}

const kindOfType: Record<string, EntryKind> = {
  '0': 'file', '7': 'file', S: 'file', '2': 'symlink', '3': 'char', '4': 'block', '5': 'dir', D: 'dir', '6': 'fifo',
}

/**
 * Turns archive members into a layer, applying what extraction would: later members replace earlier
 * ones (directories merge), missing parents appear as directories, hard links share the earlier
 * member's inode, and OCI markers become whiteouts and opaque flags instead of entries.
 */
export class TarIndexBuilder {
  private readonly drafts = new Map<string, Draft>()
  private readonly whiteouts = new Set<string>()
  private nextIno = 2

  /** `implicitTime`: the mtime given to directories the archive never lists (the archive's own mtime). */
  constructor(private readonly implicitTime: Timestamp) {
    this.drafts.set('/', this.implicitDir('/'))
    this.drafts.get('/')!.ino = 1
  }

  add(m: Member): void {
    const path = normaliseMemberName(m.name)
    if (path === null) {
      log.tar('skipping member with a ".." component: %s', m.name)
      return
    }
    const marker = path === '/' ? null : decodeMarker(baseOf(path))
    if (marker) {
      const dir = this.ensureParents(path)
      if (!dir) return
      if (marker.type === 'opaque') dir.opaque = true
      else if (marker.type === 'whiteout') this.whiteouts.add(joinPath(dir.path, marker.name))
      return
    }
    if (path !== '/' && !this.ensureParents(path)) return

    let draft: Draft
    if (m.typeflag === '1') {
      const targetPath = normaliseMemberName(m.linkname)
      const target = targetPath === null ? undefined : this.drafts.get(targetPath)
      if (!target || target.kind === 'dir') {
        log.tar('skipping hard link %s to a missing or directory target %s', m.name, m.linkname)
        return
      }
      // a hard link is the same inode: same data, mode, owner and times as its target
      draft = { ...target, path, implicit: false }
    } else {
      let kind = kindOfType[m.typeflag] ?? 'file'
      if (kind === 'file' && m.name.endsWith('/')) kind = 'dir' // pre-POSIX tars mark directories so
      const ts = (t: { sec: number; nsec: number } | null): Timestamp => (t ? { sec: t.sec, nsec: t.nsec } : mtime)
      const mtime: Timestamp = { sec: m.mtime.sec, nsec: m.mtime.nsec }
      draft = {
        path, kind, mode: m.mode, uid: m.uid, gid: m.gid,
        size: kind === 'file' ? m.size : kind === 'symlink' ? m.linkname.length : 0,
        storedSize: kind === 'file' ? m.storedSize : 0,
        dataOffset: m.dataOffset, mtime, atime: ts(m.atime), ctime: ts(m.ctime),
        rdev: kind === 'char' || kind === 'block' ? makeDev(m.devmajor, m.devminor) : 0,
        ino: this.nextIno++, opaque: false, implicit: false,
        sparse: kind === 'file' ? m.sparse : null,
        target: kind === 'symlink' ? m.linkname : null,
        xattrs: m.xattrs,
      }
    }
    const existing = this.drafts.get(path)
    if (existing && existing.kind === 'dir' && draft.kind === 'dir') {
      // a directory listed again keeps its contents and opaque flag; its attributes are the last ones
      draft.opaque = existing.opaque
      draft.ino = existing.ino
    }
    this.drafts.set(path, draft)
  }

  /** The directories above `path`, made where missing; null when one of them is not a directory. */
  private ensureParents(path: string): Draft | null {
    const parent = parentOf(path)
    const existing = this.drafts.get(parent)
    if (existing) {
      if (existing.kind === 'dir') return existing
      log.tar('skipping %s: its parent is not a directory', path)
      return null
    }
    if (!this.ensureParents(parent)) return null
    const dir = this.implicitDir(parent)
    this.drafts.set(parent, dir)
    return dir
  }

  private implicitDir(path: string): Draft {
    // as tar extraction by root with umask 022 makes them
    const t = this.implicitTime
    return {
      path, kind: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, storedSize: 0, dataOffset: 0,
      mtime: t, atime: t, ctime: t, rdev: 0, ino: this.nextIno++, opaque: false, implicit: true,
      sparse: null, target: null, xattrs: null,
    }
  }

  /** The finished layer: entries whose ancestors are all directories, with link counts. */
  finish(): TarIndexData {
    const live: Draft[] = []
    for (const d of this.drafts.values()) if (this.reachable(d.path)) live.push(d)
    const links = new Map<number, number>()
    const subdirs = new Map<string, number>()
    for (const d of live) {
      if (d.kind === 'dir') {
        if (d.path !== '/') subdirs.set(parentOf(d.path), (subdirs.get(parentOf(d.path)) ?? 0) + 1)
      } else links.set(d.ino, (links.get(d.ino) ?? 0) + 1)
    }
    const entries: TarEntry[] = live.map((d) => ({
      path: d.path, kind: d.kind, mode: d.mode, uid: d.uid, gid: d.gid, size: d.size, storedSize: d.storedSize,
      mtime: d.mtime, atime: d.atime, ctime: d.ctime,
      nlink: d.kind === 'dir' ? 2 + (subdirs.get(d.path) ?? 0) : links.get(d.ino) ?? 1,
      ino: d.ino, rdev: d.rdev, opaque: d.opaque, dataOffset: d.dataOffset, sparse: d.sparse,
      target: d.target, xattrs: d.xattrs,
    }))
    const whiteouts = [...this.whiteouts].filter((p) => this.reachable(parentOf(p)) && this.drafts.get(parentOf(p))?.kind === 'dir')
    return { entries, whiteouts }
  }

  private reachable(path: string): boolean {
    for (let p = path; p !== '/'; ) {
      p = parentOf(p)
      if (this.drafts.get(p)?.kind !== 'dir') return false
    }
    return true
  }
}
