import { spawn } from 'node:child_process'
import { readFileSync, readdirSync, readlinkSync, realpathSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { createConnection, Socket } from 'node:net'
import { log } from './log'
import { NATIVE_BUILD, sys } from './sys'
import { preloadRecentIndexes } from './layer/index-file'
import { holdsLoaded } from './layer/loaded-indexes'
import { openGate, type PreparedSession, type StandbyGate } from './fuse/lowlevel'

// The standby: a daemon started ahead of need. Starting Node and loading layerfs takes ~140 ms of a
// mount's time; a C program takes ~1 ms. So after a mount is live its daemon starts one more
// daemon that loads everything, runs the hot code once (src/warm-up.ts) and waits. bin/layerfs's
// launcher (native/launch.c) hands the next mount to it; it serves that mount as any daemon would
// and starts the next standby. It declines what it cannot serve exactly as a fresh daemon would
// (another environment, a debug log to show), and the launcher runs Node instead.
//
// A prepared mount: the launcher that starts a standby tells it the mount just made (its command
// line, cwd, umask; the environment is the standby's own), and the standby makes that mount ready
// once it waits (read-only ones, as root: layers opened, FUSE session made, /dev/fuse open). Its
// gate (native/standby_gate.c), a thread that takes every connection, mounts it itself for a
// request that differs at most in the mountpoint, if nothing it was made from changed (the layers'
// archives and indexes, a directory layer's identity, this build's files) and the mountpoint is a
// free directory, and answers at once; JavaScript learns of it afterwards. Anything else goes to
// JavaScript as before. Its JavaScript took ~3 ms to parse, open and mount (code not run for a
// second runs 2-3x slower), where fuse-overlayfs mounts in ~1 ms: the gate takes ~0.3 ms.
//
// One per user and user/mount/pid namespace, on an abstract unix socket (no file to go stale);
// both ends check the other's uid. It ends after LAYERFS_STANDBY_IDLE seconds unused (600), or on
// `layerfs standby stop`. LAYERFS_STANDBY=0 turns it off.

export const STANDBY_ARG = '__layerfs_standby'
/** The script every daemon runs (bin/layerfs's launcher names the same one). */
export const BOOT_JS = join(__dirname, 'boot.js')
const MAGIC = 'layerfs-standby-2'
const DEFAULT_IDLE_SECONDS = 600
/** How often a standby looks again for an index being built elsewhere before it gives up: ~2 minutes. */
const PREPARE_RETRIES = 66

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
  return relevantEntries(env).join('\0')
}

/** The relevant variables as NAME=value, sorted by name (native/standby_gate.c picks the same). */
function relevantEntries(env: Map<string, string>): string[] {
  return [...env]
    .filter(([k]) => (/^(LAYERFS_|DEBUG|XDG_|NODE_)/.test(k) || ['HOME', 'TMPDIR', 'PATH'].includes(k))
      && k !== 'LAYERFS_PROGRESS' && k !== 'NODE_EXTRA_CA_CERTS')
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
}

/**
 * The mount request a standby expects next: the last one made (the launcher's request without its
 * environment, which is the standby's own: it was started from that launcher).
 */
export interface ExpectedRequest {
  readonly bootJs: string
  readonly cwd: string
  readonly umask: number
  readonly columns: number
  readonly args: readonly string[]
}

/**
 * A request's canonical form, as the gate compares it (native/standby_gate.c canonical()): the
 * fields as the launcher sends them up to the last argument, the mountpoint (argument `mntArg`)
 * left empty, then the relevant variables, sorted.
 */
export function canonicalRequest(r: ExpectedRequest, env: Map<string, string>, mntArg: number): Buffer {
  const args = r.args.map((a, i) => (i === mntArg ? '' : a))
  const fields = [MAGIC, r.bootJs, r.cwd, r.umask.toString(8), String(r.columns), String(args.length), ...args, ...relevantEntries(env)]
  return Buffer.from(fields.map((f) => f + '\0').join(''), 'utf8')
}

/** An expected request, for a standby's command line (no environment: only paths and options). */
export function encodeExpected(r: ExpectedRequest): string {
  return Buffer.from(JSON.stringify(r)).toString('base64url')
}

export function decodeExpected(s: string | undefined): ExpectedRequest | null {
  if (!s) return null
  try {
    const r = JSON.parse(Buffer.from(s, 'base64url').toString('utf8')) as ExpectedRequest
    const ok = typeof r.bootJs === 'string' && typeof r.cwd === 'string' && Number.isInteger(r.umask) && Number.isInteger(r.columns)
      && Array.isArray(r.args) && r.args.every((a) => typeof a === 'string')
    return ok ? r : null
  } catch {
    return null
  }
}

/** What identifies this build: a launcher of another installation, or a rebuilt one, gets a fresh daemon. */
/** The compiled JS and the native modules: `make build` may replace only the latter, and a standby keeps the ones it loaded. */
const BUILD_FILES = [__filename, join(NATIVE_BUILD, 'layerfs_fuse.node'), join(NATIVE_BUILD, 'layerfs_sys.node')]
const BUILD = buildIdentity()

