import { statSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { UserError } from '../errors'

// Image references in skopeo's transport syntax, plus a bare path told apart by what it holds.

export type ImageRef =
  /** A `docker save` / skopeo archive; `name` is NAME:TAG or @N (the Nth image), null for the only one. */
  | { readonly transport: 'docker-archive'; readonly path: string; readonly name: string | null }
  /** An OCI image layout; `ref` is an org.opencontainers.image.ref.name, null for the default. */
  | { readonly transport: 'oci'; readonly path: string; readonly ref: string | null }

const TRANSPORTS = ['docker-archive', 'oci']

/** Whether a mount source names an image rather than being a label (mount.fuse's SOURCE). */
export function looksLikeImage(source: string): boolean {
  return /^[a-z-]+:/.test(source) && TRANSPORTS.includes(source.slice(0, source.indexOf(':')))
}

/** Parses `docker-archive:PATH[:NAME:TAG|:@N]`, `oci:DIR[:REF]`, or a bare path to either. */
export function parseImageRef(text: string, cwd: string): ImageRef {
  const colon = text.indexOf(':')
  const transport = colon > 0 ? text.slice(0, colon) : ''
  if (transport === 'docker-archive' || transport === 'oci') {
    const rest = text.slice(colon + 1)
    // as skopeo does: the path ends at the first colon
    const sep = rest.indexOf(':')
    const path = sep < 0 ? rest : rest.slice(0, sep)
    const tail = sep < 0 ? null : rest.slice(sep + 1)
    if (path === '') throw new UserError(`image reference ${text}: no path`)
    if (tail === '') throw new UserError(`image reference ${text}: empty ${transport === 'oci' ? 'reference' : 'image name'} after ':'`)
    return transport === 'oci' ? { transport, path: resolve(cwd, path), ref: tail } : { transport, path: resolve(cwd, path), name: tail }
  }
  if (/^(docker|oci-archive|containers-storage|docker-daemon|dir|sif):/.test(text)) {
    throw new UserError(`image reference ${text}: the ${transport}: transport is not supported (use docker-archive: or oci:)`)
  }
  const path = resolve(cwd, text)
  let st
  try {
    st = statSync(path)
  } catch {
    throw new UserError(`${text}: no such file or directory`)
  }
  if (st.isDirectory()) {
    try {
      statSync(join(path, 'oci-layout'))
    } catch {
      throw new UserError(`${text}: a directory but not an OCI image layout (no oci-layout file); give layers with -o lowerdir=`)
    }
    return { transport: 'oci', path, ref: null }
  }
  return { transport: 'docker-archive', path, name: null }
}

export function describeRef(ref: ImageRef): string {
  if (ref.transport === 'oci') return `oci:${ref.path}${ref.ref ? ':' + ref.ref : ''}`
  return `docker-archive:${ref.path}${ref.name ? ':' + ref.name : ''}`
}
