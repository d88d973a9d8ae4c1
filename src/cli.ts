import { spawn, execFile } from 'node:child_process'
import { createWriteStream, writeSync } from 'node:fs'
import { lstat, readFile, readdir, readlink, realpath } from 'node:fs/promises'
import { basename } from 'node:path'
import { UserError } from './errors'
import { parseArgs, type MountRequest } from './options'
import type { ServeHooks, Served } from './serve'
import { silentProgress, terminalProgress } from './progress'
import { awaitControlFile, isRunning, mountAt, readRecord } from './runtime'
import { ask, type WhichAnswer } from './control'
import type { StatsReport } from './stats'
import { displayPath } from './paths'
import { log, redirectLog } from './log'
import { saveCodeCache } from './code-cache'
import { BOOT_JS, STANDBY_ARG, decodeExpected, encodeExpected, frame, runStandby, sameBuild, sameEnvironment, standbyCommand, standbyEnabled, startStandby, stopStandby,
  type ExpectedRequest, type PreparedOffer, type StandbyRequest } from './standby'

// The command line: the only place that talks to the user and picks exit codes.

const USAGE = `usage:
  layerfs mount [-f] [-q] -o lowerdir=TOP:...:BASE[,upperdir=U,workdir=W] MOUNTPOINT
  layerfs mount [-f] [-q] [--platform OS/ARCH] IMAGE MOUNTPOINT [-o upperdir=U,workdir=W]
  layerfs [-f] -o lowerdir=TOP:...:BASE MOUNTPOINT          (as fuse-overlayfs is called)
  layerfs SOURCE MOUNTPOINT -o lowerdir=...                  (mount -t fuse.layerfs SOURCE MOUNTPOINT -o ...)
  layerfs umount MOUNTPOINT
  layerfs tree MOUNTPOINT             the merged tree, with the layer serving each entry
  layerfs stats MOUNTPOINT [--json]   what the daemon did: copy-ups and their cost, lookups, reads
  layerfs cache ls                    the persisted layer indexes
  layerfs cache prune [--all] [--unused-days N]
                                      remove stale indexes (archive gone or changed), old ones, or all
  layerfs standby stop                end the daemon kept waiting for the next mount

Each lower is a directory (extracted layer, kernel-overlay form) or a tar, plain or gzip, read in
place; the leftmost is the topmost. IMAGE is docker-archive:PATH[:NAME:TAG] (docker save, skopeo),
oci:DIR[:REF] (an OCI image layout), or a path to either. Without upperdir the mount is read-only.
mount returns once the mount is live and leaves a daemon serving it; -f keeps it in the foreground;
-q hides progress bars. End it with 'umount MOUNTPOINT'. -o userxattr writes user.overlay.* xattrs;
-o metacopy=on copies only metadata for chmod/chown/utimens/xattr changes (kernel metacopy form).
A lower file is copied up at its first change (write, truncate, chmod, ...); -o copyup=open copies it
up already when it is opened for writing, as kernel overlayfs and fuse-overlayfs do.
-o readaround=SIZE (read-only mounts; default 128k, 0: off): a small read of a big file that looks
random brings the SIZE-aligned window around it into the page cache, so reads near it need no request.
Options it does not know are accepted and ignored. DEBUG=layerfs:* logs what it does.
After a mount, one more daemon waits (10 minutes) to serve the next mount at once; LAYERFS_STANDBY=0
turns that off.`

const DAEMON_ARG = '__layerfs_daemon'
/**
 * The daemon's V8 flags. A small young generation: the daemon allocates little per request, and V8's
 * default (16 MiB semi-spaces) costs ~30 MB of resident memory for nothing (114 -> 84 MB after a
 * walk). Any flag makes Node compile its own modules from source (~30 ms more to start; see
 * native-notes/fuse-lowlevel.md); once paid, two more are free: baseline code and inline caches
 * from a function's first call, for the first requests of a fresh daemon (a first copy-up: ~5% less).
 * And a slower-growing old generation: after a walk of 200k entries the heap held ~55 MB live in
 * ~110 MB committed (V8 grows it by up to 4x per collection); growing by 40% at most, the daemon
 * stays at 146 MB resident instead of 202, for 16 major collections in that walk instead of 4 (the
 * walk: 5.2 against 5.1 s; 20%: 140 MB but 5.6 s).
 */
