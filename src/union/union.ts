import type { Entry, Layer } from '../layer/layer'
import { Errno, FsError } from '../errors'
import { baseOf, joinPath, parentOf } from '../paths'
import { LookupCache } from './lookup-cache'

/** One layer's part in a resolved path. */
export interface Part {
  /** Position in the stack, 0 = topmost. */
  readonly layer: number
  readonly entry: Entry
  /** Where the entry lies in its layer: the merged path, unless a redirect led elsewhere. */
  readonly path: string
}

/** What a path is in the merged view. */
export interface Resolved {
  readonly path: string
  /** The entry shown: the topmost part. */
  readonly top: Part
  /** For a directory, every layer whose directory merges into it, topmost first; otherwise [top]. */
  readonly parts: readonly Part[]
  /** The inode number shown, stable per (layer position, entry). */
  readonly ino: number
  /** For a metacopy file: the lower file that holds its data (undefined when it has none). */
  readonly data?: Part
}

export interface MergedEntry {
  readonly name: string
  readonly part: Part
  readonly ino: number
  /** The listing alone settles what the entry resolves to: `part` and nothing below (see readdir). */
  settled: boolean
}

/** Per-layer inode spaces: layer entries' ino stays below this (see DirLayer, TarLayer). */
const INO_SPACE = 2 ** 40
export const ROOT_INO = 1

/**
 * The merged view of a layer stack, by kernel overlayfs's rules: topmost first; a whiteout or a
 * non-directory ends the descent; a directory merges with the directories below it unless opaque.
 */
export class Union {
  private readonly cache: LookupCache<Resolved>
  /** Moves on whenever a cached resolution is forgotten (a listing read meanwhile may be stale). */
  private generation = 0

  constructor(readonly layers: readonly Layer[], opts: { cacheSize?: number } = {}) {
    if (layers.length === 0) throw new Error('a union needs at least one layer')
    if (layers.length >= 8192) throw new Error('too many layers')
    this.cache = new LookupCache(opts.cacheSize ?? 20_000)
  }

  inoOf(part: Part, path: string): number {
    return path === '/' ? ROOT_INO : this.inoBase(part.layer) + part.entry.ino
  }

  /** What inoOf adds to the inode numbers of layer position `layer`'s entries (0: the upper). */
  inoBase(layer: number): number {
    return (layer + 1) * INO_SPACE
  }

  /** The merged entry at `path`, or null when the merged view has none. */
  async resolve(path: string): Promise<Resolved | null> {
    return this.resolveNow(path)
  }

  /**
   * resolve(), answered at once: layer lookups are synchronous. The FUSE binding's lookups and
   * getattrs use it, without a promise per step: a request finds the daemon cold after an idle
   * moment, and promise machinery is much of what it then touches (root getattr after 1 s idle:
   * 230-430 µs before, 190-280 with this; fuse tracepoints).
   */
  resolveNow(path: string): Resolved | null {
    return this.cache.get(path, () => this.resolveUncached(path))
  }

  private resolveUncached(path: string): Resolved | null {
    // where each layer may hold the path: for the root every layer; else, for each layer whose
    // directory merges into the parent, the name below that layer's own path of the parent
    let candidates: Array<{ layer: number; path: string }>
    const name = baseOf(path)
    if (path === '/') {
      candidates = this.layers.map((_, layer) => ({ layer, path: '/' }))
    } else {
      const parent = this.resolveNow(parentOf(path))
      if (!parent || parent.top.entry.kind !== 'dir') return null
      candidates = parent.parts.map((p) => ({ layer: p.layer, path: joinPath(p.path, name) }))
    }
    const parts: Part[] = []
    let data: Part | undefined
    for (let i = 0; i < candidates.length; i++) {
      const { layer, path: layerPath } = candidates[i]
      const found = this.layers[layer].lookup(layerPath)
      const entry = found.entry
      if (entry && parts.length > 0 && parts[0].entry.metacopy) {
        // below a metacopy file: the first file that is not one itself holds the data
        if (entry.kind !== 'file') break
        if (!entry.metacopy) {
          data = { layer, entry, path: layerPath }
          break
        }
      } else if (entry) {
        if (parts.length > 0 && entry.kind !== 'dir') break // a lower non-directory ends the merge
        parts.push({ layer, entry, path: layerPath })
        if ((entry.kind !== 'dir' && !entry.metacopy) || entry.opaque) break
      }
      if (entry && (entry.kind === 'dir' || entry.metacopy)) {
        if (entry.redirect) {
          // a renamed directory: the layers below hold its contents under its old path
          const redirect = entry.redirect
          const below = redirect.startsWith('/')
            ? this.layers.map((_, l) => ({ layer: l, path: redirect })).filter((c) => c.layer > layer)
            : candidates.slice(i + 1).map((c) => ({ layer: c.layer, path: joinPath(parentOf(c.path), redirect) }))
          candidates = [...candidates.slice(0, i + 1), ...below]
        }
      }
      if (found.whiteout) break
    }
    if (parts.length === 0) return null
    return { path, top: parts[0], parts, ino: this.inoOf(parts[0], path), ...(data ? { data } : {}) }
  }

