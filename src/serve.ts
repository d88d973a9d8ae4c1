import { accessSync, closeSync, constants as C, openSync, readSync, realpathSync, statSync } from 'node:fs'
import { rm, writeFile } from 'node:fs/promises'
import type { Layer } from './layer/layer'
import { DirLayer } from './layer/dir-layer'
import { Upper } from './upper/upper'
import { UpperDir } from './upper/upper-dir'
import { IndexNotCached, TarLayer } from './layer/tar-layer'
import { Union } from './union/union'
import { LayerFs } from './core/layerfs'
import type { FuseMount, FuseMountOptions } from './fuse/adapter'
import { lowLevelWanted, mountLowLevel, preparable, prepareLowLevel, type PreparedSession } from './fuse/lowlevel'
import { UserError, isErrno } from './errors'
import type { MountRequest } from './options'
import type { Progress } from './progress'
import { mountAtNow, mounts, mountsNow, pruneDeadRecords, removeRecord, writeRecord } from './runtime'
import { listen, socketPath, type WhichAnswer } from './control'
import { Stats, type MountedBy } from './stats'
import { log } from './log'
import { imageLayers } from './image/image'
import { describeRef } from './image/reference'
import { sys } from './sys'

/** How long after telling its launcher a daemon sets up its control files. */
const CONTROL_DELAY_MS = 20

export interface ServeHooks {
  /** A progress bar for one long step. */
  progress(label: string): Progress
  /**
   * Called once the mount is live; the control socket and the record then follow CONTROL_DELAY_MS
   * later (see serve). Once it was called, serve() no longer fails.
   */
  mounted?(): Promise<void>
}

/** A live mount. `ended` settles when it is gone (unmounted by us or by `umount`). */
export interface Served {
  readonly ended: Promise<void>
  stop(): Promise<void>
}

/**
 * Checks what the kernel needs before any layer is read: /dev/fuse and a free mountpoint.
 * Synchronous: a few local calls, where trips through the thread pool cost a waiting mount ~1 ms.
 */
export function preflight(req: MountRequest): string {
  try {
    accessSync('/dev/fuse', C.R_OK | C.W_OK)
  } catch (err) {
    throw new UserError(isErrno(err, 'ENOENT') ? 'no /dev/fuse: this kernel or container has no FUSE device'
      : '/dev/fuse: permission denied (it must be readable and writable by this user)')
  }
  let st
  try {
    st = statSync(req.mountpoint)
  } catch (err) {
    throw new UserError(`mountpoint ${req.mountpoint}: ${isErrno(err, 'ENOENT') ? 'does not exist' : (err as Error).message}`)
  }
  if (!st.isDirectory()) throw new UserError(`mountpoint ${req.mountpoint}: not a directory`)
  const real = realpathSync.native(req.mountpoint)
  // the kernel says whether a mount's root is there (one call); the mount table only where it cannot
  const root = sys.mountRoot(Buffer.from(real))
  if (root === 1 || (root < 0 && mountAtNow(real))) throw new UserError(`mountpoint ${req.mountpoint}: busy (something is already mounted there)`)
  return real
}


/** Opens one lower: a directory, or a tar file (plain or gzip). */
export async function openLayer(path: string, hooks: ServeHooks, persistIndex = true, cachedOnly = false): Promise<Layer> {
  let st
  try {
    st = statSync(path)
  } catch (err) {
    throw new UserError(`layer ${path}: ${isErrno(err, 'ENOENT') ? 'no such file or directory' : (err as Error).message}`)
  }
  if (st.isDirectory()) return DirLayer.open(path)
  if (!st.isFile()) throw new UserError(`layer ${path}: neither a directory nor a tar file`)
  const head = Buffer.alloc(4)
  try {
    // synchronous: a local file's first bytes, where the thread pool's round trips cost a waiting mount ~0.5 ms
    const fd = openSync(path, 'r')
    try {
      readSync(fd, head, 0, 4, 0)
    } finally {
      closeSync(fd)
    }
  } catch (err) {
    throw new UserError(`layer ${path}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`)
  }
  const bar = hooks.progress(`indexing ${path}`)
  try {
    return await TarLayer.open(path, { onProgress: (done, total) => bar.update(done, total), persistIndex, reuseLoaded: true, cachedOnly })
  } finally {
    bar.finish()
  }
}

