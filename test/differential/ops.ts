import fc from 'fast-check'
import { constants as C } from 'node:fs'
import { createHash } from 'node:crypto'
import { chmod, lchown, link, lstat, lutimes, mkdir, open, readdir, rename, rmdir, symlink, truncate, unlink, writeFile } from 'node:fs/promises'
import { sys } from '../../src/sys'

// Random operation sequences for the writable differential tests, applied the same way to kernel
// overlayfs and to layerfs; each operation's outcome (ok or the errno code) is compared.

const NAMES = ['a', 'b', 'c', 'dir', 'file', 'with space', Buffer.from('ünï', 'utf8').toString('latin1'), 'new']
const name = fc.constantFrom(...NAMES)
const path = fc.array(name, { minLength: 1, maxLength: 3 }).map((p) => p.join('/'))

export type Op =
  | { op: 'write'; path: string; flags: 'w' | 'a' | 'r+' | 'wx'; data: string; pos: number }
  | { op: 'mkdir'; path: string; mode: number }
  | { op: 'rmdir'; path: string }
  | { op: 'unlink'; path: string }
  | { op: 'rename'; from: string; to: string }
  | { op: 'link'; from: string; to: string }
  | { op: 'symlink'; target: string; path: string }
  | { op: 'chmod'; path: string; mode: number }
  | { op: 'chown'; path: string; uid: number; gid: number }
  | { op: 'utimes'; path: string; sec: number }
  | { op: 'truncate'; path: string; size: number }
  | { op: 'setxattr'; path: string; value: string }
  | { op: 'removexattr'; path: string }
  | { op: 'mkfifo'; path: string }
  | { op: 'read'; path: string }
  | { op: 'list'; path: string }
  | { op: 'dropCaches'; what: 1 | 3 }

/** Operations on paths drawn from `path`. */
function opOver(path: fc.Arbitrary<string>): fc.Arbitrary<Op> {
  return fc.oneof(
    // an open for writing without O_TRUNC writes at least a byte: kernel overlayfs copies a lower
    // file up at such an open, layerfs at the first write (copy-up.test.ts covers an empty one)
    { weight: 4, arbitrary: fc.constantFrom('w' as const, 'a' as const, 'r+' as const, 'wx' as const).chain((flags) =>
      fc.record({ op: fc.constant('write' as const), path, flags: fc.constant(flags), data: fc.string({ minLength: flags === 'a' || flags === 'r+' ? 1 : 0, maxLength: 20 }), pos: fc.nat(100) })) },
    { weight: 3, arbitrary: fc.record({ op: fc.constant('mkdir' as const), path, mode: fc.constantFrom(0o755, 0o700, 0o2775) }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('rmdir' as const), path }) },
    { weight: 3, arbitrary: fc.record({ op: fc.constant('unlink' as const), path }) },
    { weight: 4, arbitrary: fc.record({ op: fc.constant('rename' as const), from: path, to: path }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('link' as const), from: path, to: path }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('symlink' as const), target: fc.constantFrom('a', '../b', '/x'), path }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('chmod' as const), path, mode: fc.constantFrom(0o600, 0o755, 0o4755, 0o1777, 0o000) }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('chown' as const), path, uid: fc.constantFrom(0, 1000, 65534), gid: fc.constantFrom(0, 1000, 65534) }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('utimes' as const), path, sec: fc.integer({ min: 0, max: 2_000_000_000 }) }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('truncate' as const), path, size: fc.constantFrom(0, 3, 100, 70_000) }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('setxattr' as const), path, value: fc.string({ minLength: 1, maxLength: 8 }) }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('removexattr' as const), path }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('mkfifo' as const), path }) },
    // reads and listings between changes: what the kernel keeps of them (page cache, listings, both
    // kept across opens on a writable mount) must follow the changes, also once dropped (1: the page
    // cache; 3: inodes too, so the kernel forgets nodes)
    { weight: 3, arbitrary: fc.record({ op: fc.constant('read' as const), path }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('list' as const), path }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('dropCaches' as const), what: fc.constantFrom(1 as const, 3 as const) }) },
  )
}

export const opArb: fc.Arbitrary<Op> = opOver(path)

