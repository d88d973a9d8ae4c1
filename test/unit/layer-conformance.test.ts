import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { constants as C } from 'node:fs'
import { chmod, lchown, link, lstat, mkdir, readFile, readdir, symlink, truncate, writeFile, open as openFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Entry, Layer } from '../../src/layer/layer'
import { DirLayer } from '../../src/layer/dir-layer'
import { TarLayer } from '../../src/layer/tar-layer'
import { sys } from '../../src/sys'
import { must, removeTemps, tempDir } from '../support/run'

// One suite for the Layer interface, run against every kind: a directory, and the same tree packed
// by GNU tar (pax and gnu formats) and by bsdtar. Each must decode to the same entries, whiteouts,
// contents, link targets and xattrs, as layer.ts promises.

const LATIN1_NAME = 'caf\xe9-\xff' // bytes that are not UTF-8, as a byte string
const LONG = 'L'.repeat(255)
const DEEP = Array.from({ length: 20 }, (_, i) => `deep${i}`).join('/')
const T = 1_700_000_000

let src: string
let random: Buffer
const bytes = (p: string): Buffer => Buffer.concat([Buffer.from(src), Buffer.from('/' + p, 'latin1')])

before(async () => {
  const root = await tempDir('conformance')
  src = join(root, 'tree')
  await mkdir(src)
  const at = (p: string): Buffer => bytes(p)
  await mkdir(at('dir/sub'), { recursive: true })
  await writeFile(at('dir/small'), 'small file\n')
  await writeFile(at('empty'), '')
  random = Buffer.alloc(1 << 20)
  for (let i = 0; i < random.length; i++) random[i] = (i * 7919) % 251
  await writeFile(at('dir/big'), random)
  const fh = await openFile(at('sparse'), 'w')
  await fh.write(Buffer.from('HEAD'), 0, 4, 0)
  await fh.write(Buffer.from('TAIL'), 0, 4, 8 * 1024 * 1024 - 4)
  await fh.close()
  await symlink('dir/small', at('rel-link'))
  await symlink('/etc/passwd', at('abs-link'))
  await symlink('nowhere', at('dangling'))
  await link(at('dir/small'), at('hard'))
  sys.mknod(at('chr'), C.S_IFCHR | 0o644, 1, 3)
  sys.mknod(at('blk'), C.S_IFBLK | 0o600, 7, 0)
  sys.mknod(at('fifo'), C.S_IFIFO | 0o644, 0, 0)
  sys.lsetxattr(at('dir/small'), 'user.colour', Buffer.from('blue'), 0)
  sys.lsetxattr(at('dir/small'), 'user.bin', Buffer.from([0, 255, 16]), 0)
  await writeFile(at('setuid'), 's'); await chmod(at('setuid'), 0o4755)
  await mkdir(at('sticky')); await chmod(at('sticky'), 0o1777)
  await writeFile(at('mode000'), 'x'); await chmod(at('mode000'), 0o000)
  await writeFile(at('bigid'), 'x'); await lchown(at('bigid'), 3_000_000, 3_000_001)
  await writeFile(at('with space'), 's')
  await writeFile(at('new\nline'), 'n')
  await writeFile(at(Buffer.from('ünï', 'utf8').toString('latin1')), 'u')
  await writeFile(at(LATIN1_NAME), 'l')
  await writeFile(at(LONG), '255')
  await mkdir(at(DEEP), { recursive: true })
  await writeFile(at(DEEP + '/leaf'), 'leaf')
  // OCI markers: a whiteout of a name below, one of a name this layer also has, an opaque dir
  await writeFile(at('dir/.wh.gone'), '')
  await writeFile(at('dir/.wh.small'), '')
  await mkdir(at('opq'))
  await writeFile(at('opq/.wh..wh..opq'), '')
  await writeFile(at('opq/kept'), 'k')
  // times, deepest first so that making children does not move them afterwards
  const stamp = async (p: Buffer): Promise<void> => {
    if ((await lstat(p)).isDirectory()) {
      for (const n of await readdir(p, { encoding: 'buffer' })) await stamp(Buffer.concat([p, Buffer.from('/'), n]))
    }
    sys.utimens(p, T, 0, T, 123_456_789)
  }
  await stamp(Buffer.from(src))
})
after(removeTemps)

