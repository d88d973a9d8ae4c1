import { resolve } from 'node:path'
import { UserError } from './errors'
import { log } from './log'
import { looksLikeImage, parseImageRef, type ImageRef } from './image/reference'

/** What to mount, resolved to absolute paths: the daemon's whole input. */
export interface MountRequest {
  readonly mountpoint: string
  /** Lower layers, topmost first (empty when an image gives them). */
  readonly lowers: readonly string[]
  /** The image whose layers are the lowers, if one was named. */
  readonly image: ImageRef | null
  /** --platform OS/ARCH[/VARIANT] for a multi-platform image; null: this machine's. */
  readonly platform: string | null
  readonly upper: string | null
  readonly work: string | null
  /** The mount's source name in /proc/mounts. */
  readonly fsname: string
  readonly foreground: boolean
  readonly debug: boolean
  readonly quiet: boolean
  /** Write overlay xattrs as user.overlay.* (kernel overlayfs's -o userxattr) instead of trusted.overlay.*. */
  readonly userxattr: boolean
  /** -o metacopy=on: chmod, chown, utimens and xattr changes copy a lower file's metadata only, as kernel overlayfs's metacopy=on. */
  readonly metacopy: boolean
  /**
   * -o copyup=write (default): a lower file is copied up at its first change (a write, truncation,
   * chmod, ...); copyup=open: already at an open for writing, as kernel overlayfs and fuse-overlayfs do.
   */
  readonly copyUpAt: 'open' | 'write'
  /**
   * -o readaround=SIZE: on a read-only mount, a small read of a big file that looks random brings
   * the SIZE-aligned window around it into the page cache (bytes; 0: off).
   */
  readonly readaround: number
  /** Where to write the stats (JSON) when the mount ends, from -o stats=FILE. */
  readonly statsFile: string | null
  /** Daemon log file (after it detaches), from -o log=FILE or $LAYERFS_LOG. */
  readonly logFile: string | null
  /** Whether tar indexes are read from and written to the cache (default true; a standby's scratch mount keeps none). */
  readonly persistIndex?: boolean
}

export type Command =
  | { readonly kind: 'mount'; readonly request: MountRequest }
  | { readonly kind: 'umount'; readonly mountpoint: string }
  /** The merged tree of a live mount, with the layer serving each entry. */
  | { readonly kind: 'tree'; readonly mountpoint: string }
  /** What the daemon did: copy-ups and their cost, lookups, reads per layer. */
  | { readonly kind: 'stats'; readonly mountpoint: string; readonly json: boolean }
  /** The index cache: list it, or trim it. */
  | { readonly kind: 'cache'; readonly action: 'ls' | 'prune'; readonly all: boolean; readonly unusedDays: number | null }
  | { readonly kind: 'help' }
  | { readonly kind: 'version' }

/** Options that fuse-overlayfs, mount(8) and mount.fuse pass and that layerfs does not need. */
const KNOWN_IGNORED = new Set([
  'rw', 'ro', 'dev', 'nodev', 'suid', 'nosuid', 'exec', 'noexec', 'auto', 'noauto', 'user', 'nouser', 'users',
  'atime', 'noatime', 'relatime', 'strictatime', 'diratime', 'nodiratime', 'sync', 'async', 'defaults', '_netdev',
  'fsync', 'squash_to_root', 'squash_to_uid', 'squash_to_gid', 'static_nlink', 'noacl', 'xino', 'index',
  'redirect_dir', 'volatile', 'threaded', 'plugins', 'uidmapping', 'gidmapping', 'timeout',
  'context', 'fscontext', 'defcontext', 'rootcontext', 'allow_other', 'allow_root', 'default_permissions',
])

/** Splits at `sep` where it is not escaped by a backslash; `\sep` becomes `sep`, other backslashes stay. */
function splitEscaped(arg: string, sep: string): string[] {
  const out: string[] = []
  let cur = ''
  for (let i = 0; i < arg.length; i++) {
    const c = arg[i]
    if (c === '\\' && arg[i + 1] === sep) cur += arg[++i]
    else if (c === sep) { out.push(cur); cur = '' }
    else cur += c
  }
  out.push(cur)
  return out
}

/** Splits one -o argument at commas not escaped by a backslash. */
export function splitOptions(arg: string): string[] {
  return splitEscaped(arg, ',')
}

