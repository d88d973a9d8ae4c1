import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fixturesDir } from '../support/fixtures'
import { CONVERT } from '../support/oracle'
import { LAYERFS, REPO, removeTemps, run, tempDir } from '../support/run'

// Rootless, as rootless podman runs: uid 1000 in a user namespace of its own (inner 0 is uid 1000,
// inner 1..65536 are 100000.., the map newuidmap would write from /etc/subuid), with /dev/fuse
// 0666 as distributions ship it. layerfs mounts an image writable there; kernel overlayfs with
// -o userxattr, in the same namespace, over the same layers and layerfs's upper, must agree.

const USER = 1000
const SUB = 100000
let fx: string
let savedFuseMode: number

before(async () => {
  fx = await fixturesDir()
  savedFuseMode = (await stat('/dev/fuse')).mode & 0o777
  await chmod('/dev/fuse', 0o666)
})
after(async () => {
  await chmod('/dev/fuse', savedFuseMode) // as it was (0600 on this machine)
  await removeTemps()
})

/** Runs test/mount/rootless-user.sh as uid 1000 in a new user and mount namespace, writing its id maps as newuidmap would. */
async function inNamespace(env: Record<string, string>): Promise<{ code: number | null; stderr: string }> {
  const child = spawn('setpriv', [`--reuid=${USER}`, `--regid=${USER}`, '--clear-groups', 'unshare', '--user', '--mount', '--propagation', 'private',
    'sh', '-c', 'until grep -q . /proc/self/uid_map; do sleep 0.02; done; exec bash "$0"', join(REPO, 'test', 'mount', 'rootless-user.sh')],
  { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LAYERFS_STANDBY: '0', ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()))
  child.stdout.on('data', (c: Buffer) => (stderr += c.toString()))
  // the child has unshared once its /proc/PID/ns/user differs from ours
  const mine = await run('readlink', ['/proc/self/ns/user'])
  for (let i = 0; i < 200; i++) {
    const theirs = await run('readlink', [`/proc/${child.pid}/ns/user`])
    if (theirs.code === 0 && theirs.stdout !== mine.stdout) break
    await new Promise((r) => setTimeout(r, 25))
  }
  await writeFile(`/proc/${child.pid}/uid_map`, `0 ${USER} 1\n1 ${SUB} 65536\n`)
  await writeFile(`/proc/${child.pid}/gid_map`, `0 ${USER} 1\n1 ${SUB} 65536\n`)
  return new Promise((resolve) => child.on('exit', (code) => resolve({ code, stderr })))
}

describe('rootless: an unprivileged user in a user namespace', () => {
  it('mounts an image writable; whiteouts are char 0/0, opaque dirs user.overlay.opaque; kernel overlayfs -o userxattr agrees', async () => {
    if ((await run('setpriv', ['--reuid=1000', 'true'])).code !== 0) return // no setpriv here
    const work = await tempDir('rootless')
    await chmod(work, 0o777)
    await chmod(join(work, '..'), 0o755)
    await writeFile(join(work, 'convert.py'), CONVERT)
    const img = join(fx, 'images')
    const order = (await readFile(join(img, 'oci.layers', 'order'), 'utf8')).split('\n').filter(Boolean)
    const r = await inNamespace({
      W: work, LAYERFS, IMAGE: join(img, 'oci'), TARS: order.map((s) => join(img, 'oci.layers', `${s}.tar`)).join(' '),
    })
    assert.equal(r.code, 0, `the script failed:\n${r.stderr}`)
    const read = (f: string): Promise<string> => readFile(join(work, f), 'utf8')
    assert.equal(await read('finished'), 'done\n')
    // owners as the image records them (33:33, 1000:1000, 0:0), seen inside the namespace
    assert.deepEqual((await read('owners')).trim().split('\n'), ['33:33 m/var/www/index.html', '1000:1000 m/opt/owned', '0:0 m/etc/hostname'])
    assert.equal((await read('whiteout')).trim(), 'character special file 0:0')
    assert.equal(await read('opaque'), 'y')
    assert.doesNotMatch(await read('trusted-xattrs'), /trusted\./, 'no trusted.* xattrs in the upper')
    const [ours, kernel, again] = await Promise.all([read('layerfs.txt'), read('kernel.txt'), read('layerfs-again.txt')])
    assert.ok(ours.split('\n').length > 30, `a real tree:\n${ours}`)
    assert.equal(ours, kernel, 'kernel overlayfs -o userxattr over the same layers and upper shows the tree layerfs showed')
    assert.equal(again, ours, 'layerfs remounted over its upper')
    // on disk, outside the namespace: the upper's files belong to the mapped ids
    const upper = await stat(join(work, 'u', 'etc', 'hostname'))
    assert.equal(upper.uid, USER)
    await mkdir(join(work, 'done'))
  })
})