export const opsArb = fc.array(opArb, { minLength: 1, maxLength: 25 })

/**
 * Operations over a given stack: paths drawn as often from what its layers hold (each entry and the
 * directories above it) as from the fixed names, so that most operations meet a lower entry with
 * its xattrs, modes and times (with fixed names only, a write met a lower file with an xattr too
 * seldom for 30 runs to notice a copy-up that dropped it).
 */
export function opsArbOver(existing: readonly string[]): fc.Arbitrary<Op[]> {
  const over = existing.length === 0 ? path : fc.oneof(path, fc.constantFrom(...existing))
  return fc.array(opOver(over), { minLength: 1, maxLength: 25 })
}

function at(root: string, p: string): Buffer {
  return Buffer.concat([Buffer.from(root + '/'), Buffer.from(p, 'latin1')])
}

/** Applies one operation under `root`; returns 'ok' (with what a read or listing found) or the error code. */
export async function apply(root: string, o: Op): Promise<string> {
  try {
    switch (o.op) {
      case 'read': {
        const fh = await open(at(root, o.path), C.O_RDONLY | C.O_NONBLOCK)
        try {
          return `ok ${createHash('sha256').update(await fh.readFile()).digest('hex').slice(0, 16)}`
        } finally {
          await fh.close()
        }
      }
      case 'list': {
        // the names a lookup finds, as snapshotTree keeps them: kernel overlayfs lists a whiteout
        // of a merged directory's lowest layer (readdir does not check that layer's whiteouts)
        // that its lookup then hides
        const dir = at(root, o.path)
        const names: string[] = []
        for (const n of await readdir(dir, { encoding: 'buffer' })) {
          if (await lstat(Buffer.concat([dir, Buffer.from('/'), n])).then(() => true, (e: NodeJS.ErrnoException) => e.code !== 'ENOENT')) names.push(n.toString('latin1'))
        }
        return `ok ${names.sort().join('/')}`
      }
      case 'dropCaches': await writeFile('/proc/sys/vm/drop_caches', String(o.what)); break
      case 'write': {
        const flags = { w: C.O_WRONLY | C.O_CREAT | C.O_TRUNC, a: C.O_WRONLY | C.O_CREAT | C.O_APPEND, 'r+': C.O_RDWR, wx: C.O_WRONLY | C.O_CREAT | C.O_EXCL }[o.flags]
        // O_NONBLOCK: a fifo without a reader answers ENXIO instead of blocking the test forever
        const fh = await open(at(root, o.path), flags | C.O_NONBLOCK, 0o644)
        try {
          await fh.write(Buffer.from(o.data), 0, Buffer.byteLength(o.data), o.flags === 'a' ? null : o.pos)
        } finally {
          await fh.close()
        }
        break
      }
      case 'mkdir': await mkdir(at(root, o.path), o.mode); break
      case 'rmdir': await rmdir(at(root, o.path)); break
      case 'unlink': await unlink(at(root, o.path)); break
      case 'rename': await rename(at(root, o.from), at(root, o.to)); break
      case 'link': await link(at(root, o.from), at(root, o.to)); break
      case 'symlink': await symlink(o.target, at(root, o.path)); break
      case 'chmod': await chmod(at(root, o.path), o.mode); break
      case 'chown': await lchown(at(root, o.path), o.uid, o.gid); break
      case 'utimes': await lutimes(at(root, o.path), o.sec, o.sec); break
      case 'truncate': await truncate(at(root, o.path), o.size); break
      case 'setxattr': sys.lsetxattr(at(root, o.path), 'user.test', Buffer.from(o.value), 0); break
      case 'removexattr': sys.lremovexattr(at(root, o.path), 'user.test'); break
      case 'mkfifo': sys.mknod(at(root, o.path), C.S_IFIFO | 0o644, 0, 0); break
    }
    return 'ok'
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? String(err)
  }
}

export function describeOps(ops: readonly Op[]): string {
  return ops.map((o, i) => `  ${i}: ${JSON.stringify(o, (_, v: unknown) => (typeof v === 'string' ? Buffer.from(v, 'latin1').toString('utf8') : v))}`).join('\n')
}
