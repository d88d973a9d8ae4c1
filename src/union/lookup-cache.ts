import { LRUCache } from 'lru-cache'

/**
 * A bounded cache of resolved lookups by path. It holds the promise of a resolution so that
 * concurrent lookups of one path share the work; a failed resolution is dropped, not cached.
 * "Absent" is a resolved null (lru-cache cannot hold undefined, and null says it plainly).
 */
export class LookupCache<T extends object> {
  private readonly lru: LRUCache<string, Promise<T | null>>
  hits = 0
  misses = 0

  constructor(max: number) {
    // bounded by size rather than `max`: with `max` lru-cache allocates all its slots up front,
    // 2 ms of every mount for 20k entries; this way they grow as used
    this.lru = new LRUCache({ maxSize: max, sizeCalculation: () => 1 })
  }

  get(path: string, resolve: () => Promise<T | null>): Promise<T | null> {
    const cached = this.lru.get(path)
    if (cached) {
      this.hits++
      return cached
    }
    this.misses++
    const pending = resolve()
    this.lru.set(path, pending)
    pending.catch(() => {
      if (this.lru.peek(path) === pending) this.lru.delete(path)
    })
    return pending
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