type Factory = () => Promise<Layer>

async function tarOf(args: string[], name: string): Promise<string> {
  const out = join(await tempDir('conf-tar'), name)
  await must(args[0], [...args.slice(1), '-C', src, '-cf', out, '.'], { env: { ...process.env, LC_ALL: 'C.UTF-8' } })
  return out
}

const kinds: Array<[string, Factory]> = [
  ['DirLayer', () => DirLayer.open(src)],
  ['TarLayer (GNU tar, pax)', async () => TarLayer.open(await tarOf(['tar', '--format=pax', '--xattrs', '--xattrs-include=*', '--sparse', '--numeric-owner'], 'pax.tar'), { persistIndex: false })],
  ['TarLayer (GNU tar, gnu)', async () => TarLayer.open(await tarOf(['tar', '--format=gnu', '--sparse', '--numeric-owner'], 'gnu.tar'), { persistIndex: false })],
  ['TarLayer (bsdtar, pax)', async () => TarLayer.open(await tarOf(['bsdtar', '--format=pax', '--xattrs', '--numeric-owner'], 'bsd.tar'), { persistIndex: false })],
]

async function entry(layer: Layer, path: string): Promise<Entry> {
  const { entry } = await layer.lookup(path)
  assert.ok(entry, `${layer.kind}: ${JSON.stringify(path)} is there`)
  return entry
}

async function readAll(layer: Layer, path: string): Promise<Buffer> {
  const e = await entry(layer, path)
  const f = await layer.open(path, e)
  try {
    const out = Buffer.alloc(e.size)
    for (let pos = 0; pos < e.size; ) {
      const n = await f.read(out.subarray(pos), Math.min(65536, e.size - pos), pos)
      assert.ok(n > 0, 'no short read before the end')
      pos += n
    }
    assert.equal(await f.read(Buffer.alloc(10), 10, e.size), 0, 'reading at the end gives 0')
    return out
  } finally {
    await f.close()
  }
}

