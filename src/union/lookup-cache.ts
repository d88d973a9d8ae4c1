import { LRUCache } from 'lru-cache'

/** What the cache holds for "absent" (lru-cache holds objects only). */
const ABSENT = Object.freeze({})

/**
 * A bounded cache of resolved lookups by path. Resolution is synchronous (layer indexes and local
 * lstats), so there is no work in flight to share; a resolution that throws is not cached.
 */
export class LookupCache<T extends object> {
  private readonly lru: LRUCache<string, T | typeof ABSENT>
  hits = 0
  misses = 0

  constructor(max: number) {
    // bounded by size rather than `max`: with `max` lru-cache allocates all its slots up front,
    // 2 ms of every mount for 20k entries; this way they grow as used
    this.lru = new LRUCache({ maxSize: max, sizeCalculation: () => 1 })
  }

  get(path: string, resolve: () => T | null): T | null {
    const cached = this.lru.get(path)
    if (cached !== undefined) {
      this.hits++
      return cached === ABSENT ? null : (cached as T)
    }
    this.misses++
    const value = resolve()
    this.lru.set(path, value ?? ABSENT)
    return value
  }

  /** Caches what `path` resolves to, known without resolving it; not counted as a lookup. */
  seed(path: string, value: T): void {
    if (!this.lru.has(path)) this.lru.set(path, value)
  }

  /** Forgets one path (a write changed what it resolves to). */
  forget(path: string): void {
    this.lru.delete(path)
  }

  /** Forgets a path and everything below it (a directory was renamed or removed). */
  invalidateTree(path: string): void {
    this.lru.delete(path)
    const prefix = path === '/' ? '/' : path + '/'
    for (const key of this.lru.keys()) if (key.startsWith(prefix)) this.lru.delete(key)
  }

  get size(): number {
    return this.lru.size
  }
}
