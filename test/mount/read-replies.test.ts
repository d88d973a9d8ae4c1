import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { mkdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { mountLayerfs, unmountAll } from '../support/mounts'
import { LAYERFS, dropPageCache, must, removeTemps, tempDir } from '../support/run'
import type { StatsReport } from '../../src/stats'

// A file's READs are answered in C: 32 KiB and more by splice (the file's pages through a pipe
// into /dev/fuse), smaller ones and those a pipe cannot hold (a 1 MiB READ, 257 pages where the
// file's byte 0 is not on a page boundary) by pread. Each way must read true up to the file's end,
// which no READ size here divides, and count each read once in the stats. A tar member that starts
// mid-page and a directory layer's file (page-aligned) both; the page cache dropped first. An upper
// file's length can change under the reader: it must read true after an append and a truncation.

after(async () => {
  await unmountAll()
  await removeTemps()
})

const SIZE = (3 << 20) + 1234

const md5 = (b: Buffer): string => createHash('md5').update(b).digest('hex')

const BYTES: Record<string, number> = { '1M': 1 << 20, '512K': 512 << 10, '48K': 48 << 10, '32K': 32 << 10, '28K': 28 << 10, '4K': 4 << 10 }

/**
 * md5 of `file` read with O_DIRECT in blocks of `bs` (one READ a block, none from the page cache),
 * checked to have come in whole blocks but the last. (A READ answered a byte short at the file's end
 * does not show here: the kernel reads the rest through the page cache within the same read(2).)
 */
async function directMd5(file: string, bs: string, size: number): Promise<string> {
  const out = await must('sh', ['-c', `{ dd if=${file} iflag=direct bs=${bs} | md5sum; } 2>&1`])
  const records = /(\d+)\+(\d+) records in/.exec(out)
  assert.ok(records, out)
  const block = BYTES[bs]
  assert.equal(`${records[1]}+${records[2]}`, `${Math.floor(size / block)}+${size % block ? 1 : 0}`, `blocks of ${bs} read whole`)
  return /[0-9a-f]{32}/.exec(out)![0]
}

const BLOCKS = Object.keys(BYTES)

async function bytesRead(path: string): Promise<number> {
  return (JSON.parse(await must(LAYERFS, ['stats', path, '--json'])) as StatsReport).totals.bytesRead
}

describe('READ replies', () => {
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
        await dropPageCache()
        const whole = await readFile(file)
        assert.equal(whole.length, SIZE)
        assert.ok(whole.equals(expected), 'a buffered read of the whole file (the kernel reads ahead 128 KiB a READ)')
        for (const bs of BLOCKS) {
          const before = await bytesRead(m.path)
          assert.equal(await directMd5(file, bs, SIZE), md5(expected), `O_DIRECT reads of ${bs}`)
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

  it('an upper file: O_DIRECT reads of 4 KiB to 1 MiB read true after its copy-up, an append and a truncation', async () => {
    const base = await tempDir('read-replies-upper')
    const src = join(base, 'src')
    await mkdir(src)
    await mkdir(join(base, 'upper'))
    await mkdir(join(base, 'work'))
    await must('sh', ['-c', `head -c ${SIZE} /dev/urandom > ${join(src, 'big')} && head -c 70000 /dev/urandom > ${join(base, 'more')}`])
    const lower = join(base, 'l.tar')
    await must('tar', ['-C', src, '-cf', lower, 'big'])
    let expected = await readFile(join(src, 'big'))
    const more = await readFile(join(base, 'more'))
    const m = await mountLayerfs([lower], { upper: join(base, 'upper'), work: join(base, 'work') })
    try {
      const file = join(m.path, 'big')
      const check = async (what: string): Promise<void> => {
        await dropPageCache()
        for (const bs of BLOCKS) assert.equal(await directMd5(file, bs, expected.length), md5(expected), `${what}: O_DIRECT reads of ${bs}`)
        assert.ok((await readFile(file)).equals(expected), `${what}: a buffered read`)
      }
      await must('sh', ['-c', `printf x >> ${file}`])
      expected = Buffer.concat([expected, Buffer.from('x')])
      assert.ok((await readFile(join(base, 'upper', 'big'))).equals(expected), 'the upper holds the copy')
      await check('copied up')
      await must('sh', ['-c', `cat ${join(base, 'more')} >> ${file}`])
      expected = Buffer.concat([expected, more])
      await check('appended')
      await must('truncate', ['-s', String(SIZE - 5000), file])
      expected = expected.subarray(0, SIZE - 5000)
      await check('truncated')
    } finally {
      await m.unmount()
    }
  })
})
