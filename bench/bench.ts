import { execFileSync, spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs'
import { cpus, totalmem } from 'node:os'
import { join, resolve } from 'node:path'
import { plots } from './plots'
import { fewestP, rankSumP } from './compare'

// `make bench`: layerfs, kernel overlayfs and fuse-overlayfs on the same fixtures (bench/fixtures.sh),
// in one run, the systems interleaved within each repetition so that the machine's drift hits all
// three alike. Cold figures drop the page cache (the timed tools run once on nothing after it) and
// mount afresh. Results: bench/results/latest/.

export type System = 'kernel' | 'fuse-overlayfs' | 'layerfs'
export const SYSTEMS: readonly System[] = ['kernel', 'fuse-overlayfs', 'layerfs']

export interface Row {
  readonly id: string
  readonly title: string
  readonly unit: 's' | 'IOPS' | 'MiB'
  /** For copy-up rows: the file size, for the plot. */
  readonly bytes?: number
  readonly values: Record<System, number[]>
}

const REPO = resolve(__dirname, '..', '..')
const LAYERFS = join(REPO, 'bin', 'layerfs')
const QUICK = process.env.BENCH_QUICK === '1'
const ONLY = process.env.BENCH_ONLY ?? ''
/** First copy-ups of 4 KiB and 1 MiB files timed per run and system (bench/fixtures.sh makes them). */
const COPY_SAMPLES = 8
/**
 * Samples per run and system of the rows that take a few milliseconds, mostly process start-up
 * here (mount ready, first byte, a warm sequential read, appends after a big file's copy-up), and of
 * the cold sequential read: one each per run left their medians to the machine's noise (a 2 ms lead
 * by hand showed as 30 against 28 ms in one run of five).
 */
const SHORT_SAMPLES = Number(process.env.BENCH_SHORT_SAMPLES ?? 4)
/** First copy-ups of the 64 MiB (and 1 GiB) file per run and system: the first on the run's mount, the others on fresh ones. */
const BIG_COPY_SAMPLES = Number(process.env.BENCH_BIG_COPY_SAMPLES ?? 3)
/** Seconds idle (after a sync) before each sample of the idle 1 GiB copy-up row: freed memory goes back to this host within one. */
const IDLE_BEFORE_COPY_S = Number(process.env.BENCH_IDLE_BEFORE_COPY_S ?? 3)
const RUNS = Number(process.env.BENCH_RUNS ?? (QUICK ? 3 : 5))
const FIXTURES = process.env.BENCH_FIXTURES ?? (QUICK ? '/var/tmp/layerfs-bench-quick' : '/var/tmp/layerfs-bench')
const OUT = join(REPO, 'bench', 'results', 'latest')
const SCRATCH = mkdtempSync('/var/tmp/layerfs-bench-run-')
const CACHE = join(SCRATCH, 'cache') // layerfs's index cache, owned by the run

const rows = new Map<string, Row>()
function record(id: string, title: string, unit: Row['unit'], system: System, value: number, bytes?: number): void {
  let row = rows.get(id)
  if (!row) rows.set(id, (row = { id, title, unit, bytes, values: { kernel: [], 'fuse-overlayfs': [], layerfs: [] } }))
  row.values[system].push(value)
}

function sh(cmd: string): string {
  return execFileSync('sh', ['-c', cmd], { encoding: 'utf8', env: { ...process.env, XDG_CACHE_HOME: CACHE } })
}

/** Seconds a shell command takes (it must succeed). */
function timed(cmd: string): number {
  const t0 = process.hrtime.bigint()
  const r = spawnSync('sh', ['-c', cmd], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, XDG_CACHE_HOME: CACHE } })
  const s = Number(process.hrtime.bigint() - t0) / 1e9
  if (r.status !== 0) throw new Error(`${cmd}: ${r.stderr.toString().trim()}`)
  return s
}