for (const [name, make] of kinds) {
  describe(`Layer conformance: ${name}`, () => {
    let layer: Layer
    const gnuFormat = name.includes('gnu)') // the gnu format keeps no xattrs and no sub-second times
    before(async () => { layer = await make() })
    after(async () => { await layer.close() })

    it('lookup: kinds, modes, owners, sizes, times', async () => {
      const root = await entry(layer, '/')
      assert.equal(root.kind, 'dir')
      const small = await entry(layer, '/dir/small')
      assert.deepEqual([small.kind, small.mode, small.uid, small.gid, small.size], ['file', 0o644, 0, 0, 11])
      assert.equal(small.mtime.sec, T)
      if (!gnuFormat) assert.equal(small.mtime.nsec, 123_456_789)
      assert.equal((await entry(layer, '/setuid')).mode, 0o4755)
      assert.equal((await entry(layer, '/sticky')).mode, 0o1777)
      assert.equal((await entry(layer, '/mode000')).mode, 0)
      const big = await entry(layer, '/bigid')
      assert.deepEqual([big.uid, big.gid], [3_000_000, 3_000_001])
      assert.deepEqual(await layer.lookup('/no/such/thing'), { entry: null, whiteout: false })
      assert.deepEqual(await layer.lookup('/dir/small/below-a-file'), { entry: null, whiteout: false })
    })

    it('devices, fifos, symlinks', async () => {
      const chr = await entry(layer, '/chr')
      assert.equal(chr.kind, 'char')
      assert.equal(chr.rdev, (1 << 8) | 3)
      assert.equal((await entry(layer, '/blk')).kind, 'block')
      assert.equal((await entry(layer, '/fifo')).kind, 'fifo')
      for (const [p, target] of [['/rel-link', 'dir/small'], ['/abs-link', '/etc/passwd'], ['/dangling', 'nowhere']]) {
        const e = await entry(layer, p)
        assert.equal(e.kind, 'symlink')
        assert.equal(e.size, target.length)
        assert.equal(await layer.readlink(p, e), target)
      }
    })

    it('hard links share an inode and count their links', async () => {
      const a = await entry(layer, '/dir/small')
      const b = await entry(layer, '/hard')
      assert.equal(a.ino, b.ino)
      assert.equal(a.nlink, 2)
      assert.equal(b.nlink, 2)
      assert.notEqual((await entry(layer, '/empty')).ino, a.ino)
    })

    it('reads: whole files, offsets, past the end, sparse holes as zeros', async () => {
      assert.deepEqual(await readAll(layer, '/dir/big'), random)
      assert.equal((await readAll(layer, '/dir/small')).toString(), 'small file\n')
      assert.equal((await readAll(layer, '/empty')).length, 0)
      const e = await entry(layer, '/dir/big')
      const f = await layer.open('/dir/big', e)
      const buf = Buffer.alloc(1000)
      assert.equal(await f.read(buf, 1000, 12345), 1000)
      assert.deepEqual(buf, random.subarray(12345, 13345))
      assert.equal(await f.read(buf, 1000, random.length - 10), 10)
      assert.equal(await f.read(buf, 1000, random.length + 5), 0)
      await f.close()
      const sparse = await readAll(layer, '/sparse')
      assert.equal(sparse.length, 8 * 1024 * 1024)
      assert.equal(sparse.subarray(0, 4).toString(), 'HEAD')
      assert.equal(sparse.subarray(sparse.length - 4).toString(), 'TAIL')
      assert.equal(sparse.subarray(4, sparse.length - 4).every((b) => b === 0), true)
    })

    it('odd names: spaces, newline, UTF-8, bytes that are not UTF-8, 255 bytes, deep paths', async () => {
      for (const p of ['/with space', '/new\nline', '/' + Buffer.from('ünï', 'utf8').toString('latin1'), '/' + LATIN1_NAME, '/' + LONG, '/' + DEEP + '/leaf']) {
        const e = await entry(layer, p)
        assert.equal(e.kind, 'file')
      }
      const listing = await layer.readdir('/')
      assert.ok(listing.entries.has(LATIN1_NAME))
      assert.ok(listing.entries.has(LONG))
    })

    it('readdir: entries without markers, whiteouts apart', async () => {
      const listing = await layer.readdir('/dir')
      assert.deepEqual([...listing.entries.keys()].sort(), ['big', 'small', 'sub'])
      assert.deepEqual([...listing.whiteouts].sort(), ['gone', 'small'])
      await assert.rejects(layer.readdir('/dir/small'))
    })

    it('OCI whiteouts and opaque directories, decoded', async () => {
      assert.deepEqual(await layer.lookup('/dir/gone'), { entry: null, whiteout: true })
      const both = await layer.lookup('/dir/small')
      assert.ok(both.entry, 'an entry of the layer stays, its own whiteout notwithstanding')
      assert.equal(both.whiteout, true)
      assert.equal((await entry(layer, '/opq')).opaque, true)
      assert.equal((await entry(layer, '/dir')).opaque, false)
      assert.equal((await layer.lookup('/dir/.wh.gone')).entry, null, 'markers are never entries')
      assert.equal((await layer.lookup('/opq/.wh..wh..opq')).entry, null)
    })

    it('xattrs, with overlay\'s own never shown', async () => {
      if (gnuFormat) return // the gnu tar format has no xattrs
      const e = await entry(layer, '/dir/small')
      assert.deepEqual((await layer.listXattrs('/dir/small', e)).sort(), ['user.bin', 'user.colour'])
      assert.deepEqual(await layer.getXattr('/dir/small', e, 'user.colour'), Buffer.from('blue'))
      assert.deepEqual(await layer.getXattr('/dir/small', e, 'user.bin'), Buffer.from([0, 255, 16]))
      assert.equal(await layer.getXattr('/dir/small', e, 'user.none'), null)
    })

    it('inode numbers are stable across two opens of the same layer', async () => {
      const again = await make()
      try {
        for (const p of ['/dir/small', '/dir/big', '/sticky', '/' + LONG]) {
          assert.equal((await entry(again, p)).ino, (await entry(layer, p)).ino, p)
        }
      } finally {
        await again.close()
      }
    })
  })
}

