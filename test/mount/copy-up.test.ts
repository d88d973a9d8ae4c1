import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdir, mkdtemp, open, readFile, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { mountKernelOverlay, mountLayerfs, unmountAll } from '../support/mounts'
import { must, removeTemps, run, tempDir } from '../support/run'
import { extractForOverlay } from '../support/oracle'
import { diffTrees, snapshotTree } from '../support/tree'

// Copy-up as it must behave: whole or not at all across a crash, once for concurrent writers, and
// read handles opened before it seeing what is written after it (as kernel overlayfs since 4.19).

// past copy_range's WATCHED_COPY (16 MiB): timed groups of pieces, then copy_file_range where they
// slow down; not a whole number of pages
const BIG = (259 << 20) + 512 + 17
let dir: string
let tar: string
let bigHash: string

/** sha256 of the file at `path`, followed by `tail` if given. */
async function hashOf(path: string, tail = ''): Promise<string> {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer)
  return h.update(tail).digest('hex')
}

/** `${prefix}-upper` and `${prefix}-work`, made in the suite's directory: a writable mount's two. */
async function upperAndWork(prefix: string): Promise<{ upper: string; work: string }> {
  const upper = join(dir, `${prefix}-upper`)
  const work = join(dir, `${prefix}-work`)
  await mkdir(upper)
  await mkdir(work)
  return { upper, work }
}

async function daemonPid(mnt: string): Promise<number> {
  const r = await run('pgrep', ['-f', '__layerfs_daemon'])
  for (const pid of r.stdout.split('\n').filter(Boolean).map(Number)) {
    const arg = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0').filter(Boolean).pop()
    if (arg && Buffer.from(arg, 'base64').toString('utf8').includes(mnt)) return pid
  }
  throw new Error(`no daemon for ${mnt}`)
}

before(async () => {
  dir = await tempDir('copyup')
  await mkdir(join(dir, 'src'))
  await must('sh', ['-c', `head -c ${BIG} /dev/urandom > ${dir}/src/big && echo small > ${dir}/src/small`])
  tar = join(dir, 'lower.tar')
  await must('tar', ['-C', join(dir, 'src'), '-cf', tar, '.'])
  bigHash = await hashOf(join(dir, 'src/big'))
})
after(async () => {
  await unmountAll()
  await removeTemps()
})

