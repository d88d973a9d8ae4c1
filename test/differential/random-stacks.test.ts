import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { propertyOptions } from '../support/property'
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { describeStack, stackArb, writeLayer, type LayerSpec } from './gen'
import { mountKernelOverlay, mountLayerfs, unmountAll, type Mounted } from '../support/mounts'
import { extractForOverlay } from '../support/oracle'
import { must, removeTemps, tempDir } from '../support/run'
import { diffTrees, snapshotTree } from '../support/tree'

// The backbone: random layer stacks (files, directories, symlinks, hard links, devices, xattrs,
// OCI whiteouts, opaque directories, odd names, deep paths) written as OCI directories, packed by
// GNU tar and by bsdtar, and mounted by layerfs from the GNU tars, from the bsdtar tars, and from
// the kernel-form directories; kernel overlayfs over the GNU tar extractions is the oracle.

const RUNS = Number(process.env.LAYERFS_PROPERTY_RUNS ?? 30)

after(async () => {
  await unmountAll()
  await removeTemps()
})

interface Built {
  gnu: string[]
  bsd: string[]
  /** The GNU tars gzipped (by gzip, or pigz for every other layer). */
  gz: string[]
  kernelDirs: string[]
}

async function build(stack: readonly LayerSpec[]): Promise<Built> {
  const dir = await tempDir('stack')
  const out: Built = { gnu: [], bsd: [], gz: [], kernelDirs: [] }
  for (let i = 0; i < stack.length; i++) {
    const src = join(dir, `src${i}`)
    await mkdir(src)
    await writeLayer(src, stack[i])
    const gnu = join(dir, `l${i}.gnu.tar`)
    const bsd = join(dir, `l${i}.bsd.tar`)
    await must('tar', ['--format=pax', '--xattrs', '--xattrs-include=*', '--numeric-owner', '-C', src, '-cf', gnu, '.'])
    await must('bsdtar', ['--format=pax', '--xattrs', '--numeric-owner', '-C', src, '-cf', bsd, '.'], { env: { ...process.env, LC_ALL: 'C.UTF-8' } })
    const kdir = join(dir, `k${i}`)
    await extractForOverlay(gnu, kdir)
    const gz = `${gnu}.gz`
    await must('sh', ['-c', `${i % 2 ? 'pigz' : 'gzip -n'} -c '${gnu}' > '${gz}'`])
    out.gnu.push(gnu)
    out.gz.push(gz)
    out.bsd.push(bsd)
    out.kernelDirs.push(kdir)
  }
  return out
}

async function withMounts<T>(mounts: Array<() => Promise<Mounted>>, body: (m: Mounted[]) => Promise<T>): Promise<T> {
  const live: Mounted[] = []
  try {
    for (const make of mounts) live.push(await make())
    return await body(live)
  } finally {
    for (const m of live.reverse()) await m.unmount()
  }
}

describe('random layer stacks: layerfs equals kernel overlayfs', () => {
  it(`${RUNS} stacks, each as GNU tars, bsdtar tars, .tar.gz and kernel-form directories`, async () => {
    let compared = 0
    await fc.assert(fc.asyncProperty(stackArb, async (stack) => {
      const b = await build(stack)
      await withMounts([
        () => mountKernelOverlay(b.kernelDirs),
        () => mountLayerfs(b.gnu),
        () => mountLayerfs(b.bsd),
        () => mountLayerfs(b.gz),
        () => mountLayerfs(b.kernelDirs),
      ], async ([kernel, ...ours]) => {
        const expected = await snapshotTree(kernel.path)
        for (const [i, m] of ours.entries()) {
          const diff = diffTrees(expected, await snapshotTree(m.path))
          assert.deepEqual(diff, [], `${['GNU tar', 'bsdtar', 'gzip', 'kernel-form dirs'][i]} lowers differ:\n${describeStack(stack)}`)
        }
        compared += expected.size
      })
      await removeTemps()
    }), propertyOptions(RUNS))
    assert.ok(compared > RUNS, `compared ${compared} entries`)
  })
})
