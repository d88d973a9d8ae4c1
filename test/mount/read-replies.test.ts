import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { mountLayerfs, unmountAll } from '../support/mounts'
import { LAYERFS, must, removeTemps, tempDir } from '../support/run'
import type { StatsReport } from '../../src/stats'

// A lower file's READs are answered in C: 32 KiB and more by splice (the file's pages through a
// pipe into /dev/fuse), smaller ones and those a pipe cannot hold (a 1 MiB READ, 257 pages where
// the file's byte 0 is not on a page boundary) by pread. Each way must read true up to the file's
// end, which no READ size here divides, and count each read once in the stats. A tar member that
// starts mid-page and a directory layer's file (page-aligned) both; the page cache dropped first.

after(async () => {
  await unmountAll()
  await removeTemps()
})

const SIZE = (3 << 20) + 1234

const md5 = (b: Buffer): string => createHash('md5').update(b).digest('hex')

async function bytesRead(path: string): Promise<number> {
  return (JSON.parse(await must(LAYERFS, ['stats', path, '--json'])) as StatsReport).totals.bytesRead
}

describe('READ replies (read-only mounts)', () => {
  for (const kind of ['tar', 'dir']) {
    it(`${kind}: buffered reads and O_DIRECT reads of 4 KiB to 1 MiB read true to the end, each counted once`, async () => {
      const base = await tempDir(`read-replies-${kind}`)
      const src = join(base, 'src')
      await mkdir(src)
      // `pad` first: in the tar, big's data then starts 2048 bytes into a page
      await must('sh', ['-c', `head -c 1000 /dev/urandom > ${join(src, 'pad')} && head -c ${SIZE} /dev/urandom > ${join(src, 'big')}`])
      const expected = await readFile(join(src, 'big'))
      let lower = src
      if (kind === 'tar') {
        lower = join(base, 'l.tar')
        await must('tar', ['-C', src, '-cf', lower, 'pad', 'big'])
        const listing = await must('tar', ['-tvf', lower])
        assert.match(listing.split('\n')[0], /pad$/, 'pad is the first member')
      }
      const m = await mountLayerfs([lower])
      try {
        const file = join(m.path, 'big')
        await must('sh', ['-c', 'sync; echo 1 > /proc/sys/vm/drop_caches'])
        const whole = await readFile(file)
        assert.equal(whole.length, SIZE)
        assert.ok(whole.equals(expected), 'a buffered read of the whole file (the kernel reads ahead 128 KiB a READ)')
        for (const bs of ['1M', '512K', '48K', '32K', '28K', '4K']) {
          const before = await bytesRead(m.path)
          // O_DIRECT: one READ per block, none answered from the page cache
          const out = await must('sh', ['-c', `dd if=${file} iflag=direct bs=${bs} status=none | md5sum`])
          assert.equal(out.split(' ')[0], md5(expected), `O_DIRECT reads of ${bs}`)
          assert.equal(await bytesRead(m.path) - before, SIZE, `the stats count the O_DIRECT reads of ${bs} once`)
        }
        // reads that start where no READ size above starts, through the end
        const out = await must('sh', ['-c', `dd if=${file} iflag=direct,skip_bytes skip=${(1 << 20) + 4096} bs=96K status=none | md5sum`])
        assert.equal(out.split(' ')[0], md5(expected.subarray((1 << 20) + 4096)), 'O_DIRECT reads from 1 MiB + 4 KiB')
      } finally {
        await m.unmount()
      }
    })
  }
})
