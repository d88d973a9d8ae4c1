import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { chmod, chown, mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { mountKernelOverlay, mountLayerfs, unmountAll, type Mounted } from '../support/mounts'
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

/**
 * `use` run on kernel overlayfs over `lower` and on layerfs over its tar, each with a fresh upper
 * (mode `upperMode`) under `dir`; what it returned, kernel first, and the upper dirs' differences.
 */
async function onBoth(dir: string, lower: string, upperMode: number, use: (m: Mounted, kind: string) => Promise<string>): Promise<{ results: string[]; upperDiff: string[] }> {
  const tar = join(dir, 'lower.tar')
  await must('tar', ['--numeric-owner', '-C', lower, '-cf', tar, '.'])
  const results: string[] = []
  const uppers: string[] = []
  for (const kind of ['kernel', 'layerfs'] as const) {
    const upper = join(dir, `${kind}-upper`)
    const work = join(dir, `${kind}-work`)
    await mkdir(upper)
    await chmod(upper, upperMode)
    await mkdir(work)
    uppers.push(upper)
    const m = kind === 'kernel'
      ? await mountKernelOverlay([lower], { upper, work, options: ['redirect_dir=on'] })
      : await mountLayerfs([tar], { upper, work })
    try {
      await chmod(join(m.path, '..'), 0o755) // temp dirs are 0700: let the user reach the mount
      results.push(await use(m, kind))
    } finally {
      await m.unmount()
    }
  }
  const [k, l] = await Promise.all(uppers.map((u) => snapshotTree(u, { overlayXattrs: true })))
  return { results, upperDiff: diffTrees(k, l, { ignore: ignoreTimes }) }
}

describe('another user on a mount root made', () => {
  it('owns what it creates and meets the same permission checks as on kernel overlayfs', async () => {
    const probe = await run('setpriv', ['--reuid=1000', '--regid=1000', '--clear-groups', 'true'])
    if (probe.code !== 0) return // no setpriv: nothing to run as another user
    // the merged root is the upper's root: a place the user may write
    const { results, upperDiff } = await onBoth(dir, lower, 0o777, async (m, kind) => {
      const r = await run('setpriv', ['--reuid=1000', '--regid=1000', '--clear-groups', 'sh', '-c', SCRIPT, 'sh', m.path])
      const snap = await snapshotTree(m.path)
      assert.equal(snap.get('/mine/file')?.uid, 1000, `${kind}: a new file is the caller's`)
      assert.equal(snap.get('/mine/file')?.gid, 1000)
      assert.equal(snap.get('/sgid/file')?.gid, 1000, `${kind}: a setgid directory gives its group`)
      assert.equal(snap.get('/sgid/child')?.mode, 0o2755 & ~0o022 | 0o2000, `${kind}: and its setgid bit to new directories`)
      return r.stdout
    })
    assert.equal(results[1], results[0], 'the same outcome for every operation')
    assert.match(results[0], /^[12] sh -c echo x > ro\/file$/m, 'writing a root file was refused')
    assert.deepEqual(upperDiff, [])
  })
})

// What a write or truncation by a user without CAP_FSETID does to set-user-ID and set-group-ID
// bits: the kernel leaves that to layerfs (it handles "killpriv", native/fuse_ll.c io_writev), whose
// own syscalls, as root, would keep them. Through a new descriptor and one kept open, a truncating
// open, truncate(2) and ftruncate(2), on lower files and on files already copied up.
const SETID_SCRIPT = String.raw`
cd "$1" || exit 99
printf x >> s; printf x >> s
truncate -s 1 t
: > o
exec 3>>c; printf x >&3; exec 3>&-
python3 -c 'import os; fd = os.open("ft", os.O_WRONLY); os.ftruncate(fd, 1); os.close(fd)'
printf x >> g; printf x >> gn; printf x >> gx; printf x >> up; : > ot
stat -c '%n %a %s' s t o c ft g gn gx up ot r
`

describe('set-ID bits under writes by another user', () => {
  it('go, or stay, as on kernel overlayfs', async () => {
    const probe = await run('setpriv', ['--reuid=1000', '--regid=1000', '--clear-groups', 'true'])
    if (probe.code !== 0) return // no setpriv: nothing to run as another user
    const base = await tempDir('setid')
    const low = join(base, 'lower')
    await mkdir(low)
    // name, mode, group: g has no group execute and the user is not in its group; gn is the user's group
    const files: Array<[string, number, number]> = [
      ['s', 0o6777, 0], ['t', 0o6777, 0], ['o', 0o6777, 0], ['c', 0o6777, 0], ['ft', 0o6777, 0],
      ['g', 0o2767, 0], ['gn', 0o2767, 1000], ['gx', 0o2777, 1000], ['up', 0o6777, 0], ['ot', 0o6777, 0], ['r', 0o6777, 0],
    ]
    for (const [name, mode, gid] of files) {
      await writeFile(join(low, name), 'hi\n')
      await chown(join(low, name), 0, gid)
      await chmod(join(low, name), mode)
    }
    const { results, upperDiff } = await onBoth(base, low, 0o755, async (m) => {
      await chmod(m.path, 0o755)
      // root keeps the bits (it has CAP_FSETID); up and ot are copied up by it first (their next
      // opens are answered in C)
      await must('sh', ['-c', 'printf y >> "$1/up"; printf y >> "$1/ot"; printf y >> "$1/r"', 'sh', m.path])
      const user = ['--reuid=1000', '--regid=1000', '--clear-groups']
      const first = await run('setpriv', [...user, 'sh', '-c', SETID_SCRIPT, 'sh', m.path])
      // the bits set again on a file the user wrote to already: they go again at its next write
      await chmod(join(m.path, 'up'), 0o6777)
      const again = await run('setpriv', [...user, 'sh', '-c', 'cd "$1" && printf z >> up && stat -c "%n %a %s" up', 'sh', m.path])
      return `code ${first.code}\n${first.stdout}${first.stderr}code ${again.code}\n${again.stdout}${again.stderr}`
    })
    assert.equal(results[1], results[0], 'the same modes after every operation')
    for (const line of ['s 777 5', 't 777 1', 'o 777 0', 'c 777 4', 'ft 777 1', 'g 767 4', 'gn 2767 4', 'gx 777 4', 'up 777 5', 'ot 777 0', 'r 6777 4']) {
      assert.match(results[0], new RegExp(`^${line}$`, 'm'), `kernel overlayfs: ${line}`)
    }
    assert.match(results[0], /code 0\nup 777 6\n$/)
    assert.deepEqual(upperDiff, [])
  })
})
