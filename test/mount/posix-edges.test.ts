import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { chmod, mkdir, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { mountKernelOverlay, mountLayerfs, unmountAll, type Mounted } from '../support/mounts'
import { must, removeTemps, run, tempDir } from '../support/run'

// Corners a POSIX conformance suite (pjdfstest) found, checked against kernel overlayfs: one time
// set at a time (libfuse 2 dropped such utimens calls), names over NAME_MAX, and paths that are
// under PATH_MAX in the mount but over it once the daemon prefixes the upper directory; I/O on open
// files whose name is gone.

after(async () => {
  await unmountAll()
  await removeTemps()
})

const SCRIPT = String.raw`
cd "$1" || exit 99
t() { "$@" 2>/dev/null; echo "$? $*"; }
touch -d 2020-01-01 f g
t touch -a -d 2031-01-01 f
t touch -m -d 2032-02-02 g
stat -c '%n %X %Y' f g
t touch -a lower
t touch -m -d 2030-03-03 lower
stat -c '%n %Y' lower
long=$(printf 'x%.0s' $(seq 1 256))
t touch "$long"
t mkdir "$long"
t mv f "$long"
ok=$(printf 'y%.0s' $(seq 1 255))
t touch "$ok"
d=$(printf 'd%.0s' $(seq 1 200)); p=.; for i in $(seq 1 19); do p="$p/$d"; done
t mkdir -p "$p"
t sh -c "echo deep > $p/f"
t mv "$p/f" "$p/g"
t cat "$p/g"
t rm "$p/g"
t touch "$p/h"
# a write drops security.capability: the kernel asks for it before each write(2), and layerfs
# answers from C for a file it knows has none (until any capability is set): here one is set while
# the file is open for writing (and must show), then again before it is opened
echo c > capf
exec 8>>capf
echo w >&8
t setcap cap_net_raw+ep capf
echo "capf while open for writing: [$(getcap capf)]"
echo w >&8
exec 8>&-
echo "capf after a write through an fd opened before setcap: [$(getcap capf)]"
python3 -c 'import os; print("capf xattrs", sorted(os.listxattr("capf")))'
t setcap cap_net_raw+ep capf
echo w2 >> capf
echo "capf after a write through a new fd: [$(getcap capf)] $(cat capf | tr '\n' ' ')"
python3 -c 'import os; print("capf xattrs", sorted(os.listxattr("capf")))'
# an open file whose name is gone: fstat and I/O go on (pjdfstest unlink/14.t)
python3 -c '
import os
fd = os.open("new", os.O_CREAT | os.O_RDWR, 0o644); os.write(fd, b"Hello, World!"); os.unlink("new")
st = os.fstat(fd); print("new", st.st_nlink, st.st_size, os.pread(fd, 13, 0))
os.write(fd, b"!!"); print("new", os.fstat(fd).st_size, os.pread(fd, 20, 0))
fd2 = os.open("lower", os.O_RDWR); os.pwrite(fd2, b"X", 0); os.unlink("lower")
st = os.fstat(fd2); print("lower", st.st_nlink, st.st_size, os.pread(fd2, 5, 0))
'
`

/**
 * Runs `use` on kernel overlayfs over `lower` (with `kernelOptions`) and on layerfs over its tar,
 * each with a fresh upper; its results, kernel first.
 */
async function onBoth(dir: string, lower: string, kernelOptions: readonly string[], use: (mnt: string) => Promise<string>): Promise<string[]> {
  const tar = join(dir, 'lower.tar')
  await must('tar', ['-C', lower, '-cf', tar, '.'])
  const outputs: string[] = []
  for (const kind of ['kernel', 'layerfs']) {
    const upper = join(dir, `${kind}-u`)
    const work = join(dir, `${kind}-w`)
    await mkdir(upper)
    await mkdir(work)
    const m = kind === 'kernel' ? await mountKernelOverlay([lower], { upper, work, options: kernelOptions }) : await mountLayerfs([tar], { upper, work })
    try {
      outputs.push(await use(m.path))
    } finally {
      await m.unmount()
    }
  }
  return outputs
}

describe('POSIX corners, as kernel overlayfs answers them', () => {
  it('touch -a, touch -m (utimensat with UTIME_OMIT), 256-byte names, paths near PATH_MAX', async () => {
    const dir = await tempDir('posix')
    const lower = join(dir, 'lower')
    await mkdir(lower)
    await writeFile(join(lower, 'lower'), 'l')
    const outputs = await onBoth(dir, lower, [], async (mnt) => (await run('sh', ['-c', SCRIPT, 'sh', mnt])).stdout.replace(/^\/\S+ /gm, ''))
    assert.equal(outputs[1], outputs[0])
    assert.match(outputs[0], /^1 touch x{256}$/m)
    assert.match(outputs[0], /^0 touch y{255}$/m)
    assert.match(outputs[0], /^0 mv \S+\/f \S+\/g$/m, 'a rename deep down works')
    assert.match(outputs[0], /^new 0 13 b'Hello, World!'$/m, 'an unlinked open file')
  })

  it('files opened again (layerfs then opens their upper file in C) across writes, renames, unlinks, truncation', async () => {
    // a first open of an upper file goes through JavaScript and lets C open it itself from then on,
    // until any name changes: every step here opens names whose meaning just changed
    const dir = await tempDir('reopen')
    const lower = join(dir, 'lower')
    await mkdir(join(lower, 'd'), { recursive: true })
    for (const [name, text] of [['a', 'alpha'], ['b', 'bravo'], ['d/f', 'foxtrot'], ['c', 'charlie']]) await writeFile(join(lower, name), text)
    // layerfs renames a merged directory as kernel overlayfs does with redirect_dir=on
    const outputs = await onBoth(dir, lower, ['redirect_dir=on'], async (mnt) => {
      const r = await run('python3', ['-c', REOPEN, mnt])
      assert.equal(r.code, 0, r.stderr)
      return r.stdout
    })
    assert.equal(outputs[1], outputs[0])
    assert.match(outputs[0], /^a after rename: bravo\+$/m)
  })

  it('statfs (df, find): the upper filesystem\'s sizes and limits, as kernel overlayfs reports them', async () => {
    // answered in C (fuse_ll.c answer_statfs) from the upper dir's filesystem
    const dir = await tempDir('statfs')
    const lower = join(dir, 'lower')
    await mkdir(lower)
    await writeFile(join(lower, 'f'), 'f')
    const outputs = await onBoth(dir, lower, [], async (mnt) => (await must('stat', ['-f', '-c', '%b blocks of %S, io %s, names up to %l, %c inodes', mnt])))
    assert.equal(outputs[1], outputs[0])
    assert.match(outputs[0], /^\d+ blocks of \d+, io \d+, names up to 255, \d+ inodes$/m)
  })

  it("a writable mount's lower files read by node (C opens and reads them from the tar) across copy-ups of each kind", async () => {
    // layerfs answers a writable mount's OPEN for reading of a plain tar member from C, reading the
    // member's bytes by node, until a copy-up moves them into the upper; the page cache is dropped
    // before the reads after the copy-ups, so that each read reaches the daemon
    const dir = await tempDir('bynode')
    const lower = join(dir, 'lower')
    await mkdir(lower)
    for (const n of ['t', 'w', 'x', 'r', 'l', 'm', 'z']) await writeFile(join(lower, n), `lower ${n}\n`.repeat(500))
    const outputs = await onBoth(dir, lower, ['index=off', 'metacopy=off'], async (mnt) => {
      const r = await run('python3', ['-c', BY_NODE, mnt])
      assert.equal(r.code, 0, r.stderr)
      return r.stdout
    })
    assert.equal(outputs[1], outputs[0])
    assert.match(outputs[0], /^t after: 1 b'T'$/m)
    assert.match(outputs[0], /^kept w: \d+ b'W/m)
  })

  it('a hard link made through the mount: the first name follows writes through the second', async () => {
    // each name of a hard-linked file is a node of its own in layerfs: the first name's attributes,
    // cached before the link (nlink 1), must not outlive it
    const dir = await tempDir('link')
    const lower = join(dir, 'lower')
    await mkdir(lower)
    await writeFile(join(lower, 'f'), 'lower\n')
    const outputs = await onBoth(dir, lower, [], async (mnt) => {
      const r = await run('python3', ['-c', LINKED, mnt])
      assert.equal(r.code, 0, r.stderr)
      return r.stdout
    })
    assert.equal(outputs[1], outputs[0])
    assert.match(outputs[0], /^f 2 8 b'lower\\nx\\n'$/m)
  })

  it("a directory's files answered ahead (LOOKUP and first write without JavaScript): true after changes and forgetting", async () => {
    // layerfs pushes the answers to the LOOKUPs of a lower directory's files to its native side
    // when the directory is looked up, with their copy-ups planned: each must be given at most
    // once, never after a change, and the kernel's lookups it gives must be counted
    const dir = await tempDir('ahead')
    const lower = join(dir, 'lower')
    for (const d of 'defgh') {
      await mkdir(join(lower, d), { recursive: true })
      for (const f of 'ab') await writeFile(join(lower, d, f), `${d}${f}`)
    }
    const outputs = await onBoth(dir, lower, [], async (mnt) => {
      const r = await run('python3', ['-c', AHEAD, mnt])
      assert.equal(r.code, 0, r.stderr)
      return r.stdout
    })
    assert.equal(outputs[1], outputs[0])
    assert.match(outputs[0], /^read after a change da 2 100644 1$/m)
    assert.match(outputs[0], /^unlinked ENOENT 2 100644 1$/m)
    assert.match(outputs[0], /^renamed ENOENT 2 100644 1 fa$/m)
    assert.match(outputs[0], /^written gax gbx 3 100644 1$/m)
  })

  it("a directory's subdirectories answered ahead, and theirs once the kernel holds them: true after changes", async () => {
    // a lower directory's LOOKUP also pushes its subdirectories' answers (and their files'), and a
    // pushed directory the kernel takes gets its own subdirectories pushed when JS catches up: each
    // must be given at most once, hold what the directory is, and give way to changes
    const dir = await tempDir('ahead-dirs')
    const lower = join(dir, 'lower')
    for (const d of ['p/q/r/t', 'p/s', 'p/u', 'p/v', 'p/w/y']) await mkdir(join(lower, d), { recursive: true })
    for (const f of ['p/f', 'p/q/a', 'p/q/b', 'p/q/r/c', 'p/q/r/t/g', 'p/s/d', 'p/v/e', 'p/w/y/h']) await writeFile(join(lower, f), f)
    const outputs = await onBoth(dir, lower, [], async (mnt) => {
      const r = await run('python3', ['-c', AHEAD_DIRS, mnt])
      assert.equal(r.code, 0, r.stderr)
      return r.stdout
    })
    assert.equal(outputs[1], outputs[0])
    assert.match(outputs[0], /^deep 40755 3 p\/q\/r\/c p\/q\/r\/t\/g$/m)
    assert.match(outputs[0], /^rmdir ENOENT 1$/m)
    assert.match(outputs[0], /^written p\/q\/r\/cx 40755 1$/m)
    assert.match(outputs[0], /^mkdir 40755 1 \['a', 'b', 'n', 'r'\]$/m)
  })

  it("the mount root's attributes at a fresh mount's first stat, and after changes to it", async () => {
    // layerfs's native side answers the kernel's first GETATTR of the root from what JS gave it at
    // mount, and must stop once a change has begun
    const dir = await tempDir('root-attr')
    const lower = join(dir, 'lower')
    await mkdir(join(lower, 'd'), { recursive: true })
    await chmod(lower, 0o751)
    const outputs = await onBoth(dir, lower, [], async (mnt) => {
      const r = await run('python3', ['-c', ROOT_ATTR, mnt])
      assert.equal(r.code, 0, r.stderr)
      return r.stdout
    })
    assert.equal(outputs[1], outputs[0])
    assert.match(outputs[0], /^first 40755 0 0$/m) // the upper dir's, as kernel overlayfs shows
    assert.match(outputs[0], /^chmod 40705 0 0$/m)
    // read-only: the lower root's
    const firstStat = async (m: { path: string; unmount(): Promise<void> }): Promise<string> => {
      try {
        return (await run('stat', ['-c', '%f %h %u %g', m.path])).stdout
      } finally {
        await m.unmount()
      }
    }
    const empty = join(dir, 'empty')
    await mkdir(empty)
    const kernel = await firstStat(await mountKernelOverlay([lower, empty]))
    assert.equal(await firstStat(await mountLayerfs([join(dir, 'lower.tar'), empty])), kernel)
    assert.match(kernel, /^41e9 1 0 0$/m) // a merged directory's nlink is 1
  })

  it("a fresh read-only mount's first listings of its root (layerfs answers them from C), then the entries' use", async () => {
    // the first READDIRPLUS of the root is answered by layerfs's native side from a listing JS gave
    // it at mount, in pieces where it is long; the nodes it gave out must be counted in JS, or JS's
    // own next listing of the root drops them while the kernel still uses them
    const dir = await tempDir('root-list')
    const [top, base] = [join(dir, 'top'), join(dir, 'base')]
    for (const d of [join(top, 'both'), join(base, 'both'), join(base, 'sub')]) await mkdir(d, { recursive: true })
    await writeFile(join(base, 'both', 'b'), 'base b')
    await writeFile(join(top, 'both', 't'), 'top t')
    await writeFile(join(base, 'shadowed'), 'base')
    await writeFile(join(top, 'shadowed'), 'top!')
    await symlink('shadowed', join(top, 'link'))
    // ~70 entries: longer than one READDIRPLUS reply (4 KiB)
    for (let i = 0; i < 70; i++) await writeFile(join(i % 2 ? top : base, `file-${String(i).padStart(2, '0')}-${'n'.repeat(i)}`), `content ${i}`)
    const tars = [top, base].map((d) => d + '.tar')
    for (const [i, d] of [top, base].entries()) await must('tar', ['-C', d, '-cf', tars[i], '.'])
    const show = (m: Mounted): Promise<string> => scriptOnce(m, ROOT_LISTINGS)
    const kernel = await show(await mountKernelOverlay([top, base]))
    const layerfs = await show(await mountLayerfs(tars))
    assert.equal(layerfs, kernel)
    assert.match(kernel, /^listing 1: 74 entries, d_ino = st_ino: True$/m)
    assert.match(kernel, /^listing 2: 74 entries, d_ino = st_ino: True True$/m)
    assert.match(kernel, /^file-69-n+ content 69$/m)
    assert.match(kernel, /^shadowed top!$/m)
    assert.match(kernel, /^after forget: file-69-n+ content 69$/m)
  })

  it("a fresh read-only mount's first path walks (layerfs answers them from C, pushed at mount)", async () => {
    // the LOOKUPs of the root's children and of the files in its subdirectories are answered by the
    // native side from answers JS pushed once the mount is live, a file's reads too (by node)
    const dir = await tempDir('root-push')
    // one layer: a directory merged from several is answered by JS
    const lower = join(dir, 'lower')
    for (const d of [join(lower, 'd/sub'), join(lower, 'e')]) await mkdir(d, { recursive: true })
    await writeFile(join(lower, 'f'), 'top f')
    await writeFile(join(lower, 'd/g'), 'top g')
    await writeFile(join(lower, 'd/b'), 'base b')
    await writeFile(join(lower, 'e/x'), 'x'.repeat(5000))
    await writeFile(join(lower, 'd/sub/h'), 'h')
    await chmod(join(lower, 'e/x'), 0o640)
    const tar = join(dir, 'lower.tar')
    await must('tar', ['-C', lower, '-cf', tar, '.'])
    const walk = (m: Mounted): Promise<string> => scriptOnce(m, FIRST_WALKS)
    const kernel = await walk(await mountKernelOverlay([lower]))
    assert.equal(await walk(await mountLayerfs([tar])), kernel)
    assert.match(kernel, /^e\/x 5000 100640 1 x{5000}$/m)
    assert.match(kernel, /^f 5 100644 1 top f$/m)
  })

  it('directories changed while they are listed (rm -rf as it reads): each entry there at the start is seen once', async () => {
    // a writable mount lists a directory by node (no OPENDIR), anew once anything changed; offsets
    // are the entries' cookies, so a reader part-way through neither skips nor repeats an entry
    const dir = await tempDir('listed')
    const lower = join(dir, 'lower')
    for (const d of ['rm', 'add', 'mv']) {
      await mkdir(join(lower, d), { recursive: true })
      for (let i = 0; i < 1500; i++) await writeFile(join(lower, d, `entry-with-a-longish-name-${i}`), `${i}`)
    }
    const outputs = await onBoth(dir, lower, [], async (mnt) => {
      const r = await run('python3', ['-c', LISTED, mnt])
      assert.equal(r.code, 0, r.stderr)
      return r.stdout
    })
    assert.equal(outputs[1], outputs[0])
    assert.match(outputs[0], /^rm removed 1500 left 0$/m)
    assert.match(outputs[0], /^add each seen once: True$/m)
  })

  it('open files whose names change under them (a fifo renamed over one, their directory renamed): fstat and I/O go on, opens open them', async () => {
    // the kernel locks the parent directories and the inodes named for a rename or an unlink, not
    // an fstat or an OPEN of a file whose name goes, nor anything below a renamed directory; layerfs
    // answers those by path, and answered them with what the path held half-way (the fifo's
    // attributes: the kernel took the file's inode for a stale one and failed it with EIO; the fifo
    // opened as the file; ENOENT from fstat)
    const dir = await tempDir('held')
    const lower = join(dir, 'lower')
    await mkdir(join(lower, 'd1'), { recursive: true })
    await mkdir(join(lower, 's'))
    await writeFile(join(lower, 'd1', 'f'), 'foxtrot')
    const outputs = await onBoth(dir, lower, ['redirect_dir=on'], async (mnt) => {
      const r = await run('python3', ['-c', HELD, mnt, '1000'])
      assert.equal(r.code, 0, r.stderr)
      assert.match(r.stderr, /^held True$/m, 'the open files were used')
      return r.stdout
    })
    assert.equal(outputs[1], outputs[0])
    assert.equal(outputs[0], 'errors []\n')
  })

  it('first writes through descriptors opened before their directory is renamed: every write lands', async () => {
    // without OPEN (copy-up at the first write) a file's first WRITE opens its upper file by the
    // node's path: a WRITE taken while a rename of a directory above was under way opened the path
    // half renamed (ENOENT for 6-9% of such writes); it now waits for the rename, as requests by path do
    const dir = await tempDir('firstwrite')
    const lower = join(dir, 'lower')
    await mkdir(join(lower, 'd1'), { recursive: true })
    for (let i = 0; i < 600; i++) await writeFile(join(lower, 'd1', `f${i}`), 'x\n')
    const outputs = await onBoth(dir, lower, ['redirect_dir=on'], async (mnt) => {
      const r = await run('python3', ['-c', FIRST_WRITES, mnt, '600'])
      assert.equal(r.code, 0, r.stderr)
      return r.stdout
    })
    assert.equal(outputs[1], outputs[0])
    assert.equal(outputs[0], 'wrote 600 errors {}\n')
  })

  it('listings made ahead (subdirectories listed before a walk asks): true after changes and forgetting, read-only too', async () => {
    // once JS answers a listing, layerfs lists the subdirectories ahead and gives them to its native
    // side, which answers their READDIRPLUS: never after a change, each entry's lookup counted
    const dir = await tempDir('listed-ahead')
    const lower = join(dir, 'lower')
    for (const d of 'abcdefgh') {
      await mkdir(join(lower, 't', d, 'x', 'y'), { recursive: true })
      for (let i = 0; i < 4; i++) await writeFile(join(lower, 't', d, `f${i}`), `${d}${i}`)
      await writeFile(join(lower, 't', d, 'x', 'y', 'z'), `${d}z`)
    }
    const outputs = await onBoth(dir, lower, [], async (mnt) => {
      const r = await run('python3', ['-c', LISTED_AHEAD, mnt, 'rw'])
      assert.equal(r.code, 0, r.stderr)
      return r.stdout
    })
    assert.equal(outputs[1], outputs[0])
    assert.match(outputs[0], /^a \['f0', 'f1', 'f2', 'f3', 'new', 'x'\]$/m)
    assert.match(outputs[0], /^c \['f0', 'f2', 'f3', 'g1', 'x'\] c1$/m)
    assert.match(outputs[0], /^e\/x\/y \['z2'\] \['y'\]$/m)
    const ro = async (m: Mounted): Promise<string> => {
      try {
        const r = await run('python3', ['-c', LISTED_AHEAD, m.path, 'ro'])
        assert.equal(r.code, 0, r.stderr)
        return r.stdout
      } finally {
        await m.unmount()
      }
    }
    const kernel = await ro(await mountKernelOverlay([lower]))
    assert.equal(await ro(await mountLayerfs([join(dir, 'lower.tar')])), kernel)
    assert.match(kernel, /^t\/h\/x\/y \[\] \['z'\] hz$/m)
  })

  it('renaming a lower directory to another directory: EXDEV where its redirect would pass 256 bytes', async () => {
    // kernel overlayfs writes an absolute redirect (the directory's lower path) for such a move and
    // refuses one longer than redirect_max (256 by default): mv then copies the tree itself
    const dir = await tempDir('redirect-max')
    const lower = join(dir, 'lower')
    const long = 'x'.repeat(200)
    for (const d of [join('a', long, 'y'.repeat(60)), join('b', 'y'.repeat(60))]) await mkdir(join(lower, d), { recursive: true })
    await writeFile(join(lower, 'a', long, 'y'.repeat(60), 'f'), 'f')
    await writeFile(join(lower, 'b', 'y'.repeat(60), 'f'), 'f')
    const outputs = await onBoth(dir, lower, ['redirect_dir=on'], async (mnt) => {
      const r = await run('python3', ['-c', MOVES, mnt, long])
      assert.equal(r.code, 0, r.stderr)
      return r.stdout
    })
    assert.equal(outputs[1], outputs[0])
    assert.match(outputs[0], /^long EXDEV$/m)
    assert.match(outputs[0], /^short ok$/m)
  })
})

/** Runs a Python script on a fresh mount (its path the script's argument), then unmounts it; its output. */
async function scriptOnce(m: Mounted, script: string): Promise<string> {
  try {
    const r = await run('python3', ['-c', script, m.path])
    assert.equal(r.code, 0, r.stderr)
    return r.stdout
  } finally {
    await m.unmount()
  }
}

/** Python helpers of the scripts below: st(p) shows what `stat_fields` picks, or the errno's name. */
const AHEAD_HELPERS = (statFields: string): string => String.raw`
import errno, os, sys
os.chdir(sys.argv[1])
def forget():
    with open('/proc/sys/vm/drop_caches', 'w') as f: f.write('2')
def st(p):
    try:
        s = os.stat(p); return ${statFields}
    except OSError as e:
        return errno.errorcode[e.errno]
def read(p):
    try:
        with open(p) as f: return f.read()
    except OSError as e:
        return errno.errorcode[e.errno]
`

const AHEAD = AHEAD_HELPERS("'%d %o %d' % (s.st_size, s.st_mode, s.st_nlink)") + String.raw`
# the directories stay open: forget() then drops their entries' dentries, not theirs
held = [os.open(d, os.O_RDONLY) for d in 'defgh']
print('looked up', st('d/a'))
os.mkdir('x')  # a change: answers given ahead and not used are dropped; a used one must stay known
print('read after a change', read('d/a'), st('d/b'))
forget()
print('again', st('d/a'), read('d/a'))
os.unlink('e/a')
forget()
print('unlinked', st('e/a'), st('e/b'))
os.rename('f/a', 'f/c')
forget()
print('renamed', st('f/a'), st('f/c'), read('f/c'))
for n in 'ab':
    with open('g/' + n, 'a') as w: w.write('x')
forget()
print('written', read('g/a'), read('g/b'), st('g/a'))
with open('h/new', 'w') as w: w.write('n')
forget()
print('created', st('h/new'), read('h/new'), sorted(os.listdir('h')))
`

const AHEAD_DIRS = AHEAD_HELPERS("'%o %d' % (s.st_mode, s.st_nlink)") + String.raw`
held = os.open('p', os.O_RDONLY)  # p looked up: q, s, u, v, w answered ahead, and their files
print('q', st('p/q'), sorted(os.listdir('p/q')), read('p/q/a'))
print('deep', st('p/q/r'), read('p/q/r/c'), read('p/q/r/t/g'))
os.chmod('p/s', 0o700)
print('chmod', st('p/s'))
forget()
print('chmod again', st('p/s'), read('p/s/d'))
os.rmdir('p/u')
print('rmdir', st('p/u'), os.stat('p').st_nlink)
os.rename('p/f', 'p/g')  # moves the epoch: v and w, pushed and not taken, are answered by JS
forget()
print('renamed', st('p/f'), read('p/g'), st('p/v'), read('p/v/e'), st('p/w'), read('p/w/y/h'))
with open('p/q/r/c', 'a') as w: w.write('x')
forget()
print('written', read('p/q/r/c'), st('p/q/r'))
os.mkdir('p/q/n')
forget()
print('mkdir', st('p/q'), sorted(os.listdir('p/q')))
os.close(held)
`

const LISTED_AHEAD = AHEAD_HELPERS("'%o %d' % (s.st_mode, s.st_nlink)") + String.raw`
import time
rw = sys.argv[2] == 'rw'
def ls(p): return sorted(os.listdir(p))
def walk():
    for root, dirs, files in os.walk('t'):
        dirs.sort()
        print(root, sorted(dirs), sorted(files), ' '.join(read(os.path.join(root, f)) for f in sorted(files)))
print('t', ls('t'))  # t/a ... t/h listed ahead, then theirs
time.sleep(0.3)
if rw:
    # changes in directories listed ahead, before the walker comes
    with open('t/a/new', 'w') as f: f.write('new')
    print('a', ls('t/a'))
    os.unlink('t/b/f0')
    print('b', ls('t/b'))
    os.rename('t/c/f1', 't/c/g1')
    print('c', ls('t/c'), read('t/c/g1'))
    print('d', ls('t/d'), st('t/d/x'))  # listed ahead again after the change? answered either way
    time.sleep(0.3)
    os.rename('t/e/x/y/z', 't/e/x/y/z2')
    print('e/x/y', ls('t/e/x/y'), ls('t/e/x'))
walk()
forget()  # the kernel forgets what the listings gave it: each lookup must have been counted
walk()
for d in 'abcdefgh': print(d, st('t/' + d + '/x/y'))
`

const ROOT_ATTR = String.raw`
import os, sys
def st(p):
    s = os.stat(p); return '%o %d %d' % (s.st_mode, s.st_uid, s.st_gid)
print('first', st(sys.argv[1]))
os.mkdir(os.path.join(sys.argv[1], 'new'))
print('mkdir', st(sys.argv[1]), sorted(os.listdir(sys.argv[1])))
os.chmod(sys.argv[1], 0o705)
print('chmod', st(sys.argv[1]))
`

const MOVES = String.raw`
import errno, os, sys
os.chdir(sys.argv[1]); long = sys.argv[2]; y = 'y' * 60
os.mkdir('to')
for label, src in [('long', 'a/' + long + '/' + y), ('short', 'b/' + y)]:
    try:
        os.rename(src, 'to/' + label); print(label, 'ok')
    except OSError as e:
        print(label, errno.errorcode[e.errno])
print(sorted(os.listdir('to')), sorted(os.listdir('a/' + long)), os.listdir('b'))
print(open('to/short/f').read())
`

// Each directory is read with scandir (glibc reads 32 KiB at a time: many pieces here) while the
// loop changes it: whether entries made meanwhile show is unspecified, so only the first ones count
const LISTED = String.raw`
import os, sys
os.chdir(sys.argv[1])
n = 0
with os.scandir('rm') as it:
    for e in it: os.unlink(e.path); n += 1
print('rm removed', n, 'left', len(os.listdir('rm')))
for d, change in [('add', lambda p: open(p + '.new', 'w').close()), ('mv', lambda p: os.rename(p, p + '.moved'))]:
    seen = []
    with os.scandir(d) as it:
        for e in it:
            if e.name.endswith(('.new', '.moved')): continue
            seen.append(e.name); change(e.path)
    print(d, 'each seen once:', len(seen) == len(set(seen)) == 1500)
`

const LINKED = String.raw`
import os, sys
os.chdir(sys.argv[1])
with open('u', 'w') as f: f.write('upper\n')
for first, second in [('f', 'g'), ('u', 'v')]:
    os.stat(first)                                 # attributes cached under the first name (a read would mark its atime stale)
    os.link(first, second)
    with open(second, 'a') as f: f.write('x\n')
    st = os.stat(first)
    print(first, st.st_nlink, st.st_size, open(first, 'rb').read())
    st = os.stat(second)
    print(second, st.st_nlink, st.st_size, open(second, 'rb').read())
`

const BY_NODE = String.raw`
import os, sys
os.chdir(sys.argv[1])
def drop():
    with open('/proc/sys/vm/drop_caches', 'w') as f: f.write('1')
def head(data): return str(len(data)) + ' ' + repr(data[:12])
def show(label, name):
    with open(name, 'rb') as f: print(label + ':', head(f.read()))
names = ['t', 'w', 'x', 'r', 'l', 'm']
for n in names: show(n + ' before', n)
kept = {n: os.open(n, os.O_RDONLY) for n in names}    # read handles opened before the copy-ups
with open('t', 'w') as f: f.write('T')                # O_TRUNC: copied up without its data
with open('w', 'r+') as f: f.write('W')               # a first write in place
os.truncate('x', 3)
os.rename('r', 'r2')
os.link('l', 'l2')
with open('l2', 'a') as f: f.write('L')
os.chmod('m', 0o600)
with open('m', 'a') as f: f.write('M')
os.rename('z', 'z2')                                  # a name changes elsewhere
drop()
for n in ['t', 'w', 'x', 'r2', 'l', 'l2', 'm']: show(n + ' after', n)
drop()
for n, fd in kept.items(): print('kept ' + n + ':', head(os.pread(fd, 1 << 16, 0)))
for fd in kept.values(): os.close(fd)
`

const REOPEN = String.raw`
import os, sys
os.chdir(sys.argv[1])
def show(label, name):
    with open(name, 'rb') as f: print(label + ':', f.read().decode())
for n in ['a', 'b', 'c', 'd/f']:
    with open(n, 'a') as f: f.write('+')          # copy-up; the next opens are C's
show('a', 'a')
fd = os.open('a', os.O_RDWR)
os.pwrite(fd, b'A', 0); os.ftruncate(fd, 4); os.fsync(fd); os.fdatasync(fd)
st = os.fstat(fd); print('a fstat', st.st_size, st.st_nlink, oct(st.st_mode))
os.close(fd)
show('a', 'a')
os.rename('b', 'a')                               # a now names b's file
show('a after rename', 'a')
with open('a', 'a') as f: f.write('!')
show('a after append', 'a')
print('b exists', os.path.exists('b'))
fd = os.open('c', os.O_RDWR)
with open('c', 'a') as f: f.write('2')
os.unlink('c')                                    # open, unlinked: fstat and I/O go on
st = os.fstat(fd); print('c fstat', st.st_size, st.st_nlink)
os.pwrite(fd, b'xyz', 20); print('c grown', os.fstat(fd).st_size, os.pread(fd, 30, 0))
os.ftruncate(fd, 2); print('c truncated', os.fstat(fd).st_size)
os.close(fd)
print('c exists', os.path.exists('c'))
with open('d/f', 'a') as f: f.write('1')
os.rename('d', 'e')                               # a merged directory (a redirect)
show('e/f', 'e/f')
with open('e/f', 'a') as f: f.write('2')
show('e/f', 'e/f')
os.mkdir('g')
with open('g/f', 'w') as f: f.write('golf')
with open('g/f', 'a') as f: f.write('1')
os.rename('g', 'h')                               # the directory: its files' paths change
show('h/f', 'h/f')
with open('h/f', 'a') as f: f.write('2')
with open('h/f', 'a') as f: f.write('3')
show('h/f', 'h/f')
print('g/f exists', os.path.exists('g/f'))
with open('new', 'w') as f: f.write('n')          # created: C opens it the next time
with open('new', 'a') as f: f.write('1')
os.link('new', 'hard')
with open('hard', 'a') as f: f.write('2')
with open('new', 'a') as f: f.write('3')
show('new', 'new'); show('hard', 'hard')
print('hard nlink', os.stat('hard').st_nlink)
os.rename('new', 'hard')
show('hard after rename', 'hard')
for n, text in [('p', 'papa'), ('q', 'quebec')]:
    with open(n, 'w') as f: f.write(text)
    with open(n, 'a') as f: f.write('+')
os.rename('p', 't'); os.rename('q', 'p')          # each node's old name now holds another file
show('t', 't'); show('p', 'p')
print(sorted(os.listdir('.')))
`

// Lists a fresh mount's root (name, type, mode, size, nlink, and whether each entry's d_ino is its
// st_ino), opens every file in it, drops the page cache (the kernel's copy of the listing with it),
// lists it again (layerfs's JS answers), reads the files open since the first listing, and reads
// them once more by name after the kernel forgot its dentries.
const ROOT_LISTINGS = AHEAD_HELPERS("'%o %d %d' % (s.st_mode, s.st_size, s.st_nlink)") + String.raw`
def listing():
    out = []
    for e in sorted(os.scandir('.'), key=lambda e: e.name):
        kind = 'l' if e.is_symlink() else 'd' if e.is_dir(follow_symlinks=False) else 'f'
        s = e.stat(follow_symlinks=False)
        out.append((e.name, kind, '%o %d %d' % (s.st_mode, s.st_size if kind != 'd' else 0, s.st_nlink), e.inode() == s.st_ino))
    return out
def pread(fd):
    try:
        return os.pread(fd, 100, 0).decode()
    except OSError as e:
        return errno.errorcode[e.errno]
first = listing()
print('listing 1: %d entries, d_ino = st_ino: %s' % (len(first), all(x[3] for x in first)))
for x in first: print(*x[:3])
held = [(x[0], os.open(x[0], os.O_RDONLY)) for x in first if x[1] == 'f']
with open('/proc/sys/vm/drop_caches', 'w') as f: f.write('1')
l = listing()
print('listing 2: %d entries, d_ino = st_ino: %s' % (len(l), all(x[3] for x in l)), l == first)
for name, fd in held: print(name, pread(fd))
print('link ->', os.readlink('link'), st('both/t'), st('both/b'))
forget()
for name in sorted(os.listdir('.')):
    if os.path.isfile(name): print('after forget:', name, read(name))
`


// Stats and reads paths of a fresh mount without listing anything first, then again once the kernel
// forgot its dentries.
const FIRST_WALKS = AHEAD_HELPERS("'%d %o %d' % (s.st_size, s.st_mode, s.st_nlink)") + String.raw`
paths = ['f', 'e/x', 'd/g', 'd/b', 'd/sub', 'd/sub/h', 'nope', 'd/nope', 'e']
for round in (1, 2):
    for p in paths:
        print(p, st(p), read(p) if os.path.isfile(p) else '')
    forget()
`

const FIRST_WRITES = String.raw`
import errno, os, sys, threading
root, n = sys.argv[1], int(sys.argv[2])
errs = {}; lock = threading.Lock(); done = threading.Event(); wrote = [0]
def mover():  # d1 and d2 swap names over and over
    while not done.is_set():
        for a, b in (('d1', 'd2'), ('d2', 'd1')):
            try: os.rename(f'{root}/{a}', f'{root}/{b}')
            except OSError: pass
def writer(k):  # each lower file opened for writing by whichever name it has, then written once
    for i in range(k, n, 4):
        fd = None
        for d in ('d1', 'd2') * 1000:  # the name moves under the lookup now and then
            try: fd = os.open(f'{root}/{d}/f{i}', os.O_RDWR); break
            except OSError: pass
        if fd is None:
            with lock: errs['open'] = errs.get('open', 0) + 1
            continue
        try:
            os.pwrite(fd, b'y', 0)
            with lock: wrote[0] += 1
        except OSError as e:
            with lock: errs[errno.errorcode[e.errno]] = errs.get(errno.errorcode[e.errno], 0) + 1
        os.close(fd)
m = threading.Thread(target=mover); m.start()
ws = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
for w in ws: w.start()
for w in ws: w.join()
done.set(); m.join()
print('wrote', wrote[0], 'errors', errs)
`

const HELD = String.raw`
import errno, os, stat, sys, threading
root, n = sys.argv[1], int(sys.argv[2])
P, Q = f'{root}/s/p', f'{root}/s/q'
done = threading.Event(); lock = threading.Lock(); errs = {}; held = [0]
def note(where, e):
    k = f'{where} {errno.errorcode.get(e.errno, e.errno) if isinstance(e, OSError) else e}'
    with lock: errs[k] = errs.get(k, 0) + 1
def swapper():  # a file made, a fifo renamed over its name, the fifo unlinked; over and over
    for _ in range(n):
        try:
            with open(P, 'w') as f: f.write('hello')
            os.mkfifo(Q); os.rename(Q, P); os.unlink(P)
        except OSError as e: note('swap', e)
    done.set()
def mover():  # a lower directory renamed back and forth
    while not done.is_set():
        for a, b in (('d1', 'd2'), ('d2', 'd1')):
            try: os.rename(f'{root}/{a}', f'{root}/{b}')
            except OSError as e: note('move', e)
def holder(paths):  # opens what a name holds: the open file stays itself whatever the names do
    while not done.is_set():
        fd = None
        for p in paths:
            try: fd = os.open(p, os.O_RDWR | os.O_NONBLOCK); break
            except OSError: pass
        if fd is None: continue
        try:
            kind = stat.S_IFMT(os.fstat(fd).st_mode)
            if kind != stat.S_IFREG: continue  # the fifo
            for i in range(20):
                os.pwrite(fd, b'x', i)  # the kernel asks for the attributes again after a write
                st = os.fstat(fd)
                if stat.S_IFMT(st.st_mode) != kind or st.st_size < i + 1: note('fstat', f'mode {st.st_mode:o} size {st.st_size}')
                with lock: held[0] += 1
        except OSError as e: note('held', e)
        finally:
            try: os.close(fd)
            except OSError as e: note('close', e)
def reader():  # a file opened for reading reads as one: never EAGAIN, as from a fifo opened in its place
    while not done.is_set():
        try: fd = os.open(P, os.O_RDONLY | os.O_NONBLOCK)
        except OSError: continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode): os.read(fd, 100)
        except OSError as e: note('read', e)
        finally:
            try: os.close(fd)
            except OSError as e: note('close', e)
ts = [threading.Thread(target=swapper), threading.Thread(target=mover), threading.Thread(target=reader)]
ts += [threading.Thread(target=holder, args=([P],)) for _ in range(3)]
ts += [threading.Thread(target=holder, args=([f'{root}/d1/f', f'{root}/d2/f'],)) for _ in range(2)]
for t in ts: t.start()
for t in ts: t.join()
print('errors', sorted(errs.items()))
print('held', held[0] > 1000, file=sys.stderr)
`
