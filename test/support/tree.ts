import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { lstat, readdir, readlink } from 'node:fs/promises'
import { sys } from '../../src/sys'

// A tree as comparable data: what kernel overlayfs and layerfs must agree on, entry by entry.

export interface EntrySnapshot {
  readonly type: 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket'
  readonly mode: number
  readonly uid: number
  readonly gid: number
  readonly size?: number
  readonly sha256?: string
  readonly target?: string
  readonly rdev?: string
  readonly nlink?: number
  readonly mtimeNs: string
  readonly xattrs: Readonly<Record<string, string>>
}

export interface SnapshotOptions {
  /** Compare extended attributes (default true). */
  readonly xattrs?: boolean
  /** Hash file contents (default true). */
  readonly content?: boolean
  /**
   * Keep overlay's own opaque, redirect and metacopy xattrs (to compare upper dirs). Its bookkeeping
   * (origin, impure, uuid, ...) is always left out: file handles and flags of the kernel's own.
   */
  readonly overlayXattrs?: boolean
}

const TYPES: Record<number, EntrySnapshot['type']> = {
  0o100000: 'file', 0o040000: 'dir', 0o120000: 'symlink', 0o020000: 'char', 0o060000: 'block', 0o010000: 'fifo', 0o140000: 'socket',
}

/** Key of a path in a snapshot: the bytes as latin1, so names that are not UTF-8 stay distinct. */
function key(rel: Buffer): string {
  return rel.length === 0 ? '/' : '/' + rel.toString('latin1')
}

async function hashFile(path: Buffer): Promise<string> {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer)
  return h.digest('hex')
}

/**
 * Snapshots every entry under `root` (root itself is '/'). A name a directory lists that lstat then
 * cannot find is left out: kernel overlayfs lists whiteouts of directories that are not merged.
 */
export async function snapshotTree(root: string, opts: SnapshotOptions = {}): Promise<Map<string, EntrySnapshot>> {
  const out = new Map<string, EntrySnapshot>()
  const rootBuf = Buffer.from(root)
  const visit = async (rel: Buffer): Promise<void> => {
    const abs = rel.length === 0 ? rootBuf : Buffer.concat([rootBuf, Buffer.from('/'), rel])
    let st
    try {
      st = await lstat(abs, { bigint: true })
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
      throw err
    }
    const type = TYPES[Number(st.mode) & 0o170000]
    const xattrs: Record<string, string> = {}
    if (opts.xattrs !== false) {
      for (const name of sys.llistxattr(abs).sort()) {
        if (name.startsWith('trusted.overlay.') || name.startsWith('user.overlay.')) {
          if (!opts.overlayXattrs || !/\.overlay\.(opaque|redirect|metacopy)$/.test(name)) continue
        }
        xattrs[name] = sys.lgetxattr(abs, name)?.toString('hex') ?? ''
      }
    }
    const snap: { -readonly [K in keyof EntrySnapshot]: EntrySnapshot[K] } = {
      type, mode: Number(st.mode) & 0o7777, uid: Number(st.uid), gid: Number(st.gid), mtimeNs: String(st.mtimeNs), xattrs,
    }
    if (type !== 'dir') snap.nlink = Number(st.nlink)
    if (type === 'file') {
      snap.size = Number(st.size)
      if (opts.content !== false) snap.sha256 = await hashFile(abs)
    }
    if (type === 'symlink') snap.target = (await readlink(abs, { encoding: 'buffer' })).toString('latin1')
    if (type === 'char' || type === 'block') {
      const rdev = Number(st.rdev)
      snap.rdev = `${(rdev >>> 8) & 0xfff}:${(rdev & 0xff) | ((rdev >>> 12) & 0xfff00)}`
    }
    out.set(key(rel), snap)
    if (type === 'dir') {
      const names = await readdir(abs, { encoding: 'buffer' })
      for (const name of names) await visit(rel.length === 0 ? name : Buffer.concat([rel, Buffer.from('/'), name]))
    }
  }
  await visit(Buffer.alloc(0))
  return out
}

export interface DiffOptions {
  /** Fields left out of the comparison for some paths (e.g. directory mtimes extraction changed). */
  readonly ignore?: (path: string, field: keyof EntrySnapshot, expected: EntrySnapshot) => boolean
  readonly limit?: number
}

function show(path: string): string {
  return JSON.stringify(Buffer.from(path, 'latin1').toString('utf8'))
}

/** Readable differences between two snapshots; [] when they agree. */
export function diffTrees(expected: ReadonlyMap<string, EntrySnapshot>, actual: ReadonlyMap<string, EntrySnapshot>, opts: DiffOptions = {}): string[] {
  const out: string[] = []
  const limit = opts.limit ?? 30
  for (const [path, e] of expected) {
    if (out.length >= limit) break
    const a = actual.get(path)
    if (!a) {
      out.push(`missing ${show(path)} (${e.type})`)
      continue
    }
    for (const field of Object.keys({ ...e, ...a }) as (keyof EntrySnapshot)[]) {
      if (opts.ignore?.(path, field, e)) continue
      const ev = JSON.stringify(e[field])
      const av = JSON.stringify(a[field])
      if (ev !== av) out.push(`${show(path)}: ${field} expected ${ev}, got ${av}`)
    }
  }
  for (const [path, a] of actual) {
    if (out.length >= limit) break
    if (!expected.has(path)) out.push(`unexpected ${show(path)} (${a.type})`)
  }
  return out
}
