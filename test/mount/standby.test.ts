import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, readFile, readdir, rename, stat, utimes, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { LAYERFS, REPO, must, removeTemps, run, tempDir } from '../support/run'
import { mountKernelOverlay, testCache, unmountAll } from '../support/mounts'
import { diffTrees, snapshotTree } from '../support/tree'
import { freshMountpoint, mountedAt, waitFor } from '../support/cli'
import { isRunning } from '../../src/runtime'

// The standby daemon (src/standby.ts, native/launch.c): after a mount, one more daemon waits to
// serve the next mount at once. The other suites run with it off (test/support/run.ts); here it is
// on, and these check that what it serves is what a fresh daemon serves, that it declines what a
// fresh daemon would do differently, and that it leaves nothing behind.

let dir: string
let tar: string
let env: NodeJS.ProcessEnv
const mounted: string[] = []

/** The pid of the standby waiting for this user and namespaces, once it listens; null if none within `ms`. */
async function waitingStandby(ms = 10_000): Promise<number | null> {
  let pid: number | null = null
  await waitFor(async () => {
    const unix = await readFile('/proc/net/unix', 'utf8')
    if (!unix.includes('@layerfs-standby-')) return false
    const pids = await standbys()
    pid = pids.length === 1 ? pids[0] : null
    return pid !== null
  }, ms)
  return pid
}

/** Standby processes in this test's user namespace (one for this user is the most there should be). */
async function standbys(): Promise<number[]> {
  const r = await run('pgrep', ['-f', '__layerfs_standby'])
  const mine = await run('readlink', ['/proc/self/ns/user'])
  const out: number[] = []
  for (const pid of r.stdout.split('\n').filter(Boolean).map(Number)) {
    if ((await run('readlink', [`/proc/${pid}/ns/user`])).stdout === mine.stdout) out.push(pid)
  }
  return out
}

async function daemonPid(mnt: string): Promise<number> {
  return (JSON.parse(await must(LAYERFS, ['stats', mnt, '--json'], { env })) as { pid: number }).pid
}

