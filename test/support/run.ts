import { execFile, spawnSync } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'

// The standby daemon (a second daemon waiting for the next mount) is off for the tests' layerfs
// processes: each test sees the daemon it started, and none is left waiting. test/mount/standby.test.ts
// turns it on for its own.
process.env.LAYERFS_STANDBY ??= '0'

/** The repository root (tests run from dist/test/...). */
export const REPO = resolve(__dirname, '..', '..', '..')
export const LAYERFS = join(REPO, 'bin', 'layerfs')

export interface RunResult {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

/** Runs a program; never throws for a non-zero exit (the result says). */
export function run(cmd: string, args: readonly string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((res) => {
    execFile(cmd, [...args], { env: opts.env ?? process.env, cwd: opts.cwd, timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 << 20, encoding: 'utf8' },
      (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0
        res({ code, stdout, stderr })
      })
  })
}

/** Runs a program and throws with its stderr when it fails. */
export async function must(cmd: string, args: readonly string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<string> {
  const r = await run(cmd, args, opts)
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`)
  return r.stdout
}

/** Writes dirty pages back, then drops the clean page cache: the next reads go to the filesystem. */
export async function dropPageCache(): Promise<void> {
  await must('sh', ['-c', 'sync; echo 1 > /proc/sys/vm/drop_caches'])
}

const temps: string[] = []

/** A fresh temporary directory, removed when the process exits. */
export async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `layerfs-test-${prefix}-`))
  temps.push(dir)
  return dir
}

export async function removeTemps(): Promise<void> {
  while (temps.length > 0) await rm(temps.pop()!, { recursive: true, force: true }).catch(() => undefined)
}

process.on('exit', () => {
  for (const dir of temps) spawnSync('rm', ['-rf', dir])
})
