import { mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs'
import Module from 'node:module'
import { dirname, join, resolve } from 'node:path'
import vm from 'node:vm'
import { cacheDir } from './cache-dir'

// V8's code cache for layerfs's own scripts. Each process compiles its scripts afresh, and V8
// compiles each function only when first called: a daemon's first lookups and its first copy-up
// spent milliseconds compiling (a first 4 KiB copy-up: 9 ms, 3 of them compiling). The daemon
// saves the bytecode of everything it ran (V8 keeps lazily compiled functions in the cache) when it
// ends; the next start loads it, and V8 checks it against the source and its own version.

const ROOT = resolve(__dirname, '..', '..') // the project: dist/ and node_modules/
const MAGIC = 'layerfs-v8-cache-1'

interface Loaded {
  readonly script: vm.Script
  readonly size: number
  readonly mtimeMs: number
}

const scripts = new Map<string, Loaded>()
let cached = new Map<string, { size: number; mtimeMs: number; data: Buffer }>()

function cacheFile(): string {
  // V8 rejects a cache made under other flags: one file per set of flags (the daemon runs with its own)
  const flags = process.execArgv.join(' ').replace(/[^a-z0-9=-]+/gi, '_')
  return join(cacheDir(), `v8-${process.version}-${process.arch}${flags ? '-' + flags : ''}.bin`)
}

/** Reads the cache file: a JSON header line (files, sizes, times, lengths), then the blobs. */
function readCache(): void {
  let buf: Buffer
  try {
    buf = readFileSync(cacheFile())
  } catch {
    return
  }
  const nl = buf.indexOf(10)
  const head = JSON.parse(buf.subarray(0, nl).toString('utf8')) as { magic: string; files: Array<[string, number, number, number]> }
  if (head.magic !== MAGIC) return
  let at = nl + 1
  for (const [file, size, mtimeMs, length] of head.files) {
    cached.set(file, { size, mtimeMs, data: buf.subarray(at, at + length) })
    at += length
  }
}

type CompileFn = (this: Module, content: string, filename: string) => unknown
interface ModuleInternals {
  prototype: { _compile: CompileFn }
  _resolveFilename(request: string, parent: Module, isMain: boolean, options?: unknown): string
  _cache: Record<string, Module>
  wrap(content: string): string
}

/** Compiles the project's CommonJS files through vm.Script with their cached bytecode. */
export function installCodeCache(): void {
  try {
    readCache()
  } catch {
    cached = new Map()
  }
  const M = Module as unknown as ModuleInternals
  const original = M.prototype._compile
  M.prototype._compile = function (this: Module, content: string, filename: string): unknown {
    if (!filename.startsWith(ROOT + '/') || !filename.endsWith('.js')) return original.call(this, content, filename)
    let st
    try {
      st = statSync(filename)
    } catch {
      return original.call(this, content, filename)
    }
    const hit = cached.get(filename)
    const usable = hit && hit.size === st.size && hit.mtimeMs === st.mtimeMs ? hit.data : undefined
    const script = new vm.Script(M.wrap(content), { filename, cachedData: usable })
    scripts.set(filename, { script, size: st.size, mtimeMs: st.mtimeMs })
    const fn = script.runInThisContext({ displayErrors: true }) as (...args: unknown[]) => unknown
    const require = ((id: string) => this.require(id)) as NodeJS.Require
    require.resolve = ((request: string, options?: unknown) => M._resolveFilename(request, this, false, options)) as NodeJS.RequireResolve
    require.main = process.mainModule
    require.cache = M._cache as NodeJS.Require['cache']
    return fn.call(this.exports, this.exports, require, this, filename, dirname(filename))
  }
}

/** Writes the bytecode of every script this process ran (call it late: it holds what ran by then). */
export function saveCodeCache(): void {
  if (scripts.size === 0) return
  try {
    const files: Array<[string, number, number, number]> = []
    const blobs: Buffer[] = []
    for (const [file, { script, size, mtimeMs }] of scripts) {
      const data = script.createCachedData()
      files.push([file, size, mtimeMs, data.length])
      blobs.push(data)
    }
    const path = cacheFile()
    mkdirSync(dirname(path), { recursive: true })
    const tmp = `${path}.${process.pid}.tmp`
    writeFileSync(tmp, Buffer.concat([Buffer.from(JSON.stringify({ magic: MAGIC, files }) + '\n'), ...blobs]))
    renameSync(tmp, path)
  } catch { /* a cache: without it, only slower */ }
}
