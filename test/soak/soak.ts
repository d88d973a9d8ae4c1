import fc from 'fast-check'
import { mkdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { apply, opArb } from '../differential/ops'
import { mountLayerfs, unmountAll } from '../support/mounts'
import { LAYERFS, must, removeTemps, run, tempDir } from '../support/run'

// make soak: parallel workers doing random operations on one writable mount for SOAK_SECONDS
// (default 600). It fails on an error that no POSIX filesystem gives for these operations (EIO,
// ENOTCONN, ...), on an operation that takes over 30 s (a hang), or on daemon memory that keeps
// growing (RSS at the end over twice what it was after the first minute).

const SECONDS = Number(process.env.SOAK_SECONDS ?? 600)
const WORKERS = Number(process.env.SOAK_WORKERS ?? 8)
// EAGAIN: a fifo read without blocking while another worker holds it open for writing
const EXPECTED = new Set(['ok', 'EAGAIN', 'ESPIPE', 'ELOOP', 'EPIPE', 'ENOENT', 'EEXIST', 'ENOTEMPTY', 'ENOTDIR', 'EISDIR', 'EINVAL', 'EPERM', 'ENXIO', 'ENODATA', 'EACCES', 'EXDEV', 'EBUSY', 'ENAMETOOLONG'])

async function rssKb(mnt: string): Promise<number> {
  // the daemon says who it is (a standby that took the mount has no mountpoint on its command line)
  const r = await run(LAYERFS, ['stats', mnt, '--json'])
  if (r.code !== 0) throw new Error(r.stderr.trim())
  const { pid } = JSON.parse(r.stdout) as { pid: number }
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0)
}

async function main(): Promise<void> {
  const dir = await tempDir('soak')
  await mkdir(join(dir, 'src/a/b'), { recursive: true })
  await must('sh', ['-c', `cd ${dir}/src && for i in $(seq 1 200); do echo $i > a/f$i; done && head -c 10000000 /dev/urandom > a/b/big`])
  await must('tar', ['-C', join(dir, 'src'), '-cf', join(dir, 'l.tar'), '.'])
  await mkdir(join(dir, 'u'))
  await mkdir(join(dir, 'w'))
  const m = await mountLayerfs([join(dir, 'l.tar')], { upper: join(dir, 'u'), work: join(dir, 'w') })
  const start = Date.now()
  const end = start + SECONDS * 1000
  const counts = new Map<string, number>()
  let failure: string | null = null
  let rssAfterMinute = 0
  const warmup = Math.min(60_000, (SECONDS * 1000) / 3)
  const sampler = setInterval(() => void rssKb(m.path).then((kb) => {
    if (Date.now() - start > warmup && rssAfterMinute === 0) rssAfterMinute = kb
  }, (err: Error) => { failure ??= `the daemon died (${err.message})` }), 5000)
  try {
    await Promise.all(Array.from({ length: WORKERS }, async (_, w) => {
      const rnd = fc.sample(opArb, { numRuns: 5000, seed: w })
      for (let i = 0; Date.now() < end && failure === null; i++) {
        const op = rnd[i % rnd.length]
        const timer = setTimeout(() => { failure ??= `hang: ${JSON.stringify(op)}` }, 30_000)
        // 'ok', or 'ok' and what a read or listing found (those differ run to run: not counted apart)
        const outcome = (await apply(m.path, op)).split(' ')[0]
        clearTimeout(timer)
        counts.set(outcome, (counts.get(outcome) ?? 0) + 1)
        if (!EXPECTED.has(outcome)) failure ??= `unexpected ${outcome} from ${JSON.stringify(op)}`
      }
    }))
    const rss = await rssKb(m.path)
    console.log(`soak: ${SECONDS} s, ${WORKERS} workers, outcomes ${JSON.stringify(Object.fromEntries(counts))}, daemon RSS ${rssAfterMinute} kB after warming up, ${rss} kB at the end`)
    if (!failure && rssAfterMinute > 0 && rss > 2 * rssAfterMinute) failure = `memory grew from ${rssAfterMinute} to ${rss} kB`
  } finally {
    clearInterval(sampler)
    await unmountAll()
    await removeTemps()
  }
  if (failure) {
    console.error(`soak: FAILED: ${failure}`)
    process.exit(1)
  }
  console.log('soak: 1 passed, 0 failed')
}

void main()
