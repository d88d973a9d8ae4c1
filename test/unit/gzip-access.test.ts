import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { constants as Z, gunzipSync, gzipSync } from 'node:zlib'
import fc from 'fast-check'
import { CheckpointTable, GzipReader, GzipScanInput } from '../../src/layer/gzip-access'
import { must, removeTemps, tempDir } from '../support/run'

// gzip random access against zlib's own full inflate: random data, random member splits and
// compression settings, random reads. Small spans give many checkpoints in little data.

after(removeTemps)

const RUNS = Number(process.env.LAYERFS_PROPERTY_RUNS ?? 30)

/** Data that compresses in different ways: random bytes, text-like runs, zeros, repeats. */
const chunkArb = fc.oneof(
  fc.integer({ min: 1, max: 200_000 }).map((n) => randomBytes(n)),
  fc.tuple(fc.integer({ min: 1, max: 400_000 }), fc.integer({ min: 0, max: 25 })).map(([n, c]) => Buffer.alloc(n, 97 + c)),
  fc.integer({ min: 1, max: 300_000 }).map((n) => Buffer.from(Array.from({ length: Math.ceil(n / 16) }, (_, i) => `line ${i} of text\n`).join('').slice(0, n))),
  fc.integer({ min: 1, max: 500_000 }).map((n) => Buffer.alloc(n)),
)

const caseArb = fc.record({
  chunks: fc.array(chunkArb, { minLength: 1, maxLength: 6 }),
  // member boundaries, as fractions of the data
  cuts: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 3 }),
  level: fc.integer({ min: 1, max: 9 }),
  strategy: fc.constantFrom(Z.Z_DEFAULT_STRATEGY, Z.Z_FILTERED, Z.Z_HUFFMAN_ONLY, Z.Z_RLE, Z.Z_FIXED),
  span: fc.constantFrom(16 << 10, 64 << 10, 1 << 20),
  reads: fc.array(fc.tuple(fc.double({ min: 0, max: 1, noNaN: true }), fc.integer({ min: 0, max: 300_000 })), { minLength: 1, maxLength: 25 }),
  trailingZeros: fc.boolean(),
})

interface Indexed {
  table: CheckpointTable
  diffId: string
}

/** The indexing pass as TarLayer runs it, reading the stream through get/reaches. */
function index(fd: number, length: number, span: number, offset = 0): Indexed {
  const input = new GzipScanInput(fd, offset, length, span)
  let pos = 0
  for (;;) {
    const b = input.get(pos, 512)
    if (b.length === 0) break
    pos += b.length
    // skip ahead as the tar scan does over file data
    if (!input.reaches(pos + 70_000)) break
    pos += 70_000
  }
  const { checkpoints, diffId } = input.finish()
  return { table: checkpoints, diffId }
}

