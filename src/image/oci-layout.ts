import { createHash } from 'node:crypto'
import { readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { UserError } from '../errors'
import type { LayerBlob } from '../layer/blob'
import { shortDigest } from '../layer/blob'
import { type Platform, describePlatform, matchesPlatform } from './platform'

// An OCI image layout (image-spec's image-layout.md): index.json names manifests (or nested
// indexes, one manifest per platform); a manifest names the config and the layer blobs, which are
// served where they lie under blobs/.

interface Descriptor {
  mediaType?: string
  digest: string
  size: number
  annotations?: Record<string, string>
  platform?: { os?: string; architecture?: string; variant?: string }
}

const INDEX_TYPES = new Set(['application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.list.v2+json'])
const REF_NAME = 'org.opencontainers.image.ref.name'

/** The path of a blob by its digest; throws when the digest is not of the form the spec allows. */
function blobPath(dir: string, digest: string): string {
  const m = /^([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$/.exec(digest)
  if (!m) throw new UserError(`${dir}: malformed digest ${JSON.stringify(digest)}`)
  return join(dir, 'blobs', m[1], m[2])
}

/** A small JSON blob (manifest, config, index), checked against its digest. */
function readJsonBlob<T>(dir: string, desc: Descriptor, what: string): T {
  const path = blobPath(dir, desc.digest)
  let bytes: Buffer
  try {
    bytes = readFileSync(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EACCES') throw new UserError(`${path}: permission denied`)
    throw new UserError(`${dir}: ${what} ${shortDigest(desc.digest)} is missing (no ${path})`)
  }
  const actual = 'sha256:' + createHash('sha256').update(bytes).digest('hex')
  if (desc.digest.startsWith('sha256:') && actual !== desc.digest) {
    throw new UserError(`${dir}: ${what} ${shortDigest(desc.digest)} does not match its digest (the file hashes to ${actual})`)
  }
  try {
    return JSON.parse(bytes.toString('utf8')) as T
  } catch {
    throw new UserError(`${dir}: ${what} ${shortDigest(desc.digest)} is not valid JSON`)
  }
}

function refsOf(manifests: readonly Descriptor[]): string[] {
  return manifests.map((m) => m.annotations?.[REF_NAME]).filter((r): r is string => typeof r === 'string')
}

/** Picks the manifest for `ref`: by name; else the only one; else `latest`. */
function pick(dir: string, manifests: readonly Descriptor[], ref: string | null): Descriptor {
  if (manifests.length === 0) throw new UserError(`${dir}: the OCI layout holds no image`)
  const names = refsOf(manifests)
  const list = names.length > 0 ? ` (it has: ${[...new Set(names)].join(', ')})` : ''
  if (ref !== null) {
    const found = manifests.find((m) => m.annotations?.[REF_NAME] === ref)
    if (!found) throw new UserError(`${dir}: no image named ${JSON.stringify(ref)} in this OCI layout${list}`)
    return found
  }
  if (new Set(manifests.map((m) => m.digest)).size === 1) return manifests[0]
  const latest = manifests.find((m) => m.annotations?.[REF_NAME] === 'latest')
  if (latest) return latest
  throw new UserError(`${dir}: the OCI layout holds several images; name one as oci:${dir}:REF${list}`)
}

interface Manifest {
  mediaType?: string
  config: Descriptor
  layers: Descriptor[]
}

/** Resolves an OCI layout reference to its layers, bottom to top, each checked to exist. */
export function ociLayers(dir: string, ref: string | null, platform: Platform): { layers: LayerBlob[]; description: string } {
  let layout: { imageLayoutVersion?: string }
  try {
    layout = JSON.parse(readFileSync(join(dir, 'oci-layout'), 'utf8')) as { imageLayoutVersion?: string }
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    throw new UserError(`${dir}: ${code === 'ENOENT' ? 'not an OCI image layout (no oci-layout file)' : code === 'EACCES' ? 'oci-layout: permission denied' : 'not an OCI image layout (unreadable oci-layout file)'}`)
  }
  if (typeof layout.imageLayoutVersion !== 'string') throw new UserError(`${dir}: not an OCI image layout (oci-layout has no imageLayoutVersion)`)
  let index: { manifests?: Descriptor[] }
  try {
    index = JSON.parse(readFileSync(join(dir, 'index.json'), 'utf8')) as { manifests?: Descriptor[] }
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EACCES') throw new UserError(`${dir}/index.json: permission denied`)
    throw new UserError(`${dir}: not an OCI image layout (${code === 'ENOENT' ? 'no index.json' : 'index.json is not valid JSON'})`)
  }
  let desc = pick(dir, index.manifests ?? [], ref)
  const name = ref ?? desc.annotations?.[REF_NAME] ?? shortDigest(desc.digest)
  // nested indexes: one manifest per platform
  for (let depth = 0; desc.mediaType !== undefined && INDEX_TYPES.has(desc.mediaType); depth++) {
    if (depth > 4) throw new UserError(`${dir}: image indexes nested too deep`)
    const nested = readJsonBlob<{ manifests?: Descriptor[] }>(dir, desc, 'image index')
    const candidates = nested.manifests ?? []
    const match = candidates.find((m) => m.platform && matchesPlatform(m.platform, platform))
    if (!match) {
      const have = candidates.map((m) => (m.platform ? describePlatform(m.platform) : '?')).join(', ')
      throw new UserError(`${dir}: image ${name} has no manifest for ${describePlatform(platform)} (it has: ${have}); choose one with --platform`)
    }
    desc = match
  }
  const manifest = readJsonBlob<Manifest>(dir, desc, 'manifest')
  if (!manifest.config || !Array.isArray(manifest.layers)) throw new UserError(`${dir}: manifest ${shortDigest(desc.digest)} is not an image manifest`)
  const config = readJsonBlob<{ rootfs?: { diff_ids?: string[] } }>(dir, manifest.config, 'image config')
  const diffIds = config.rootfs?.diff_ids ?? []
  if (diffIds.length !== manifest.layers.length) {
    throw new UserError(`${dir}: image ${name}: the config lists ${diffIds.length} diff_ids for ${manifest.layers.length} layers`)
  }
  const n = manifest.layers.length
  const layers = manifest.layers.map((l, i): LayerBlob => {
    const label = `oci:${dir}:${name} layer ${i + 1}/${n} (${shortDigest(l.digest)})`
    const path = blobPath(dir, l.digest)
    let size: number
    try {
      size = statSync(path).size
    } catch {
      throw new UserError(`${label}: blob missing (no ${path})`)
    }
    if (typeof l.size === 'number' && size !== l.size) {
      throw new UserError(`${label}: blob is ${size} bytes, the manifest says ${l.size}`)
    }
    return { path, offset: 0, length: size, name: label, digest: l.digest, diffId: diffIds[i] }
  })
  return { layers, description: `oci:${dir}:${name}` }
}
