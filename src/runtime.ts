import { createHash } from 'node:crypto'
import { accessSync, constants as FS, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { readFile, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { createConnection } from 'node:net'
import { join } from 'node:path'
import { cacheDir } from './cache-dir'

// Where a daemon says who it is (pid, mountpoint, layers), and what the kernel says is mounted.

export interface MountRecord {
  readonly pid: number
  readonly mountpoint: string
  readonly lowers: readonly string[]
  readonly startedAt: string
}

/**
 * This process's uid as the initial user namespace sees it: root inside `unshare -r` is the user
 * who ran it, and may not write /run.
 */
function outerUid(): { uid: number; namespaced: boolean } {
  const uid = process.getuid?.() ?? 0
  try {
    for (const line of readFileSync('/proc/self/uid_map', 'utf8').trim().split('\n')) {
      const [inner, outer, count] = line.trim().split(/\s+/).map(Number)
      if (inner === 0 && outer === 0 && count === 4294967295) return { uid, namespaced: false }
      if (uid >= inner && uid < inner + count) return { uid: outer + (uid - inner), namespaced: true }
    }
  } catch { /* no /proc: take the uid as it is */ }
  return { uid, namespaced: false }
}

let chosen: string | null = null

/**
 * Where control sockets and mount records live: $XDG_RUNTIME_DIR/layerfs, /run/layerfs for root,
 * else $TMPDIR/layerfs-UID; the first that exists or can be made, writable. A locked-down /tmp
 * (mode 0755, seen on CI machines) falls through to the user's cache dir rather than failing.
 * Every command resolves it the same way, so `umount` and `stats` find what the daemon wrote.
 */
export function runtimeDir(): string {
  if (chosen) return chosen
  const { uid, namespaced } = outerUid()
  const candidates = [
    ...(process.env.XDG_RUNTIME_DIR ? [join(process.env.XDG_RUNTIME_DIR, 'layerfs')] : []),
    ...(uid === 0 && !namespaced ? ['/run/layerfs'] : []),
    join(tmpdir(), `layerfs-${uid}`),
    join(cacheDir(), `run-${uid}`),
  ]
  for (const dir of candidates) {
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 })
      accessSync(dir, FS.W_OK | FS.X_OK)
      return (chosen = dir)
    } catch { /* not usable: the next one */ }
  }
  return candidates[candidates.length - 1] // unusable too: the error comes where it is written
}

function recordPath(mountpoint: string): string {
  return join(runtimeDir(), createHash('sha256').update(mountpoint).digest('hex').slice(0, 24) + '.json')
}

/** Synchronous: a small local file, written while the mount waits to be declared live. */
export function writeRecord(rec: MountRecord): void {
  mkdirSync(runtimeDir(), { recursive: true, mode: 0o700 })
  writeFileSync(recordPath(rec.mountpoint), JSON.stringify(rec) + '\n')
}

/**
 * A daemon sets up its control socket and record just after its mount is live (serve.ts): what
 * `find` looks for (null while missing) is asked for again for up to a second.
 */
export async function awaitControlFile<T>(find: () => Promise<T | null>): Promise<T | null> {
  for (let waited = 0; ; waited += 25) {
    const found = await find()
    if (found !== null || waited >= 1000) return found
    await new Promise((r) => setTimeout(r, 25))
  }
}

export async function readRecord(mountpoint: string): Promise<MountRecord | null> {
  try {
    return JSON.parse(await readFile(recordPath(mountpoint), 'utf8')) as MountRecord
  } catch {
    return null
  }
}

export async function removeRecord(mountpoint: string): Promise<void> {
  await rm(recordPath(mountpoint), { force: true })
}

/** Whether a process is alive (a zombie left for a parent that never reaps it counts as ended). */
export async function isRunning(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'latin1')
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z'
  } catch {
    return false
  }
}

/**
 * Removes the records (and control sockets) of daemons that no longer exist: one killed outright
 * leaves them behind. A record whose daemon lives, here or in another mount namespace, stays.
 */
export async function pruneDeadRecords(): Promise<number> {
  let removed = 0
  const names = await readdir(runtimeDir()).catch(() => [] as string[])
  const records = new Set(names.filter((n) => n.endsWith('.json')).map((n) => n.slice(0, -'.json'.length)))
  for (const name of names) {
    // a control socket without a record that nobody listens on (a daemon killed while setting up)
    if (name.endsWith('.sock') && !records.has(name.slice(0, -'.sock'.length)) && !(await listening(join(runtimeDir(), name)))) {
      await rm(join(runtimeDir(), name), { force: true })
      removed++
    }
    if (!name.endsWith('.json')) continue
    const file = join(runtimeDir(), name)
    let rec: MountRecord
    try {
      rec = JSON.parse(await readFile(file, 'utf8')) as MountRecord
    } catch {
      continue // being written, or not ours
    }
    if (!Number.isInteger(rec.pid) || (await isRunning(rec.pid))) continue
    await rm(file, { force: true })
    await rm(file.slice(0, -'.json'.length) + '.sock', { force: true })
    removed++
  }
  return removed
}

/** Whether a daemon accepts connections on the unix socket at `path`. */
function listening(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = createConnection(path)
    sock.on('connect', () => { sock.destroy(); resolve(true) })
    sock.on('error', () => resolve(false))
  })
}

export interface MountInfo {
  readonly id: number
  readonly mountpoint: string
  readonly fstype: string
  readonly source: string
}

/** Undoes mountinfo's octal escapes (\040 space, \011 tab, \012 newline, \134 backslash). */
function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
}

export async function mounts(): Promise<MountInfo[]> {
  return parseMountinfo(await readFile('/proc/self/mountinfo', 'latin1'))
}

/** The mount table now, read synchronously (a small file from the kernel: cheaper than a trip through the thread pool). */
export function mountsNow(): MountInfo[] {
  return parseMountinfo(readFileSync('/proc/self/mountinfo', 'latin1'))
}

function parseMountinfo(text: string): MountInfo[] {
  const out: MountInfo[] = []
  for (const line of text.split('\n')) {
    if (!line) continue
    const fields = line.split(' ')
    const dash = fields.indexOf('-')
    if (dash < 0) continue
    out.push({
      id: Number(fields[0]),
      mountpoint: Buffer.from(unescape(fields[4]), 'latin1').toString('utf8'),
      fstype: fields[dash + 1],
      source: unescape(fields[dash + 2] ?? ''),
    })
  }
  return out
}

/** The topmost mount at exactly this path, if any. */
export async function mountAt(path: string): Promise<MountInfo | undefined> {
  return topmostAt(await mounts(), path)
}

export function mountAtNow(path: string): MountInfo | undefined {
  return topmostAt(mountsNow(), path)
}

function topmostAt(all: MountInfo[], path: string): MountInfo | undefined {
  for (let i = all.length - 1; i >= 0; i--) if (all[i].mountpoint === path) return all[i]
  return undefined
}