describe('gzip random access', () => {
  it('reads any range exactly as a full inflate by zlib (property)', async () => {
    const dir = await tempDir('gz')
    let n = 0
    await fc.assert(fc.asyncProperty(caseArb, async (c) => {
      const data = Buffer.concat(c.chunks)
      const cuts = [...new Set(c.cuts.map((f) => Math.floor(f * data.length)))].sort((a, b) => a - b)
      const members: Buffer[] = []
      let at = 0
      for (const cut of [...cuts, data.length]) {
        if (cut > at || members.length === 0) members.push(gzipSync(data.subarray(at, cut), { level: c.level, strategy: c.strategy }))
        at = Math.max(at, cut)
      }
      if (c.trailingZeros) members.push(Buffer.alloc(1024))
      const gzFile = Buffer.concat(members)
      assert.ok(gunzipSync(gzFile).equals(data), 'zlib itself reads the test input whole')
      const file = join(dir, `case-${n++}.gz`)
      // a prefix before the stream: gzip data inside a bigger file (a docker-save member)
      const prefix = randomBytes(777)
      writeFileSync(file, Buffer.concat([prefix, gzFile]))
      const fd = openSync(file, 'r')
      try {
        const { table, diffId } = index(fd, gzFile.length, c.span, prefix.length)
        assert.equal(table.size, data.length)
        assert.equal(diffId, 'sha256:' + createHash('sha256').update(data).digest('hex'))
        const decoded = CheckpointTable.decode(table.encode())
        assert.equal(decoded.points.length, table.points.length)
        const reader = new GzipReader(fd, prefix.length, gzFile.length, decoded)
        for (const [f, len] of c.reads) {
          const pos = Math.floor(f * data.length)
          const buf = Buffer.alloc(len)
          const got = await reader.read(buf, 0, len, pos)
          const want = data.subarray(pos, pos + len)
          assert.equal(got, want.length, `read of ${len} at ${pos}`)
          assert.ok(buf.subarray(0, got).equals(want), `bytes of the read of ${len} at ${pos}`)
        }
        // concurrent reads (several cursors at once)
        const all = await Promise.all(c.reads.map(async ([f, len]) => {
          const pos = Math.floor((1 - f) * data.length)
          const buf = Buffer.alloc(len)
          const got = await reader.read(buf, 0, len, pos)
          return buf.subarray(0, got).equals(data.subarray(pos, pos + len))
        }))
        assert.ok(all.every(Boolean), 'concurrent reads')
      } finally {
        closeSync(fd)
      }
    }), { numRuns: RUNS })
  })

  it('keeps checkpoints about one span apart, and reads files written by gzip and pigz', async () => {
    const dir = await tempDir('gz-tools')
    const src = join(dir, 'data')
    const text = Array.from({ length: 200_000 }, (_, i) => `${i} ${(i * 7919) % 1000}\n`).join('')
    writeFileSync(src, Buffer.concat([Buffer.from(text), randomBytes(3 << 20), Buffer.from(text)]))
    const data = readFileSync(src)
    for (const [tool, args] of [['gzip', ['-6', '-n', '-c']], ['pigz', ['-c']], ['pigz', ['-i', '-c']]] as const) {
      const out = join(dir, `${tool}${args.join('')}.gz`)
      await must('sh', ['-c', `${tool} ${args.join(' ')} ${src} > ${out}`])
      const gzFile = readFileSync(out)
      const fd = openSync(out, 'r')
      try {
        const { table } = index(fd, gzFile.length, 1 << 20)
        const gaps = table.points.slice(1).map((p, i) => p.out - table.points[i].out)
        assert.ok(gaps.every((g) => g >= 1 << 20), `${tool}: checkpoints at least a span apart`)
        assert.ok(Math.max(...gaps) < 2 << 20, `${tool}: no span much longer than asked (${Math.max(...gaps)})`)
        const reader = new GzipReader(fd, 0, gzFile.length, table)
        for (let i = 0; i < 40; i++) {
          const pos = Math.floor(Math.random() * data.length)
          const buf = Buffer.alloc(100_000)
          const got = await reader.read(buf, 0, buf.length, pos)
          assert.ok(buf.subarray(0, got).equals(data.subarray(pos, pos + 100_000)), `${tool} read at ${pos}`)
        }
      } finally {
        closeSync(fd)
      }
    }
  })

  it('reports damage: truncated data, a corrupt block, a bad CRC', async () => {
    const dir = await tempDir('gz-bad')
    const data = Buffer.concat([randomBytes(200_000), Buffer.alloc(300_000, 120)])
    const good = gzipSync(data)
    const cases: Array<[string, Buffer, RegExp]> = [
      ['truncated', good.subarray(0, Math.floor(good.length * 0.6)), /unexpected end/],
      ['bad crc', Buffer.concat([good.subarray(0, good.length - 8), Buffer.from([1, 2, 3, 4]), good.subarray(good.length - 4)]), /corrupt gzip/],
      ['not gzip', randomBytes(5000), /corrupt gzip/],
    ]
    const corrupt = Buffer.from(good)
    corrupt.fill(0x55, 1000, 1016)
    cases.push(['corrupt block', corrupt, /corrupt gzip|unexpected end/])
    for (const [what, bytes, re] of cases) {
      const file = join(dir, what.replace(' ', '-'))
      writeFileSync(file, bytes)
      const fd = openSync(file, 'r')
      try {
        assert.throws(() => index(fd, bytes.length, 64 << 10), re, what)
      } finally {
        closeSync(fd)
      }
    }
  })
})
