import { constants as C, mkdirSync, rmSync, statSync } from 'node:fs'
import { link, lstat, readdir, rename, rm, rmdir, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { Errno, FsError, UserError, errnoOf, isErrno } from '../errors'
import { fsPath } from '../paths'
import { PathScope, withScope } from '../long-paths'
import { RENAME_EXCHANGE, RENAME_WHITEOUT, sys } from '../sys'

// The upper and work directories on disk, in kernel overlayfs's format: whiteouts are char 0/0
// devices, opaque directories carry overlay.opaque=y, renamed directories overlay.redirect. Every
// byte layerfs writes to disk passes through this class or its callers in src/upper/.

export type XattrNamespace = 'trusted' | 'user'

/** Whether trusted.* xattrs can be written in `dir` (they need CAP_SYS_ADMIN in the initial user namespace). */
function trustedWritable(dir: string): boolean {
  const probe = Buffer.from(dir)
  try {
    sys.lsetxattr(probe, 'trusted.overlay.layerfs-probe', Buffer.from('y'), 0)
    sys.lremovexattr(probe, 'trusted.overlay.layerfs-probe')
    return true
  } catch {
    return false
  }
}

export class UpperDir {
  private tempCounter = 0
  private whiteoutTemplate: Buffer

  private readonly upperBytes: Buffer
  /** What temp() names start with (one join, not one per copy-up). */
  private readonly tempPrefix: string

  private constructor(readonly upper: string, readonly work: string, readonly xattrs: XattrNamespace) {
    this.whiteoutTemplate = Buffer.from(join(this.tempDir, 'whiteout'))
    this.upperBytes = Buffer.from(upper, 'utf8')
    this.tempPrefix = join(this.tempDir, `#${process.pid}-`)
  }

  /** Where temporary entries are built before they are renamed into the upper (as the kernel's work/work). */
  get tempDir(): string {
    return join(this.work, 'work')
  }

  /**
   * `xattrs` 'auto' picks trusted.overlay.* where this process may write trusted.* (root in the
   * initial user namespace), else user.overlay.*: the form kernel overlayfs reads with -o userxattr.
   */
  static async open(upper: string, work: string, xattrs: XattrNamespace | 'auto'): Promise<UpperDir> {
    // synchronous: local directories, and each thread-pool round trip cost a waiting mount ~0.1-0.3 ms
    const [u, w] = ([['upperdir', upper], ['workdir', work]] as const).map(([what, dir]) => {
      let st
      try {
        st = statSync(dir)
      } catch (err) {
        throw new UserError(`${what} ${dir}: ${isErrno(err, 'ENOENT') ? 'does not exist' : (err as Error).message}`)
      }
      if (!st.isDirectory()) throw new UserError(`${what} ${dir}: not a directory`)
      return st
    })
    if (u.dev !== w.dev) throw new UserError(`upperdir and workdir must be on the same filesystem (${upper}, ${work})`)
    if (upper === work || work.startsWith(upper + '/') || upper.startsWith(work + '/')) {
      throw new UserError('upperdir and workdir must be separate directories, neither inside the other')
    }
    const tempDir = join(work, 'work')
    // leftovers of an interrupted copy-up are never visible: they only ever lived in the work dir
    try {
      mkdirSync(tempDir, { mode: 0o700 })
    } catch (err) {
      if (!isErrno(err, 'EEXIST')) throw err
      rmSync(tempDir, { recursive: true, force: true })
      mkdirSync(tempDir, { mode: 0o700 })
    }
    const dir = new UpperDir(upper, work, xattrs === 'auto' ? trustedWritable(tempDir) ? 'trusted' : 'user' : xattrs)
    try {
      sys.mknod(dir.whiteoutTemplate, C.S_IFCHR, 0, 0)
    } catch (err) {
      throw new UserError(`workdir ${work}: cannot create a whiteout (char device 0/0): ${(err as Error).message}`)
    }
    return dir
  }

  /** The scope of the change under way (changes are serialised): long paths go through it. */
  private scope: PathScope | null = null

  /** The on-disk path of a merged path in the upper (reachable even past PATH_MAX inside a change). */
  real(path: string): Buffer {
    const full = fsPath(this.upperBytes, path)
    return this.scope ? this.scope.short(full) : full
  }

  /** Runs one change of the upper; the descriptors that reached long paths are closed after it. */
  async change<T>(work: () => Promise<T>): Promise<T> {
    return withScope(async (scope) => {
      this.scope = scope
      try {
        return await work()
      } finally {
        this.scope = null
      }
    })
  }

  /** A fresh name in the work dir for building an entry. */
  temp(): Buffer {
    return Buffer.from(this.tempPrefix + ++this.tempCounter)
  }

  /** Where native code builds and puts what a planned copy-up makes (see CopyUp.planNow): the upper dir and temp(). */
  planRoots(): { upper: Buffer; temp: Buffer } {
    return { upper: this.upperBytes, temp: Buffer.from(this.tempDir) }
  }

  /** Whether real(path) is short enough for native code to use by name (a planned copy-up, an upper file it opens). */
  fits(path: string): boolean {
    return this.upperBytes.length + path.length < 3800
  }

  xattrName(what: 'opaque' | 'redirect' | 'metacopy'): string {
    return `${this.xattrs}.overlay.${what}`
  }

  /** Whether the upper holds a whiteout at `path`. */
  async isWhiteout(path: string): Promise<boolean> {
    try {
      const st = await lstat(this.real(path))
      return st.isCharacterDevice() && st.rdev === 0
    } catch {
      return false
    }
  }

  /**
   * Puts a whiteout at `path`, replacing what the upper has there (a file, or an empty directory
   * after `clearDir`), atomically: a hard link of the template is renamed over it.
   */
  async putWhiteout(path: string): Promise<void> {
    const tmp = this.temp()
    await link(this.whiteoutTemplate, tmp).catch(async (err: NodeJS.ErrnoException) => {
      // the template reached the link limit, or was removed: make a fresh one
      if (err.code !== 'EMLINK' && err.code !== 'ENOENT') throw err
      await unlink(this.whiteoutTemplate).catch(() => undefined)
      sys.mknod(this.whiteoutTemplate, C.S_IFCHR, 0, 0)
      await link(this.whiteoutTemplate, tmp)
    })
    const target = this.real(path)
    let isDir = false
    try {
      isDir = (await lstat(target)).isDirectory()
    } catch { /* nothing there */ }
    if (isDir) {
      // swap the (emptied) directory out for the whiteout in one step, then remove it
      sys.renameat2(tmp, target, RENAME_EXCHANGE)
      await rmdir(tmp)
    } else {
      await rename(tmp, target)
    }
  }

  /** Renames within the upper; `whiteout` leaves a whiteout at the source in the same step. */
  async rename(from: string, to: string, whiteout: boolean): Promise<void> {
    if (!whiteout) {
      await rename(this.real(from), this.real(to))
      return
    }
    try {
      sys.renameat2(this.real(from), this.real(to), RENAME_WHITEOUT)
    } catch (err) {
      if (!isErrno(err, 'EINVAL') && !isErrno(err, 'EPERM')) throw err
      // a filesystem without RENAME_WHITEOUT: rename, then the whiteout
      await rename(this.real(from), this.real(to))
      await this.putWhiteout(from)
    }
  }

  /** Removes the whiteouts a directory holds (it must hold nothing else), so that it can be removed or replaced. */
  async clearDir(path: string): Promise<void> {
    await this.clearReal(this.real(path), path)
  }

  private async clearReal(real: Buffer, path: string): Promise<void> {
    for (const name of await readdir(real, { encoding: 'buffer' })) {
      const child = Buffer.concat([real, Buffer.from('/'), name])
      const st = await lstat(child)
      if (st.isCharacterDevice() && st.rdev === 0) await unlink(child)
      else if (st.isDirectory()) {
        // an upper directory whose merged view is empty holds only whiteouts, to any depth
        await this.clearReal(child, path)
        await rmdir(child)
      } else throw new FsError(Errno.ENOTEMPTY, 'directory not empty', path)
    }
  }

  async setOpaque(realPath: Buffer): Promise<void> {
    sys.lsetxattr(realPath, this.xattrName('opaque'), Buffer.from('y'), 0)
  }

  async setRedirect(realPath: Buffer, target: string): Promise<void> {
    sys.lsetxattr(realPath, this.xattrName('redirect'), Buffer.from(target, 'latin1'), 0)
  }

  async renameReal(from: Buffer, to: Buffer): Promise<void> {
    await rename(from, to)
  }

  /** Removes an entry built in the work dir that did not make it into place. */
  async removeReal(real: Buffer): Promise<void> {
    await rm(real, { recursive: true, force: true })
  }

  async removeEntry(path: string): Promise<void> {
    const real = this.real(path)
    try {
      if ((await lstat(real)).isDirectory()) await rmdir(real)
      else await unlink(real)
    } catch (err) {
      throw new FsError(errnoOf(err), 'cannot remove', path)
    }
  }
}