/** Opens the lowers a request names: its image's layers, or its lowerdir paths; topmost first. */
export async function openLayers(req: Pick<MountRequest, 'lowers' | 'image' | 'platform' | 'persistIndex'>, hooks: ServeHooks,
  cachedOnly = false): Promise<Layer[]> {
  const layers: Layer[] = []
  try {
    if (req.image) {
      const { layers: blobs } = await imageLayers(req.image, req.platform, (label) => hooks.progress(label))
      for (const blob of blobs) {
        const bar = hooks.progress(`indexing ${blob.name}`)
        try {
          layers.push(await TarLayer.open(blob, { onProgress: (done, total) => bar.update(done, total), reuseLoaded: true }))
        } finally {
          bar.finish()
        }
      }
      return layers
    }
    for (const p of req.lowers) layers.push(await openLayer(p, hooks, req.persistIndex ?? true, cachedOnly))
    return layers
  } catch (err) {
    await Promise.all(layers.map((l) => l.close().catch(() => undefined)))
    throw err
  }
}

/** The mount's filesystem: the lowers, and the upper over them when writable. Closes the lowers if it fails. */
async function openFs(req: MountRequest, lowers: Layer[]): Promise<LayerFs> {
  try {
    if (req.upper !== null && req.work !== null) {
      // the upper dir is the topmost layer of the union, in kernel-overlay form
      const upperDir = await UpperDir.open(req.upper, req.work, req.userxattr ? 'user' : 'auto')
      if (req.metacopy && upperDir.xattrs === 'user') {
        throw new UserError('metacopy=on needs trusted.* xattrs: kernel overlayfs refuses it with userxattr (and so unprivileged)')
      }
      // kernel form only: a `.wh.` file made through the mount is an ordinary file, as on kernel overlayfs
      const union = new Union([await DirLayer.open(req.upper, { ociMarkers: false }), ...lowers])
      return new LayerFs(union, new Upper(upperDir, union, { metacopy: req.metacopy }))
    }
    return new LayerFs(new Union(lowers))
  } catch (err) {
    await Promise.all(lowers.map((l) => l.close().catch(() => undefined)))
    throw err
  }
}

/**
 * Names and attributes: cached a day (fuse-overlayfs: 10^9 s). Lower layers never change, and the
 * kernel itself drops what a change made through the mount touches; the exceptions (files with
 * several names, open files whose name is gone) are uncached in mountLowLevel. fuse-native's
 * adapter (libfuse 2) keeps its second.
 */
function fuseOptions(req: MountRequest, readOnly: boolean, lowLevel: boolean): FuseMountOptions {
  return { fsname: req.fsname, readOnly, allowOther: process.getuid?.() === 0, cacheSeconds: readOnly || lowLevel ? 86400 : 1, readaround: req.readaround, copyUpAtWrite: req.copyUpAt === 'write', debug: req.debug }
}

/** Opens the layers, mounts, and keeps serving until unmounted. */
export async function serve(req: MountRequest, hooks: ServeHooks): Promise<Served> {
  const mountpoint = preflight(req)
  const fs = await openFs(req, await openLayers(req, hooks))
  const lowLevel = lowLevelWanted()
  const end = new SessionEnd()
  let fuse: FuseMount
  try {
    const opts = fuseOptions(req, fs.upper === null, lowLevel)
    // our own low-level binding; fuse-native (libfuse 2, high-level) when asked for
    fuse = lowLevel
      ? await mountLowLevel(fs, mountpoint, opts, () => end.ended())
      : await (await import('./fuse/adapter')).mountFuse(fs, mountpoint, opts) // loaded only when asked for
  } catch (err) {
    await fs.close()
    throw new UserError(`mount ${mountpoint}: ${(err as Error).message}`)
  }
  return served(req, hooks, fs, fuse, mountpoint, lowLevel, end, 'mount')
}