const DAEMON_V8_FLAGS = ['--max-semi-space-size=2', '--always-sparkplug', '--no-lazy-feedback-allocation', '--heap-growing-percent=40']
/** How long after its mount is live a daemon Node started (no standby was waiting) starts the next standby. */
const STANDBY_DELAY_MS = 1000

function fail(err: unknown): never {
  const message = err instanceof UserError ? err.message : `unexpected error: ${(err as Error)?.message ?? String(err)}`
  if (!(err instanceof UserError)) log.cli('%s', (err as Error)?.stack)
  process.stderr.write(`layerfs: ${message.replace(/\n/g, ' ')}\n`)
  process.exit(1)
}

/** Progress bars go to a terminal only; `columns` is its width (the daemon learns it from its launcher). */
function hooksFor(stderrIsTty: boolean, quiet: boolean, columns: number, write = (s: string): void => void process.stderr.write(s)): ServeHooks {
  return {
    progress: (label) => (stderrIsTty && !quiet ? terminalProgress(label, write, columns) : silentProgress),
  }
}

/** What a daemon tells its launcher when the mount fails: the line the command prints. */
function errorLine(err: unknown): string {
  return err instanceof UserError ? err.message : `unexpected error: ${(err as Error)?.message}`
}

/**
 * Ends the mount on SIGINT/SIGTERM/SIGHUP. Installed before mounting: a signal that arrives while
 * the mount is coming up (it is visible before serve() returns) still unmounts cleanly.
 */
function stopOnSignals(): (served: Served) => void {
  let live: Served | null = null
  let asked = false
  const stop = (): void => {
    asked = true
    if (live) void live.stop()
  }
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, stop)
  return (served) => {
    live = served
    if (asked) void served.stop()
  }
}

async function runForeground(req: MountRequest): Promise<void> {
  const onServed = stopOnSignals()
  const { serve } = await import('./serve') // loaded only where it serves: the launcher stays quick
  const served = await serve(req, hooksFor(Boolean(process.stderr.isTTY), req.quiet, process.stderr.columns || 80))
  onServed(served)
  await served.ended
  saveCodeCache() // what this daemon ran, compiled, for the next one
  process.exit(0)
}

/** Starts the daemon and waits for its word on fd 3: ready, or one error line. */
function runBackground(req: MountRequest, argv: readonly string[]): Promise<void> {
  // the request as a launcher sends it (its script is this one: bin/layerfs ran `node SCRIPT ARGS`),
  // for the daemon's standby to prepare
  const expected: ExpectedRequest = { bootJs: process.argv[1], cwd: process.cwd(), umask: currentUmask(), columns: process.stderr.isTTY ? process.stderr.columns || 80 : 0, args: [...argv] }
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...DAEMON_V8_FLAGS, BOOT_JS, DAEMON_ARG, Buffer.from(JSON.stringify(req)).toString('base64'), encodeExpected(expected)], {
      detached: true, // its own session: it outlives this shell and its terminal
      stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
      cwd: '/',
      // without NODE_EXTRA_CA_CERTS: the daemon makes no TLS connections (see bin/layerfs)
      env: { ...process.env, NODE_EXTRA_CA_CERTS: undefined, LAYERFS_PROGRESS: process.stderr.isTTY && !req.quiet ? `tty:${process.stderr.columns || 80}` : '' },
    })
    let said = ''
    let settled = false
    child.stderr!.on('data', (chunk: Buffer) => process.stderr.write(chunk)) // progress bars, relayed
    const status = child.stdio[3] as NodeJS.ReadableStream
    status.on('data', (chunk: Buffer) => {
      said += chunk.toString('utf8')
      const nl = said.indexOf('\n')
      if (nl < 0 || settled) return
      settled = true
      const msg = JSON.parse(said.slice(0, nl)) as { ready?: true; error?: string }
      child.stderr!.destroy()
      ;(status as NodeJS.ReadableStream & { destroy(): void }).destroy()
      child.unref()
      if (msg.ready) resolve()
      else reject(new UserError(msg.error ?? 'the daemon failed'))
    })
    child.on('exit', (code, signal) => {
      if (!settled) {
        settled = true
        reject(new UserError(`the daemon ended before the mount was live (${signal ?? `exit code ${code}`})`))
      }
    })
    child.on('error', (err) => {
      if (!settled) { settled = true; reject(err) }
    })
  })
}

