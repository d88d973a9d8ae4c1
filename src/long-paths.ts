import { closeSync, openSync } from 'node:fs'

// Paths past PATH_MAX. A path the user gives through the mount may be just under PATH_MAX (4096)
// from where they stand, and longer once the daemon prefixes the upper or lower directory: the
// kernel refuses such paths (ENAMETOOLONG) where kernel overlayfs, walking dentries, has no limit.
// A PathScope reaches them through O_PATH descriptors of leading directories, as
// /proc/self/fd/N/rest, and closes those descriptors when the operation is over.

const LIMIT = 4000
const CUT = 3000
const O_PATH = 0o10000000
const O_DIRECTORY = 0o200000
const SLASH = 0x2f

/** Whether a path is reached as it is, without a scope (what a synchronous change outside one may use). */
export function isShort(real: Buffer): boolean {
  return real.length < LIMIT
}

export class PathScope {
  private fds: number[] | null = null // most scopes never need one

  /** `real` itself when it is short; else an equivalent path under /proc/self/fd that is. */
  short(real: Buffer): Buffer {
    if (isShort(real)) return real
    let base = Buffer.alloc(0)
    let rest = real
    while (base.length + rest.length >= LIMIT) {
      const cut = rest.lastIndexOf(SLASH, CUT)
      if (cut <= 0) break // one component over 3000 bytes: cannot exist (NAME_MAX); let the call fail
      const fd = openSync(Buffer.concat([base, rest.subarray(0, cut)]), O_PATH | O_DIRECTORY)
      ;(this.fds ??= []).push(fd)
      base = Buffer.from(`/proc/self/fd/${fd}/`)
      rest = rest.subarray(cut + 1)
    }
    return Buffer.concat([base, rest])
  }

  close(): void {
    if (!this.fds) return
    for (const fd of this.fds.splice(0)) closeSync(fd)
  }
}

/** Runs synchronous `work` with a scope whose descriptors are closed when it returns or throws. */
export function withScopeSync<T>(work: (scope: PathScope) => T): T {
  const scope = new PathScope()
  try {
    return work(scope)
  } finally {
    scope.close()
  }
}

/** Runs `work` with a scope whose descriptors are closed when it settles. */
export async function withScope<T>(work: (scope: PathScope) => Promise<T>): Promise<T> {
  const scope = new PathScope()
  try {
    return await work(scope)
  } finally {
    scope.close()
  }
}
