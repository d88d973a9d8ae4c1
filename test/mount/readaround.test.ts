import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, open, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { mountLayerfs, unmountAll, type Mounted } from '../support/mounts'
import { LAYERFS, dropPageCache, must, removeTemps, tempDir } from '../support/run'
import type { StatsReport } from '../../src/stats'

// -o readaround: on a read-only mount, a small read of a big lower file that looks random brings
// the aligned window around it into the kernel's page cache (FUSE_NOTIFY_STORE), so that reads near
// it need no request. What it stores must be the file's bytes: every read is compared with the
// source, the page cache dropped first.

after(async () => {
  await unmountAll()
  await removeTemps()
})

const SIZE = 4 << 20
const WINDOW = 128 << 10

/** Bytes of `file` in the page cache (util-linux fincore). */
async function resident(file: string): Promise<number> {
  return Number((await must('fincore', ['--bytes', '--noheadings', '--output', 'RES', file])).trim())
}

async function stats(m: Mounted): Promise<StatsReport['totals']> {
  return (JSON.parse(await must(LAYERFS, ['stats', m.path, '--json'])) as StatsReport).totals
}

async function readsServed(m: Mounted): Promise<number> {
  return (await stats(m)).reads
}

/** A tar (made by tar(1); gzip'd by gzip(1) if asked) holding `big`, SIZE random bytes, and the source file. */
async function bigFileTar(name: string, gzip = false): Promise<{ tar: string; source: string }> {
  const dir = await tempDir(name)
  await mkdir(join(dir, 'src'))
  const source = join(dir, 'src', 'big')
  await must('sh', ['-c', `head -c ${SIZE} /dev/urandom > ${source}`])
  const tar = join(dir, 'l.tar')
  await must('tar', ['-C', join(dir, 'src'), '-cf', tar, 'big'])
  if (!gzip) return { tar, source }
  await must('gzip', [tar])
  return { tar: `${tar}.gz`, source }
}

describe('readaround (read-only mounts)', () => {
  for (const kind of ['tar', 'tar.gz']) {
    it(`${kind}: a random 4 KiB read brings its 128 KiB window into the page cache: reads near it make no request, and all read true`, async () => {
      // a plain member's READs are answered in C, a gzip member's in JavaScript (inflated): both store
      const { tar, source } = await bigFileTar(`readaround-${kind}`, kind === 'tar.gz')
      const expected = await readFile(source)
      const m = await mountLayerfs([tar])
      try {
        const file = join(m.path, 'big')
        await dropPageCache()
        const fh = await open(file, 'r')
        try {
          const at = 5 * WINDOW + 3 * 4096 // within the window [5 W, 6 W), not at its start
          const buf = Buffer.alloc(4096)
          await fh.read(buf, 0, 4096, at)
          assert.deepEqual(buf, expected.subarray(at, at + 4096))
          let cached = 0
          for (let i = 0; i < 100 && (cached = await resident(file)) < WINDOW; i++) await new Promise((r) => setTimeout(r, 20))
          assert.ok(cached >= WINDOW, `${cached} bytes in the page cache after one random read (window ${WINDOW})`)
          const before = await readsServed(m)
          for (let k = 0; k < 32; k++) {
            const off = 5 * WINDOW + k * 4096
            await fh.read(buf, 0, 4096, off)
            assert.deepEqual(buf, expected.subarray(off, off + 4096), `offset ${off}`)
          }
          assert.equal(await readsServed(m), before, 'reads within the stored window reached the daemon')
          const counted = await stats(m)
          assert.equal(counted.readaround, 1, 'layerfs stats counts the window stored')
          assert.equal(counted.readaroundBytes, WINDOW)

          // reads all over the file, in random order, the page cache dropped: each must read true
          await dropPageCache()
          let seed = 7
          const rand = (n: number): number => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n }
          // (a gzip member inflates up to a checkpoint's span of 1 MiB per read: fewer of them)
          for (let k = 0; k < (kind === 'tar' ? 3000 : 400); k++) {
            const len = [1, 100, 4096, 5000, 70000][rand(5)]
            const off = rand(SIZE)
            const big = Buffer.alloc(len)
            const { bytesRead } = await fh.read(big, 0, len, off)
            assert.deepEqual(big.subarray(0, bytesRead), expected.subarray(off, off + len), `read of ${len} at ${off}`)
          }
          const whole = Buffer.alloc(SIZE + 10)
          const { bytesRead } = await fh.read(whole, 0, SIZE + 10, 0)
          assert.equal(bytesRead, SIZE)
          assert.ok(whole.subarray(0, SIZE).equals(expected), 'the whole file, through what the stores left')
        } finally {
          await fh.close()
        }
      } finally {
        await m.unmount()
      }
    })
  }

  it('-o readaround=0: a random read brings in only what it asked for', async () => {
    const { tar } = await bigFileTar('readaround-off')
    const m = await mountLayerfs([tar], { options: ['readaround=0'] })
    try {
      const file = join(m.path, 'big')
      await dropPageCache()
      const fh = await open(file, 'r')
      try {
        await fh.read(Buffer.alloc(4096), 0, 4096, 5 * WINDOW + 3 * 4096)
        await new Promise((r) => setTimeout(r, 300))
        assert.ok(await resident(file) < WINDOW)
        assert.equal((await stats(m)).readaround, 0)
      } finally {
        await fh.close()
      }
    } finally {
      await m.unmount()
    }
  })
})