/** The detached daemon: serves, and reports readiness or the error on fd 3. */
async function runDaemon(encoded: string, expected: string | undefined): Promise<void> {
  const req = JSON.parse(Buffer.from(encoded, 'base64').toString('utf8')) as MountRequest
  const tell = (msg: object): void => {
    try {
      writeSync(3, JSON.stringify(msg) + '\n')
    } catch { /* the parent is gone */ }
  }
  // after detaching, stderr leads nowhere: logs go to the log file, if any
  process.stderr.on('error', () => undefined)
  const onServed = stopOnSignals()
  let served
  try {
    const { serve } = await import('./serve')
    const tty = /^tty:(\d+)$/.exec(process.env.LAYERFS_PROGRESS ?? '')
    const hooks = hooksFor(tty !== null, req.quiet, tty ? Number(tty[1]) : 80)
    hooks.mounted = async () => tell({ ready: true }) // the mount is live: its launcher returns
    served = await serve(req, hooks)
  } catch (err) {
    tell({ error: errorLine(err) })
    log.cli('%s', (err as Error)?.stack)
    process.exit(1)
  }
  logTo(req.logFile)
  onServed(served)
  // the next standby a second later, as a launcher starts one (native/launch.c
  // fork_standby_starter): started at once, its boot competed with the mount's first requests (a
  // cold `head -c1` right after the mount took 23-31 ms, 17.5 with the standby started later);
  // at once if the mount ends first, so that the next mount finds one
  let standbyStarted = false
  const startNext = (): void => {
    if (standbyStarted) return
    standbyStarted = true
    startStandby(DAEMON_V8_FLAGS, decodeExpected(expected) ?? undefined)
  }
  const nextStandby = setTimeout(startNext, STANDBY_DELAY_MS)
  await served.ended
  clearTimeout(nextStandby)
  startNext()
  saveCodeCache() // what this daemon ran, compiled, for the next one
  process.exit(0)
}

/** After detaching: logs go to the log file, if any, else nowhere. */
function logTo(logFile: string | null): void {
  if (logFile) {
    const out = createWriteStream(logFile, { flags: 'a' })
    redirectLog((line) => out.write(line))
  } else redirectLog(() => undefined)
}

/** The background mount an expected request asks for (with this process's environment), or null. */
function mountRequestOf(r: ExpectedRequest): MountRequest | null {
  try {
    const cmd = parseArgs(r.args, r.cwd, process.env)
    return cmd.kind === 'mount' && !cmd.request.foreground ? cmd.request : null
  } catch {
    return null
  }
}

/**
 * Which argument of `r` names the mountpoint of `req` (its parse): the one that, changed, changes
 * nothing else. -1 if none does.
 */
