import assert from 'node:assert/strict'
import { mkdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { LAYERFS, run, tempDir } from './run'
import { trackMountpoint } from './mounts'

// What the command line tests check after every failure: one line on stderr, no stack trace, a
// non-zero exit, nothing mounted, no daemon left.

/** The filesystem type mounted at `path`, or null. */
export async function mountedAt(path: string): Promise<string | null> {
  const info = await readFile('/proc/self/mountinfo', 'utf8')
  const line = info.split('\n').find((l) => l.split(' ')[4] === path)
  return line ? line.split(' - ')[1].split(' ')[0] : null
}

export async function daemonsFor(path: string): Promise<number[]> {
  const r = await run('pgrep', ['-f', `__layerfs_daemon`])
  const pids = r.stdout.split('\n').filter(Boolean).map(Number)
  const mine: number[] = []
  for (const pid of pids) {
    const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
    const arg = cmd.split('\0').filter(Boolean).pop() // the daemon's last argument: its request
    if (arg && Buffer.from(arg, 'base64').toString('utf8').includes(path)) mine.push(pid)
  }
  return mine
}

export async function waitFor(cond: () => Promise<boolean>, ms = 5000): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 50))) if (await cond()) return true
  return cond()
}

/** Runs layerfs expecting a failure: one line, no stack, non-zero exit, nothing mounted. */
export async function expectFailure(args: string[], mnt: string, pattern: RegExp, env: NodeJS.ProcessEnv): Promise<string> {
  const r = await run(LAYERFS, args, { env })
  assert.notEqual(r.code, 0, `exit code for ${args.join(' ')}`)
  const lines = r.stderr.split('\n').filter(Boolean)
  assert.equal(lines.length, 1, `one line on stderr, got: ${r.stderr}`)
  assert.match(lines[0], /^layerfs: /)
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace')
  assert.match(lines[0], pattern)
  assert.equal(await mountedAt(mnt), null, 'nothing mounted')
  assert.deepEqual(await daemonsFor(mnt), [], 'no daemon left')
  return lines[0]
}

export async function freshMountpoint(): Promise<string> {
  const mnt = join(await tempDir('cli-mnt'), 'm')
  await mkdir(mnt)
  trackMountpoint(mnt) // unmounted at the end even if the test fails before it does
  return mnt
}
