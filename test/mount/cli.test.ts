import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { chmod, copyFile, mkdir, open, readFile, readdir, stat, symlink, truncate, unlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { existsSync, readFileSync } from 'node:fs'
import { isRunning, runtimeDir } from '../../src/runtime'
import { testCache, unmountAll } from '../support/mounts'
import { LAYERFS, must, removeTemps, run, tempDir } from '../support/run'
import { daemonsFor, expectFailure, freshMountpoint, mountedAt, waitFor } from '../support/cli'

// The command line as users and tools drive it: the mount forms, the daemon's life, and every bad
// input answered with one line on stderr, a non-zero exit, nothing mounted and no daemon left.

let dir: string
let good: string
let env: NodeJS.ProcessEnv

before(async () => {
  dir = await tempDir('cli')
  env = { ...process.env, XDG_CACHE_HOME: await testCache }
  await mkdir(join(dir, 'src/etc'), { recursive: true })
  await writeFile(join(dir, 'src/etc/hello'), 'hello\n')
  good = join(dir, 'good.tar')
  await must('tar', ['-C', join(dir, 'src'), '-cf', good, '.'])
})
after(async () => {
  await unmountAll()
  await removeTemps()
})

/** The pid a record names, or -1 (gone, or unreadable). */
function recordPid(name: string): number {
  try {
    return (JSON.parse(readFileSync(join(runtimeDir(), name), 'utf8')) as { pid: number }).pid
  } catch {
    return -1
  }
}

/** Runs layerfs expecting a failure: one line, no stack, non-zero exit, nothing mounted. */
function fails(args: string[], mnt: string, pattern: RegExp, runEnv = env): Promise<string> {
  return expectFailure(args, mnt, pattern, runEnv)
}

describe('bad input: one clear line, non-zero exit, nothing mounted', () => {
  it('a missing layer', async () => {
    const mnt = await freshMountpoint()
    await fails(['mount', '-o', `lowerdir=${join(dir, 'nope.tar')}`, mnt], mnt, /nope\.tar: no such file/)
  })

  it('a tar header with a bad checksum, first or later', async () => {
    const mnt = await freshMountpoint()
    const bad = join(dir, 'badsum.tar')
    await copyFile(good, bad)
    const fh = await open(bad, 'r+')
    await fh.write(Buffer.from('X'), 0, 1, 100) // inside the first header's mode field
    await fh.close()
    await fails(['mount', '-o', `lowerdir=${bad}`, mnt], mnt, /badsum\.tar: (not a tar archive|tar header with a bad checksum)/)
    const bad2 = join(dir, 'badsum2.tar')
    await copyFile(good, bad2)
    const fh2 = await open(bad2, 'r+')
    await fh2.write(Buffer.from('X'), 0, 1, 1024 + 100) // a later header (./, etc/, etc/hello: the third)
    await fh2.close()
    await fails(['mount', '-o', `lowerdir=${bad2}`, mnt], mnt, /badsum2\.tar: tar header with a bad checksum at offset 1024/)
  })

  it('a truncated tar', async () => {
    const mnt = await freshMountpoint()
    const big = join(dir, 'big.tar')
    await writeFile(join(dir, 'src/etc/big'), Buffer.alloc(100_000, 1))
    await must('tar', ['-C', join(dir, 'src'), '-cf', big, '.'])
    await truncate(big, 50_000)
    await fails(['mount', '-o', `lowerdir=${big}`, mnt], mnt, /big\.tar: truncated tar/)
  })

  it('a file that is no tar, and a zstd file', async () => {
    const mnt = await freshMountpoint()
    const text = join(dir, 'notes.txt')
    await writeFile(text, 'just some text, no tar at all\n'.repeat(40))
    await fails(['mount', '-o', `lowerdir=${text}`, mnt], mnt, /notes\.txt: not a tar archive/)
    const zst = join(dir, 'layer.tar.zst')
    await must('sh', ['-c', `zstd -q -c ${good} > ${zst}`])
    await fails(['mount', '-o', `lowerdir=${zst}`, mnt], mnt, /layer\.tar\.zst: zstd-compressed layers are not supported/)
  })

  it('an unreadable layer (for a user who may not read it)', async () => {
    const mnt = await freshMountpoint()
    const locked = join(dir, 'locked.tar')
    await copyFile(good, locked)
    await chmod(locked, 0o600)
    const probe = await run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'true'])
    if (probe.code !== 0) return // no setpriv here: nothing to check
    // the unprivileged user cannot reach /dev/fuse either: the layer is checked only after it, so
    // give it a device it may open for this one run
    const fuse = await stat('/dev/fuse')
    await chmod('/dev/fuse', 0o666)
    try {
      await chmod(mnt, 0o777)
      await chmod(join(mnt, '..'), 0o755)
      const r = await run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', LAYERFS, 'mount', '-o', `lowerdir=${locked}`, mnt],
        { env: { ...env, XDG_CACHE_HOME: join(dir, 'nobody-cache'), XDG_RUNTIME_DIR: join(dir, 'nobody-run') } })
      assert.notEqual(r.code, 0)
      assert.match(r.stderr.trim(), /^layerfs: .*locked\.tar.*(permission denied|EACCES)/i)
      assert.equal(r.stderr.trim().split('\n').length, 1)
    } finally {
      await chmod('/dev/fuse', fuse.mode & 0o777)
    }
    assert.equal(await mountedAt(mnt), null)
  })

  it('a missing mountpoint, a file as mountpoint, a busy mountpoint', async () => {
    await fails(['mount', '-o', `lowerdir=${good}`, join(dir, 'no-such-dir')], join(dir, 'no-such-dir'), /does not exist/)
    const file = join(dir, 'a-file')
    await writeFile(file, '')
    await fails(['mount', '-o', `lowerdir=${good}`, file], file, /not a directory/)
    const mnt = await freshMountpoint()
    await must(LAYERFS, ['mount', '-o', `lowerdir=${good}`, mnt], { env })
    try {
      const r = await run(LAYERFS, ['mount', '-o', `lowerdir=${good}`, mnt], { env })
      assert.notEqual(r.code, 0)
      assert.match(r.stderr.trim(), /^layerfs: mountpoint .* busy/)
    } finally {
      await must(LAYERFS, ['umount', mnt])
    }
  })

  it('no /dev/fuse', async () => {
    const mnt = await freshMountpoint()
    // a mount namespace of its own whose /dev has everything but the FUSE device
    const r = await run('unshare', ['-m', 'sh', '-c',
      `mount -t tmpfs none /dev && mknod -m 666 /dev/null c 1 3 && exec ${LAYERFS} mount -o lowerdir=${good} ${mnt}`], { env })
    assert.notEqual(r.code, 0)
    assert.equal(r.stderr.trim(), 'layerfs: no /dev/fuse: this kernel or container has no FUSE device')
    assert.equal(await mountedAt(mnt), null)
  })

  it('bad option syntax and missing options', async () => {
    const mnt = await freshMountpoint()
    await fails(['mount', '-o'], mnt, /-o needs an option list/)
    await fails(['mount', '-o', 'lowerdir=', mnt], mnt, /lowerdir needs a value/)
    await fails(['mount', '-o', `=x,lowerdir=${good}`, mnt], mnt, /bad option syntax/)
    await fails(['mount', '-o', 'rw', mnt], mnt, /missing -o lowerdir/)
    await fails(['mount', '-o', `lowerdir=${good}::`, mnt], mnt, /empty path in lowerdir/)
    await fails(['mount', '-o', `lowerdir=${good},upperdir=${dir}`, mnt], mnt, /upperdir and workdir go together/)
    await fails(['mount', '--frobnicate', mnt], mnt, /unknown flag/)
  })
})

