import { closeSync, fstatSync, openSync, readSync } from 'node:fs'
import { UserError } from '../errors'
import type { LayerBlob } from '../layer/blob'
import { formatOf } from '../layer/blob'
import { FileScanInput, scanTar } from '../layer/tar-scan'
import { TarFormatError } from '../layer/tar-headers'

// A `docker save` / skopeo archive: a tar holding manifest.json (one entry per image: its config
// and its layers, bottom to top) and the layers themselves as members. The layers are served
// where they lie inside the archive: only the headers of the outer tar are read.

interface ArchiveMember {
  readonly typeflag: string
  readonly offset: number
  readonly size: number
  readonly linkname: string
}

interface ManifestEntry {
  Config?: string
  RepoTags?: string[] | null
  Layers?: string[]
}

/** A path inside the archive, '..' resolved against `dir` (symlinks inside archives are relative). */
function resolveName(dir: string, name: string): string {
  const parts = name.startsWith('/') ? [] : dir.split('/').filter((p) => p !== '')
  for (const p of name.split('/')) {
    if (p === '' || p === '.') continue
    if (p === '..') parts.pop()
    else parts.push(p)
  }
  return parts.join('/')
}

function dirOf(name: string): string {
  const i = name.lastIndexOf('/')
  return i < 0 ? '' : name.slice(0, i)
}

class Archive {
  readonly members = new Map<string, ArchiveMember>()

  constructor(readonly path: string, private readonly fd: number) {
    const size = fstatSync(fd).size
    const head = Buffer.alloc(8)
    const format = formatOf(head.subarray(0, readSync(fd, head, 0, 8, 0)))
    if (format !== 'tar') throw new UserError(`${path}: a ${format}-compressed file, not a docker-save archive (decompress it first)`)
    try {
      scanTar(new FileScanInput(fd, 0, size), (m) => {
        this.members.set(resolveName('', m.name), { typeflag: m.typeflag, offset: m.dataOffset, size: m.storedSize, linkname: m.linkname })
      })
    } catch (err) {
      if (err instanceof TarFormatError) throw new UserError(`${path}: not a docker-save archive (${err.message})`)
      throw err
    }
  }

  /** The member holding `name`'s bytes, through symlinks and hard links. */
  find(name: string): ArchiveMember | null {
    let cur = resolveName('', name)
    for (let hops = 0; hops < 16; hops++) {
      const m = this.members.get(cur)
      if (!m) return null
      if (m.typeflag === '2') cur = resolveName(dirOf(cur), m.linkname)
      else if (m.typeflag === '1') cur = resolveName('', m.linkname)
      else return m.typeflag === '0' || m.typeflag === '7' || m.typeflag === '' ? m : null
    }
    return null
  }

  json<T>(name: string, what: string): T {
    const m = this.find(name)
    if (!m) throw new UserError(`${this.path}: ${what} ${name} is missing from the archive`)
    if (m.size > 64 << 20) throw new UserError(`${this.path}: ${what} ${name} is implausibly large (${m.size} bytes)`)
    const buf = Buffer.alloc(m.size)
    let got = 0
    while (got < m.size) {
      const n = readSync(this.fd, buf, got, m.size - got, m.offset + got)
      if (n === 0) throw new UserError(`${this.path}: ${what} ${name} is truncated`)
      got += n
    }
    try {
      return JSON.parse(buf.toString('utf8')) as T
    } catch {
      throw new UserError(`${this.path}: ${what} ${name} is not valid JSON`)
    }
  }
}

/** Picks the image: by NAME:TAG (docker.io/ and :latest forms accepted) or @N; else the only one. */
function pick(path: string, entries: readonly ManifestEntry[], name: string | null): { entry: ManifestEntry; label: string } {
  if (entries.length === 0) throw new UserError(`${path}: manifest.json lists no image`)
  const tagsOf = (e: ManifestEntry): string[] => e.RepoTags ?? []
  const listing = entries.map((e, i) => (tagsOf(e).length > 0 ? tagsOf(e).join(' ') : `@${i}`)).join(', ')
  if (name === null) {
    if (entries.length === 1) return { entry: entries[0], label: tagsOf(entries[0])[0] ?? '@0' }
    throw new UserError(`${path}: the archive holds ${entries.length} images; name one as docker-archive:${path}:NAME:TAG (it has: ${listing})`)
  }
  if (/^@\d+$/.test(name)) {
    const i = Number(name.slice(1))
    if (i >= entries.length) throw new UserError(`${path}: no image ${name} (it has ${entries.length}: ${listing})`)
    return { entry: entries[i], label: name }
  }
  const canon = (t: string): string => {
    let s = t.replace(/^docker\.io\//, '').replace(/^library\//, '')
    if (!/:[^/]+$/.test(s)) s += ':latest'
    return s
  }
  const found = entries.find((e) => tagsOf(e).some((t) => canon(t) === canon(name)))
  if (!found) throw new UserError(`${path}: no image named ${name} in the archive (it has: ${listing})`)
  return { entry: found, label: name }
}

/** Resolves a docker-archive reference to its layers, bottom to top, as byte ranges of the archive. */
export function dockerArchiveLayers(path: string, name: string | null): { layers: LayerBlob[]; description: string } {
  let fd: number
  try {
    fd = openSync(path, 'r')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    throw new UserError(`${path}: ${code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'a directory, not a docker-save archive' : (err as Error).message}`)
  }
  try {
    const archive = new Archive(path, fd)
    if (!archive.members.has('manifest.json')) throw new UserError(`${path}: not a docker-save archive (no manifest.json)`)
    const entries = archive.json<ManifestEntry[]>('manifest.json', 'manifest')
    if (!Array.isArray(entries)) throw new UserError(`${path}: manifest.json is not a list of images`)
    const { entry, label } = pick(path, entries, name)
    if (!entry.Config || !Array.isArray(entry.Layers)) throw new UserError(`${path}: manifest.json entry ${label} lacks Config or Layers`)
    const config = archive.json<{ rootfs?: { diff_ids?: string[] } }>(entry.Config, 'image config')
    const diffIds = config.rootfs?.diff_ids ?? []
    const n = entry.Layers.length
    if (diffIds.length !== n) throw new UserError(`${path}: image ${label}: the config lists ${diffIds.length} diff_ids for ${n} layers`)
    const layers = entry.Layers.map((member, i): LayerBlob => {
      const where = `docker-archive:${path}:${label} layer ${i + 1}/${n} (${member})`
      const m = archive.find(member)
      if (!m) throw new UserError(`${where}: no such layer in the archive`)
      return { path, offset: m.offset, length: m.size, name: where, diffId: diffIds[i] }
    })
    return { layers, description: `docker-archive:${path}:${label}` }
  } finally {
    closeSync(fd)
  }
}
