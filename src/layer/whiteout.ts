// The whiteout dialects: OCI marker names (in tars and, honoured too, in directories) and
// kernel overlayfs's own form (char device 0/0, overlay.opaque xattr).

export const OCI_WHITEOUT_PREFIX = '.wh.'
export const OCI_OPAQUE_MARKER = '.wh..wh..opq'

export type MarkerName =
  | { readonly type: 'opaque' }
  | { readonly type: 'whiteout'; readonly name: string }
  /** Other `.wh..wh.` names (aufs bookkeeping such as `.wh..wh.plnk`): never shown, no effect. */
  | { readonly type: 'meta' }

/** Decodes an OCI marker file name; null for an ordinary name. */
export function decodeMarker(name: string): MarkerName | null {
  if (!name.startsWith(OCI_WHITEOUT_PREFIX)) return null
  if (name === OCI_OPAQUE_MARKER) return { type: 'opaque' }
  if (name.startsWith('.wh..wh.')) return { type: 'meta' }
  const hidden = name.slice(OCI_WHITEOUT_PREFIX.length)
  return hidden === '' ? { type: 'meta' } : { type: 'whiteout', name: hidden }
}

/** Kernel overlayfs's whiteout: a character device with device number 0/0. */
export function isOverlayWhiteout(kind: string, rdev: number): boolean {
  return kind === 'char' && rdev === 0
}

/** The xattrs that mark an opaque directory in kernel-overlay form (trusted, or user with -o userxattr). */
export const OPAQUE_XATTRS = ['trusted.overlay.opaque', 'user.overlay.opaque'] as const

/** Where a renamed directory's contents lie in lower layers (kernel overlayfs's redirect_dir). */
export const REDIRECT_XATTRS = ['trusted.overlay.redirect', 'user.overlay.redirect'] as const

/** A file whose data lies in the layers below (kernel overlayfs's metacopy=on): only metadata is here. */
export const METACOPY_XATTRS = ['trusted.overlay.metacopy', 'user.overlay.metacopy'] as const

export function isOpaqueValue(value: Buffer | null): boolean {
  return value !== null && value.length === 1 && value[0] === 0x79 /* 'y' */
}