function mountpointArg(r: ExpectedRequest, req: MountRequest): number {
  const other = '/nonexistent/layerfs-mountpoint'
  const rest = (m: MountRequest): string => JSON.stringify({ ...m, mountpoint: '' })
  for (let i = r.args.length - 1; i >= 0; i--) {
    if (r.args[i].startsWith('-')) continue
    const moved = mountRequestOf({ ...r, args: r.args.map((a, j) => (j === i ? other : a)) })
    if (moved && moved.mountpoint === other && rest(moved) === rest(req)) return i
  }
  return -1
}

/**
 * A standby (src/standby.ts): waits for a launcher's mount, serves it as runDaemon would, and
 * declines what a fresh daemon would do differently. When its mount ends it waits again, unless
 * another standby already does: the next mount after an unmount then finds one at once.
 */
async function runStandbyDaemon(expectedArg: string | undefined): Promise<void> {
  process.stderr.on('error', () => undefined)
  const { serve, prepareServe } = await import('./serve')
  const { warmUp } = await import('./warm-up')
  // its command line, shown again when a mount it served ends (`pgrep -f __layerfs_standby` finds it)
  const standbyTitle = [process.execPath, ...process.execArgv, ...process.argv.slice(1)].join(' ')
  // SIGINT/SIGTERM/SIGHUP: waiting, it ends; while its scratch mount or a mount comes up, it ends
  // once that is up and unmounted (never a mount left without its daemon); serving, it unmounts
  let busy = true
  let asked = false
  let live: Served | null = null
  const onSignal = (): void => {
    asked = true
    if (live) void live.stop()
    else if (!busy) process.exit(0)
  }
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, onSignal)
  const warm = async (): Promise<void> => {
    await warmUp(serve)
    busy = false
    if (asked) process.exit(0)
  }
  // the mount it expects next: the last one made (the launcher that started it says which)
  let expected = decodeExpected(expectedArg)
  for (let round = 0; ; round++) {
    let served: Served | null = null
    /** The expected mount, made ready for the gate; null if it cannot be, 'later' if not yet (see serve.ts prepareServe). */
    const prepare = async (): Promise<PreparedOffer | 'later' | null> => {
      const want = expected
      const req = want ? mountRequestOf(want) : null
      const mntArg = want && req ? mountpointArg(want, req) : -1
      const p = req && mntArg >= 0 ? await prepareServe(req) : null
      if (p === 'later') return p
      if (!want || !req || !p) return null
      return {
        session: p.session, expected: want, mntArg, checks: p.checks,
        reply: Buffer.concat([frame('n', standbyCommand(DAEMON_V8_FLAGS, want).join('\0')), frame('x', '0')]),
        adopt: async (mountpoint) => {
          served = await p.adopt(hooksFor(false, true, 80), mountpoint)
          process.title = `layerfs daemon ${mountpoint}`
          logTo(req.logFile)
        },
        discard: () => p.discard(),
      }
    }
    await runStandby(round === 0 ? warm : () => Promise.resolve(), async (sreq: StandbyRequest, out) => {
      if (sreq.args[0] === 'standby' && sreq.args[1] === 'stop') {
        await out.end(frame('x', '0'))
        return 'stop'
      }
      // another environment (a debug log to show, another cache) or another build: a fresh daemon
      // serves it and starts a standby of its own, so this one makes way
      if (!sameEnvironment(sreq.env) || !sameBuild(sreq.bootJs) || process.env.DEBUG) {
        await out.end(frame('f'))
        return 'stop'
      }
      let req: MountRequest
      try {
        const cmd = parseArgs(sreq.args, sreq.cwd, Object.fromEntries(sreq.env))
        if (cmd.kind !== 'mount' || cmd.request.foreground) throw new Error('not a background mount')
        req = cmd.request
      } catch {
        await out.end(frame('f')) // the command itself does it, or says what is wrong
        return 'declined'
      }
      process.umask(sreq.umask)
      busy = true
      const hooks = hooksFor(sreq.columns > 0, req.quiet, sreq.columns, (s) => out.write(frame('e', s)))
      // the launcher returns as soon as the mount is live (it also starts the next standby)
      expected = { bootJs: sreq.bootJs, cwd: sreq.cwd, umask: sreq.umask, columns: sreq.columns, args: sreq.args }
      hooks.mounted = () => {
        const next = standbyEnabled() ? frame('n', standbyCommand(DAEMON_V8_FLAGS, expected ?? undefined).join('\0')) : Buffer.alloc(0)
        return out.end(Buffer.concat([next, frame('x', '0')]))
      }
      try {
        served = await serve(req, hooks)
      } catch (err) {
        log.cli('%s', (err as Error)?.stack)
        await out.end(Buffer.concat([frame('e', `layerfs: ${errorLine(err).replace(/\n/g, ' ')}\n`), frame('x', '1')]))
        process.exit(1)
      }
      process.title = `layerfs daemon ${req.mountpoint}`
      logTo(req.logFile)
      return 'served'
    }, prepare)
    const mount = served as Served | null
    if (!mount) process.exit(1)
    live = mount
    if (asked) void mount.stop()
    await mount.ended
    if (round === 0) saveCodeCache() // what it ran, compiled, for the next one (once is enough)
    if (asked) process.exit(0)
    live = null
    busy = false
    logTo(null)
    process.title = standbyTitle
  }
}

