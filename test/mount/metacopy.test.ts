import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, stat, writeFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { mountKernelOverlay, mountLayerfs, testCache, unmountAll } from '../support/mounts'
import { LAYERFS, must, removeTemps, tempDir } from '../support/run'
import { diffTrees, snapshotTree, type EntrySnapshot } from '../support/tree'

// -o metacopy=on: chmod, chown, utimens and xattr changes copy a lower file's metadata only, in the
// form kernel overlayfs writes with metacopy=on (a sparse file of the right size carrying
// trusted.overlay.metacopy). Checked against the kernel doing the same, and each reading the
// other's upper (the kernel's has a redirect on a renamed metacopy file).

after(async () => {
  await unmountAll()
  await removeTemps()
})

const KERNEL = ['redirect_dir=on', 'metacopy=on', 'index=off', 'xino=off']
const times = (_p: string, f: keyof EntrySnapshot): boolean => f === 'mtimeNs'

async function sh(root: string, script: string): Promise<void> {
  await must('sh', ['-ec', `cd "$0"; ${script}`, root])
}

describe('metadata-only copy-up (-o metacopy=on)', () => {
  it('writes what kernel overlayfs metacopy=on writes, reads its data from below, and each reads the other\'s upper', async () => {
    const dir = await tempDir('metacopy')
    const lower = join(dir, 'lower')
    await mkdir(join(lower, 'd'), { recursive: true })
    await writeFile(join(lower, 'big'), randomBytes(1 << 20))
    for (const n of ['a', 'b', 'c', 'd/e']) await writeFile(join(lower, n), `${n}\n`)
    const tar = join(dir, 'lower.tar')
    await must('tar', ['--numeric-owner', '-C', lower, '-cf', tar, '.'])
    const [ku, kw, lu, lw] = ['ku', 'kw', 'lu', 'lw'].map((n) => join(dir, n))
    for (const d of [ku, kw, lu, lw]) await mkdir(d)
    const kernel = await mountKernelOverlay([lower], { upper: ku, work: kw, options: KERNEL })
    // copyup=open: copy-ups when kernel overlayfs makes them (touch opens b for writing: a whole copy there;
    // with the default copyup=write its utimens alone copies the metadata up)
    const ours = await mountLayerfs([tar], { upper: lu, work: lw, options: ['metacopy=on', 'copyup=open'] })
    const metaOps = 'chmod 600 big; chown 1000:1000 a; touch -m -d @5 b; setfattr -n user.x -v 1 c; chmod 700 d/e'
    for (const m of [kernel, ours]) await sh(m.path, metaOps)
    assert.deepEqual(diffTrees(await snapshotTree(kernel.path), await snapshotTree(ours.path), { ignore: times }), [], 'merged trees')
    const st = JSON.parse(await must(LAYERFS, ['stats', ours.path, '--json'])) as { copyUps: Array<{ path: string; reason: string; bytes: number; data: boolean }> }
    const big = st.copyUps.find((c) => c.path === '/big')
    assert.deepEqual(big && { reason: big.reason, bytes: big.bytes, data: big.data }, { reason: 'chmod', bytes: 0, data: false }, 'a metadata-only copy-up')
    await ours.unmount()
    await kernel.unmount()
    const upperOpts = { overlayXattrs: true }
    assert.deepEqual(diffTrees(await snapshotTree(ku, upperOpts), await snapshotTree(lu, upperOpts), { ignore: times }), [], 'upper dirs')
    const onDisk = await stat(join(lu, 'big'))
    assert.equal(onDisk.size, 1 << 20)
    assert.equal(onDisk.blocks, 0, 'no data in the upper')
    assert.equal((await must('getfattr', ['--absolute-names', '-d', '-m', 'trusted.overlay.metacopy', join(lu, 'big')])).includes('trusted.overlay.metacopy'), true)

    // then data is needed: a read (from below), an append (the data comes up), a rename
    const k2 = await mountKernelOverlay([lower], { upper: ku, work: kw, options: KERNEL })
    const o2 = await mountLayerfs([tar], { upper: lu, work: lw, options: ['metacopy=on', 'copyup=open'] })
    for (const m of [k2, o2]) await sh(m.path, 'cat big > /dev/null; echo more >> a; mv c c2; cat d/e > /dev/null')
    assert.deepEqual(diffTrees(await snapshotTree(k2.path), await snapshotTree(o2.path), { ignore: times }), [], 'merged trees after data was needed')
    const expected = await snapshotTree(k2.path)
    await o2.unmount()
    await k2.unmount()
    // kernel overlayfs over the upper layerfs wrote, and layerfs over the kernel's (a redirect on c2)
    const [kw2, lw2] = [join(dir, 'kw2'), join(dir, 'lw2')]
    await mkdir(kw2)
    await mkdir(lw2)
    const kOverOurs = await mountKernelOverlay([lower], { upper: lu, work: kw2, options: KERNEL })
    assert.deepEqual(diffTrees(expected, await snapshotTree(kOverOurs.path), { ignore: times }), [], 'kernel overlayfs over layerfs\'s upper')
    await kOverOurs.unmount()
    const oursOverK = await mountLayerfs([tar], { upper: ku, work: lw2, options: ['metacopy=on'], env: { XDG_CACHE_HOME: await testCache } })
    assert.deepEqual(diffTrees(expected, await snapshotTree(oursOverK.path), { ignore: times }), [], 'layerfs over kernel overlayfs\'s upper')
    await oursOverK.unmount()
  })
})
