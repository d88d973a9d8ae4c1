import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { chmod, chown, mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { mountKernelOverlay, mountLayerfs, unmountAll } from '../support/mounts'
import { must, removeTemps, run, tempDir } from '../support/run'
import { diffTrees, snapshotTree, type EntrySnapshot } from '../support/tree'

// A mount made by root, used by another user: what that user creates is theirs (the group from a
// setgid directory), and permission checks match kernel overlayfs's, operation by operation.

const SCRIPT = String.raw`
cd "$1" || exit 99
t() { "$@" 2>/dev/null; echo "$? $*"; }
t mkdir mine
t sh -c 'echo hi > mine/file'
t sh -c 'echo x > ro/file'
t sh -c 'echo x >> userfile'
t touch newfile
t ln -s target mylink
t mkdir shared/sub
t sh -c 'echo y > shared/mine'
t rm shared/rootfile
t rm shared/mine
t mkdir sgid/child
t sh -c 'echo z > sgid/file'
t chmod 600 mine/file
t chown 0 mine/file
t chmod 777 ro/file
t rm ro/file
t mv userfile renamed
t mv ro ro2
t rmdir mine
t ln userfile hard
t touch -d 2001-01-01 renamed
t touch -d 2001-01-01 ro/file
`

let dir: string
let lower: string

before(async () => {
  dir = await tempDir('caller')
  lower = join(dir, 'lower')
  await mkdir(join(lower, 'ro'), { recursive: true })
  await writeFile(join(lower, 'ro/file'), 'root only\n')
  await mkdir(join(lower, 'shared'))
  await chmod(join(lower, 'shared'), 0o1777)
  await writeFile(join(lower, 'shared/rootfile'), 'r\n')
  await mkdir(join(lower, 'sgid'))
  await chown(join(lower, 'sgid'), 0, 1000)
  await chmod(join(lower, 'sgid'), 0o2777)
  await writeFile(join(lower, 'userfile'), 'u\n')
  await chown(join(lower, 'userfile'), 1000, 1000)
  await chmod(dir, 0o755)
})
after(async () => {
  await unmountAll()
  await removeTemps()
})

function ignoreTimes(_p: string, field: keyof EntrySnapshot): boolean {
  return field === 'mtimeNs'
}

describe('another user on a mount root made', () => {
  it('owns what it creates and meets the same permission checks as on kernel overlayfs', async () => {
    const probe = await run('setpriv', ['--reuid=1000', '--regid=1000', '--clear-groups', 'true'])
    if (probe.code !== 0) return // no setpriv: nothing to run as another user
    const tar = join(dir, 'lower.tar')
    await must('tar', ['--numeric-owner', '-C', lower, '-cf', tar, '.'])
    const results: string[] = []
    const uppers: string[] = []
    for (const kind of ['kernel', 'layerfs'] as const) {
      const upper = join(dir, `${kind}-upper`)
      const work = join(dir, `${kind}-work`)
      await mkdir(upper, 0o777)
      await chmod(upper, 0o777) // the merged root is the upper's root: a place the user may write
      await mkdir(work)
      uppers.push(upper)
      const m = kind === 'kernel'
        ? await mountKernelOverlay([lower], { upper, work, options: ['redirect_dir=on'] })
        : await mountLayerfs([tar], { upper, work })
      try {
        await chmod(join(m.path, '..'), 0o755) // temp dirs are 0700: let the user reach the mount
        const r = await run('setpriv', ['--reuid=1000', '--regid=1000', '--clear-groups', 'sh', '-c', SCRIPT, 'sh', m.path])
        results.push(r.stdout)
        const snap = await snapshotTree(m.path)
        assert.equal(snap.get('/mine/file')?.uid, 1000, `${kind}: a new file is the caller's`)
        assert.equal(snap.get('/mine/file')?.gid, 1000)
        assert.equal(snap.get('/sgid/file')?.gid, 1000, `${kind}: a setgid directory gives its group`)
        assert.equal(snap.get('/sgid/child')?.mode, 0o2755 & ~0o022 | 0o2000, `${kind}: and its setgid bit to new directories`)
      } finally {
        await m.unmount()
      }
    }
    assert.equal(results[1], results[0], 'the same outcome for every operation')
    assert.match(results[0], /^[12] sh -c echo x > ro\/file$/m, 'writing a root file was refused')
    const [k, l] = await Promise.all(uppers.map((u) => snapshotTree(u, { overlayXattrs: true })))
    assert.deepEqual(diffTrees(k, l, { ignore: ignoreTimes }), [])
  })
})