const TYPE_CHARS: Record<number, string> = { 0o040000: 'd', 0o120000: 'l', 0o020000: 'c', 0o060000: 'b', 0o010000: 'p', 0o140000: 's' }

function modeString(mode: number): string {
  const rwx = (bits: number, special: boolean, ch: string): string =>
    (bits & 4 ? 'r' : '-') + (bits & 2 ? 'w' : '-') + (special ? (bits & 1 ? ch : ch.toUpperCase()) : bits & 1 ? 'x' : '-')
  return (TYPE_CHARS[mode & 0o170000] ?? '-') + rwx(mode >> 6, (mode & 0o4000) !== 0, 's')
    + rwx(mode >> 3, (mode & 0o2000) !== 0, 's') + rwx(mode, (mode & 0o1000) !== 0, 't')
}

/** `real` (the resolved `mountpoint`) must be where a layerfs mount's root is. */
async function mustBeLayerfsMount(real: string, mountpoint: string): Promise<void> {
  const m = await mountAt(real)
  if (!m || m.fstype !== 'fuse.layerfs') throw new UserError(`${mountpoint}: not a layerfs mount`)
}

/** Walks the mount (through FUSE, as any program would) and asks the daemon which layer serves each entry. */
async function tree(mountpoint: string): Promise<void> {
  const real = await realpath(mountpoint).catch(() => mountpoint)
  await mustBeLayerfsMount(real, mountpoint)
  const found: Array<{ path: string; mode: number; target: string | null }> = []
  const walk = async (rel: string): Promise<void> => {
    const abs = Buffer.concat([Buffer.from(real), Buffer.from(rel === '/' ? '' : rel, 'latin1')])
    const st = await lstat(abs)
    found.push({ path: rel, mode: st.mode, target: st.isSymbolicLink() ? (await readlink(abs, { encoding: 'buffer' })).toString('latin1') : null })
    if (!st.isDirectory()) return
    const names = (await readdir(abs, { encoding: 'buffer' })).map((n) => n.toString('latin1')).sort()
    for (const name of names) await walk(rel === '/' ? '/' + name : rel + '/' + name)
  }
  await walk('/')
  const { layers } = await ask<WhichAnswer>(real, { op: 'which', paths: found.map((f) => f.path) })
  const sources: string[] = []
  for (const l of layers) if (l) sources[l.layer] = l.source
  const width = Math.min(60, Math.max(...found.map((f) => displayPath(f.path).length + (f.target ? displayPath(f.target).length + 4 : 0))))
  const lines = found.map((f, i) => {
    const name = displayPath(f.path) + (f.target !== null ? ' -> ' + displayPath(f.target) : '')
    const layer = layers[i]
    const where = !layer ? '?' : layer.merged.length > 1
      ? `[${layer.merged.join('+')}] merged: ${layer.merged.map((i) => basename(sources[i] ?? '?')).join(' + ')}`
      : `[${layer.layer}] ${basename(layer.source)}`
    return `${modeString(f.mode)}  ${name.padEnd(width)}  ${where}`
  })
  process.stdout.write(lines.join('\n') + '\n')
}

