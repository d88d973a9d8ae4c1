import { appendFile, chmod, mkdir, mkdtemp, readFile, readdir, readlink, rm, stat, symlink, unlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { parseArgs } from './options'
import type { serve as Serve } from './serve'
import { silentProgress } from './progress'
import { runtimeDir } from './runtime'

// Runs a standby's hot code once before it waits: a scratch mount of its own (a tar and a directory
// layer under an upper), used through the kernel as a program would (lookups, listings, reads, a
// copy-up by append and by chmod, a new file, an unlink), then unmounted; then the same read-only.
// V8 compiles each function on its first call and learns the shapes of what it touches on the
// first few: a fresh daemon's first mount took 21 ms to set up where a warm one takes 7, its first
// copy-up 5.3 ms where a warm one takes ~2. The files are touched from libuv's thread pool (fs/promises), never from this
// thread, which serves them (see native-notes: the deadlock trap).

const BLOCK = 512
/** First writes whose copy-up C runs from a plan (see CopyUp.planNow), each in a directory of its own. */
const PLANNED = 8

/** A ustar member: header and data padded to whole blocks. */
function tarMember(name: string, type: '0' | '5', data: Buffer, mode: number): Buffer {
  const h = Buffer.alloc(BLOCK)
  h.write(name, 0, 100, 'utf8')
  h.write(mode.toString(8).padStart(7, '0'), 100, 'latin1')
  h.write('0000000', 108, 'latin1')
  h.write('0000000', 116, 'latin1')
  h.write(data.length.toString(8).padStart(11, '0'), 124, 'latin1')
  h.write(Math.floor(Date.now() / 1000).toString(8).padStart(11, '0'), 136, 'latin1')
  h.write('        ', 148, 'latin1')
  h.write(type, 156, 'latin1')
  h.write('ustar\u000000', 257, 'latin1')
  let sum = 0
  for (const b of h) sum += b
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1')
  return Buffer.concat([h, data, Buffer.alloc((BLOCK - (data.length % BLOCK)) % BLOCK)])
}

export async function warmUp(serve: typeof Serve): Promise<void> {
  const dir = await mkdtemp(join(runtimeDir(), 'warm-up-'))
  try {
    const page = Buffer.alloc(4096, 0x61)
    const tar = join(dir, 'lower.tar')
    await writeFile(tar, Buffer.concat([
      tarMember('t/', '5', Buffer.alloc(0), 0o755), tarMember('t/a', '0', page, 0o644), tarMember('t/b', '0', page, 0o644),
      tarMember('t/c', '0', page, 0o644),
      // first writes to files the kernel has not seen listed: LOOKUPs that plan the copy-up, which C then runs
      ...Array.from({ length: PLANNED }, (_, i) => [tarMember(`w${i}/`, '5', Buffer.alloc(0), 0o755), tarMember(`w${i}/f`, '0', page, 0o644)]).flat(),
      Buffer.alloc(BLOCK * 2),
    ]))
    const lower = join(dir, 'lower')
    await mkdir(join(lower, 'd'), { recursive: true })
    await writeFile(join(lower, 'd', 'f'), page)
    await writeFile(join(lower, 'd', 'g'), page)
    await symlink('f', join(lower, 'd', 'l'))
    for (const d of ['upper', 'work', 'mnt']) await mkdir(join(dir, d))
    const mnt = join(dir, 'mnt')
    const at = (p: string): string => join(mnt, p)
    /** Mounts the scratch layers at `mnt` (with these extra -o options), runs `use`, unmounts. */
    const scratch = async (options: string, use: () => Promise<void>): Promise<void> => {
      const cmd = parseArgs(['mount', '-q', '-o', `lowerdir=${tar}:${lower}${options},fsname=layerfs-warm-up`, mnt], '/', {})
      if (cmd.kind !== 'mount') return
      // the persisted index of a scratch tar would outlive it: none is kept
      const served = await serve({ ...cmd.request, persistIndex: false }, { progress: () => silentProgress })
      try {
        await use()
      } finally {
        await served.stop()
      }
    }
    const browse = async (): Promise<void> => {
      for (const d of ['', 't', 'd']) {
        await stat(at(d))
        await readdir(at(d), { withFileTypes: true })
      }
      await readFile(at('t/a'))
      await readFile(at('d/f'))
    }
    await scratch(`,upperdir=${join(dir, 'upper')},workdir=${join(dir, 'work')}`, async () => {
      await browse()
      await readlink(at('d/l'))
      for (const f of ['t/b', 'd/g', 't/a', 't/b']) await appendFile(at(f), 'x')
      for (let i = 0; i < PLANNED; i++) await appendFile(at(`w${i}/f`), 'x')
      await chmod(at('t/c'), 0o600)
      await writeFile(at('d/new'), page)
      await unlink(at('d/f'))
      await readdir(at('d'))
    })
    // and read-only, as images are mostly mounted: its own paths (no OPEN, reads by node)
    await scratch('', browse)
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}