async function mount(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<{ code: number; stderr: string }> {
  const r = await run(LAYERFS, args, { env: opts.env ?? env, cwd: opts.cwd })
  return r
}

async function umount(mnt: string): Promise<void> {
  await must(LAYERFS, ['umount', mnt], { env })
}

/** How the daemon serving `mnt` mounted it: 'prepared' when a standby's gate did (src/standby.ts). */
async function mountedBy(mnt: string): Promise<string> {
  return (JSON.parse(await must(LAYERFS, ['stats', mnt, '--json'], { env })) as { mountedBy: string }).mountedBy
}

/** A standby that expects `args` again (the last mount it was handed), once it had time to prepare it. */
async function preparedStandby(args: string[], mnt: string): Promise<number> {
  assert.equal((await mount([...args, mnt])).code, 0)
  mounted.push(mnt)
  await umount(mnt)
  const pid = await waitingStandby()
  assert.ok(pid)
  await new Promise((r) => setTimeout(r, 1500)) // it prepares once it listens
  return pid
}

/** Every mtime under `root` (itself too) cut to whole seconds. */
async function wholeSeconds(root: string): Promise<void> {
  for (const name of await readdir(root, { withFileTypes: true })) {
    if (name.isDirectory()) await wholeSeconds(join(root, name.name))
    else if (!name.isSymbolicLink()) await cut(join(root, name.name))
  }
  await cut(root)
}

async function cut(path: string): Promise<void> {
  const st = await stat(path)
  await utimes(path, st.atime, Math.floor(st.mtimeMs / 1000))
}

async function stopStandby(): Promise<void> {
  await run(LAYERFS, ['standby', 'stop'], { env })
  await waitFor(async () => (await standbys()).length === 0, 5000)
}

before(async () => {
  dir = await tempDir('standby')
  await mkdir(join(dir, 'src/etc'), { recursive: true })
  await writeFile(join(dir, 'src/etc/hello'), 'hello\n')
  await writeFile(join(dir, 'src/etc/big'), Buffer.alloc(1 << 20, 7))
  tar = join(dir, 'lower.tar')
  await must('tar', ['-C', join(dir, 'src'), '-cf', tar, '.'])
  env = { ...process.env, XDG_CACHE_HOME: await testCache, LAYERFS_STANDBY: '1', LAYERFS_STANDBY_IDLE: '120' }
  await stopStandby() // one per user and namespaces: a standby from elsewhere would decline ours
})

after(async () => {
  for (const m of mounted) if (await mountedAt(m)) await run(LAYERFS, ['umount', m], { env })
  await unmountAll() // any other mountpoint a failed test left mounted
  // a daemon whose mount just ended starts the next standby at once, a launcher's starter a second
  // after its mount: what comes up over the next seconds is stopped too
  const quiet = Date.now() + 2500
  for (;;) {
    await stopStandby()
    for (const pid of await standbys()) await run('kill', [String(pid)])
    await new Promise((r) => setTimeout(r, 500))
    if (Date.now() > quiet + 10_000 || (Date.now() > quiet && (await standbys()).length === 0)) break
  }
  await removeTemps()
})

describe('the standby daemon', () => {
  it('serves the next mount: the same tree and writes as a fresh daemon, and ends with it', async () => {
    const first = await freshMountpoint()
    mounted.push(first)
    assert.equal((await mount(['mount', '-o', `lowerdir=${tar}`, first])).code, 0)
    const fresh = await daemonPid(first)
    const standby = await waitingStandby()
    assert.ok(standby, 'a standby waits after the first mount')
    assert.notEqual(standby, fresh)

    const second = await freshMountpoint()
    mounted.push(second)
    const upper = join(dir, 'u1')
    const work = join(dir, 'w1')
    await mkdir(upper)
    await mkdir(work)
    assert.equal((await mount(['mount', '-o', `lowerdir=${tar},upperdir=${upper},workdir=${work}`, second])).code, 0)
    assert.equal(await daemonPid(second), standby, 'the standby serves the second mount')
    assert.deepEqual((await readdir(join(second, 'etc'))).sort(), (await readdir(join(first, 'etc'))).sort())
    assert.equal(await readFile(join(second, 'etc/hello'), 'utf8'), 'hello\n')
    assert.deepEqual(await readFile(join(second, 'etc/big')), await readFile(join(first, 'etc/big')))
    await writeFile(join(second, 'etc/hello'), 'changed\n', { flag: 'a' })
    assert.equal(await readFile(join(upper, 'etc/hello'), 'utf8'), 'hello\nchanged\n', 'copied up into the upper dir')
    assert.equal(await readFile(join(first, 'etc/hello'), 'utf8'), 'hello\n')

    const next = await waitingStandby()
    assert.ok(next && next !== standby, 'the launcher started the next standby')
    await umount(second)
    assert.ok(await waitFor(async () => !(await isRunning(standby!))), 'the daemon it became ends with its mount')
    await umount(first)
    assert.equal(await mountedAt(second), null)
  })

  it('resolves relative paths against the launcher\'s directory', async () => {
    const standby = await waitingStandby()
    assert.ok(standby)
    const base = await tempDir('standby-rel')
    await mkdir(join(base, 'm'))
    await must('cp', [tar, join(base, 'l.tar')])
    const r = await mount(['mount', '-o', 'lowerdir=l.tar', 'm'], { cwd: base })
    mounted.push(join(base, 'm'))
    assert.equal(r.code, 0, r.stderr)
    assert.equal(await daemonPid(join(base, 'm')), standby)
    assert.equal(await readFile(join(base, 'm/etc/hello'), 'utf8'), 'hello\n')
    await umount(join(base, 'm'))
  })

  it('serves short mounts one after another itself: no other standby boots meanwhile', async () => {
    const standby = await waitingStandby()
    assert.ok(standby)
    // each launcher's starter looks a second after its mount; the mounts here have ended by then,
    // but the daemon is busy with a later one: no reason to boot another (native/launch.c)
    const others = new Set<number>()
    let watching = true
    const watch = (async () => {
      while (watching) {
        for (const pid of await standbys()) if (pid !== standby) others.add(pid)
        await new Promise((r) => setTimeout(r, 20))
      }
    })()
    let n = 0
    try {
      for (const until = Date.now() + 3000; Date.now() < until; n++) {
        const mnt = await freshMountpoint()
        mounted.push(mnt)
        assert.equal((await mount(['mount', '-o', `lowerdir=${tar}`, mnt])).code, 0)
        assert.equal(await daemonPid(mnt), standby)
        await umount(mnt)
      }
      await new Promise((r) => setTimeout(r, 1500)) // the last starters look
    } finally {
      watching = false
      await watch
    }
    assert.deepEqual([...others], [], `no other standby over ${n} mounts`)
    assert.equal(await waitingStandby(), standby)
    // each mount's keep-warm thread ended with its reader (native/keep_warm.c): at most the one of
    // the mount it has prepared is left
    const warm: string[] = []
    for (const tid of await readdir(`/proc/${standby}/task`)) {
      if ((await readFile(`/proc/${standby}/task/${tid}/comm`, 'utf8').catch(() => '')).trim() === 'layerfs-warm') warm.push(tid)
    }
    assert.ok(warm.length <= 1, `${warm.length} keep-warm threads after ${n} mounts`)
  })

  it('fails as a fresh daemon fails: the same one line, nothing mounted', async () => {
    const standby = await waitingStandby()
    assert.ok(standby)
    const mnt = await freshMountpoint()
    const missing = join(dir, 'nope.tar')
    const viaStandby = await mount(['mount', '-o', `lowerdir=${missing}`, mnt])
    const viaFresh = await mount(['mount', '-o', `lowerdir=${missing}`, mnt], { env: { ...env, LAYERFS_STANDBY: '0' } })
    assert.notEqual(viaStandby.code, 0)
    assert.equal(viaStandby.stderr, viaFresh.stderr)
    assert.match(viaStandby.stderr, /^layerfs: layer .*nope\.tar: no such file or directory\n$/)
    assert.equal(await mountedAt(mnt), null)
    assert.ok(await waitFor(async () => !(await isRunning(standby!))), 'the standby that failed ends')
  })

  it('declines another environment (a debug log to show) and makes way', async () => {
    const mnt = await freshMountpoint()
    assert.equal((await mount(['mount', '-o', `lowerdir=${tar}`, mnt])).code, 0) // the previous test left none waiting
    mounted.push(mnt)
    await umount(mnt)
    const standby = await waitingStandby()
    assert.ok(standby)
    const dbg = await freshMountpoint()
    mounted.push(dbg)
    const r = await mount(['mount', '-o', `lowerdir=${tar}`, dbg], { env: { ...env, DEBUG: 'layerfs:mount' } })
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stderr, /layerfs:mount mounted/, 'the debug log reached the terminal')
    assert.notEqual(await daemonPid(dbg), standby)
    assert.ok(await waitFor(async () => !(await isRunning(standby))), 'the standby made way')
    await umount(dbg)
    // the next mount in the first environment is a fresh daemon's, which leaves a standby again
    const again = await freshMountpoint()
    mounted.push(again)
    assert.equal((await mount(['mount', '-o', `lowerdir=${tar}`, again])).code, 0)
    assert.ok(await waitingStandby())
    await umount(again)
  })

  it('declines a launcher of another build (layerfs rebuilt or upgraded) and makes way', async () => {
    const standby = await waitingStandby()
    assert.ok(standby)
    // what a rebuild does to the standby's own code: its file changes under it
    const code = join(REPO, 'dist', 'src', 'standby.js')
    const now = new Date()
    await utimes(code, now, now)
    const mnt = await freshMountpoint()
    mounted.push(mnt)
    assert.equal((await mount(['mount', '-o', `lowerdir=${tar}`, mnt])).code, 0)
    assert.notEqual(await daemonPid(mnt), standby, 'a fresh daemon serves it')
    assert.ok(await waitFor(async () => !(await isRunning(standby))), 'the stale standby made way')
    await umount(mnt)
  })

  it('leaves no warm-up mount, ends on `layerfs standby stop` and when idle', async () => {
    const standby = await waitingStandby()
    assert.ok(standby)
    const info = await readFile('/proc/self/mountinfo', 'utf8')
    assert.doesNotMatch(info, /layerfs-warm-up/)
    const stop = await must(LAYERFS, ['standby', 'stop'], { env })
    assert.match(stop, /ended/)
    assert.ok(await waitFor(async () => !(await isRunning(standby))))

    const idleEnv = { ...env, LAYERFS_STANDBY_IDLE: '1' }
    const mnt = await freshMountpoint()
    mounted.push(mnt)
    assert.equal((await mount(['mount', '-o', `lowerdir=${tar}`, mnt], { env: idleEnv })).code, 0)
    await must(LAYERFS, ['umount', mnt], { env: idleEnv })
    const idle = await waitingStandby()
    assert.ok(idle)
    assert.ok(await waitFor(async () => !(await isRunning(idle!)), 8000), 'an idle standby ends by itself')
  })

  it('mounts the last mount made again at once, at any mountpoint (a prepared mount), as kernel overlayfs shows it', async () => {
    const args = ['mount', '-q', '-o', `lowerdir=${tar}`]
    await preparedStandby(args, await freshMountpoint()) // handed to a standby: the next one expects it
    const standby = await preparedStandby(args, await freshMountpoint())
    const mnt = await freshMountpoint()
    mounted.push(mnt)
    assert.equal((await mount([...args, mnt])).code, 0)
    assert.equal(await daemonPid(mnt), standby)
    assert.equal(await mountedBy(mnt), 'prepared', "the standby's gate mounted it")
    await wholeSeconds(join(dir, 'src')) // as the tar holds them
    const kernel = await mountKernelOverlay([join(dir, 'src')])
    try {
      const diff = diffTrees(await snapshotTree(kernel.path), await snapshotTree(mnt), {
        ignore: (path, field) => path === '/' && (field === 'mtimeNs' || field === 'mode' || field === 'nlink'), // the root: tar's '.' vs the kernel's merged dir
      })
      assert.deepEqual(diff, [])
    } finally {
      await kernel.unmount()
    }
    assert.ok(await waitingStandby(), 'a standby waits again')
    await umount(mnt)
    assert.ok(await waitFor(async () => !(await isRunning(standby))), 'the daemon it became ends with its mount')
  })

  it('prepares the mount after one that indexed, once its index is saved, without indexing it itself', async () => {
    // its own cache: the layer's index is then the one file in it
    const own = { ...env, XDG_CACHE_HOME: await tempDir('standby-cache') }
    const indexDir = join(own.XDG_CACHE_HOME, 'layerfs', 'index')
    const indexes = async (): Promise<string[]> => (await readdir(indexDir).catch(() => [])).filter((n) => n.endsWith('.idx'))
    const args = ['mount', '-q', '-o', `lowerdir=${tar}`]
    const first = await freshMountpoint()
    mounted.push(first)
    assert.equal((await mount([...args, first], { env: own })).code, 0)
    assert.ok(await waitFor(async () => (await indexes()).length === 1), 'the daemon saves the index it built')
    const file = join(indexDir, (await indexes())[0])
    // as while the daemon still writes a big layer's index: not there when its standby starts
    await rename(file, `${file}.saving`)
    await umount(first)
    assert.ok(await waitingStandby())
    await new Promise((r) => setTimeout(r, 1000))
    assert.deepEqual(await indexes(), [], 'the standby left the indexing to the daemon')
    await rename(`${file}.saving`, file) // saved
    await new Promise((r) => setTimeout(r, 4000)) // it looks again every 2 s at most
    const mnt = await freshMountpoint()
    mounted.push(mnt)
    assert.equal((await mount([...args, mnt], { env: own })).code, 0)
    assert.equal(await mountedBy(mnt), 'prepared', 'the standby prepared it from the saved index')
    assert.equal(await readFile(join(mnt, 'etc/hello'), 'utf8'), 'hello\n')
    await umount(mnt)
    await stopStandby()
  })

  it('does not use a prepared mount once a layer changed, nor where something is mounted already', async () => {
    const layer = join(dir, 'changing.tar')
    await must('cp', [tar, layer])
    const args = ['mount', '-q', '-o', `lowerdir=${layer}`]
    await preparedStandby(args, await freshMountpoint())
    await preparedStandby(args, await freshMountpoint())
    // the archive rewritten: a file more
    await writeFile(join(dir, 'src/etc/added'), 'added\n')
    await must('tar', ['-C', join(dir, 'src'), '-cf', layer, '.'])
    const mnt = await freshMountpoint()
    mounted.push(mnt)
    assert.equal((await mount([...args, mnt])).code, 0)
    assert.equal(await mountedBy(mnt), 'mount', 'served the long way')
    assert.equal(await readFile(join(mnt, 'etc/added'), 'utf8'), 'added\n')
    // prepared again (for the archive as it is now) while that mount stands; asked to mount there
    assert.ok(await waitingStandby())
    await new Promise((r) => setTimeout(r, 1500))
    const again = await mount([...args, mnt])
    const fresh = await mount([...args, mnt], { env: { ...env, LAYERFS_STANDBY: '0' } })
    assert.notEqual(again.code, 0)
    assert.match(again.stderr, /^layerfs: mountpoint .*: busy \(something is already mounted there\)\n$/)
    assert.equal(again.stderr, fresh.stderr)
    await umount(mnt)
  })

  it('serves a prepared mount of a directory layer as the directory is when mounted', async () => {
    const layer = join(dir, 'dirlayer')
    await mkdir(join(layer, 'sub'), { recursive: true })
    await writeFile(join(layer, 'sub/a'), 'a\n')
    const args = ['mount', '-q', '-o', `lowerdir=${layer}:${tar}`]
    await preparedStandby(args, await freshMountpoint())
    await preparedStandby(args, await freshMountpoint())
    await writeFile(join(layer, 'sub/b'), 'b\n') // after it was prepared
    const mnt = await freshMountpoint()
    mounted.push(mnt)
    assert.equal((await mount([...args, mnt])).code, 0)
    assert.equal(await mountedBy(mnt), 'prepared')
    assert.deepEqual((await readdir(join(mnt, 'sub'))).sort(), ['a', 'b'])
    assert.equal(await readFile(join(mnt, 'sub/b'), 'utf8'), 'b\n')
    assert.equal(await readFile(join(mnt, 'etc/hello'), 'utf8'), 'hello\n')
    await umount(mnt)
  })
})

