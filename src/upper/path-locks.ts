/**
 * Serialises changes to the merged tree. For now one queue for the whole tree: a change reads the
 * union, copies up and renames in several awaited steps, and two interleaved changes (a rename and
 * a create under the renamed directory, say) could otherwise see each other half done. Data
 * writes to open files do not go through here.
 */
export class PathLocks {
  private tail: Promise<unknown> = Promise.resolve()
  private pending = 0

  /** Whether a change is queued or under way: one made at once must then wait its turn instead. */
  get busy(): boolean {
    return this.pending > 0
  }

  run<T>(work: () => Promise<T>): Promise<T> {
    this.pending++
    const result = this.tail.then(work, work).finally(() => this.pending--)
    this.tail = result.catch(() => undefined)
    return result
  }
}