function parseOptionList(args: readonly string[]): Map<string, string | true> {
  const opts = new Map<string, string | true>()
  for (const arg of args) {
    for (const item of splitOptions(arg)) {
      if (item === '') continue
      const eq = item.indexOf('=')
      if (eq === 0) throw new UserError(`bad option syntax: '${item}' (expected NAME or NAME=VALUE)`)
      if (eq < 0) opts.set(item, true)
      else opts.set(item.slice(0, eq), item.slice(eq + 1))
    }
  }
  return opts
}

function pathOption(opts: Map<string, string | true>, name: string, cwd: string): string | null {
  const v = opts.get(name)
  if (v === undefined) return null
  if (v === true || v === '') throw new UserError(`bad option syntax: ${name} needs a value (${name}=PATH)`)
  return resolve(cwd, v)
}

/** The kernel's own readahead window: what a random read brings in unless -o readaround says otherwise. */
export const DEFAULT_READAROUND = 128 * 1024

/** -o readaround=SIZE: 0 (off), or a power of two from 8k to 16m (k and m: KiB and MiB). */
function readaroundOption(v: string | true | undefined): number {
  if (v === undefined) return DEFAULT_READAROUND
  const m = typeof v === 'string' ? /^(\d+)([km]?)$/i.exec(v) : null
  const bytes = m ? Number(m[1]) * (m[2] === '' ? 1 : m[2].toLowerCase() === 'k' ? 1024 : 1 << 20) : NaN
  if (bytes === 0 || (bytes >= 8192 && bytes <= 1 << 24 && (bytes & (bytes - 1)) === 0)) return bytes
  throw new UserError(`bad option: readaround=${v === true ? '' : v} (0, or a power of two from 8k to 16m)`)
}

function copyUpOption(v: string | true | undefined): 'open' | 'write' {
  if (v === undefined || v === 'write') return 'write'
  if (v === 'open') return 'open'
  throw new UserError(`bad option: copyup=${v === true ? '' : v} (write or open)`)
}

function metacopyOption(v: string | true | undefined): boolean {
  if (v === undefined || v === 'off') return false
  if (v === true || v === 'on') return true
  throw new UserError(`bad option: metacopy=${v} (on or off)`)
}

/**
 * Parses the command line in all the forms existing tools use:
 *   layerfs mount [-f] -o lowerdir=TOP:...:BASE MOUNTPOINT      (ours)
 *   layerfs [-f] -o lowerdir=...,upperdir=U,workdir=W MOUNTPOINT  (as fuse-overlayfs is called)
 *   layerfs SOURCE MOUNTPOINT -o OPTS                             (mount.fuse, mount -t fuse.layerfs)
 *   layerfs umount MOUNTPOINT
 *   layerfs tree MOUNTPOINT, layerfs stats MOUNTPOINT [--json]
 */