async function stats(mountpoint: string, json: boolean): Promise<void> {
  const real = await realpath(mountpoint).catch(() => mountpoint)
  await mustBeLayerfsMount(real, mountpoint)
  let st: StatsReport
  try {
    st = await ask<StatsReport>(real, { op: 'stats' })
  } catch (err) {
    throw new UserError(`${mountpoint}: ${(err as Error).message}`)
  }
  if (json) {
    process.stdout.write(JSON.stringify(st, null, 2) + '\n')
    return
  }
  const t = st.totals
  const out = [
    `mountpoint  ${st.mountpoint} (daemon pid ${st.pid}${st.mountedBy === 'prepared' ? ', mounted from a prepared standby' : ''})`,
    `copy-ups    ${t.copyUps}, ${t.copyUpBytes} bytes, ${t.copyUpMs} ms`,
    `lookups     ${t.lookups} (${t.cacheHits} from the cache)`,
    `reads       ${t.reads}, ${t.bytesRead} bytes${t.readaround ? `; readaround ${t.readaround} windows, ${t.readaroundBytes} bytes` : ''}`,
    ...(st.reader ? [`requests    ${st.reader.requests} read by the FUSE reader; after each it ${st.reader.polling ? 'polls for the next' : 'sleeps'} (${st.reader.pollTrials} trial${st.reader.pollTrials === 1 ? '' : 's'} of polling)`] : []),
    'layers (0 is the topmost):',
    ...st.layers.map((l) => `  [${l.index}] ${l.kind.padEnd(4)} ${l.source}  ${l.reads} reads, ${l.bytesRead} bytes${l.readaround ? `; readaround ${l.readaround} windows, ${l.readaroundBytes} bytes` : ''}`),
  ]
  if (st.copyUps.length > 0) {
    out.push('copy-ups:', `  ${'ms'.padStart(10)}  ${'bytes'.padStart(12)}  ${'reason'.padEnd(11)} layer  path`)
    for (const c of st.copyUps) {
      out.push(`  ${c.durationMs.toFixed(2).padStart(10)}  ${String(c.bytes).padStart(12)}  ${c.reason.padEnd(11)} [${c.layer.index}]    ${c.path}${c.data ? '' : '  (metadata only)'}`)
    }
  }
  process.stdout.write(out.join('\n') + '\n')
}

