import fc from 'fast-check'
import { constants as C } from 'node:fs'
import { chmod, lchown, link, mkdir, symlink, writeFile } from 'node:fs/promises'
import { sys } from '../../src/sys'

// Random layer stacks for the differential tests: each layer a list of entries, OCI whiteouts and
// opaque directories over a small shared pool of names (so layers collide), written to a staging
// directory in OCI form (.wh. marker files) that GNU tar and bsdtar then pack.

export type Kind = 'file' | 'dir' | 'symlink' | 'hardlink' | 'fifo' | 'char' | 'block'

export interface NodeSpec {
  readonly kind: Kind
  readonly mode: number
  readonly uid: number
  readonly gid: number
  readonly mtime: readonly [number, number]
  readonly content: string
  readonly target: string
  readonly xattr: string | null
}

export interface LayerSpec {
  readonly entries: ReadonlyArray<readonly [readonly string[], NodeSpec]>
  readonly whiteouts: ReadonlyArray<readonly string[]>
  readonly opaques: ReadonlyArray<readonly string[]>
}

/** Names as byte strings (latin1): spaces, a newline, UTF-8, bytes that are not UTF-8, 255 bytes. */
const NAMES = [
  'a', 'b', 'c', 'dir', 'file', 'with space', 'new\nline', Buffer.from('ünï', 'utf8').toString('latin1'),
  'caf\xe9-\xff', 'x'.repeat(255), '.hidden', '-dash',
]

const name = fc.constantFrom(...NAMES)
const path = fc.array(name, { minLength: 1, maxLength: 3 })
/** Now and then a path 30 directories deep. */
const deepPath = fc.constant(Array.from({ length: 30 }, (_, i) => `d${i}`))

const node: fc.Arbitrary<NodeSpec> = fc.record({
  kind: fc.constantFrom<Kind>('file', 'file', 'file', 'dir', 'dir', 'symlink', 'hardlink', 'fifo', 'char', 'block'),
  // 0o666 and 0o777: bits the daemon's umask strips when it makes an entry, so a copy-up must chmod
  mode: fc.constantFrom(0o644, 0o600, 0o755, 0o700, 0o4755, 0o2755, 0o1777, 0o000, 0o444, 0o666, 0o777),
  uid: fc.constantFrom(0, 0, 1000, 65534, 3000000),
  gid: fc.constantFrom(0, 0, 1000, 65534, 3000000),
  mtime: fc.tuple(fc.integer({ min: 0, max: 4102444800 }), fc.integer({ min: 0, max: 999_999_999 })),
  /** '<big>' stands for 70,000 bytes (reads across many blocks), kept short in failure reports. */
  content: fc.oneof(fc.constant(''), fc.string({ maxLength: 40 }), fc.constant('<big>')),
  target: fc.oneof(fc.constantFrom('a', '../b', '/etc/passwd', 'does/not/exist', '.'), name),
  xattr: fc.option(fc.string({ minLength: 1, maxLength: 12 }), { freq: 4 }),
})

const layer: fc.Arbitrary<LayerSpec> = fc.record({
  entries: fc.array(fc.tuple(fc.oneof({ weight: 12, arbitrary: path }, { weight: 1, arbitrary: deepPath }), node), { minLength: 1, maxLength: 12 }),
  whiteouts: fc.array(path, { maxLength: 4 }),
  opaques: fc.array(path, { maxLength: 2 }),
})

export const stackArb: fc.Arbitrary<LayerSpec[]> = fc.array(layer, { minLength: 1, maxLength: 4 })

/** Every path a stack's layers name (entries and the directories above them), '/'-joined byte strings. */
export function pathsOf(specs: readonly LayerSpec[]): string[] {
  const out = new Set<string>()
  for (const spec of specs) {
    for (const [p] of spec.entries) for (let i = 1; i <= p.length; i++) out.add(p.slice(0, i).join('/'))
  }
  return [...out].sort()
}

const key = (p: readonly string[]): string => p.join('/')
const bytes = (root: string, p: readonly string[]): Buffer =>
  Buffer.concat([Buffer.from(root), ...p.flatMap((n) => [Buffer.from('/'), Buffer.from(n, 'latin1')])])