describe('mounting and unmounting', () => {
  it('returns once the mount is live; the daemon outlives its shell; layerfs umount ends it', async () => {
    const mnt = await freshMountpoint()
    await must('sh', ['-c', `${LAYERFS} mount -o lowerdir=${good} ${mnt} && test -f ${mnt}/etc/hello`], { env })
    assert.equal(await mountedAt(mnt), 'fuse.layerfs')
    assert.equal(await readFile(join(mnt, 'etc/hello'), 'utf8'), 'hello\n')
    const pids = await daemonsFor(mnt)
    assert.equal(pids.length, 1)
    await must(LAYERFS, ['umount', mnt])
    assert.equal(await mountedAt(mnt), null)
    assert.ok(await waitFor(async () => (await daemonsFor(mnt)).length === 0), 'daemon gone')
  })

  it("a daemon killed outright leaves a record; the next mount's daemon removes it, not a live one's", async () => {
    // a daemon writes its record just after its mount is live (serve.ts): wait for the pid's
    const recordOf = async (pid: number): Promise<string | undefined> =>
      (await readdir(runtimeDir())).find((n) => n.endsWith('.json') && recordPid(n) === pid)
    const a = await freshMountpoint()
    await must(LAYERFS, ['mount', '-o', `lowerdir=${good}`, a], { env })
    const [pid] = await daemonsFor(a)
    assert.ok(await waitFor(async () => (await recordOf(pid)) !== undefined), 'the daemon wrote its record')
    const stale = (await recordOf(pid))!
    process.kill(pid, 'SIGKILL')
    assert.ok(await waitFor(async () => !(await isRunning(pid))), 'killed')
    await run('umount', ['-l', a]) // its mount, left without a daemon
    // and a control socket nobody listens on, without a record (a daemon killed while setting up)
    const orphan = join(runtimeDir(), 'orphan-test.sock')
    await must('python3', ['-c', 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', orphan])
    const b = await freshMountpoint()
    await must(LAYERFS, ['mount', '-o', `lowerdir=${good}`, b], { env })
    const [live] = await daemonsFor(b)
    assert.ok(await waitFor(async () => (await recordOf(live)) !== undefined), 'the live daemon wrote its record')
    const mine = (await recordOf(live))!
    assert.ok(await waitFor(async () => !existsSync(join(runtimeDir(), stale)) && !existsSync(orphan), 8000),
      'the dead daemon\'s record and the orphan socket are gone')
    assert.ok(existsSync(join(runtimeDir(), mine)), 'the live daemon\'s record stays')
    assert.ok(existsSync(join(runtimeDir(), mine.replace(/\.json$/, '.sock'))), 'and its socket')
    await must(LAYERFS, ['umount', b])
  })

  it('plain umount and fusermount -u end the daemon too', async () => {
    for (const how of [['umount'], ['fusermount', '-u']]) {
      const mnt = await freshMountpoint()
      await must(LAYERFS, ['mount', '-o', `lowerdir=${good}`, mnt], { env })
      await must(how[0], [...how.slice(1), mnt])
      assert.ok(await waitFor(async () => (await daemonsFor(mnt)).length === 0), `daemon gone after ${how.join(' ')}`)
    }
  })

  it('SIGTERM to the daemon unmounts cleanly', async () => {
    const mnt = await freshMountpoint()
    await must(LAYERFS, ['mount', '-o', `lowerdir=${good}`, mnt], { env })
    const [pid] = await daemonsFor(mnt)
    process.kill(pid, 'SIGTERM')
    assert.ok(await waitFor(async () => (await mountedAt(mnt)) === null), 'unmounted')
    assert.ok(await waitFor(async () => (await daemonsFor(mnt)).length === 0), 'daemon gone')
  })

  it('-f stays in the foreground and exits 0 on SIGINT, unmounted', async () => {
    const mnt = await freshMountpoint()
    const child = spawn(LAYERFS, ['mount', '-f', '-o', `lowerdir=${good}`, mnt], { env, stdio: 'ignore' })
    const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)))
    try {
      assert.ok(await waitFor(async () => (await mountedAt(mnt)) === 'fuse.layerfs'), 'mounted')
      child.kill('SIGINT')
      assert.equal(await exited, 0)
      assert.equal(await mountedAt(mnt), null)
    } finally {
      child.kill('SIGKILL')
      if (await mountedAt(mnt)) await run('umount', ['-l', mnt])
    }
  })

  it('the fuse-overlayfs form (no "mount"), relative lowers, unknown options ignored', async () => {
    const mnt = await freshMountpoint()
    await must(LAYERFS, ['-o', `rw,fsync=0,xino=off,lowerdir=good.tar`, mnt], { env, cwd: dir })
    try {
      assert.equal(await readFile(join(mnt, 'etc/hello'), 'utf8'), 'hello\n')
    } finally {
      await must(LAYERFS, ['umount', mnt])
    }
  })

  it('the mount.fuse form, and mount -t fuse.layerfs with layerfs on PATH', async () => {
    const mnt = await freshMountpoint()
    await must(LAYERFS, ['layerfs', mnt, '-o', `lowerdir=${good}`], { env })
    assert.equal(await mountedAt(mnt), 'fuse.layerfs')
    await must(LAYERFS, ['umount', mnt])
    const mountFuse = (await run('sh', ['-c', 'command -v mount.fuse3 || command -v mount.fuse'])).stdout.trim()
    if (!mountFuse) return // no mount.fuse helper installed: the direct form above is what it runs
    // mount(8) runs helpers with a clean PATH: put layerfs on it for this test, as README says
    const onPath = '/usr/local/bin/layerfs'
    const placed = !(await stat(onPath).then(() => true, () => false))
    if (placed) await symlink(LAYERFS, onPath)
    try {
      await must('mount', ['-t', 'fuse.layerfs', 'layerfs', mnt, '-o', `lowerdir=${good}`], { env })
      assert.equal(await mountedAt(mnt), 'fuse.layerfs')
      assert.equal(await readFile(join(mnt, 'etc/hello'), 'utf8'), 'hello\n')
      await must(LAYERFS, ['umount', mnt])
    } finally {
      if (placed) await unlink(onPath)
      if (await mountedAt(mnt)) await run('umount', ['-l', mnt])
    }
  })

  it('layerfs umount of something that is not a layerfs mount fails cleanly', async () => {
    const r = await run(LAYERFS, ['umount', dir])
    assert.notEqual(r.code, 0)
    assert.match(r.stderr.trim(), /^layerfs: .*not a layerfs mount$/)
  })
})