/**
 * Seconds a bash builtin command takes, timed by the shell itself ($EPOCHREALTIME around it): for
 * the appends, whose cost is a millisecond or less beside the ~6 ms of starting a shell that
 * `timed` counts (and that varied by a millisecond from one sample to the next here, so that the
 * copy-up rows' medians changed order with the noise).
 */
function timedInShell(cmd: string): number {
  const r = spawnSync('bash', ['-c', `s=$EPOCHREALTIME; ${cmd}; e=$EPOCHREALTIME; echo "$s $e"`], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LC_ALL: 'C', XDG_CACHE_HOME: CACHE } })
  if (r.status !== 0) throw new Error(`${cmd}: ${r.stderr.toString().trim()}`)
  const [start, end] = r.stdout.toString().trim().split(' ').map(Number)
  if (!(end >= start)) throw new Error(`${cmd}: no timing from bash (${r.stdout.toString().trim()})`)
  return end - start
}

/**
 * Drops the page cache, then runs each tool the cold rows time once, on nothing: what is cold is
 * then the filesystem's data, not the tools' own binaries, libraries and locale files. Without
 * this, the first-byte row timed mostly `head` loading from disk, and a system whose mount had just
 * exec'd a C daemon (fuse-overlayfs) found part of libc already read back (measured: 3.6 against
 * 5.2 ms for `head -c1`, and 2.6 against 2.9 ms once the tools were warm).
 */
function dropCaches(): void {
  sh('sync; echo 3 > /proc/sys/vm/drop_caches')
  sh(`head -c0 /dev/null; dd if=/dev/null of=/dev/null status=none; find /dev/null -printf '' ; echo /dev/null | xargs cat`)
}

let counter = 0
interface Mount {
  readonly path: string
  readonly upper: string | null
  pid(): number | null
  unmount(): void
}

/** Mounts `set` (small-files or large-files) with one system; writable with a fresh upper. */
function mount(system: System, set: string, writable: boolean): Mount {
  const base = join(SCRATCH, `m${++counter}`)
  const path = join(base, 'm')
  const upper = join(base, 'u')
  const work = join(base, 'w')
  mkdirSync(path, { recursive: true })
  if (writable) mkdirSync(upper) , mkdirSync(work)
  const dir = join(FIXTURES, `${set}.dir`)
  const rw = writable ? `,upperdir=${upper},workdir=${work}` : ''
  // metadata-only copy-up where a system offers it (kernel overlayfs and layerfs: metacopy=on)
  const meta = writable && system !== 'fuse-overlayfs' ? ',metacopy=on' : ''
  if (system === 'kernel') {
    mkdirSync(join(base, 'empty'))
    sh(`mount -t overlay overlay -o lowerdir=${dir}${writable ? '' : ':' + join(base, 'empty')}${rw}${meta} ${path}`)
  } else if (system === 'fuse-overlayfs') {
    sh(`fuse-overlayfs -o lowerdir=${dir}${rw} ${path} 2>/dev/null`) // it warns of an option it ignores
  } else {
    sh(`${LAYERFS} mount -q -o lowerdir=${join(FIXTURES, `${set}.tar`)}${rw}${meta} ${path}`)
  }
  return {
    path,
    upper: writable ? upper : null,
    pid: () => {
      if (system === 'layerfs') {
        // the daemon says who it is (a standby that took the mount has no request on its command line)
        return (JSON.parse(sh(`${LAYERFS} stats ${path} --json`)) as { pid: number }).pid
      }
      for (const p of sh(`pgrep -f 'fuse-overlayfs.*${path}' || true`).split('\n').filter(Boolean)) {
        let cmdline: string[]
        try {
          cmdline = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0')
        } catch {
          continue // pgrep's own shell, gone
        }
        if (cmdline[0].endsWith('fuse-overlayfs')) return Number(p)
      }
      return null
    },
    unmount: () => {
      if (system === 'layerfs') sh(`${LAYERFS} umount ${path}`)
      else {
        sh(`umount ${path}`)
        // [f]: the pattern must not match this shell's own command line (it did: every wait ran its 5 s)
        if (system === 'fuse-overlayfs') sh(`for i in $(seq 100); do pgrep -f '[f]use-overlayfs.*${path}' >/dev/null || break; sleep 0.05; done`)
      }
      rmSync(base, { recursive: true, force: true })
    },
  }
}