/** The FUSE session's end, told before there is anything to clean up: acted on once there is. */
class SessionEnd {
  private handler: (() => void) | null = null
  private early = false
  ended(): void {
    if (this.handler) this.handler()
    else this.early = true
  }
  onEnd(handler: () => void): void {
    this.handler = handler
    if (this.early) handler()
  }
}

/**
 * A read-only mount made ready ahead of its request: its layers open and its FUSE session made, for
 * a standby's gate to mount at once (standby.ts). What it was made from is listed in `checks`: the
 * gate mounts it only while each is as it was.
 */
export interface PreparedServe {
  readonly session: PreparedSession
  /** Paths, and whether only which file or directory they are counts (a directory layer is read live). */
  readonly checks: ReadonlyArray<{ path: string; identityOnly: boolean }>
  /** The gate mounted it at `mountpoint` (resolved): serving from now on, as serve's would be. */
  adopt(hooks: ServeHooks, mountpoint: string): Promise<Served>
  /** Never mounted: its layers closed, its session given up. */
  discard(): Promise<void>
}

/**
 * Prepares `req` (see PreparedServe), whatever its mountpoint: the gate mounts it where the request
 * it takes says. Null where that cannot be done (writable, an image, not root...); 'later' while a
 * tar layer's index is not in the cache: the daemon that mounted it is building or saving it, and
 * a standby indexing it too would only compete with that daemon.
 */
export async function prepareServe(req: MountRequest): Promise<PreparedServe | 'later' | null> {
  const opts = fuseOptions(req, true, true)
  if (req.upper !== null || req.image !== null || req.foreground || req.persistIndex === false || !lowLevelWanted() || !preparable(opts)) return null
  const quiet: ServeHooks = { progress: () => ({ update: () => undefined, finish: () => undefined }) }
  let lowers: Layer[]
  try {
    lowers = await openLayers(req, quiet, true)
  } catch (err) {
    if (err instanceof IndexNotCached) return 'later'
    throw err
  }
  const fs = await openFs(req, lowers)
  const checks: Array<{ path: string; identityOnly: boolean }> = []
  for (const [i, layer] of lowers.entries()) {
    if (layer instanceof TarLayer && layer.fromCache) checks.push({ path: req.lowers[i], identityOnly: false }, { path: layer.indexFile, identityOnly: false })
    else if (layer instanceof DirLayer) checks.push({ path: req.lowers[i], identityOnly: true })
    else {
      await fs.close() // a kind of layer the gate has no check for
      return null
    }
  }
  const end = new SessionEnd()
  let session: PreparedSession | null
  try {
    session = prepareLowLevel(fs, opts, () => end.ended())
  } catch (err) {
    log.mount('cannot prepare a mount: %s', (err as Error).message)
    session = null
  }
  if (!session) {
    await fs.close()
    return null
  }
  const prepared = session
  return {
    session: prepared,
    checks,
    // the gate told the launcher itself
    adopt: (hooks, mountpoint) => served({ ...req, mountpoint }, { ...hooks, mounted: () => Promise.resolve() }, fs, prepared.mounted(), mountpoint, true, end, 'prepared'),
    discard: async () => {
      prepared.discard()
      await fs.close()
    },
  }
}

/**
 * Serving a live mount: the stats, the control files (`layerfs stats|tree|umount` find the daemon by
 * them), the cleanup when the session ends. `how` the mount was made, for the stats.
 */