function buildIdentity(): string {
  try {
    return BUILD_FILES.map((f) => {
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

/** A standby's command line; `expected`: the mount it is to prepare. */
export function standbyCommand(v8Flags: readonly string[], expected?: ExpectedRequest): string[] {
  return [process.execPath, ...v8Flags, BOOT_JS, STANDBY_ARG, ...(expected ? [encodeExpected(expected)] : [])]
}

/**
 * Starts a standby for this user and namespaces, detached; it takes low priority itself once its
 * code is loaded (runStandby). A fresh daemon does this once its mount is live; a standby's
 * launcher starts the next one (the 'n' frame).
 */
export function startStandby(v8Flags: readonly string[], expected?: ExpectedRequest): void {
  // a debug log must reach a terminal: a standby would only decline
  if (!standbyEnabled() || process.env.DEBUG) return
  try {
    const env = { ...process.env }
    delete env.LAYERFS_PROGRESS
    delete env.NODE_EXTRA_CA_CERTS
    const [node, ...args] = standbyCommand(v8Flags, expected)
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
 * A mount made ready ahead (the last one made, read-only): the gate mounts it itself for a request
 * exactly like `expected`, while nothing it was made from changed (see serve.ts prepareServe).
 */
export interface PreparedOffer {
  readonly session: PreparedSession
  readonly expected: ExpectedRequest
  /** Which argument is the mountpoint: the request may name any. */
  readonly mntArg: number
  readonly checks: ReadonlyArray<{ path: string; identityOnly: boolean }>
  /** What the gate sends the launcher: the next standby's command line, and exit code 0. */
  readonly reply: Buffer
  /** The gate mounted it at `mountpoint` (resolved): now this process's mount. */
  adopt(mountpoint: string): Promise<void>
  /** Not to be mounted: given up. */
  discard(): Promise<void>
}

/**
 * Runs a standby: warms up, listens, and hands the first mount it accepts to `take`, or has its
 * gate mount the one `prepare` made ready. Resolves when it has taken one (the process is then that
 * mount's daemon); exits the process when idle too long or when another standby already listens.
 * Signals are the caller's to handle.
 */
export function runStandby(warmUp: () => Promise<void>, take: TakeRequest, prepare: () => Promise<PreparedOffer | 'later' | null>): Promise<void> {
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
    let gate: StandbyGate | null = null
    let offer: PreparedOffer | null = null
    /** The standby's job is done: a mount is this process's now. */
    const taken = (): void => {
      if (idle) clearTimeout(idle)
      gate?.close() // the name is free for the next standby
      // its threads are at normal priority already: the gate raised them when it handed the
      // request over or mounted (standby_gate.c)
      resolve()
    }
    const onRequest = (fd: number, body: Buffer): void => {
      rearm()
      const sock = new Socket({ fd, readable: false, writable: true })
      sock.on('error', () => undefined)
      const req = busy ? null : decodeRequest(body)
      if (!req) {
        sock.end(frame('f'))
        return
      }
      busy = true // at normal priority: the gate raised every thread before it handed the request over
      const out: StandbyReply = {
        write: (b) => { if (!sock.destroyed) sock.write(b) },
        end: (last) => new Promise<void>((done) => (sock.destroyed ? done() : sock.end(last, () => done()))),
      }
      const serveIt = async (): Promise<'served' | 'declined' | 'stop'> => {
        // the prepared mount is not to be taken while this one is served; if it was, this declines
        if (gate && !gate.unprepare()) {
          await out.end(frame('f'))
          return 'declined'
        }
        const given = offer
        offer = null
        await given?.discard()
        return take(req, out)
      }
      serveIt().then((what) => {
        if (what === 'declined') {
          busy = false
          sys.standbyPriority(true)
          offerPrepared() // given up to serve it
          return
        }
        if (what === 'stop') process.exit(0)
        taken()
      }, (err: Error) => {
        log.cli('standby: %s', err.stack)
        process.exit(1)
      })
    }
    const onMounted = (mountpoint: string): void => {
      busy = true
      const given = offer
      offer = null
      if (!given) return // cannot be: the gate mounts only what it was given
      given.adopt(mountpoint).then(taken, (err: Error) => {
        log.cli('standby: %s', err.stack)
        process.exit(1)
      })
    }
    warmUp().catch((err: Error) => log.cli('standby warm-up: %s', err.message)).finally(() => {
      try {
        preloadRecentIndexes(holdsLoaded)
      } catch (err) {
        log.cli('standby preload: %s', (err as Error).message)
      }
      try {
        gate = openGate(standbyAddress(), onRequest, onMounted)
      } catch (err) {
        // another standby holds the name: one is enough
        const e = err as NodeJS.ErrnoException
        log.cli('standby: %s', e.code === 'EADDRINUSE' ? 'another standby is waiting' : e.message)
        process.exit(0)
      }
      rearm()
      // one request to itself, declined: the first launcher's is then not the first this code runs
      void askStandby(['standby', 'ping'], ownEnvironment()).then(() => offerPrepared())
    })
    let preparing = false
    let retry: NodeJS.Timeout | null = null
    /** Prepares the expected mount and gives it to the gate, unless a request is being served. */
    const offerPrepared = (attempt = 0): void => {
      // one at a time: its ping's answer and the ping itself, declined, both ask for one
      if (busy || offer || preparing) return
      if (retry) clearTimeout(retry)
      retry = null
      preparing = true
      prepare().then((o) => {
        preparing = false
        if (o === 'later') {
          // an index the mount before is still building or saving: looked for again, less often
          // each time, for about as long as indexing a big layer takes
          if (attempt < PREPARE_RETRIES) retry = setTimeout(() => offerPrepared(attempt + 1), Math.min(2000, 50 << attempt)).unref()
          return
        }
        if (!o || busy || offer || !gate) {
          void o?.discard()
          return
        }
        offer = o
        gate.prepare(o.session, canonicalRequest(o.expected, ownEnvironment(), o.mntArg), o.mntArg,
          [...o.checks, ...BUILD_FILES.map((path) => ({ path, identityOnly: false }))], o.reply)
      }).catch((err: Error) => {
        preparing = false
        log.cli('standby: no mount prepared: %s', err.message)
        const o = offer
        offer = null
        void o?.discard()
      })
    }
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

