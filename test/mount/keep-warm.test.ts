import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, readFile, readdir, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { mountLayerfs, unmountAll, type Mounted } from '../support/mounts'
import { LAYERFS, must, removeTemps, tempDir } from '../support/run'

// The daemon's keep-warm thread (native/keep_warm.c): while requests come it wakes the process
// every LAYERFS_KEEP_WARM_MS, and 100 ticks after the last request it sleeps until the next one.
// Seen from outside as the thread's voluntary context switches (/proc/PID/task/TID/status).

after(async () => {
  await unmountAll()
  await removeTemps()
})

async function smallTar(): Promise<string> {
  const dir = await tempDir('keep-warm')
  await mkdir(join(dir, 'src'))
  await writeFile(join(dir, 'src', 'hello'), 'hello\n')
  const tar = join(dir, 'l.tar')
  await must('tar', ['-C', join(dir, 'src'), '-cf', tar, 'hello'])
  return tar
}

async function daemonPid(m: Mounted): Promise<number> {
  return (JSON.parse(await must(LAYERFS, ['stats', m.path, '--json'])) as { pid: number }).pid
}

/** The keep-warm thread's id in `pid`, or null. */
async function keeper(pid: number): Promise<number | null> {
  for (const tid of await readdir(`/proc/${pid}/task`)) {
    if ((await readFile(`/proc/${pid}/task/${tid}/comm`, 'utf8').catch(() => '')).trim() === 'layerfs-warm') return Number(tid)
  }
  return null
}

async function wakes(pid: number, tid: number): Promise<number> {
  return Number(/voluntary_ctxt_switches:\s+(\d+)/.exec(await readFile(`/proc/${pid}/task/${tid}/status`, 'utf8'))![1])
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))
let asks = 0
/** A request the kernel cannot answer from its caches: the LOOKUP of a name never asked before. */
const ask = (m: Mounted): Promise<unknown> => stat(join(m.path, `nothing-${++asks}`)).catch(() => undefined)

describe('keep-warm thread', () => {
  it('ticks while requests come, sleeps 100 ticks after the last, and wakes with the next', async () => {
    const m = await mountLayerfs([await smallTar()], { env: { LAYERFS_KEEP_WARM_MS: '10' } })
    const pid = await daemonPid(m)
    const tid = await keeper(pid)
    assert.ok(tid, 'a layerfs-warm thread')
    await ask(m)
    const a = await wakes(pid, tid)
    await sleep(400)
    const b = await wakes(pid, tid)
    assert.ok(b - a >= 10, `ticking after a request: ${b - a} wakes in 0.4 s`)
    await sleep(1000 + 1000) // 100 ticks of 10 ms, and a margin
    const c = await wakes(pid, tid)
    await sleep(500)
    const d = await wakes(pid, tid)
    assert.ok(d - c <= 1, `asleep when idle: ${d - c} wakes in 0.5 s`)
    await ask(m)
    await sleep(400)
    const e = await wakes(pid, tid)
    assert.ok(e - d >= 10, `ticking again after a request: ${e - d} wakes in 0.4 s`)
    await m.unmount()
  })

  it('is not started with LAYERFS_KEEP_WARM_MS=0', async () => {
    const m = await mountLayerfs([await smallTar()], { env: { LAYERFS_KEEP_WARM_MS: '0' } })
    assert.equal(await keeper(await daemonPid(m)), null)
    await m.unmount()
  })
})