async function served(req: MountRequest, hooks: ServeHooks, fs: LayerFs, fuse: FuseMount, mountpoint: string,
  lowLevel: boolean, end: SessionEnd, how: MountedBy): Promise<Served> {
  const union = fs.union
  const stats = new Stats(fs, mountpoint, () => {
    fuse.catchUp?.()
    return fuse.directReads?.() ?? null
  }, how)
  let control: Awaited<ReturnType<typeof listen>> | null = null
  let mine: Awaited<ReturnType<typeof mounts>>[number] | undefined
  let stopping = false
  /** The control socket, the mount's id and the record: what `layerfs stats|tree|umount` find it by. */
  const setUpControl = async (): Promise<void> => {
    const server = await listen(mountpoint, async (creq) => {
      if (creq.op === 'which') {
        fuse.catchUp?.() // copy-ups the binding ran: the union knows of them
        const layers = await Promise.all(creq.paths.map(async (p) => {
          const r = await union.resolve(p)
          return r ? { layer: r.top.layer, source: union.layers[r.top.layer].source, merged: r.parts.map((x) => x.layer) } : null
        }))
        return { layers } satisfies WhichAnswer
      }
      return stats.report()
    })
    if (stopping) { // unmounted meanwhile: cleanUp has run
      server.close()
      await rm(socketPath(mountpoint), { force: true })
      return
    }
    control = server
    // the mount's id, for the fuse-native binding's watch of the mount table (ours needs none)
    if (!lowLevel) mine = mountsNow().filter((m) => m.mountpoint === mountpoint && m.fstype === 'fuse.layerfs').pop()
    writeRecord({ pid: process.pid, mountpoint, lowers: req.image ? [describeRef(req.image)] : req.lowers, startedAt: new Date().toISOString() })
    log.mount('%s: control socket and record set up', mountpoint)
  }
  log.mount('mounted %s over %d layers%s', mountpoint, union.layers.length, fs.upper ? `, overlay xattrs ${fs.upper.dir.xattrs}.overlay.*` : '')
  if (hooks.mounted) {
    // told at once; the control files a little later, once the first requests are likely served:
    // they are files in the runtime dir, 0.5 ms of this thread, ~2 ms after a cold cache (/run may
    // be on disk), and every request waits meanwhile. Their clients start Node first (~40 ms) and
    // wait for them a while (control.ts ask, cli.ts umount). Past this point serve() does not fail:
    // a control file that cannot be made is logged, and the mount stays served.
    await hooks.mounted()
    setTimeout(() => {
      if (!stopping) setUpControl().catch((err: Error) => log.mount('%s: cannot set up the control files: %s', mountpoint, err.message))
    }, CONTROL_DELAY_MS)
  } else {
    try {
      await setUpControl()
    } catch (err) {
      // never leave a mount behind that nobody serves
      await fuse.unmount().catch(() => undefined)
      await fs.close().catch(() => undefined)
      throw new UserError(`${mountpoint}: cannot set up the daemon's control files: ${(err as Error).message}`)
    }
  }

  let finish!: () => void
  const ended = new Promise<void>((resolve) => (finish = resolve))
  const cleanUp = async (): Promise<void> => {
    clearInterval(watch)
    if (req.statsFile) {
      await writeFile(req.statsFile, JSON.stringify(stats.report(), null, 2) + '\n')
        .catch((err: Error) => log.mount('stats file %s: %s', req.statsFile, err.message))
    }
    control?.close()
    await rm(socketPath(mountpoint), { force: true }).catch(() => undefined)
    await fs.close().catch(() => undefined)
    await removeRecord(mountpoint).catch(() => undefined)
    finish()
  }
  // `umount MNT` (lazy too, once the last user lets go): our binding sees the session end at once.
  // fuse-native's does not, so for it the mount table is read every 250 ms; that poll cost ~0.2 ms
  // of the daemon's thread each time (4 thread-pool calls and a parse), for nothing with ours.
  end.onEnd(() => {
    if (stopping) return
    stopping = true
    log.mount('%s: the FUSE session ended', mountpoint)
    void cleanUp()
  })
  const watch = lowLevel ? undefined : setInterval(() => {
    mounts().then((all) => {
      const id = mine?.id
      if (stopping || id === undefined || all.some((m) => m.id === id)) return
      stopping = true
      log.mount('%s was unmounted', mountpoint)
      void cleanUp()
    }, () => undefined)
  }, 250)
  // what nearly every session asks first, resolved once the mount is live (and that code path run
  // once, so the first request does not wait for it): the root and its listing
  setImmediate(() => void fs.getattr('/').then(() => fs.readdir('/')).catch(() => undefined))
  // later, when the mount is busy with nothing else: records left by daemons killed outright
  setTimeout(() => void pruneDeadRecords().then((n) => n && log.mount('removed %d records of daemons gone', n), () => undefined), 2000).unref()
  return {
    ended,
    stop: async () => {
      if (stopping) return ended
      stopping = true
      await fuse.unmount().catch((err: Error) => log.mount('unmount: %s', err.message))
      await cleanUp()
    },
  }
}
