import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { propertyOptions } from '../support/property'
import { chmod, mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { describeStack, pathsOf, stackArb, writeLayer, type LayerSpec } from './gen'
import { apply, describeOps, opsArbOver, type Op } from './ops'
import { mountKernelOverlay, mountLayerfs, unmountAll, type Mounted } from '../support/mounts'
import { extractForOverlay } from '../support/oracle'
import { must, removeTemps, run, tempDir } from '../support/run'
import { diffTrees, snapshotTree, type EntrySnapshot } from '../support/tree'

// The writable mount against kernel overlayfs (redirect_dir=on, as layerfs renames directories):
// random operation sequences on random stacks, the same on both. Each operation must give the
// same outcome; afterwards the merged trees and the upper dirs must agree, and again after a
// remount, and each upper must show the same tree when the other filesystem mounts it.

const RUNS = Number(process.env.LAYERFS_PROPERTY_RUNS ?? 30)
const KERNEL_OPTS = ['redirect_dir=on', 'index=off', 'metacopy=off', 'xino=off']

after(async () => {
  await unmountAll()
  await removeTemps()
})

/** Whiteouts share an inode whose link count is theirs. */
function ignore(_path: string, field: keyof EntrySnapshot, e: EntrySnapshot): boolean {
  return field === 'nlink' && e.type === 'char' && e.rdev === '0:0'
}

type Snapshot = Map<string, EntrySnapshot>

/**
 * Times follow the clock of each run, so they cannot be compared as they are: each entry's mtime
 * becomes whether it is still what the same filesystem showed at that path before the operations
 * ('kept'), another ('changed'), or the path is new. Kernel overlayfs keeps a directory's mtime
 * when it copies up something inside it; a copy-up that let the rename into the parent show
 * differed here, and was invisible while mtimes were ignored.
 */
function mtimesAsChange(snap: Snapshot, before: Snapshot): Snapshot {
  const out: Snapshot = new Map()
  for (const [path, e] of snap) {
    const was = before.get(path)
    out.set(path, { ...e, mtimeNs: was === undefined ? 'new' : was.mtimeNs === e.mtimeNs ? 'kept' : 'changed' })
  }
  return out
}

async function stackOf(specs: readonly LayerSpec[], dir: string): Promise<{ tars: string[]; gz: string[]; dirs: string[] }> {
  const tars: string[] = []
  const gz: string[] = []
  const dirs: string[] = []
  for (let i = 0; i < specs.length; i++) {
    const src = join(dir, `src${i}`)
    await mkdir(src)
    await writeLayer(src, specs[i])
    const tar = join(dir, `l${i}.tar`)
    await must('tar', ['--format=pax', '--xattrs', '--xattrs-include=*', '--numeric-owner', '-C', src, '-cf', tar, '.'])
    await extractForOverlay(tar, join(dir, `k${i}`))
    await must('sh', ['-c', `gzip -n -c '${tar}' > '${tar}.gz'`])
    tars.push(tar)
    gz.push(`${tar}.gz`)
    dirs.push(join(dir, `k${i}`))
  }
  return { tars, gz, dirs }
}

async function fresh(dir: string, name: string): Promise<{ upper: string; work: string }> {
  const upper = join(dir, `${name}-upper`)
  const work = join(dir, `${name}-work`)
  await mkdir(upper)
  await mkdir(work)
  return { upper, work }
}

function same(a: Map<string, EntrySnapshot>, b: Map<string, EntrySnapshot>, what: string, context: string): void {
  assert.deepEqual(diffTrees(a, b, { ignore }), [], `${what}\n${context}`)
}

/** Applies the operations as uid/gid 1000 (a child process under setpriv); returns each outcome. */
async function applyAsUser(root: string, ops: readonly Op[]): Promise<string[]> {
  const r = await run('setpriv', ['--reuid=1000', '--regid=1000', '--clear-groups', process.execPath,
    join(__dirname, 'apply-ops.js'), root, JSON.stringify(ops)])
  if (r.code !== 0) throw new Error(`applying as uid 1000 failed: ${r.stderr}`)
  return JSON.parse(r.stdout) as string[]
}

async function check(specs: LayerSpec[], ops: Op[], lowerKind: 'tars' | 'gzip' | 'dirs', asUser = false): Promise<void> {
  const dir = await tempDir('ops')
  const { tars, gz, dirs } = await stackOf(specs, dir)
  const k = await fresh(dir, 'kernel')
  const l = await fresh(dir, 'layerfs')
  const context = `stack:\n${describeStack(specs)}\nops:\n${describeOps(ops)}`
  const lowers = lowerKind === 'tars' ? tars : lowerKind === 'gzip' ? gz : dirs
  const mounts: Mounted[] = []
  try {
    if (asUser) {
      // the merged root is the upper's root: one the user may write in; and a way in to the mounts
      for (const u of [k.upper, l.upper]) await chmod(u, 0o777)
    }
    const kernel = await mountKernelOverlay(dirs, { ...k, options: KERNEL_OPTS })
    mounts.push(kernel)
    const ours = await mountLayerfs(lowers, l)
    mounts.push(ours)
    // each side's times before the operations (see mtimesAsChange)
    const kBefore = await snapshotTree(kernel.path)
    const lBefore = await snapshotTree(ours.path)
    const kt = (snap: Snapshot): Snapshot => mtimesAsChange(snap, kBefore)
    const lt = (snap: Snapshot): Snapshot => mtimesAsChange(snap, lBefore)
    if (asUser) {
      for (const m of [kernel, ours]) await chmod(join(m.path, '..'), 0o755)
      const expected = await applyAsUser(kernel.path, ops)
      const actual = await applyAsUser(ours.path, ops)
      assert.deepEqual(actual, expected, `outcomes as uid 1000 differ\n${context}`)
    } else {
      for (const [i, o] of ops.entries()) {
        const expected = await apply(kernel.path, o)
        const actual = await apply(ours.path, o)
        assert.equal(actual, expected, `op ${i} ${JSON.stringify(o)}: kernel ${expected}, layerfs ${actual}\n${context}`)
      }
    }
    same(kt(await snapshotTree(kernel.path)), lt(await snapshotTree(ours.path)), 'merged trees differ', context)
    for (const m of mounts.splice(0)) await m.unmount()
    same(kt(await snapshotTree(k.upper, { overlayXattrs: true })), lt(await snapshotTree(l.upper, { overlayXattrs: true })), 'upper dirs differ', context)

    // remounted, each over its own upper; then each over the other's upper
    const kernel2 = await mountKernelOverlay(dirs, { ...k, options: KERNEL_OPTS })
    mounts.push(kernel2)
    const expected = kt(await snapshotTree(kernel2.path))
    const ours2 = await mountLayerfs(lowers, l)
    mounts.push(ours2)
    same(expected, lt(await snapshotTree(ours2.path)), 'after a remount', context)
    for (const m of mounts.splice(0)) await m.unmount()
    const kernelOverOurs = await mountKernelOverlay(dirs, { upper: l.upper, work: join(dir, 'kx-work'), options: KERNEL_OPTS }).catch(async () => {
      await mkdir(join(dir, 'kx-work'))
      return mountKernelOverlay(dirs, { upper: l.upper, work: join(dir, 'kx-work'), options: KERNEL_OPTS })
    })
    mounts.push(kernelOverOurs)
    same(expected, lt(await snapshotTree(kernelOverOurs.path)), 'kernel overlayfs over the upper layerfs wrote', context)
    for (const m of mounts.splice(0)) await m.unmount()
    const oursOverKernel = await mountLayerfs(lowers, { upper: k.upper, work: k.work })
    mounts.push(oursOverKernel)
    same(expected, kt(await snapshotTree(oursOverKernel.path)), 'layerfs over the upper kernel overlayfs wrote', context)
  } finally {
    for (const m of mounts.reverse()) await m.unmount()
  }
}

/** A stack and operations over it, their paths as often its own as fixed names (see opsArbOver). */
const stackWithOps = stackArb.chain((specs) => fc.tuple(fc.constant(specs), opsArbOver(pathsOf(specs))))

describe('writable: random operations, layerfs against kernel overlayfs', () => {
  for (const [lowerKind, runs] of [['tars', RUNS], ['gzip', Math.ceil(RUNS / 2)], ['dirs', RUNS]] as const) {
    it(`${runs} sequences over ${{ tars: 'tar', gzip: '.tar.gz', dirs: 'directory' }[lowerKind]} lowers, as root`, async () => {
      await fc.assert(fc.asyncProperty(stackWithOps, async ([specs, ops]) => {
        await check(specs, ops, lowerKind)
        await removeTemps()
      }), propertyOptions(runs))
    })
  }

  it(`${Math.ceil(RUNS / 2)} sequences over tar lowers, as uid 1000`, async () => {
    if ((await run('setpriv', ['--reuid=1000', 'true'])).code !== 0) return // no setpriv here
    await fc.assert(fc.asyncProperty(stackWithOps, async ([specs, ops]) => {
      await check(specs, ops, 'tars', true)
      await removeTemps()
    }), propertyOptions(Math.ceil(RUNS / 2)))
  })
})