function each(body: (system: System) => void): void {
  for (let run = 0; run < RUNS; run++) {
    // interleaved, and the order rotated per run, so no system always goes first
    for (let i = 0; i < SYSTEMS.length; i++) body(SYSTEMS[(i + run) % SYSTEMS.length])
  }
}

function log(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`)
}

const WALK = (m: string): string => `find ${m} -printf '%s\\n' > /dev/null`
const READ_ALL = (m: string): string => `cd ${m} && find . -type f -print0 | xargs -0 -n 2000 cat > /dev/null`

function smallFileRows(): void {
  log('time from a tarball to the first ls')
  each((s) => {
    // layerfs's index cache, emptied for layerfs's own run only: emptied for the peers' too, the
    // next row ('index cached') found none whenever a peer ran last here (its first layerfs
    // mount then indexed: 636 ms)
    if (s === 'layerfs') rmSync(CACHE, { recursive: true, force: true })
    const ex = join(SCRATCH, 'extract')
    rmSync(ex, { recursive: true, force: true })
    dropCaches()
    let m: Mount | null = null
    const t0 = process.hrtime.bigint()
    if (s === 'layerfs') m = mount(s, 'small-files', false)
    else {
      // the peers need the layer on disk first
      mkdirSync(ex)
      sh(`tar -xf ${join(FIXTURES, 'small-files.tar')} -C ${ex}`)
      const path = join(SCRATCH, 'xm')
      mkdirSync(path, { recursive: true })
      mkdirSync(join(SCRATCH, 'xe'), { recursive: true })
      if (s === 'kernel') sh(`mount -t overlay overlay -o lowerdir=${ex}:${join(SCRATCH, 'xe')} ${path}`)
      else sh(`fuse-overlayfs -o lowerdir=${ex} ${path} 2>/dev/null`)
      m = { path, upper: null, pid: () => null, unmount: () => { sh(`umount ${path}`); sh('sleep 0.2') } }
    }
    sh(`ls ${m.path} > /dev/null`)
    record('first-ls', 'tarball to first ls (index or extract, mount, ls)', 's', s, Number(process.hrtime.bigint() - t0) / 1e9)
    m.unmount()
    rmSync(ex, { recursive: true, force: true })
  })

  log('mount ready with the index cached')
  each((s) => {
    for (let i = 0; i < SHORT_SAMPLES; i++) {
      const t0 = process.hrtime.bigint()
      const m = mount(s, 'small-files', false)
      sh(`ls ${m.path} > /dev/null`)
      record('mount-ready', 'mount ready, index cached (mount + ls)', 's', s, Number(process.hrtime.bigint() - t0) / 1e9)
      m.unmount()
    }
  })

  log('walks and reads of the small-files tree')
  each((s) => {
    dropCaches()
    const m = mount(s, 'small-files', false)
    try {
      record('walk-cold', 'find/stat walk, cold', 's', s, timed(WALK(m.path)))
      record('walk-warm', 'find/stat walk, warm', 's', s, timed(WALK(m.path)))
      const pid = m.pid()
      if (pid) record('rss', 'daemon RSS after the walk', 'MiB', s, Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024)
    } finally {
      m.unmount()
    }
    dropCaches()
    const r = mount(s, 'small-files', false)
    try {
      record('read-all-cold', 'read every small file, cold', 's', s, timed(READ_ALL(r.path)))
      record('read-all-warm', 'read every small file, warm', 's', s, timed(READ_ALL(r.path)))
    } finally {
      r.unmount()
    }
  })

  // the same over a writable mount (an empty upper dir), as podman and most users mount: each system
  // then opens files and directories for real (a read-only layerfs or kernel mount need not)
  log('walks and reads of the small-files tree, writable mount')
  each((s) => {
    const m = mount(s, 'small-files', true)
    try {
      dropCaches()
      record('walk-rw-cold', 'find/stat walk, writable mount, cold', 's', s, timed(WALK(m.path)))
      record('walk-rw-warm', 'find/stat walk, writable mount, warm', 's', s, timed(WALK(m.path)))
      dropCaches()
      record('read-all-rw-cold', 'read every small file, writable mount, cold', 's', s, timed(READ_ALL(m.path)))
      record('read-all-rw-warm', 'read every small file, writable mount, warm', 's', s, timed(READ_ALL(m.path)))
    } finally {
      m.unmount()
    }
  })
}

function largeFileRows(): void {
  const big = QUICK ? 'f64m' : 'f1g'
  const bigMiB = QUICK ? 64 : 1024
  const readBig = (mnt: string): string => `dd if=${mnt}/large/${big} of=/dev/null bs=1M status=none`
  log(`first-byte latency; sequential reads of ${big}`)
  each((s) => {
    dropCaches()
    const m = mount(s, 'large-files', false)
    try {
      // a first byte and the big file, each after the page cache is dropped, on the same mount. One
      // cold read a run left the row to this host's noise: a cold 1 GiB read took 0.35 to 1.4 s
      // for either FUSE system from one run to the next, and 3 samples against 3 never told them apart
      for (let i = 0; i < SHORT_SAMPLES; i++) {
        if (i > 0) dropCaches()
        record('first-byte', 'first-byte latency, cold (head -c1 of a 64 MiB file)', 's', s, timed(`head -c1 ${m.path}/large/f64m > /dev/null`))
        dropCaches()
        record('seq-cold', `sequential read of ${bigMiB} MiB, cold`, 's', s, timed(readBig(m.path)))
      }
      for (let i = 0; i < SHORT_SAMPLES; i++) record('seq-warm', `sequential read of ${bigMiB} MiB, warm`, 's', s, timed(readBig(m.path)))
    } finally {
      m.unmount()
    }
  })

  // Random reads in a pass of their own: a system's fio left the next system's warm sequential read
  // slower, whichever that was (after fuse-overlayfs's fio 147-209 ms, after layerfs's 86-140, caches
  // dropped between; why is not known: free memory was in smaller pieces after it), and in one pass
  // the rotation put layerfs after fuse-overlayfs in two runs of three
  log(`random reads of ${big}`)
  each((s) => {
    dropCaches()
    const m = mount(s, 'large-files', false)
    try {
      // read once first, as the sequential reads had left the file before fio when they shared a pass
      sh(readBig(m.path))
      const fio = JSON.parse(sh(`fio --name=rand --filename=${m.path}/large/${big} --readonly --rw=randread --bs=4k --ioengine=psync `
        + `--runtime=${QUICK ? 3 : 8} --time_based --output-format=json`)) as { jobs: Array<{ read: { iops: number } }> }
      record('rand-iops', 'random 4 KiB reads (fio, IOPS)', 'IOPS', s, fio.jobs[0].read.iops)
    } finally {
      m.unmount()
    }
  })

  const sizes: Array<[string, number]> = [['f4k', 4096], ['f1m', 1 << 20], ['f64m', 64 << 20], ...(QUICK ? [] : [['f1g', 1 << 30]] as Array<[string, number]>)]
  log(`copy-up of ${sizes.map((x) => x[0]).join(', ')}`)
  const label = (name: string): string => name.slice(1).toUpperCase().replace('K', ' KiB').replace('M', ' MiB').replace('G', ' GiB')
  /** A first 1-byte append to `file` (under the mount): its copy-up, recorded in the row of `name`. */
  const firstAppend = (s: System, m: Mount, file: string, name: string, bytes: number): void => {
    // no dirty backlog from the previous system's gigabyte: whoever wrote next was throttled
    // (balance_dirty_pages), and a 1 GiB copy-up swung from 0.3 to 1.3 s with the order
    sh('sync')
    record(`copyup-${name}`, `copy-up of a ${label(name)} lower file (first 1-byte append, timed in the shell)`, 's', s, timedInShell(`printf x >> ${m.path}/${file}`), bytes)
  }
  /** A first 1-byte append to `file` (under the mount) and `secondAppends` more, recorded as the rows of `name`. */
  const appendTwice = (s: System, m: Mount, file: string, name: string, bytes: number, secondAppends = 1): void => {
    firstAppend(s, m, file, name, bytes)
    // later appends are second appends too: the file is in the upper already
    for (let i = 0; i < secondAppends; i++) record(`write2-${name}`, `second 1-byte append to the ${label(name)} file (timed in the shell)`, 's', s, timedInShell(`printf x >> ${m.path}/${file}`), bytes)
  }
  // Every system copies from a source in the page cache: what the previous block (cold reads,
  // caches dropped per system) left there differed by system, and the kernel's copy-ups, run
  // before fuse-overlayfs's, warmed the extracted files the two share (a 1 GiB copy-up from the
  // cold tar: 0.7-1.1 s; from the warm one: 0.3 s).
  const cacheSources = (s: System): void => {
    sh(s === 'layerfs' ? `cat ${join(FIXTURES, 'large-files.tar')} > /dev/null` : `find ${join(FIXTURES, 'large-files.dir')} -type f -exec cat {} + > /dev/null`)
  }
  each((s) => {
    cacheSources(s)
    const m = mount(s, 'large-files', true)
    try {
      // The small copy-ups take a few ms, and a few samples of them changed sides with the
      // machine's noise: each run times COPY_SAMPLES of each (large/cu/NN/f4k copies its directory
      // NN and itself, as the first copy-up of large/f4k copied large/ and itself; f1m then copies
      // only itself). large/cu is copied up first, untimed.
      sh(`chmod 755 ${m.path}/large/cu`)
      for (let i = 1; i <= COPY_SAMPLES; i++) {
        const dir = `large/cu/${String(i).padStart(String(COPY_SAMPLES).length, '0')}`
        for (const [name, bytes] of sizes.slice(0, 2)) appendTwice(s, m, `${dir}/${name}`, name, bytes)
      }
      for (const [name, bytes] of sizes.slice(2)) appendTwice(s, m, `large/${name}`, name, bytes, SHORT_SAMPLES)
      record('meta-copyup', 'chmod of a 64 MiB lower file (metadata copy-up; metacopy=on where offered)', 's', s, timed(`chmod 600 ${m.path}/large/f64m-meta`))
    } finally {
      m.unmount()
    }
    // More first copy-ups of the big files, each on a fresh mount with an empty upper (a file is
    // copied up once per upper): one sample per run left these rows to the host's memory, a 1 GiB
    // copy-up taking 0.2 to 2.8 s from one run to the next.
    for (let k = 1; k < BIG_COPY_SAMPLES; k++) {
      const again = mount(s, 'large-files', true)
      try {
        for (const [name, bytes] of sizes.slice(2)) firstAppend(s, again, `large/${name}`, name, bytes)
      } finally {
        again.unmount()
      }
    }
  })
  if (QUICK) return
  // The 1 GiB copy-ups above mostly follow, by well under a second, the removal of the same
  // system's previous upper: a copy in big folios (the kernel's and fuse-overlayfs's, page-aligned)
  // reuses the big blocks just freed. On a VM whose guest hands free memory back to its host (free
  // page reporting, as here), such a copy a second later took 1.0-1.2 s where it took 155 ms (in
  // another hour the host served it fast either way); a copy in small folios ~0.2 s either way
  // (native-notes, session 29). A user's copy-up seldom follows a gigabyte just freed, so this
  // row times the same copy-up after the machine has been idle.
  log(`copy-up of f1g after ${IDLE_BEFORE_COPY_S} s idle`)
  each((s) => {
    cacheSources(s)
    for (let k = 0; k < BIG_COPY_SAMPLES; k++) {
      const m = mount(s, 'large-files', true)
      try {
        sh(`sync; sleep ${IDLE_BEFORE_COPY_S}`)
        record('idle-copyup-f1g', `copy-up of a 1 GiB lower file after ${IDLE_BEFORE_COPY_S} s idle (first 1-byte append, timed in the shell)`, 's', s, timedInShell(`printf x >> ${m.path}/large/f1g`), 1 << 30)
      } finally {
        m.unmount()
      }
    }
  })
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}

function fmt(v: number, unit: Row['unit']): string {
  if (unit === 'IOPS') return Math.round(v).toLocaleString('en-US')
  if (unit === 'MiB') return v.toFixed(1)
  return v < 0.001 ? `${(v * 1e6).toFixed(0)} µs` : v < 0.01 ? `${(v * 1000).toFixed(2)} ms` : v < 1 ? `${(v * 1000).toFixed(0)} ms` : `${v.toFixed(2)} s`
}

function version(cmd: string): string {
  try {
    return sh(`${cmd} 2>&1`).split('\n').find((l) => /\d/.test(l))?.trim() ?? '?'
  } catch {
    return '?'
  }
}

function report(started: Date): void {
  mkdirSync(OUT, { recursive: true })
  const machine = {
    cpu: cpus()[0]?.model ?? '?', cores: cpus().length, memGiB: Math.round(totalmem() / 2 ** 30), kernel: sh('uname -r').trim(),
  }
  const versions = {
    layerfs: (JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string }).version,
    node: process.version, 'fuse-overlayfs': version('fuse-overlayfs --version | grep fuse-overlayfs'), fio: version('fio --version'),
  }
  const all = [...rows.values()]
  // the rank-sum test of layerfs against fuse-overlayfs, once per row (up to ~150 ms for 60+60 samples)
  const pOf = new Map(all.map((r) => [r.id, rankSumP(r.values.layerfs, r.values['fuse-overlayfs'])]))
  const json = { started: started.toISOString(), quick: QUICK, runs: RUNS, machine, versions, rows: all.map((r) => ({
    ...r, summary: Object.fromEntries(SYSTEMS.map((s) => [s, { median: median(r.values[s]), min: Math.min(...r.values[s]), max: Math.max(...r.values[s]) }])),
    pLayerfsVsFuseOverlayfs: pOf.get(r.id),
  })) }
  writeFileSync(join(OUT, 'results.json'), JSON.stringify(json, null, 2) + '\n')
  const lines = [
    `# layerfs benchmark${QUICK ? ' (BENCH_QUICK=1)' : ''}`, '',
    `${started.toISOString()} — ${RUNS} runs per row (the 4 KiB and 1 MiB copy-up rows: ${COPY_SAMPLES} files per run; mount ready, first byte, cold and warm sequential reads and the appends after a 64 MiB or 1 GiB copy-up: ${SHORT_SAMPLES} samples per run; the 64 MiB and 1 GiB copy-ups: ${BIG_COPY_SAMPLES} per run, each on a fresh mount${QUICK ? '' : `, and as many of the 1 GiB one after ${IDLE_BEFORE_COPY_S} s idle`}), the three systems interleaved in each run; cold rows drop the page cache (then run each timed tool once on nothing) and mount afresh.`,
    `Machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memGiB} GiB, Linux ${machine.kernel}.`,
    `Versions: layerfs ${versions.layerfs} (Node ${versions.node}), ${versions['fuse-overlayfs']}, ${versions.fio}.`,
    'layerfs reads the tars in place; kernel overlayfs and fuse-overlayfs read the same tars extracted. Ratio: to kernel overlayfs',
    '(time: lower is better; IOPS: higher is better). Median (min–max). p: the chance of samples this far apart were layerfs and',
    'fuse-overlayfs alike (two-sided exact Mann-Whitney rank-sum test of the two systems\' samples; bench/compare.ts); "within noise": p ≥ 0.05',
    'where the samples were enough to go below (3 and 3 wholly apart give 0.1).', '',
    '| row | kernel overlayfs | fuse-overlayfs | ratio | layerfs | ratio | layerfs vs fuse-overlayfs |',
    '|---|---|---|---|---|---|---|',
  ]
  for (const r of all) {
    const m = Object.fromEntries(SYSTEMS.map((s) => [s, median(r.values[s])])) as Record<System, number>
    const cell = (s: System): string => r.values[s].length === 0 ? 'n/a'
      : `${fmt(m[s], r.unit)} (${fmt(Math.min(...r.values[s]), r.unit)}–${fmt(Math.max(...r.values[s]), r.unit)})`
    const ratio = (s: System): string => (r.values.kernel.length && r.values[s].length ? `${(m[s] / m.kernel).toFixed(2)}×` : '')
    const better = r.unit === 'IOPS' ? m.layerfs >= m['fuse-overlayfs'] : m.layerfs <= m['fuse-overlayfs']
    const p = pOf.get(r.id)!
    const words = r.unit === 'MiB' ? (better ? 'as little or less' : '**more**') : (better ? 'as fast or faster' : '**slower**')
    // 3 samples each wholly apart give p = 0.1: too few for the test to call anything noise
    const [nl, nf] = [r.values.layerfs.length, r.values['fuse-overlayfs'].length]
    const noise = fewestP(nl, nf) < 0.05 && p >= 0.05 ? ', within noise' : ''
    const verdict = nl && nf ? `${words} (p=${p < 0.001 ? '<0.001' : p.toFixed(3)}, ${nl}+${nf} samples${noise})` : ''
    lines.push(`| ${r.title} | ${cell('kernel')} | ${cell('fuse-overlayfs')} | ${ratio('fuse-overlayfs')} | ${cell('layerfs')} | ${ratio('layerfs')} | ${verdict} |`)
  }
  lines.push('', 'Plots: copyup.svg (copy-up time against file size), walk.svg (walks and reads), read-throughput.svg, first-byte.svg.', '')
  writeFileSync(join(OUT, 'report.md'), lines.join('\n'))
}

