import { spawn } from 'node:child_process'
import { readFileSync, readdirSync, readlinkSync, realpathSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { createConnection, createServer, type Socket } from 'node:net'
import { log } from './log'
import { NATIVE_BUILD, sys } from './sys'
import { preloadRecentIndexes } from './layer/index-file'
import { holdsLoaded } from './layer/loaded-indexes'

// The standby: a daemon started ahead of need. Starting Node and loading layerfs takes ~140 ms of a
// mount's time; a C program takes ~1 ms. So after a mount is live its daemon starts one more
// daemon that loads everything, runs the hot code once (src/warm-up.ts) and waits. bin/layerfs's
// launcher (native/launch.c) hands the next mount to it; it serves that mount as any daemon would
// and starts the next standby. It declines what it cannot serve exactly as a fresh daemon would
// (another environment, a debug log to show), and the launcher runs Node instead.
//
// One per user and user/mount/pid namespace, on an abstract unix socket (no file to go stale);
// both ends check the other's uid. It ends after LAYERFS_STANDBY_IDLE seconds unused (600), or on
// `layerfs standby stop`. LAYERFS_STANDBY=0 turns it off.

export const STANDBY_ARG = '__layerfs_standby'
/** The script every daemon runs (bin/layerfs's launcher names the same one). */
export const BOOT_JS = join(__dirname, 'boot.js')
const MAGIC = 'layerfs-standby-2'
const DEFAULT_IDLE_SECONDS = 600

export function standbyEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.LAYERFS_STANDBY !== '0'
}

/** The inode of a process's namespace of kind `name` ('0' when unreadable). */
function nsInode(name: string, pid: number | 'self' = 'self'): string {
  try {
    return /\[(\d+)\]/.exec(readlinkSync(`/proc/${pid}/ns/${name}`))?.[1] ?? '0'
  } catch {
    return '0'
  }
}

/** This process's environment, in the form a launcher sends its own. */
function ownEnvironment(): Map<string, string> {
  return new Map(Object.entries(process.env).filter((e): e is [string, string] => e[1] !== undefined))
}

/** The abstract socket's name; native/launch.c builds the same. */
export function standbyAddress(): string {
  return `\0layerfs-standby-${nsInode('user')}-${nsInode('mnt')}-${nsInode('pid')}-${process.getuid?.() ?? 0}`
}

/** What a launcher sends: where and how it was run. */
export interface StandbyRequest {
  /** The boot script the launcher would run: a standby of another installation or build declines. */
  readonly bootJs: string
  readonly cwd: string
  readonly umask: number
  /** Its stderr's width when a terminal, else 0. */
  readonly columns: number
  readonly args: string[]
  readonly env: Map<string, string>
}

export function encodeRequest(r: StandbyRequest): Buffer {
  const fields = [MAGIC, r.bootJs, r.cwd, r.umask.toString(8), String(r.columns), String(r.args.length), ...r.args,
    String(r.env.size), ...[...r.env].map(([k, v]) => `${k}=${v}`)]
  const body = Buffer.from(fields.map((f) => f + '\0').join(''), 'utf8')
  const len = Buffer.alloc(4)
  len.writeUInt32LE(body.length)
  return Buffer.concat([len, body])
}

export function decodeRequest(body: Buffer): StandbyRequest | null {
  const f = body.toString('utf8').split('\0')
  if (f[0] !== MAGIC) return null
  const argc = Number(f[5])
  const args = f.slice(6, 6 + argc)
  const envc = Number(f[6 + argc])
  const env = new Map<string, string>()
  for (const kv of f.slice(7 + argc, 7 + argc + envc)) {
    const eq = kv.indexOf('=')
    if (eq > 0) env.set(kv.slice(0, eq), kv.slice(eq + 1))
  }
  if (!Number.isInteger(argc) || args.length !== argc || env.size > envc) return null
  return { bootJs: f[1], cwd: f[2], umask: parseInt(f[3], 8), columns: Number(f[4]) || 0, args, env }
}

/** Frames of an answer: 'e' stderr bytes, 'x' exit code, 'f' declined, 'n' the next standby's command line. */
export function frame(type: 'e' | 'x' | 'f' | 'n', body: string | Buffer = ''): Buffer {
  const b = typeof body === 'string' ? Buffer.from(body, 'utf8') : body
  const head = Buffer.alloc(5)
  head.write(type, 0, 'latin1')
  head.writeUInt32LE(b.length, 1)
  return Buffer.concat([head, b])
}

