// Where a tar layer's bytes lie: a whole file, a member of a docker-save archive, or an OCI blob.
// What they are is told by their first bytes, never by a file name.

export interface LayerBlob {
  /** The file holding the bytes. */
  readonly path: string
  /** Where they start in that file, and how many there are. */
  readonly offset: number
  readonly length: number
  /** For messages: the path, or the image and the layer's place in it. */
  readonly name: string
  /** sha256:… of these bytes, already checked by whoever says so (an image's manifest). */
  readonly digest?: string
  /** sha256:… the uncompressed tar must have (an image config's diff_id). */
  readonly diffId?: string
}

export type BlobFormat = 'tar' | 'gzip' | 'zstd' | 'bzip2' | 'xz'

/** The format of a blob by its magic bytes; anything unknown is taken for a tar (the scan then says whether it is one). */
export function formatOf(head: Buffer): BlobFormat {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip'
  if (head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528) return 'zstd'
  if (head.length >= 3 && head.toString('latin1', 0, 3) === 'BZh') return 'bzip2'
  if (head.length >= 6 && head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz'
  return 'tar'
}

export function shortDigest(d: string): string {
  return d.replace(/^sha256:/, '').slice(0, 12)
}