describe('DirLayer: kernel overlayfs form', () => {
  it('char 0/0 is a whiteout, trusted.overlay.opaque=y an opaque directory, redirects are read', async () => {
    const root = join(await tempDir('kform'), 'l')
    await mkdir(join(root, 'opq'), { recursive: true })
    sys.mknod(Buffer.from(join(root, 'gone')), C.S_IFCHR, 0, 0)
    sys.lsetxattr(Buffer.from(join(root, 'opq')), 'trusted.overlay.opaque', Buffer.from('y'), 0)
    await mkdir(join(root, 'moved'))
    sys.lsetxattr(Buffer.from(join(root, 'moved')), 'trusted.overlay.redirect', Buffer.from('/old/place'), 0)
    const layer: Layer = await DirLayer.open(root)
    assert.deepEqual(await layer.lookup('/gone'), { entry: null, whiteout: true })
    assert.equal((await layer.lookup('/opq')).entry?.opaque, true)
    assert.equal((await layer.lookup('/moved')).entry?.redirect, '/old/place')
    assert.deepEqual([...(await layer.readdir('/')).whiteouts], ['gone'])
    assert.deepEqual((await layer.listXattrs('/opq', (await layer.lookup('/opq')).entry!)), [])
    assert.equal((await lstat(join(root, 'gone'))).isCharacterDevice(), true)
  })
})

describe('TarLayer: what real archives do', () => {
  it('the same path twice: the last one wins (tar -r)', async () => {
    const d = await tempDir('dup')
    await mkdir(join(d, 'a')); await mkdir(join(d, 'b'))
    await writeFile(join(d, 'a/f'), 'first'); await writeFile(join(d, 'b/f'), 'second, the winner')
    const tar = join(d, 'dup.tar')
    await must('tar', ['-C', join(d, 'a'), '-cf', tar, 'f'])
    await must('tar', ['-C', join(d, 'b'), '-rf', tar, 'f'])
    const layer = await TarLayer.open(tar, { persistIndex: false })
    assert.equal((await readAll(layer, '/f')).toString(), 'second, the winner')
    await layer.close()
  })

  it('a child before its parent, a parent never listed, ../ and absolute names kept inside', async () => {
    const d = await tempDir('order')
    await mkdir(join(d, 'p/q'), { recursive: true })
    await writeFile(join(d, 'p/q/c'), 'c')
    await chmod(join(d, 'p'), 0o700)
    const tar = join(d, 'order.tar')
    await must('sh', ['-c', `cd ${d} && printf 'p/q/c\\np/\\n' | tar --no-recursion -cf ${tar} -T - && tar -rPf ${tar} ${d}/p/q/c`])
    const layer = await TarLayer.open(tar, { persistIndex: false })
    assert.equal((await entry(layer, '/p')).mode, 0o700, 'the parent listed after its child keeps its own mode')
    assert.equal((await entry(layer, '/p/q')).mode, 0o755, 'a parent never listed is a 0755 directory')
    assert.equal((await entry(layer, d + '/p/q/c')).kind, 'file', 'an absolute name lands inside the layer')
    await layer.close()
  })

  it('no end-of-archive blocks (umoci), bytes after them, a name with ..', async () => {
    const d = await tempDir('ends')
    await writeFile(join(d, 'x'), 'x'.repeat(700))
    const tar = join(d, 'x.tar')
    await must('tar', ['-C', d, '-cf', tar, 'x'])
    const cut = join(d, 'cut.tar')
    await writeFile(cut, (await readFile(tar)).subarray(0, 512 + 700)) // header and data, no padding, no end blocks
    const cutLayer = await TarLayer.open(cut, { persistIndex: false })
    assert.equal((await readAll(cutLayer, '/x')).toString(), 'x'.repeat(700))
    await cutLayer.close()
    const trailing = join(d, 'trailing.tar')
    await writeFile(trailing, Buffer.concat([await readFile(tar), Buffer.from('garbage after the end '.repeat(30))]))
    const t = await TarLayer.open(trailing, { persistIndex: false })
    assert.deepEqual([...(await t.readdir('/')).entries.keys()], ['x'])
    await t.close()
    const dotdot = join(d, 'dotdot.tar')
    await must('sh', ['-c', `cd ${d} && mkdir -p in && echo e > escape && tar -cPf ${dotdot} in/../escape x`])
    const dd = await TarLayer.open(dotdot, { persistIndex: false })
    assert.deepEqual([...(await dd.readdir('/')).entries.keys()], ['x'], 'the .. member is skipped, as GNU tar does')
    await dd.close()
    await truncate(tar, 300) // half a header: not a tar
    await assert.rejects(TarLayer.open(tar, { persistIndex: false }), /truncated tar|not a tar/)
  })
})