export function parseArgs(argv: readonly string[], cwd = process.cwd(), env: NodeJS.ProcessEnv = process.env): Command {
  const args = [...argv]
  if (args[0] === 'umount' || args[0] === 'unmount') {
    if (args.length !== 2) throw new UserError('usage: layerfs umount MOUNTPOINT')
    return { kind: 'umount', mountpoint: resolve(cwd, args[1]) }
  }
  if (args[0] === 'tree') {
    if (args.length !== 2) throw new UserError('usage: layerfs tree MOUNTPOINT')
    return { kind: 'tree', mountpoint: resolve(cwd, args[1]) }
  }
  if (args[0] === 'stats') {
    const rest = args.slice(1).filter((a) => a !== '--json')
    if (rest.length !== 1) throw new UserError('usage: layerfs stats MOUNTPOINT [--json]')
    return { kind: 'stats', mountpoint: resolve(cwd, rest[0]), json: args.includes('--json') }
  }
  if (args[0] === 'cache') {
    const action = args[1]
    const usage = 'usage: layerfs cache ls | layerfs cache prune [--all] [--unused-days N]'
    if (action === 'ls' && args.length === 2) return { kind: 'cache', action, all: false, unusedDays: null }
    if (action !== 'prune') throw new UserError(usage)
    let all = false
    let unusedDays: number | null = null
    for (let i = 2; i < args.length; i++) {
      if (args[i] === '--all') all = true
      else if (args[i] === '--unused-days' && i + 1 < args.length && /^\d+(\.\d+)?$/.test(args[i + 1])) unusedDays = Number(args[++i])
      else throw new UserError(usage)
    }
    return { kind: 'cache', action, all, unusedDays }
  }
  if (args[0] === 'mount') args.shift()
  const positional: string[] = []
  const optionArgs: string[] = []
  let foreground = false
  let debug = false
  let quiet = false
  let platform: string | null = null
  for (let i = 0; i < args.length; i++) {
    const a = args[i]
    if (a === '-o') {
      if (i + 1 >= args.length) throw new UserError('bad option syntax: -o needs an option list')
      optionArgs.push(args[++i])
    } else if (a.startsWith('-o') && a.length > 2) optionArgs.push(a.slice(2))
    else if (a === '-f' || a === '--foreground') foreground = true
    else if (a === '-d' || a === '--debug') { debug = true; foreground = true }
    else if (a === '-q' || a === '--quiet') quiet = true
    else if (a === '--platform' || a.startsWith('--platform=')) {
      if (a === '--platform' && i + 1 >= args.length) throw new UserError('bad option syntax: --platform needs OS/ARCH')
      platform = a === '--platform' ? args[++i] : a.slice('--platform='.length)
    }
    else if (a === '-h' || a === '--help') return { kind: 'help' }
    else if (a === '-V' || a === '--version') return { kind: 'version' }
    else if (a === '-s' || a === '-n' || a === '-v') log.cli('ignoring flag %s', a) // mount.fuse / fuse-overlayfs habits
    else if (a === '--') positional.push(...args.slice(i + 1)), (i = args.length)
    else if (a.startsWith('-') && a !== '-') throw new UserError(`unknown flag '${a}' (see layerfs --help)`)
    else positional.push(a)
  }
  if (positional.length === 0) throw new UserError('missing MOUNTPOINT (see layerfs --help)')
  if (positional.length > 2) throw new UserError(`too many arguments: ${positional.slice(2).join(' ')}`)
  const opts = parseOptionList(optionArgs)
  const mountpoint = resolve(cwd, positional[positional.length - 1])
  const source = positional.length === 2 ? positional[0] : null
  const lowerOpt = opts.get('lowerdir')
  let lowers: string[] = []
  let image: ImageRef | null = null
  if (lowerOpt === undefined) {
    // an image: `layerfs mount IMAGE MOUNTPOINT`, or mount.fuse's SOURCE when no lowerdir is given
    if (source === null) throw new UserError('missing -o lowerdir=TOP:...:BASE, or an image (docker-archive:PATH, oci:DIR[:REF])')
    image = parseImageRef(source, cwd)
  } else {
    if (lowerOpt === true || lowerOpt === '') throw new UserError('bad option syntax: lowerdir needs a value (lowerdir=TOP:...:BASE)')
    if (source !== null && looksLikeImage(source)) throw new UserError(`give either an image (${source}) or -o lowerdir=, not both`)
    // fuse-overlayfs and the kernel take '\:' for a colon inside a path
    lowers = splitEscaped(lowerOpt, ':')
    if (lowers.some((p) => p === '')) throw new UserError('bad option syntax: empty path in lowerdir')
  }
  const upper = pathOption(opts, 'upperdir', cwd)
  const work = pathOption(opts, 'workdir', cwd)
  if ((upper === null) !== (work === null)) throw new UserError('upperdir and workdir go together: give both or neither')
  const logOpt = opts.get('log')
  for (const [k, v] of opts) {
    if (['lowerdir', 'upperdir', 'workdir', 'log', 'fsname', 'debug', 'userxattr', 'stats', 'metacopy', 'readaround', 'copyup'].includes(k)) continue
    log.cli('ignoring option %s%s%s', k, v === true ? '' : '=', v === true ? '' : v, KNOWN_IGNORED.has(k.split('=')[0]) ? '' : ' (unknown)')
  }
  const fsnameOpt = opts.get('fsname')
  return {
    kind: 'mount',
    request: {
      mountpoint,
      lowers: lowers.map((p) => resolve(cwd, p)),
      image, platform,
      upper, work,
      fsname: typeof fsnameOpt === 'string' ? fsnameOpt : source ?? 'layerfs',
      foreground,
      debug: debug || opts.has('debug'),
      userxattr: opts.has('userxattr'),
      metacopy: metacopyOption(opts.get('metacopy')),
      copyUpAt: copyUpOption(opts.get('copyup')),
      readaround: readaroundOption(opts.get('readaround')),
      statsFile: pathOption(opts, 'stats', cwd),
      quiet,
      logFile: typeof logOpt === 'string' ? resolve(cwd, logOpt) : env.LAYERFS_LOG ? resolve(cwd, env.LAYERFS_LOG) : null,
    },
  }
}
