import type { CopyUpRecord } from './upper/copy-up'
import type { LayerFs } from './core/layerfs'
import type { DirectReads, ReaderStats } from './fuse/adapter'

// What the daemon did, for `layerfs stats` and -o stats=FILE: every copy-up with its cost, and
// lookups, cache hits and reads per layer.

export interface CopyUpEntry {
  readonly path: string
  /** The layer the entry came from: its position in the stack (0 is the upper) and its source. */
  readonly layer: { readonly index: number; readonly source: string }
  readonly reason: string
  readonly bytes: number
  readonly durationMs: number
  /** False when only metadata was copied. */
  readonly data: boolean
}

export type MountedBy = 'mount' | 'prepared'

export interface StatsReport {
  readonly mountpoint: string
  readonly pid: number
  /** How it was mounted: 'mount' (when asked), 'prepared' (a standby had it ready; its gate mounted it). */
  readonly mountedBy: MountedBy
  readonly copyUps: readonly CopyUpEntry[]
  readonly totals: {
    readonly copyUps: number
    readonly copyUpBytes: number
    readonly copyUpMs: number
    readonly lookups: number
    readonly cacheHits: number
    readonly cacheMisses: number
    readonly reads: number
    readonly bytesRead: number
    /** Windows the readaround pushed into the page cache around random reads (-o readaround), and their bytes. */
    readonly readaround: number
    readonly readaroundBytes: number
  }
  /** The FUSE binding's reader thread; null with the fuse-native adapter. */
  readonly reader: ReaderStats | null
  readonly layers: ReadonlyArray<{
    readonly index: number; readonly source: string; readonly kind: string; readonly reads: number; readonly bytesRead: number
    readonly readaround: number; readonly readaroundBytes: number
  }>
}

export class Stats {
  /** As recorded: turned into entries only for a report (a copy-up's own cost stays small). */
  private readonly copyUps: CopyUpRecord[] = []

  /**
   * `servedElsewhere`: reads the FUSE binding answered without LayerFs, per layer position; asked
   * first in each report, it also brings in the copy-ups the binding ran itself.
   */
  constructor(private readonly fs: LayerFs, private readonly mountpoint: string,
    private readonly servedElsewhere: () => DirectReads | null = () => null,
    private readonly mountedBy: MountedBy = 'mount') {
    fs.upper?.copyUp.listen((rec: CopyUpRecord) => this.copyUps.push(rec))
  }

  report(): StatsReport {
    const { union } = this.fs
    const cache = union.cacheStats
    const more = this.servedElsewhere()
    const layers = union.layers.map((l, index) => ({
      index, source: l.source, kind: l.kind,
      reads: this.fs.reads[index] + (more?.reads[index] ?? 0), bytesRead: this.fs.bytesRead[index] + (more?.bytes[index] ?? 0),
      readaround: more?.stored[index] ?? 0, readaroundBytes: more?.storedBytes[index] ?? 0,
    }))
    const copyUps: CopyUpEntry[] = this.copyUps.map((rec) => ({
      path: Buffer.from(rec.path, 'latin1').toString('utf8'),
      layer: { index: rec.layer, source: rec.source },
      reason: rec.reason, bytes: rec.bytes, durationMs: Math.round(rec.durationMs * 1000) / 1000, data: rec.data,
    }))
    return {
      mountpoint: this.mountpoint,
      pid: process.pid,
      mountedBy: this.mountedBy,
      copyUps,
      totals: {
        copyUps: copyUps.length,
        copyUpBytes: copyUps.reduce((n, c) => n + c.bytes, 0),
        copyUpMs: Math.round(copyUps.reduce((n, c) => n + c.durationMs, 0) * 1000) / 1000,
        lookups: cache.hits + cache.misses,
        cacheHits: cache.hits,
        cacheMisses: cache.misses,
        reads: layers.reduce((n, l) => n + l.reads, 0),
        bytesRead: layers.reduce((n, l) => n + l.bytesRead, 0),
        readaround: layers.reduce((n, l) => n + l.readaround, 0),
        readaroundBytes: layers.reduce((n, l) => n + l.readaroundBytes, 0),
      },
      reader: more?.reader ?? null,
      layers,
    }
  }
}