/**
 * The variables whose values a daemon's behaviour depends on: a standby serves a launcher only if
 * they are the same in both. LAYERFS_PROGRESS is the launcher-to-daemon channel, not a setting.
 */
function relevant(env: Map<string, string>): string {
  return [...env]
    .filter(([k]) => (/^(LAYERFS_|DEBUG|XDG_|NODE_)/.test(k) || ['HOME', 'TMPDIR', 'PATH'].includes(k))
      && k !== 'LAYERFS_PROGRESS' && k !== 'NODE_EXTRA_CA_CERTS')
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('\0')
}

/** What identifies this build: a launcher of another installation, or a rebuilt one, gets a fresh daemon. */
const BUILD = buildIdentity()

function buildIdentity(): string {
  // the compiled JS and the native modules: `make build` may replace only the latter, and a
  // standby keeps the ones it loaded
  try {
    return [__filename, join(NATIVE_BUILD, 'layerfs_fuse.node'), join(NATIVE_BUILD, 'layerfs_sys.node')].map((f) => {
      const st = statSync(f)
      return `${st.ino}:${st.mtimeMs}:${st.size}`
    }).join(' ')
  } catch {
    return ''
  }
}

/** Whether a launcher that would run `bootJs` would run this very build. */
export function sameBuild(bootJs: string): boolean {
  try {
    // the launcher names boot.js from its own /proc/self/exe: a name seen to be ours stays ours
    // (one realpath less per mount); a rebuild changes this file, checked every time
    if (bootJs !== knownBootJs) {
      if (realpathSync.native(bootJs) !== (ownBootJs ??= realpathSync.native(BOOT_JS))) return false
      knownBootJs = bootJs
    }
    return buildIdentity() === BUILD
  } catch {
    return false
  }
}
let ownBootJs: string | undefined
let knownBootJs: string | undefined

export function sameEnvironment(theirs: Map<string, string>): boolean {
  // a process's own environment is read once: a standby's does not change
  return relevant(theirs) === (ownRelevant ??= relevant(ownEnvironment()))
}
let ownRelevant: string | undefined

/** A standby's command line. */
export function standbyCommand(v8Flags: readonly string[]): string[] {
  return [process.execPath, ...v8Flags, BOOT_JS, STANDBY_ARG]
}

/**
 * Starts a standby for this user and namespaces, detached; it takes low priority itself once its
 * code is loaded (runStandby). A fresh daemon does this once its mount is live; a standby's
 * launcher starts the next one (the 'n' frame).
 */
export function startStandby(v8Flags: readonly string[]): void {
  // a debug log must reach a terminal: a standby would only decline
  if (!standbyEnabled() || process.env.DEBUG) return
  try {
    const env = { ...process.env }
    delete env.LAYERFS_PROGRESS
    delete env.NODE_EXTRA_CA_CERTS
    const [node, ...args] = standbyCommand(v8Flags)
    const child = spawn(node, args, { detached: true, stdio: 'ignore', cwd: '/', env })
    child.on('error', (err) => log.cli('standby: %s', err.message))
    child.unref()
  } catch (err) {
    log.cli('standby not started: %s', (err as Error).message)
  }
}

/** What the standby does with a request it accepted: serve it, telling the launcher through `out`. */
export type TakeRequest = (req: StandbyRequest, out: StandbyReply) => Promise<'served' | 'declined' | 'stop'>

/** The launcher's connection: frames out; end() sends the last and settles once it is written. */
export interface StandbyReply {
  write(b: Buffer): void
  end(last: Buffer): Promise<void>
}

/**
 * Runs a standby: warms up, listens, and hands the first mount it accepts to `take`. Resolves when
 * it has taken one (the process is then that mount's daemon); exits the process when idle too long
 * or when another standby already listens. Signals are the caller's to handle.
 */