async function main(): Promise<void> {
  const started = new Date()
  if (!existsSync(LAYERFS)) throw new Error('run make build first')
  log(`fixtures in ${FIXTURES}${QUICK ? ' (quick)' : ''}`)
  execFileSync('bash', [join(REPO, 'bench', 'fixtures.sh'), FIXTURES], {
    stdio: 'inherit', env: { ...process.env, SMALL_FILES: QUICK ? '20000' : '200000', LARGE: QUICK ? '0' : '1', COPY_SAMPLES: String(COPY_SAMPLES) },
  })
  try {
    // BENCH_ONLY=small or =large: one half, when working on its rows
    if (ONLY !== 'large') smallFileRows()
    if (ONLY !== 'small') largeFileRows()
  } finally {
    sh(`${LAYERFS} standby stop >/dev/null || true`) // the daemon kept waiting for a next mount: this run's
    sh(`grep -o '${SCRATCH}[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l || true`)
    rmSync(SCRATCH, { recursive: true, force: true })
  }
  report(started)
  await plots([...rows.values()], OUT)
  log(`done: ${join(OUT, 'report.md')}`)
  process.stdout.write(readFileSync(join(OUT, 'report.md'), 'utf8'))
}

main().catch((err: Error) => {
  process.stderr.write(`bench: ${err.message}\n`)
  process.exit(1)
})
