import type { LayerFile } from '../layer/layer'
import { Errno, FsError } from '../errors'

/** The open-file table: FUSE file handles to what they read from. */
export class Handles {
  private readonly open = new Map<number, LayerFile>()
  private next = 1

  add(file: LayerFile): number {
    // handles cross the binding as uint32; wrap, skipping 0 and numbers still in use
    do {
      this.next = this.next >= 0xffffffff ? 1 : this.next + 1
    } while (this.open.has(this.next))
    this.open.set(this.next, file)
    return this.next
  }

  get(fh: number): LayerFile {
    const file = this.open.get(fh)
    if (!file) throw new FsError(Errno.EBADF, `no open file with handle ${fh}`)
    return file
  }

  async release(fh: number): Promise<void> {
    const file = this.open.get(fh)
    if (!file) return
    this.open.delete(fh)
    await file.close()
  }

  get size(): number {
    return this.open.size
  }

  async closeAll(): Promise<void> {
    const files = [...this.open.values()]
    this.open.clear()
    await Promise.all(files.map((f) => f.close().catch(() => undefined)))
  }
}
