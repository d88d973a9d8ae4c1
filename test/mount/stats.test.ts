import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { chmod, mkdir, open, readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { mountLayerfs, unmountAll } from '../support/mounts'
import { LAYERFS, must, removeTemps, tempDir } from '../support/run'
import type { StatsReport } from '../../src/stats'

// layerfs stats: every copy-up with its path, source layer, reason, bytes and duration, from the
// live daemon, and the same JSON written at unmount with -o stats=FILE.

after(async () => {
  await unmountAll()
  await removeTemps()
})

describe('layerfs stats', () => {
  it('lists a 1-byte append to a 64 MiB lower file and a chmod of another, live and at unmount', async () => {
    const dir = await tempDir('stats')
    await mkdir(join(dir, 'src'))
    await must('sh', ['-c', `head -c ${64 << 20} /dev/zero | tr '\\0' a > ${dir}/src/big && echo other > ${dir}/src/other`])
    const tar = join(dir, 'l.tar')
    await must('tar', ['-C', join(dir, 'src'), '-cf', tar, '.'])
    for (const d of ['u', 'w']) await mkdir(join(dir, d))
    const statsFile = join(dir, 'stats.json')
    const m = await mountLayerfs([tar], { upper: join(dir, 'u'), work: join(dir, 'w'), options: [`stats=${statsFile}`] })
    try {
      const fh = await open(join(m.path, 'big'), 'a')
      await fh.write('x')
      await fh.close()
      await chmod(join(m.path, 'other'), 0o600)
      const live = JSON.parse(await must(LAYERFS, ['stats', m.path, '--json'])) as StatsReport
      const big = live.copyUps.find((c) => c.path === '/big')
      assert.ok(big, 'the append is listed')
      assert.equal(big.bytes, 67108864)
      assert.equal(big.reason, 'write')
      assert.equal(big.layer.index, 1)
      assert.equal(big.layer.source, tar)
      assert.ok(big.durationMs > 0)
      const other = live.copyUps.find((c) => c.path === '/other')
      assert.equal(other?.reason, 'chmod')
      assert.equal(live.totals.copyUps, 2)
      assert.equal((await stat(join(m.path, 'big'))).size, (64 << 20) + 1)
      const tail = Buffer.alloc(2)
      const r = await open(join(m.path, 'big'), 'r')
      await r.read(tail, 0, 2, (64 << 20) - 1)
      await r.close()
      assert.equal(tail.toString(), 'ax')
      assert.equal((await stat(join(dir, 'u', 'big'))).size, (64 << 20) + 1, 'the upper holds the copy')
      const table = await must(LAYERFS, ['stats', m.path])
      assert.match(table, /copy-ups\s+2, /)
    } finally {
      await m.unmount()
    }
    const atEnd = JSON.parse(await readFile(statsFile, 'utf8')) as StatsReport
    assert.equal(atEnd.copyUps.length, 2)
  })

  it('counts the reader thread\'s requests and says whether it polls after one', async () => {
    const dir = await tempDir('stats-reader')
    await mkdir(join(dir, 'src', 'd'), { recursive: true })
    await must('sh', ['-c', `for i in $(seq 50); do echo $i > ${dir}/src/d/f$i; done`])
    const tar = join(dir, 'l.tar')
    await must('tar', ['-C', join(dir, 'src'), '-cf', tar, '.'])
    const reader = async (path: string): Promise<NonNullable<StatsReport['reader']>> => {
      const r = (JSON.parse(await must(LAYERFS, ['stats', path, '--json'])) as StatsReport).reader
      assert.ok(r, 'the low-level binding reports its reader')
      return r
    }
    // asleep until a trial has shown that polling pays; LAYERFS_SPIN_TRIALS=0 polls from the start
    for (const [env, polling] of [[{}, false], [{ LAYERFS_SPIN_TRIALS: '0' }, true]] as const) {
      const m = await mountLayerfs([tar], { env })
      try {
        const before = await reader(m.path)
        assert.equal(before.polling, polling)
        assert.equal(before.pollTrials, 0)
        for (let i = 1; i <= 50; i++) assert.equal(await readFile(join(m.path, 'd', `f${i}`), 'utf8'), `${i}\n`)
        const after = await reader(m.path)
        assert.ok(after.requests >= before.requests + 50, `${after.requests - before.requests} requests for 50 lookups`)
        assert.match(await must(LAYERFS, ['stats', m.path]), new RegExp(`requests\\s+${after.requests} read by the FUSE reader; after each it ${polling ? 'polls' : 'sleeps'}`))
      } finally {
        await m.unmount()
      }
    }
  })
})