export function runStandby(warmUp: () => Promise<void>, take: TakeRequest): Promise<void> {
  // low priority while it starts and waits (a launcher set it for the first thread; the others too)
  sys.standbyPriority(true)
  return new Promise((resolve) => {
    const idleSeconds = Number(process.env.LAYERFS_STANDBY_IDLE ?? DEFAULT_IDLE_SECONDS)
    let idle: NodeJS.Timeout | null = null
    const rearm = (): void => {
      if (idle) clearTimeout(idle)
      idle = setTimeout(() => process.exit(0), Math.max(1, idleSeconds) * 1000)
    }
    let busy = false
    const server = createServer((sock: Socket) => {
      rearm()
      const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd ?? -1
      if (busy || fd < 0 || sys.peerUid(fd) !== (process.getuid?.() ?? 0)) {
        sock.end(frame('f'))
        return
      }
      let got = Buffer.alloc(0)
      const onData = (chunk: Buffer): void => {
        got = Buffer.concat([got, chunk])
        if (got.length < 4 || got.length < 4 + got.readUInt32LE(0)) return
        sock.off('data', onData)
        const req = decodeRequest(got.subarray(4, 4 + got.readUInt32LE(0)))
        if (!req) {
          sock.end(frame('f'))
          return
        }
        busy = true
        sys.standbyPriority(false, true) // it serves at normal priority: this thread now, the others once mounted
        const out: StandbyReply = {
          write: (b) => { if (!sock.destroyed) sock.write(b) },
          end: (last) => new Promise<void>((done) => (sock.destroyed ? done() : sock.end(last, () => done()))),
        }
        take(req, out).then((what) => {
          if (what === 'declined') {
            busy = false
            sys.standbyPriority(true)
            return
          }
          if (idle) clearTimeout(idle)
          server.close() // the name is free for the next standby
          if (what === 'stop') process.exit(0)
          // the mount is live: the other threads too, a little later, when its first requests are
          // likely served (this lists /proc/self/task: ~50 us of the thread that serves them)
          setTimeout(() => sys.standbyPriority(false), 20).unref()
          resolve()
        }, (err: Error) => {
          log.cli('standby: %s', err.stack)
          process.exit(1)
        })
      }
      sock.on('data', onData)
      sock.on('error', () => undefined)
    })
    server.on('error', (err: NodeJS.ErrnoException) => {
      // another standby holds the name: one is enough
      log.cli('standby: %s', err.code === 'EADDRINUSE' ? 'another standby is waiting' : err.message)
      process.exit(0)
    })
    warmUp().catch((err: Error) => log.cli('standby warm-up: %s', err.message)).finally(() => {
      try {
        preloadRecentIndexes(holdsLoaded)
      } catch (err) {
        log.cli('standby preload: %s', (err as Error).message)
      }
      server.listen(standbyAddress(), () => {
        rearm()
        // one request to itself, declined: the first launcher's is then not the first this code runs
        void askStandby(['standby', 'ping'], ownEnvironment())
      })
    })
  })
}

/** Sends the waiting standby, if any, a request; whether there was one. */
function askStandby(args: string[], env: Map<string, string>): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = createConnection(standbyAddress())
    sock.on('error', () => resolve(false))
    sock.on('connect', () => sock.end(encodeRequest({ bootJs: BOOT_JS, cwd: '/', umask: 0o22, columns: 0, args, env })))
    sock.on('close', () => resolve(true))
    sock.resume()
  })
}

/** Processes of this user and namespaces that are standbys (waiting, or still starting and warming up). */
function standbyProcesses(): number[] {
  const uid = process.getuid?.() ?? 0
  const ns = (pid: number | 'self'): string => nsInode('user', pid) + ':' + nsInode('mnt', pid)
  const mine = ns('self')
  const found: number[] = []
  for (const name of readdirSync('/proc')) {
    const pid = Number(name)
    if (!Number.isInteger(pid) || pid === process.pid) continue
    try {
      if (!readFileSync(`/proc/${pid}/cmdline`, 'latin1').includes(STANDBY_ARG)) continue
      if (statSync(`/proc/${pid}`).uid === uid && ns(pid) === mine) found.push(pid)
    } catch { /* gone, or not ours to see */ }
  }
  return found
}

/**
 * Ends the standby (`layerfs standby stop`), one still starting too: it is asked once it listens
 * (up to 5 s). Whether there was one.
 */
export async function stopStandby(): Promise<boolean> {
  let stopped = false
  for (let i = 0; i < 100; i++) {
    if (await askStandby(['standby', 'stop'], new Map())) stopped = true
    else if (standbyProcesses().length === 0) return stopped
    await new Promise((r) => setTimeout(r, 50))
  }
  return stopped
}

