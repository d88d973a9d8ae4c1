import { constants } from 'node:os'

/** errno numbers by name, from the platform (Linux). */
export const Errno = constants.errno

/** An error that the filesystem answers with an errno; `path` says where. */
export class FsError extends Error {
  constructor(readonly errno: number, message: string, readonly path?: string) {
    super(path === undefined ? message : `${message}: ${path}`)
    this.name = 'FsError'
  }
}

/** A problem with what the user gave us (options, layers); the CLI prints its message as one line. */
export class UserError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'UserError'
  }
}

/** The errno of a Node fs error (`err.code` such as 'ENOENT'), or EIO for anything unexpected. */
export function errnoOf(err: unknown): number {
  if (err instanceof FsError) return err.errno
  const code = (err as { code?: unknown } | null)?.code
  if (typeof code === 'string' && code in Errno) return (Errno as Record<string, number>)[code]
  return Errno.EIO
}

export function isErrno(err: unknown, code: string): boolean {
  return (err as { code?: unknown } | null)?.code === code
}
