import { statSync } from 'node:fs'
import type { IndexIdentity, LoadedIndex } from './index-file'
import { markUsed } from './index-file'

// Indexes this process has loaded, by the archive they describe as fstat sees it: a daemon that
// serves mount after mount of the same layers (a standby given back after an unmount) opens each
// again without resolving its path, sampling and hashing its bytes, naming and checking its index
// file: ~0.2 ms of a mount's ~1 ms. Any later write to the archive changes its ctime (see
// rememberLoaded), so a changed archive is never taken for the one remembered.

/** What an archive is, as its fstat and its place (a blob's offset and length) say. */
export interface ArchiveKey {
  readonly path: string
  readonly offset: number
  readonly length: number
  readonly digest: string | undefined
  readonly cacheDir: string
  readonly st: { dev: bigint; ino: bigint; size: bigint; mtimeNs: bigint; ctimeNs: bigint }
}

export interface KnownIndex {
  readonly identity: IndexIdentity
  readonly indexFile: string
  readonly loaded: LoadedIndex
}

interface Remembered extends KnownIndex {
  touched: number
  /** The index file as it was (inode, size, ctime): its bytes are mapped, so any change ends the reuse. */
  file: string | null
}

const remembered = new Map<string, Remembered>()
const KEPT = 16
const TOUCH_EVERY_MS = 3600_000 // the index file's mtime, which `cache prune` reads

function keyOf(a: ArchiveKey): string {
  return [a.path, a.offset, a.length, a.digest ?? '', a.cacheDir, a.st.dev, a.st.ino, a.st.size, a.st.mtimeNs, a.st.ctimeNs].join('\0')
}

/** What identifies an index file's bytes now; null when it is gone or cannot be looked at. */
function fileState(file: string): string | null {
  try {
    const st = statSync(file, { bigint: true, throwIfNoEntry: false })
    return st ? `${st.dev}:${st.ino}:${st.size}:${st.ctimeNs}` : null
  } catch {
    return null
  }
}

function keep(key: string, entry: Remembered): void {
  remembered.delete(key)
  remembered.set(key, entry) // most recent last
  for (const old of remembered.keys()) {
    if (remembered.size <= KEPT) break
    remembered.delete(old)
  }
}

/**
 * The index loaded before for this very archive, while its index file is there and unchanged:
 * once pruned, the next mount indexes and saves it again; rewritten in place, its mapped bytes
 * changed under us.
 */
export function findLoaded(archive: ArchiveKey): KnownIndex | null {
  const key = keyOf(archive)
  const known = remembered.get(key)
  if (!known) return null
  if (known.file === null || known.file !== fileState(known.indexFile)) {
    remembered.delete(key)
    return null
  }
  keep(key, known)
  if (Date.now() - known.touched > TOUCH_EVERY_MS) {
    markUsed(known.indexFile)
    known.touched = Date.now()
    known.file = fileState(known.indexFile)
  }
  return known
}

/** Whether an index loaded from `indexFile` is kept, and the file is as it was then. */
export function holdsLoaded(indexFile: string): boolean {
  for (const known of remembered.values()) {
    if (known.indexFile === indexFile) return known.file !== null && known.file === fileState(indexFile)
  }
  return false
}

/**
 * Remembers an index just loaded from its file. Only for an archive whose ctime is over a second
 * old: its ctime is stamped from a coarse clock, and a write within the same tick could keep it.
 */
export function rememberLoaded(archive: ArchiveKey, index: KnownIndex): void {
  if (BigInt(Date.now() - 1000) * 1_000_000n <= archive.st.ctimeNs) return
  keep(keyOf(archive), { ...index, touched: Date.now(), file: fileState(index.indexFile) })
}