function human(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB']
  let i = 0
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++ }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`
}

async function cache(action: 'ls' | 'prune', all: boolean, unusedDays: number | null): Promise<void> {
  const { listCache, pruneCache } = await import('./cache')
  const { cacheDir } = await import('./layer/index-file')
  if (action === 'prune') {
    const r = await pruneCache({ all, unusedDays })
    for (const e of r.removed) process.stdout.write(`removed ${e.key} (${human(e.bytes)}${e.stale ? ', ' + e.stale : ''})\n`)
    process.stdout.write(`${r.removed.length} index(es) removed, ${human(r.bytes)} freed; ${r.markers} checked-blob marker(s) removed\n`)
    return
  }
  const entries = await listCache()
  process.stdout.write(`cache: ${cacheDir()}\n`)
  if (entries.length === 0) {
    process.stdout.write('no indexes\n')
    return
  }
  const rows = entries.map((e) => {
    const m = e.header?.meta
    return [
      e.key.startsWith('sha256:') ? e.key.slice(0, 19) : e.key,
      m?.format ?? '?', m ? String(m.entries) : '?', m ? human(m.size) : '?', human(e.bytes),
      m && m.size > 0 ? `${((e.bytes / m.size) * 100).toFixed(1)}%` : '-',
      e.lastUsed.toISOString().slice(0, 16).replace('T', ' '), e.stale ?? (m?.source ?? ''),
    ]
  })
  const head = ['KEY', 'FORMAT', 'ENTRIES', 'TAR SIZE', 'INDEX', 'RATIO', 'LAST USED', 'SOURCE / STATE']
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
  const fmt = (r: string[]): string => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  ')
  const total = entries.reduce((a, e) => a + e.bytes, 0)
  process.stdout.write([fmt(head), ...rows.map(fmt), `${entries.length} index(es), ${human(total)}`].join('\n') + '\n')
}

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => execFile(cmd, args, (err, _out, stderr) => (err ? reject(new Error(stderr.trim() || err.message)) : resolve())))
}

/** Whether a daemon whose mount ended waits again as the standby (src/standby.ts). */
async function waitsAsStandby(pid: number): Promise<boolean> {
  return (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).includes(STANDBY_ARG)
}

async function unmount(mountpoint: string): Promise<void> {
  let real: string
  try {
    real = await realpath(mountpoint)
  } catch {
    throw new UserError(`${mountpoint}: no such directory`)
  }
  await mustBeLayerfsMount(real, mountpoint)
  // a daemon writes its record just after its mount is live (serve.ts)
  const rec = await awaitControlFile(() => readRecord(real))
  try {
    if (process.getuid?.() === 0) await run('umount', [real])
    else await run('fusermount', ['-u', real]).catch(() => run('fusermount3', ['-u', real]))
  } catch (err) {
    throw new UserError(`umount ${mountpoint}: ${(err as Error).message.split('\n')[0]}`)
  }
  // wait for the daemon to finish closing its layers: its record goes last (a standby's daemon
  // lives on to wait for the next mount), or the daemon ends
  if (rec) {
    for (let i = 0; i < 400; i++) {
      if (!(await isRunning(rec.pid)) || (await waitsAsStandby(rec.pid))) return
      await new Promise((r) => setTimeout(r, 25))
    }
    log.cli('daemon %d still running after unmount', rec.pid)
  }
}

export async function main(argv: string[]): Promise<void> {
  try {
    if (argv[0] === DAEMON_ARG) return await runDaemon(argv[1], argv[2])
    if (argv[0] === STANDBY_ARG) return await runStandbyDaemon(argv[1])
    if (argv[0] === 'standby') {
      if (argv[1] !== 'stop' || argv.length > 2) throw new UserError('usage: layerfs standby stop')
      process.stdout.write((await stopStandby()) ? 'the standby daemon ended\n' : 'no standby daemon was waiting\n')
      return
    }
    const cmd = parseArgs(argv)
    switch (cmd.kind) {
      case 'help':
        process.stdout.write(USAGE + '\n')
        return
      case 'version':
        process.stdout.write(`layerfs ${(require('../../package.json') as { version: string }).version}\n`)
        return
      case 'umount':
        return await unmount(cmd.mountpoint)
      case 'tree':
        return await tree(cmd.mountpoint).catch((err: Error) => { throw err instanceof UserError ? err : new UserError(err.message) })
      case 'stats':
        return await stats(cmd.mountpoint, cmd.json)
      case 'cache':
        return await cache(cmd.action, cmd.all, cmd.unusedDays)
      case 'mount':
        if (cmd.request.foreground) return await runForeground(cmd.request)
        return await runBackground(cmd.request, argv)
    }
  } catch (err) {
    fail(err)
  }
}

if (require.main === module) void main(process.argv.slice(2))

/** The process's umask (process.umask() without an argument is deprecated: it races with threads setting it). */
function currentUmask(): number {
  const mask = process.umask(0o022)
  process.umask(mask)
  return mask
}