describe('copy-up', () => {
  it('killed (-9) in the middle of copying up a big file: no partial file is ever visible', async () => {
    let caught = 0
    for (const delayMs of [20, 60, 150]) {
      // an upper of its own each time: one a copy-up finished in (and the append landed in) got a
      // second append from the next round, and a whole copy then measured BIG + 18 bytes
      const { upper, work } = await upperAndWork(`crash-${delayMs}`)
      const m = await mountLayerfs([tar], { upper, work })
      const pid = await daemonPid(m.path)
      const writer = run('sh', ['-c', `echo appended >> ${m.path}/big`])
      await new Promise((r) => setTimeout(r, delayMs))
      const copying = (await readdir(join(work, 'work'))).some((n) => n.startsWith('#'))
      if (copying) caught++
      process.kill(pid, 'SIGKILL')
      await writer
      await m.unmount() // the dead mount is detached
      // whatever the moment, the upper holds either no copy or a whole one
      const names = await readdir(upper)
      if (names.includes('big')) {
        const st = await stat(join(upper, 'big'))
        assert.ok(st.size === BIG || st.size === BIG + 'appended\n'.length, `whole copy, got ${st.size} bytes`)
      }
      const again = await mountLayerfs([tar], { upper, work })
      try {
        const st = await stat(join(again.path, 'big'))
        assert.ok(st.size === BIG || st.size === BIG + 'appended\n'.length)
        if (st.size === BIG) assert.equal(await hashOf(join(again.path, 'big')), bigHash)
        assert.deepEqual((await readdir(join(work, 'work'))).filter((n) => n.startsWith('#')), [], 'leftovers cleared')
      } finally {
        await again.unmount()
      }
    }
    assert.ok(caught > 0, 'at least one kill landed during a copy-up')
  })

  it('copies every byte wherever the data lies in the tar or directory (splice in pieces, clone)', async () => {
    // tar members' data starts at any 512-byte boundary: the eight sizes place it at every offset
    // within a page; 5 MiB and more is long enough for copy_range's trial of its two piece sizes
    // (64 and 256 KiB pieces in alternate 512 KiB groups from 512 KiB on), and the last piece is short
    const src = join(dir, 'aligned-src')
    await mkdir(src)
    const names = Array.from({ length: 8 }, (_, i) => `f${i}`)
    const contents = names.map((_, i) => {
      const b = Buffer.allocUnsafe((5 << 20) + i * 512 + 17)
      for (let k = 0; k < b.length; k++) b[k] = (k * 7 + i) & 255
      return b
    })
    for (let i = 0; i < names.length; i++) await writeFile(join(src, names[i]), contents[i])
    const srcTar = join(dir, 'aligned.tar')
    await must('tar', ['-C', src, '-cf', srcTar, ...names])
    for (const lower of [srcTar, src]) {
      const { upper, work } = await upperAndWork(`al-${lower === src ? 'dir' : 'tar'}`)
      const m = await mountLayerfs([lower], { upper, work })
      try {
        for (const name of names) await writeFile(join(m.path, name), 'x', { flag: 'a' })
      } finally {
        await m.unmount()
      }
      for (let i = 0; i < names.length; i++) {
        const got = await readFile(join(upper, names[i]))
        assert.ok(got.equals(Buffer.concat([contents[i], Buffer.from('x')])), `${lower} ${names[i]}: copied bytes differ`)
      }
    }
  })

  it('copies a long file whole (timed groups of pieces and of copy_file_range, pieces until they slow down)', async () => {
    // a long copy changes its way at 4 MiB boundaries of the output, whichever way its timings go;
    // the member starts inside a page of the tar
    const { upper, work } = await upperAndWork('long')
    const m = await mountLayerfs([tar], { upper, work })
    try {
      await writeFile(join(m.path, 'big'), 'tail', { flag: 'a' })
    } finally {
      await m.unmount()
    }
    assert.equal(await hashOf(join(upper, 'big')), await hashOf(join(dir, 'src/big'), 'tail'), 'the long copy differs')
  })

  it('copies a big file whose layer lies on another filesystem than the upper (copy_file_range refuses: sendfile)', async () => {
    // a tar on tmpfs, the upper on the test's disk: copy_file_range across them gives EXDEV, and
    // copy_range goes on by sendfile, at the output's position (put back after); a watched copy
    const shm = await mkdtemp('/dev/shm/layerfs-test-xdev-')
    try {
      const size = (257 << 20) + 512 + 3
      await must('sh', ['-c', `mkdir ${shm}/src && head -c ${size} /dev/urandom > ${shm}/src/huge && tar -C ${shm}/src -cf ${shm}/lower.tar huge`])
      const { upper, work } = await upperAndWork('xdev')
      const m = await mountLayerfs([`${shm}/lower.tar`], { upper, work })
      try {
        await writeFile(join(m.path, 'huge'), 'tail', { flag: 'a' })
      } finally {
        await m.unmount()
      }
      const want = Buffer.concat([await readFile(`${shm}/src/huge`), Buffer.from('tail')])
      assert.ok((await readFile(join(upper, 'huge'))).equals(want), 'the copy across filesystems differs')
    } finally {
      await rm(shm, { recursive: true, force: true })
    }
  })

  it('keeps each entry\'s mode and owner, whatever the umask strips at creation or a chown clears', async () => {
    // a copy-up makes entries with their own permission bits and chowns and chmods only where what
    // it made differs: bits the daemon's umask (022 here) strips, set-id and sticky bits, owners
    // other than ours (a chown clears set-id bits, so the chmod must follow it)
    const src = join(dir, 'modes-src')
    const files: Array<[string, number, number]> = [
      ['m666', 0o666, 0], ['m777', 0o777, 0], ['m444', 0o444, 0], ['m000', 0o000, 0], ['suid', 0o4755, 0],
      ['sgid', 0o2755, 0], ['owned', 0o640, 1000], ['suid-owned', 0o4755, 1000], ['d777/f', 0o644, 0], ['dsticky/f', 0o644, 0],
    ]
    const dirs: Array<[string, number, number]> = [['d777', 0o777, 0], ['dsticky', 0o1777, 0], ['downed', 0o2750, 1000]]
    await mkdir(src)
    for (const [name] of dirs) await mkdir(join(src, name))
    await writeFile(join(src, 'downed', 'f'), 'f')
    for (const [name] of files) await writeFile(join(src, name), name)
    // chown before chmod: a chown clears set-id bits
    for (const [name, mode, owner] of [...files, ...dirs]) await must('sh', ['-c', `chown ${owner}:${owner} '${join(src, name)}' && chmod ${mode.toString(8)} '${join(src, name)}'`])
    const modesTar = join(dir, 'modes.tar')
    await must('tar', ['--numeric-owner', '-C', src, '-cf', modesTar, '.'])
    for (const lower of [modesTar, src]) {
      const kind = lower === src ? 'dir' : 'tar'
      const { upper, work } = await upperAndWork(`modes-${kind}`)
      const m = await mountLayerfs([lower], { upper, work })
      try {
        // utimens copies up without changing mode or owner (a write would clear set-id bits)
        const when = new Date('2024-01-02T03:04:05Z')
        for (const [name] of files) await must('touch', ['-h', '-d', when.toISOString(), join(m.path, name)])
        await writeFile(join(m.path, 'downed', 'new'), 'n') // copies up downed as a parent
      } finally {
        await m.unmount()
      }
      for (const [name, mode, owner] of [...files, ...dirs]) {
        const st = await stat(join(upper, name))
        assert.equal((st.mode & 0o7777).toString(8), mode.toString(8), `${kind} ${name}: mode`)
        assert.deepEqual([st.uid, st.gid], [owner, owner], `${kind} ${name}: owner`)
      }
    }
  })

  it('a first write copies the file and the directories above it whole: modes, owners, times, xattrs', async () => {
    // a write's copy-up from a tar is done in one synchronous step (CopyUp.ensureNow), the others
    // by the general path: both must leave the upper kernel overlayfs leaves
    const src = join(dir, 'write-src')
    await mkdir(join(src, 'a', 'b'), { recursive: true })
    await mkdir(join(src, 'plain'))
    const files = ['a/b/f', 'a/b/t', 'a/x', 'plain/f']
    for (const f of files) await writeFile(join(src, f), `${f}\n`.repeat(100))
    await must('sh', ['-c', [
      `cd '${src}'`,
      'setfattr -n user.dir -v a a && setfattr -n user.dir -v b a/b && setfattr -n user.file -v f a/b/f && setfattr -n user.two -v 2 a/b/f',
      'chown 1000:1000 a/b a/b/f && chmod 2750 a/b && chmod 0604 a/b/f && chmod 0711 a && chmod 0444 a/x',
      "touch -d '2001-02-03 04:05:06' a a/b a/b/f a/b/t a/x plain plain/f",
    ].join(' && ')])
    const wtar = join(dir, 'write.tar')
    await must('tar', ['--format=pax', '--xattrs', '--xattrs-include=*', '--numeric-owner', '-C', src, '-cf', wtar, '.'])
    const writes = (root: string): Promise<unknown> => must('sh', ['-c', [
      `cd '${root}'`,
      'printf x >> a/b/f', // append: data copied
      ': > a/b/t', // O_TRUNC: no data to copy
      'printf y > a/x', // a 0444 file, written by root
      'printf z >> plain/f',
    ].join(' && ')])
    const kdir = join(dir, 'write-k')
    await extractForOverlay(wtar, kdir)
    const uppers: Record<string, string> = {}
    for (const kind of ['kernel', 'tar', 'dir']) {
      const { upper, work } = await upperAndWork(`write-${kind}`)
      await utimes(upper, new Date('2002-03-04T05:06:07Z'), new Date('2002-03-04T05:06:07Z')) // the root's, to compare
      const m = kind === 'kernel'
        ? await mountKernelOverlay([kdir], { upper, work, options: ['index=off', 'metacopy=off', 'xino=off'] })
        : await mountLayerfs([kind === 'tar' ? wtar : src], { upper, work })
      try {
        await writes(m.path)
        assert.equal(await readFile(join(m.path, 'a/b/f'), 'utf8'), 'a/b/f\n'.repeat(100) + 'x', `${kind}: appended`)
      } finally {
        await m.unmount()
      }
      uppers[kind] = upper
    }
    // what was written has the time of the write; everything else must be the lower's, as copied
    const written = new Set(['/a/b/f', '/a/b/t', '/a/x', '/plain/f'])
    const expected = await snapshotTree(uppers.kernel, { overlayXattrs: true })
    assert.ok(expected.get('/a/b/f')?.xattrs['user.file'], 'the kernel copied the xattrs (else this test shows nothing)')
    for (const kind of ['tar', 'dir']) {
      const diff = diffTrees(expected, await snapshotTree(uppers[kind], { overlayXattrs: true }), { ignore: (path, field) => field === 'mtimeNs' && written.has(path) })
      assert.deepEqual(diff, [], `the upper of a write through a ${kind} layer differs from kernel overlayfs's`)
    }
  })

  it('concurrent writers of one lower file copy it up once, and every write lands', async () => {
    const { upper, work } = await upperAndWork('conc')
    const m = await mountLayerfs([tar], { upper, work })
    try {
      await Promise.all(Array.from({ length: 8 }, (_, i) => (async () => {
        const fh = await open(join(m.path, 'big'), 'r+')
        await fh.write(Buffer.from(`writer-${i}`), 0, 8, i * 4096)
        await fh.close()
      })()))
      const fh = await open(join(m.path, 'big'), 'r')
      for (let i = 0; i < 8; i++) {
        const b = Buffer.alloc(8)
        await fh.read(b, 0, 8, i * 4096)
        assert.equal(b.toString(), `writer-${i}`)
      }
      await fh.close()
      assert.equal((await stat(join(m.path, 'big'))).size, BIG)
    } finally {
      await m.unmount()
    }
    // the upper's copy is the lower file's every byte but the eight written
    const copy = await readFile(join(upper, 'big'))
    const want = await readFile(join(dir, 'src/big'))
    for (let i = 0; i < 8; i++) want.write(`writer-${i}`, i * 4096)
    assert.ok(copy.equals(want), 'the copied-up file differs from the lower one outside the writes')
  })

  it('a read handle opened before a copy-up reads what is written after it, as on kernel overlayfs', async () => {
    const outcomes: string[] = []
    for (const kind of ['kernel', 'layerfs']) {
      const { upper, work } = await upperAndWork(`h-${kind}`)
      const lowerDir = join(dir, 'src')
      const m = kind === 'kernel' ? await mountKernelOverlay([lowerDir], { upper, work }) : await mountLayerfs([tar], { upper, work })
      try {
        const reader = await open(join(m.path, 'small'), 'r')
        const before = Buffer.alloc(6)
        await reader.read(before, 0, 6, 0)
        await writeFile(join(m.path, 'small'), 'CHANGED')
        const afterBuf = Buffer.alloc(7)
        const { bytesRead } = await reader.read(afterBuf, 0, 7, 0)
        await reader.close()
        outcomes.push(`${before.toString()}|${afterBuf.subarray(0, bytesRead).toString()}`)
      } finally {
        await m.unmount()
      }
    }
    assert.equal(outcomes[1], outcomes[0])
    assert.equal(outcomes[0], 'small\n|CHANGED')
  })

  it('copies up at the first write, not at an open for writing (-o copyup=open: at the open, as kernel overlayfs)', async () => {
    // what each system's upper holds after: an open for reading and writing that writes nothing; the
    // same, then a write through that descriptor and an fstat; an O_TRUNC open that writes nothing
    const steps = async (mnt: string, upper: string): Promise<string[]> => {
      const seen: string[] = []
      const inUpper = async (): Promise<string> => (await readdir(upper)).filter((n) => n === 'small' || n === 'big').sort().join(',') || '-'
      const fh = await open(join(mnt, 'small'), 'r+')
      await fh.close()
      seen.push(`after open: ${await inUpper()}`)
      const w = await open(join(mnt, 'small'), 'r+')
      seen.push(`before write: ${await inUpper()}`)
      await w.write('S', 0)
      seen.push(`after write: ${await inUpper()} size ${(await w.stat()).size} ${await readFile(join(mnt, 'small'), 'utf8')}`.trim())
      await w.close()
      await (await open(join(mnt, 'big'), 'r+')).truncate(0).catch(() => undefined)
      seen.push(`after ftruncate: ${await inUpper()} ${(await stat(join(mnt, 'big'))).size}`)
      return seen
    }
    const outcomes: string[][] = []
    for (const kind of ['kernel', 'open', 'write']) {
      const { upper, work } = await upperAndWork(`at-${kind}`)
      const m = kind === 'kernel'
        ? await mountKernelOverlay([join(dir, 'src')], { upper, work })
        : await mountLayerfs([tar], { upper, work, options: [`copyup=${kind}`] })
      try {
        outcomes.push(await steps(m.path, upper))
      } finally {
        await m.unmount()
      }
    }
    const expectKernel = ['after open: small', 'before write: small', 'after write: small size 6 Small', 'after ftruncate: big,small 0']
    assert.deepEqual(outcomes[0], expectKernel)
    assert.deepEqual(outcomes[1], expectKernel)
    assert.deepEqual(outcomes[2], ['after open: -', 'before write: -', 'after write: small size 6 Small', 'after ftruncate: big,small 0'])
  })

  it('another process sees a written file as it is: size, mode, links, times and inode number (GETATTR after writes by node)', async () => {
    // Each step its own process, as the kernel asks for a written file's attributes again at the
    // next open from another one (on layerfs, answered from the upper file C writes by node)
    const steps = [
      'printf x >> small', 'printf y >> small', 'chmod 640 small', 'printf z >> small', 'ln small linked',
      'printf w >> linked', 'touch -m -d @1000000000 small', 'rm linked', ': > small', 'printf v >> small',
    ]
    const walk = async (mnt: string): Promise<string[]> => {
      const seen: string[] = []
      for (const step of steps) {
        await must('sh', ['-c', `cd ${mnt} && ${step}`])
        seen.push(`${step}: ${(await must('stat', ['-c', '%s %a %h %F', join(mnt, 'small')])).trim()}`)
      }
      seen.push(`mtime after the last write is recent: ${Date.now() / 1000 - Number(await must('stat', ['-c', '%Y', join(mnt, 'small')])) < 60}`)
      // a file written, then unlinked while open: its inode number stays what stat showed
      const held = join(mnt, 'held')
      await must('sh', ['-c', `printf x >> ${held}`])
      const fh = await open(held, 'r')
      try {
        // with the size: `stat -c %i` alone asks for the inode number only, which the kernel then
        // takes from what it holds (on layerfs, from before the copy-up: see native-notes)
        const shown = (await must('stat', ['-c', '%i %s', held])).trim()
        await must('rm', [held])
        const after = await fh.stat()
        seen.push(`held: the same inode after the unlink ${`${after.ino} ${after.size}` === shown}, size ${after.size}`)
      } finally {
        await fh.close()
      }
      return seen
    }
    const src = join(dir, 'attrs-src')
    await mkdir(src)
    await writeFile(join(src, 'small'), 'small\n')
    await writeFile(join(src, 'held'), 'held\n')
    const lowerTar = join(dir, 'attrs.tar')
    await must('tar', ['-C', src, '-cf', lowerTar, '.'])
    const outcomes: string[][] = []
    let inoSeen = ''
    for (const kind of ['kernel', 'layerfs']) {
      const { upper, work } = await upperAndWork(`attrs-${kind}`)
      const m = kind === 'kernel' ? await mountKernelOverlay([src], { upper, work }) : await mountLayerfs([lowerTar], { upper, work })
      try {
        outcomes.push(await walk(m.path))
        if (kind === 'layerfs') inoSeen = (await must('stat', ['-c', '%i %s', join(m.path, 'small')])).trim()
      } finally {
        await m.unmount()
      }
      if (kind === 'layerfs') {
        // the inode number JS gives the upper file on a fresh mount, where C answered before
        const again = await mountLayerfs([lowerTar], { upper, work })
        try {
          assert.equal((await must('stat', ['-c', '%i %s', join(again.path, 'small')])).trim(), inoSeen)
        } finally {
          await again.unmount()
        }
      }
    }
    assert.deepEqual(outcomes[1], outcomes[0])
    assert.ok(outcomes[0].includes('printf v >> small: 1 640 1 regular file'), outcomes[0].join('\n'))
    assert.equal(outcomes[0].at(-1), 'held: the same inode after the unlink true, size 6')
  })
})