/** Writes a layer in OCI form under `root` (an empty directory). */
export async function writeLayer(root: string, spec: LayerSpec): Promise<void> {
  const made = new Map<string, NodeSpec | 'dir'>() // what this layer holds, by path
  const times: Array<[Buffer, readonly [number, number], number]> = []
  const modes: Array<[Buffer, number]> = []
  const ensureDir = async (p: readonly string[]): Promise<boolean> => {
    for (let i = 1; i <= p.length; i++) {
      const sub = p.slice(0, i)
      const have = made.get(key(sub))
      if (have === undefined) {
        await mkdir(bytes(root, sub))
        made.set(key(sub), 'dir')
        times.push([bytes(root, sub), [1_600_000_000 + i, 5], i])
      } else if (have !== 'dir' && have.kind !== 'dir') return false
    }
    return true
  }
  for (const [p, n] of spec.entries) {
    if (made.has(key(p)) || !(await ensureDir(p.slice(0, -1)))) continue
    const at = bytes(root, p)
    if (n.kind === 'hardlink') {
      // to an earlier file of this layer, if there is one
      const target = [...made.entries()].find(([, v]) => v !== 'dir' && v.kind === 'file')
      if (!target) continue
      await link(bytes(root, target[0].split('/')), at)
      made.set(key(p), { ...n, kind: 'file' })
      continue
    }
    switch (n.kind) {
      case 'file': await writeFile(at, n.content === '<big>' ? Buffer.alloc(70_000, 'z') : n.content); break
      case 'dir': await mkdir(at); break
      case 'symlink': await symlink(Buffer.from(n.target, 'latin1'), at); break
      case 'fifo': sys.mknod(at, C.S_IFIFO | 0o644, 0, 0); break
      case 'char': sys.mknod(at, C.S_IFCHR | 0o644, 1, 3); break
      case 'block': sys.mknod(at, C.S_IFBLK | 0o644, 7, 0); break
    }
    made.set(key(p), n)
    await lchown(at, n.uid, n.gid)
    // user.* attributes exist only on regular files and directories
    if (n.xattr !== null && (n.kind === 'file' || n.kind === 'dir')) sys.lsetxattr(at, 'user.layerfs', Buffer.from(n.xattr), 0)
    if (n.kind !== 'symlink') modes.push([at, n.mode & (n.kind === 'dir' ? 0o7777 : 0o6777)])
    times.push([at, n.mtime, p.length])
  }
  for (const p of spec.whiteouts) {
    // '.wh.' + a name over 251 bytes cannot exist: such a whiteout has no OCI form
    if (Buffer.byteLength(p[p.length - 1], 'latin1') > 251 || !(await ensureDir(p.slice(0, -1)))) continue
    const marker = [...p.slice(0, -1), '.wh.' + p[p.length - 1]]
    if (made.has(key(marker))) continue
    await writeFile(bytes(root, marker), '')
    made.set(key(marker), 'dir') // a marker: nothing may go below it
    times.push([bytes(root, marker), [1_600_000_000, 0], marker.length])
  }
  for (const p of spec.opaques) {
    const have = made.get(key(p))
    if (have !== undefined && have !== 'dir' && have.kind !== 'dir') continue
    if (!(await ensureDir(p))) continue
    const marker = [...p, '.wh..wh..opq']
    if (made.has(key(marker))) continue
    await writeFile(bytes(root, marker), '')
    made.set(key(marker), 'dir')
    times.push([bytes(root, marker), [1_600_000_000, 0], marker.length])
  }
  for (const [at, mode] of modes) await chmod(at, mode)
  // times last, deepest first: making an entry changes its directory's mtime
  times.sort((x, y) => y[2] - x[2])
  for (const [at, [sec, nsec]] of times) sys.utimens(at, sec, nsec, sec, nsec)
  sys.utimens(Buffer.from(root), 1_600_000_000, 0, 1_600_000_000, 0)
}

/** A stack as text, for a failure message. */
export function describeStack(stack: readonly LayerSpec[]): string {
  const show = (p: readonly string[]): string => JSON.stringify(Buffer.from(key(p), 'latin1').toString('utf8'))
  return stack.map((l, i) => [
    `layer ${i} (${i === 0 ? 'top' : 'below'}):`,
    ...l.entries.map(([p, n]) => `  ${n.kind.padEnd(8)} ${show(p)} mode=${n.mode.toString(8)} uid=${n.uid} mtime=${n.mtime.join('.')}`),
    ...l.whiteouts.map((p) => `  whiteout ${show(p)}`),
    ...l.opaques.map((p) => `  opaque   ${show(p)}`),
  ].join('\n')).join('\n')
}
