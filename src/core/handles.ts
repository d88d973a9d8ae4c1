import { closeSync, fdatasyncSync, fstatSync, fsyncSync, ftruncateSync, readSync, writeSync, type BigIntStats } from 'node:fs'
import { Errno, FsError, errnoOf } from '../errors'

/**
 * Where an open file's bytes lie, in order, in a local descriptor (a plain tar member, a directory
 * layer's file, an upper file): a FUSE binding may then answer reads with pread itself.
 */
export interface DirectSpan {
  readonly fd: number
  /** Where the file's byte 0 lies in `fd`. */
  readonly offset: number
  /** The file's length, or -1: up to the descriptor's end (an upper file, which may grow). */
  readonly length: number
  /** The layer position its reads count for. */
  readonly layer: number
  /** Writes go to it too, at the same offsets (an upper file). */
  readonly writable: boolean
}

/** An open file: reads always; writes, truncation and sync when it is an upper file opened for writing. */
export interface OpenFile {
  read(buf: Buffer, length: number, position: number): Promise<number>
  /** The layer position a lower file is read from (none for an upper file). */
  readonly layer?: number
  direct?(): DirectSpan | null
  write?(buf: Buffer, length: number, position: number): Promise<number>
  truncate?(size: number): Promise<void>
  sync?(dataOnly: boolean): Promise<void>
  /** The upper file's own attributes (an open file whose name is gone still has them). */
  stat?(): Promise<BigIntStats>
  close(): Promise<void>
}

/**
 * An upper file by its descriptor. Its calls are synchronous, on the daemon's thread: the upper is a
 * local directory, and a thread-pool round trip per read or write cost more than the call itself.
 */
export function upperFile(fd: number, writable = true): OpenFile {
  const run = <T>(fn: () => T): Promise<T> => {
    try {
      return Promise.resolve(fn())
    } catch (err) {
      return Promise.reject(err)
    }
  }
  return {
    read: (buf, length, position) => run(() => readSync(fd, buf, 0, length, position)),
    direct: () => ({ fd, offset: 0, length: -1, layer: 0, writable }),
    write: (buf, length, position) => run(() => {
      let done = 0
      while (done < length) done += writeSync(fd, buf, done, length - done, position + done)
      return done
    }),
    truncate: (size) => run(() => ftruncateSync(fd, size)),
    sync: (dataOnly) => run(() => (dataOnly ? fdatasyncSync(fd) : fsyncSync(fd))),
    stat: () => run(() => fstatSync(fd, { bigint: true })),
    close: () => run(() => closeSync(fd)),
  }
}

interface Slot {
  file: OpenFile
  /** The merged path a read-only lower handle was opened at: re-pointed when it is copied up. */
  lowerPath: string | null
}

/** The open-file table: FUSE file handles to what they read from and write to. */
export class Handles {
  private readonly open = new Map<number, Slot>()
  private next = 1
  /** How many slots have a lowerPath: most copy-ups find none to re-point. */
  private lowerSlots = 0
  /** Told when a handle's file changes (re-pointed after a copy-up), before the old one is closed. */
  onChange: ((fh: number) => void) | null = null

  add(file: OpenFile, lowerPath: string | null = null): number {
    // handles cross the binding as uint32; wrap, skipping 0 and numbers still in use
    do {
      this.next = this.next >= 0xffffffff ? 1 : this.next + 1
    } while (this.open.has(this.next))
    this.open.set(this.next, { file, lowerPath })
    if (lowerPath !== null) this.lowerSlots++
    return this.next
  }

  get(fh: number): OpenFile {
    const slot = this.open.get(fh)
    if (!slot) throw new FsError(Errno.EBADF, `no open file with handle ${fh}`)
    return slot.file
  }

  /** Whether any handle reads a lower file (only those are re-pointed after a copy-up). */
  get readsLower(): boolean {
    return this.lowerSlots > 0
  }

  /**
   * After `path` was copied up, read handles opened on its lower file read the upper one, as on
   * kernel overlayfs (since 4.19): a write through another handle is seen.
   */
  async repoint(path: string, openUpper: () => Promise<OpenFile>): Promise<void> {
    for (const [fh, slot] of this.open) {
      if (slot.lowerPath !== path) continue
      const old = slot.file
      try {
        slot.file = await openUpper()
        if (this.open.get(fh) === slot) this.lowerSlots-- // else counted off by its release
        slot.lowerPath = null
        this.onChange?.(fh)
        await old.close()
      } catch (err) {
        throw new FsError(errnoOf(err), 'cannot re-open after copy-up', path)
      }
    }
  }

  async release(fh: number): Promise<void> {
    const slot = this.open.get(fh)
    if (!slot) return
    this.open.delete(fh)
    if (slot.lowerPath !== null) this.lowerSlots--
    await slot.file.close()
  }

  get size(): number {
    return this.open.size
  }

  async closeAll(): Promise<void> {
    const files = [...this.open.values()].map((s) => s.file)
    this.open.clear()
    this.lowerSlots = 0
    await Promise.all(files.map((f) => f.close().catch(() => undefined)))
  }
}