  /**
   * The merged listing of a directory (without '.' and '..'). Each entry the listing alone settles
   * (a file found in its topmost layer, a directory nothing below can merge with) is cached as
   * resolved, unless something was forgotten meanwhile: a walk then makes one layer lookup an
   * entry, not two.
   */
  async readdir(path: string): Promise<MergedEntry[]> {
    const generation = this.generation
    const dir = await this.resolve(path)
    if (!dir) throw new FsError(Errno.ENOENT, 'no such directory', path)
    if (dir.top.entry.kind !== 'dir') throw new FsError(Errno.ENOTDIR, 'not a directory', path)
    if (dir.parts.length === 1) return this.readdirOne(path, dir.parts[0], generation)
    const out = new Map<string, MergedEntry>()
    const hidden = new Set<string>()
    for (const { layer, path: layerPath } of dir.parts) {
      const listing = await this.layers[layer].readdir(layerPath)
      for (const [name, entry] of listing.entries) {
        if (out.has(name) || hidden.has(name)) continue
        const part = { layer, entry, path: joinPath(layerPath, name) }
        out.set(name, { name, part, ino: this.inoOf(part, joinPath(path, name)), settled: false })
      }
      // a layer's whiteouts hide names of the layers below it, never its own
      for (const name of listing.whiteouts) hidden.add(name)
    }
    const merged = [...out.values()]
    if (generation !== this.generation) return merged
    const last = dir.parts[dir.parts.length - 1].layer
    for (const m of merged) this.settle(joinPath(path, m.name), m, m.part.layer === last)
    return merged
  }

  /**
   * readdir() of a directory that lies in one layer: nothing to merge or hide (a layer's whiteouts
   * hide only what lies below it), and each entry settled but a metacopy file or a redirected
   * directory. The common case (a walk of one image layer, or of the upper alone) without the
   * merge's maps: ~100 ms of a cold walk's 20k entries were spent there (--cpu-prof).
   */
  private async readdirOne(path: string, { layer, path: layerPath }: Part, generation: number): Promise<MergedEntry[]> {
    const listing = await this.layers[layer].readdir(layerPath)
    const seed = generation === this.generation
    const merged: MergedEntry[] = []
    listing.entries.forEach((entry, name) => {
      const p = joinPath(path, name)
      const part = { layer, entry, path: layerPath === path ? p : joinPath(layerPath, name) }
      const m = { name, part, ino: this.inoOf(part, p), settled: false }
      if (seed) this.settle(p, m, true)
      merged.push(m)
    })
    return merged
  }

  /**
   * Whether listed entry `m` (at `path`) is settled by its listing, cached as resolved if so: a file
   * that is not a metacopy, or a directory without a redirect that is opaque or has nothing below
   * (`nothingBelow`: no lower layer of its parent could merge with it).
   */
  private settle(path: string, m: MergedEntry, nothingBelow: boolean): void {
    const e = m.part.entry
    m.settled = e.kind === 'dir' ? !e.redirect && (e.opaque || nothingBelow) : !e.metacopy
    if (m.settled) this.cache.seed(path, { path, top: m.part, parts: [m.part], ino: m.ino })
  }

  /** Forgets the cached resolution of `path`. */
  forget(path: string): void {
    this.generation++
    this.cache.forget(path)
  }

  /** Forgets cached resolutions at and below `path`. */
  invalidateTree(path: string): void {
    this.generation++
    this.cache.invalidateTree(path)
  }

  /**
   * Whether the layers below `fromLayer` show something at `path` (through the merged parent),
   * whatever the layers above hold there: the test for "a whiteout is needed when this goes".
   */
  async presentBelow(path: string, fromLayer = 1): Promise<boolean> {
    if (path === '/') return true
    const parent = await this.resolve(parentOf(path))
    if (!parent) return false
    const name = baseOf(path)
    for (const p of parent.parts) {
      if (p.layer < fromLayer) continue
      const found = this.layers[p.layer].lookup(joinPath(p.path, name))
      if (found.entry) return true
      if (found.whiteout) return false
    }
    return false
  }

  get cacheStats(): { hits: number; misses: number; size: number } {
    return { hits: this.cache.hits, misses: this.cache.misses, size: this.cache.size }
  }

  async close(): Promise<void> {
    await Promise.all(this.layers.map((l) => l.close()))
  }
}
