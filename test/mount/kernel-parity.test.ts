import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readFile, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { fixturesDir } from '../support/fixtures'
import { mountKernelOverlay, mountLayerfs, unmountAll } from '../support/mounts'
import { extractedLayer } from '../support/oracle'
import { removeTemps, tempDir } from '../support/run'
import { diffTrees, snapshotTree } from '../support/tree'

// Real archives from real tools (test/fixtures/build-fixtures.sh), mounted by layerfs straight from
// the tars and by kernel overlayfs over the same layers extracted: the trees must agree entry by
// entry (type, mode, owner, size, content, link target, device numbers, nlink, mtime, xattrs).

let fx: string
let cache: string

before(async () => {
  fx = await fixturesDir()
  cache = await tempDir('oracle')
})
after(async () => {
  await unmountAll()
  await removeTemps()
})

/** Mounts both ways and asserts the trees agree; `asDirs` gives layerfs the extracted dirs too. */
async function compare(tars: string[], asDirs = false): Promise<number> {
  const dirs = await Promise.all(tars.map((t) => extractedLayer(t, cache)))
  const kernel = await mountKernelOverlay(dirs)
  const ours = await mountLayerfs(asDirs ? dirs : tars)
  try {
    const [k, l] = [await snapshotTree(kernel.path), await snapshotTree(ours.path)]
    const diff = diffTrees(k, l)
    assert.deepEqual(diff, [], `layerfs differs from kernel overlayfs over ${tars.map((t) => t.split('/').pop()).join(':')}`)
    return k.size
  } finally {
    await ours.unmount()
    await kernel.unmount()
  }
}

describe('each edge-case tar alone, as kernel overlayfs shows it extracted', () => {
  it('covers every archive in edge/', async () => {
    const names = (await readdir(join(fx, 'edge'))).filter((n) => n.endsWith('.tar')).sort()
    assert.ok(names.length >= 15, `edge/ has ${names.length} archives`)
    for (const name of names) {
      const count = await compare([join(fx, 'edge', name)])
      assert.ok(count > 1, `${name}: ${count} entries`)
    }
  })
})

describe('layer stacks', () => {
  it('OCI whiteouts: upper over lower (a file, a directory, an opaque directory)', async () => {
    await compare([join(fx, 'edge', 'whiteout-upper.tar'), join(fx, 'edge', 'whiteout-lower.tar')])
  })

  it('kernel-overlay whiteouts inside a tar (a tarred upper dir) over a lower', async () => {
    await compare([join(fx, 'edge', 'overlay-native-upper.tar'), join(fx, 'edge', 'whiteout-lower.tar')])
  })

  it('the umoci image, its four layers as tars', async () => {
    const order = (await readFile(join(fx, 'image', 'layers', 'order'), 'utf8')).trim().split('\n')
    const tars = order.reverse().map((s) => join(fx, 'image', 'layers', `${s}.tar`))
    assert.ok((await compare(tars)) > 100)
  })

  it('the umoci image, its four layers as kernel-form directories', async () => {
    const order = (await readFile(join(fx, 'image', 'layers', 'order'), 'utf8')).trim().split('\n')
    const tars = order.reverse().map((s) => join(fx, 'image', 'layers', `${s}.tar`))
    await compare(tars, true)
  })

  it('tars and directories mixed in one stack', async () => {
    const order = (await readFile(join(fx, 'image', 'layers', 'order'), 'utf8')).trim().split('\n').reverse()
    const tars = order.map((s) => join(fx, 'image', 'layers', `${s}.tar`))
    const dirs = await Promise.all(tars.map((t) => extractedLayer(t, cache)))
    const kernel = await mountKernelOverlay(dirs)
    const ours = await mountLayerfs([tars[0], dirs[1], tars[2], dirs[3]])
    try {
      assert.deepEqual(diffTrees(await snapshotTree(kernel.path), await snapshotTree(ours.path)), [])
    } finally {
      await ours.unmount()
      await kernel.unmount()
    }
  })
})

describe('the comparison itself', () => {
  it('notices a tree that differs (a test that cannot fail is no test)', async () => {
    const tar = join(fx, 'edge', 'whiteout-lower.tar')
    const other = join(fx, 'edge', 'dotslash.tar')
    const kernel = await mountKernelOverlay([await extractedLayer(tar, cache)])
    const ours = await mountLayerfs([other])
    try {
      assert.notDeepEqual(diffTrees(await snapshotTree(kernel.path), await snapshotTree(ours.path)), [])
    } finally {
      await ours.unmount()
      await kernel.unmount()
    }
  })
})
