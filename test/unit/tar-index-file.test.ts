import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readFile, readdir, realpath, rm, stat, truncate, utimes, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { TarLayer } from '../../src/layer/tar-layer'
import { indexPathFor } from '../../src/layer/index-file'
import { must, removeTemps, tempDir } from '../support/run'

// The persisted index: reused for an unchanged tar, rebuilt (never trusted) when the tar changed or
// the index file is damaged, kept under $XDG_CACHE_HOME/layerfs.

let dir: string
let tar: string
const savedCache = process.env.XDG_CACHE_HOME

before(async () => {
  dir = await tempDir('index')
  process.env.XDG_CACHE_HOME = join(dir, 'cache')
  await must('sh', ['-c', `mkdir -p ${dir}/src/d && echo one > ${dir}/src/d/f && echo two > ${dir}/src/g`])
  tar = join(dir, 'layer.tar')
  await must('tar', ['-C', join(dir, 'src'), '-cf', tar, '.'])
})
after(async () => {
  process.env.XDG_CACHE_HOME = savedCache
  await removeTemps()
})

/** Opens `file` (the shared tar by default); `reuseLoaded` as a daemon opens its layers. */
async function open(file = tar, opts: { reuseLoaded?: boolean } = {}): Promise<TarLayer> {
  const layer = await TarLayer.open(file, opts)
  await layer.saved()
  return layer
}

async function content(layer: TarLayer, path: string): Promise<string> {
  const { entry } = await layer.lookup(path)
  assert.ok(entry)
  const f = await layer.open(path, entry)
  const buf = Buffer.alloc(entry.size)
  await f.read(buf, entry.size, 0)
  return buf.toString()
}

describe('persisted tar index', () => {
  it('is built once, then reused for the unchanged tar, under $XDG_CACHE_HOME/layerfs', async () => {
    const first = await open()
    assert.equal(first.fromCache, false)
    await first.close()
    const files = await readdir(join(dir, 'cache', 'layerfs', 'index'))
    assert.equal(files.length, 1)
    assert.ok(files[0].endsWith('.idx'))
    assert.equal(files.filter((f) => f.endsWith('.tmp')).length, 0, 'no temporary file left')
    const second = await open()
    assert.equal(second.fromCache, true)
    assert.equal(await content(second, '/d/f'), 'one\n')
    await second.close()
  })

  it('is rebuilt when the tar changes: new mtime, or new bytes with the same size and mtime', async () => {
    const future = new Date(Date.now() + 60_000)
    await utimes(tar, future, future)
    const touched = await open()
    assert.equal(touched.fromCache, false)
    await touched.close()
    assert.equal((await open()).fromCache, true)
    // same size, same mtime, other content
    const st = await stat(tar)
    const bytes = await readFile(tar)
    const at = bytes.indexOf('one\n')
    bytes.write('ONE\n', at)
    await writeFile(tar, bytes)
    await utimes(tar, st.atime, st.mtime)
    const rewritten = await open()
    assert.equal(rewritten.fromCache, false)
    assert.equal(await content(rewritten, '/d/f'), 'ONE\n')
    await rewritten.close()
  })

  it('is rebuilt, never trusted, when the index file is damaged', async () => {
    const file = indexPathFor(await realpath(tar))
    const good = await readFile(file)
    const damages: Array<[string, () => Promise<void>]> = [
      ['a flipped byte', async () => { const b = Buffer.from(good); b[b.length >> 1] ^= 0xff; await writeFile(file, b) }],
      ['cut short', async () => { await writeFile(file, good); await truncate(file, good.length >> 1) }],
      ['garbage', async () => { await writeFile(file, 'not an index at all') }],
      ['empty', async () => { await writeFile(file, '') }],
      ['another version', async () => { const b = Buffer.from(good); b.writeUInt32LE(999, 14); await writeFile(file, b) }],
    ]
    for (const [what, damage] of damages) {
      await damage()
      const layer = await open()
      assert.equal(layer.fromCache, false, what)
      assert.equal(await content(layer, '/g'), 'two\n', what)
      await layer.close()
      assert.equal((await open()).fromCache, true, `${what}: the rebuilt index is good again`)
    }
  })

  it('in a daemon, is taken again from memory for the unchanged tar, never for a changed one nor once its file is gone', async () => {
    const own = join(dir, 'reused.tar')
    await must('tar', ['-C', join(dir, 'src'), '-cf', own, '.'])
    const file = indexPathFor(await realpath(own))
    const daemonOpen = (): Promise<TarLayer> => open(own, { reuseLoaded: true })
    // only an archive whose last change is over a second old is remembered (its ctime then
    // changes with any later write)
    await new Promise((r) => setTimeout(r, 1100))
    const first = await daemonOpen() // built and saved: not remembered yet
    await first.close()
    const loaded = await daemonOpen() // loaded from the file: remembered
    assert.equal(loaded.fromCache, true)
    await loaded.close()
    const again = await daemonOpen()
    assert.equal(again.fromCache, true)
    assert.equal(again.index, loaded.index, 'the very index loaded before')
    assert.equal(await content(again, '/d/f'), 'one\n')
    await again.close()
    // the index file rewritten in place (its bytes are mapped): read again, found damaged, rebuilt
    await writeFile(file, 'not an index at all')
    const damaged = await daemonOpen()
    assert.equal(damaged.fromCache, false)
    assert.notEqual(damaged.index, loaded.index)
    assert.equal(await content(damaged, '/d/f'), 'one\n')
    await damaged.close()
    // the file gone (cache prune): indexed and saved again
    await rm(file)
    const pruned = await daemonOpen()
    assert.equal(pruned.fromCache, false)
    await pruned.close()
    assert.ok((await stat(file)).size > 100, 'saved again')
    await new Promise((r) => setTimeout(r, 1100))
    const remembered = await daemonOpen()
    assert.equal(remembered.fromCache, true)
    await remembered.close()
    assert.equal((await daemonOpen()).index, remembered.index)
    // same size, same mtime, other bytes: the ctime moved, so it is read afresh
    const st = await stat(own)
    const bytes = await readFile(own)
    bytes.write('ONE\n', bytes.indexOf('one\n'))
    await writeFile(own, bytes)
    await utimes(own, st.atime, st.mtime)
    const changed = await daemonOpen()
    assert.equal(changed.fromCache, false)
    assert.equal(await content(changed, '/d/f'), 'ONE\n')
    await changed.close()
  })
})
