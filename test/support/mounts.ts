import { spawnSync } from 'node:child_process'
import { mkdir, mkdtemp, readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { LAYERFS, must, run, tempDir } from './run'

// Every mount a test makes is registered here and unmounted by unmountAll() (each test file's
// after hook), and, should a test process die first, by the exit hook below.

export interface Mounted {
  readonly path: string
  unmount(): Promise<void>
}

const live = new Map<string, () => Promise<void>>()

async function mountedAt(path: string): Promise<boolean> {
  const info = await readFile('/proc/self/mountinfo', 'utf8')
  return info.split('\n').some((l) => l.split(' ')[4] === path)
}

/**
 * A mountpoint a test mounts on by itself (through the command line): whatever is still mounted
 * there when the file's tests end is unmounted by unmountAll(), even after a failure.
 */
export function trackMountpoint(path: string): void {
  live.set(path, async () => {
    for (let i = 0; i < 5 && (await mountedAt(path)); i++) await run('umount', ['-l', path])
  })
}

/**
 * An index cache of its own for each test process, so no test reads another's. Kept until the
 * process exits (daemons may still be writing to it when a test's temporaries are removed).
 */
export const testCache = mkdtemp(join(tmpdir(), 'layerfs-test-cache-'))
let cachePath: string | null = null
void testCache.then((dir) => (cachePath = dir))
process.on('exit', () => {
  if (cachePath) spawnSync('rm', ['-rf', cachePath])
})

export interface LayerfsOptions {
  readonly upper?: string
  readonly work?: string
  readonly options?: readonly string[]
  readonly env?: NodeJS.ProcessEnv
}

/** Mounts lowers (top first: directories or tars) with layerfs, as a user would: `layerfs mount`. */
export async function mountLayerfs(lowers: readonly string[], opts: LayerfsOptions = {}): Promise<Mounted> {
  const path = join(await tempDir('mnt'), 'm')
  await mkdir(path)
  const o = [`lowerdir=${lowers.map((l) => l.replace(/:/g, '\\:')).join(':')}`]
  if (opts.upper) o.push(`upperdir=${opts.upper}`, `workdir=${opts.work}`)
  o.push(...(opts.options ?? []))
  const env = { ...process.env, XDG_CACHE_HOME: await testCache, ...opts.env }
  const r = await run(LAYERFS, ['mount', '-o', o.join(','), path], { env })
  if (r.code !== 0) throw new Error(`layerfs mount failed: ${r.stderr.trim()}`)
  return register(path, async () => {
    const u = await run(LAYERFS, ['umount', path])
    if (u.code !== 0 && (await mountedAt(path))) await run('umount', ['-l', path])
  })
}

/** Mounts an image by reference (docker-archive:PATH, oci:DIR[:REF], or a path) with `layerfs mount IMAGE MNT`. */
export async function mountLayerfsImage(ref: string, opts: LayerfsOptions & { readonly args?: readonly string[] } = {}): Promise<Mounted> {
  const path = join(await tempDir('mnt'), 'm')
  await mkdir(path)
  const o: string[] = []
  if (opts.upper) o.push(`upperdir=${opts.upper}`, `workdir=${opts.work}`)
  o.push(...(opts.options ?? []))
  const env = { ...process.env, XDG_CACHE_HOME: await testCache, ...opts.env }
  const r = await run(LAYERFS, ['mount', ...(opts.args ?? []), ref, path, ...(o.length ? ['-o', o.join(',')] : [])], { env })
  if (r.code !== 0) throw new Error(`layerfs mount ${ref} failed: ${r.stderr.trim()}`)
  return register(path, async () => {
    const u = await run(LAYERFS, ['umount', path])
    if (u.code !== 0 && (await mountedAt(path))) await run('umount', ['-l', path])
  })
}

/** Mounts kernel overlayfs over directories (top first); a single lower gets an empty one below. */
export async function mountKernelOverlay(lowers: readonly string[], opts: { upper?: string; work?: string; options?: readonly string[] } = {}): Promise<Mounted> {
  const base = await tempDir('kmnt')
  const path = join(base, 'm')
  await mkdir(path)
  const dirs = [...lowers]
  if (dirs.length === 1 && !opts.upper) {
    await mkdir(join(base, 'empty'))
    dirs.push(join(base, 'empty'))
  }
  const o = [`lowerdir=${dirs.join(':')}`]
  if (opts.upper) o.push(`upperdir=${opts.upper}`, `workdir=${opts.work}`)
  o.push(...(opts.options ?? []))
  await must('mount', ['-t', 'overlay', 'overlay', '-o', o.join(','), path])
  return register(path, async () => {
    const u = await run('umount', [path])
    if (u.code !== 0 && (await mountedAt(path))) await run('umount', ['-l', path])
  })
}

function register(path: string, unmount: () => Promise<void>): Mounted {
  let done: Promise<void> | null = null
  const once = (): Promise<void> => {
    done ??= unmount().finally(() => live.delete(path))
    return done
  }
  live.set(path, once)
  return { path, unmount: once }
}

export async function unmountAll(): Promise<void> {
  for (const unmount of [...live.values()].reverse()) await unmount().catch(() => undefined)
}

process.on('exit', () => {
  // last resort: a test process that dies with mounts left detaches them (and their daemons end)
  for (const path of [...live.keys()].reverse()) spawnSync('umount', ['-l', path])
})
