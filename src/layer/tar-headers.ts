// Decoding of tar header blocks and PAX records: ustar, GNU and PAX, as GNU tar, bsdtar and Go's
// archive/tar (umoci) write them. Pure functions over buffers; tar-scan.ts walks the archive.

export const BLOCK = 512

export class TarFormatError extends Error {
  constructor(message: string, readonly offset: number) {
    super(message)
    this.name = 'TarFormatError'
  }
}

/** A string field up to its first NUL, as a byte string (latin1: one char per byte). */
export function field(h: Buffer, off: number, len: number): string {
  let end = off
  const max = off + len
  while (end < max && h[end] !== 0) end++
  return h.toString('latin1', off, end)
}

/** A numeric field: octal ASCII (space or NUL terminated) or GNU base-256 (high bit set). */
export function numeric(h: Buffer, off: number, len: number): number {
  const first = h[off]
  if (first & 0x80) {
    // base-256, big-endian two's complement: a 0xff lead byte means negative
    if (first === 0xff) {
      let inverted = 0
      for (let i = 1; i < len; i++) inverted = inverted * 256 + (255 - h[off + i])
      return -(inverted + 1)
    }
    let value = first & 0x7f
    for (let i = 1; i < len; i++) value = value * 256 + h[off + i]
    return value
  }
  let i = off
  const end = off + len
  while (i < end && (h[i] === 0x20 || h[i] === 0)) i++
  let value = 0
  let digits = 0
  for (; i < end; i++) {
    const c = h[i]
    if (c < 0x30 || c > 0x37) break
    value = value * 8 + (c - 0x30)
    digits++
  }
  return digits === 0 ? 0 : value
}

/** The sum of a block's 512 bytes; 0 means an all-zero block. */
export function blockSum(h: Buffer): number {
  if (h.byteOffset % 4 === 0 && h.length === BLOCK) {
    // four bytes at a time: two 16-bit lanes, each at most 256 * 510 < 65536
    const words = new Uint32Array(h.buffer, h.byteOffset, BLOCK / 4)
    let lanes = 0
    for (let i = 0; i < BLOCK / 4; i++) {
      const w = words[i]
      lanes += (w & 0x00ff00ff) + ((w >>> 8) & 0x00ff00ff)
    }
    return (lanes & 0xffff) + (lanes >>> 16)
  }
  let sum = 0
  for (let i = 0; i < h.length; i++) sum += h[i]
  return sum
}

/** True when the header's checksum matches (unsigned sum, or the signed sum old tars wrote). */
export function checksumOk(h: Buffer, sum = blockSum(h)): boolean {
  const stored = numeric(h, 148, 8)
  // the checksum field counts as eight spaces
  let field = 0
  for (let i = 148; i < 156; i++) field += h[i]
  const unsigned = sum - field + 8 * 0x20
  if (stored === unsigned) return true
  let signed = unsigned
  for (let i = 0; i < BLOCK; i++) if (h[i] > 127 && (i < 148 || i >= 156)) signed -= 256
  return stored === signed
}

export function isZeroBlock(h: Buffer): boolean {
  for (let i = 0; i < h.length; i++) if (h[i] !== 0) return false
  return true
}

export type HeaderFormat = 'ustar' | 'gnu' | 'v7'

export interface RawHeader {
  name: string
  mode: number
  uid: number
  gid: number
  size: number
  mtime: number
  typeflag: string
  linkname: string
  devmajor: number
  devminor: number
  format: HeaderFormat
  /** GNU headers: access and change times (0 when absent). */
  atime: number
  ctime: number
}

export function parseHeader(h: Buffer): RawHeader {
  // magic: "ustar\0" (POSIX) or "ustar " (GNU); compared as bytes to spare a string per header
  const ustarMagic = h[257] === 0x75 && h[258] === 0x73 && h[259] === 0x74 && h[260] === 0x61 && h[261] === 0x72
  const format: HeaderFormat = !ustarMagic ? 'v7' : h[262] === 0 ? 'ustar' : h[262] === 0x20 ? 'gnu' : 'v7'
  let name = field(h, 0, 100)
  if (format === 'ustar' && h[345] !== 0) name = field(h, 345, 155) + '/' + name
  const type = h[156]
  const typeflag = type === 0 ? '0' : String.fromCharCode(type)
  const isLink = typeflag === '1' || typeflag === '2'
  const isDevice = typeflag === '3' || typeflag === '4'
  return {
    name,
    mode: numeric(h, 100, 8),
    uid: numeric(h, 108, 8),
    gid: numeric(h, 116, 8),
    size: numeric(h, 124, 12),
    mtime: numeric(h, 136, 12),
    typeflag,
    linkname: isLink ? field(h, 157, 100) : '',
    devmajor: isDevice && format !== 'v7' ? numeric(h, 329, 8) : 0,
    devminor: isDevice && format !== 'v7' ? numeric(h, 337, 8) : 0,
    format,
    atime: format === 'gnu' && h[345] !== 0 ? numeric(h, 345, 12) : 0,
    ctime: format === 'gnu' && h[357] !== 0 ? numeric(h, 357, 12) : 0,
  }
}

/** A PAX record set: keys as byte strings, values as raw bytes. Order kept (GNU sparse 0.0 needs it). */
export type PaxRecords = Array<[string, Buffer]>

export function parsePax(data: Buffer, offset: number): PaxRecords {
  const out: PaxRecords = []
  let pos = 0
  while (pos < data.length) {
    if (data[pos] === 0) break // NUL padding some writers leave
    const space = data.indexOf(0x20, pos)
    if (space < 0) throw new TarFormatError('malformed PAX record', offset)
    const len = Number(data.toString('latin1', pos, space))
    if (!Number.isInteger(len) || len <= 0 || pos + len > data.length) throw new TarFormatError('malformed PAX record length', offset)
    const eq = data.indexOf(0x3d, space + 1)
    if (eq < 0 || eq >= pos + len) throw new TarFormatError('malformed PAX record', offset)
    // the record ends with '\n', not part of the value
    out.push([data.toString('latin1', space + 1, eq), data.subarray(eq + 1, pos + len - 1)])
    pos += len
  }
  return out
}

export interface PaxTime {
  sec: number
  nsec: number
}

/** A PAX decimal time such as "1700000000.123456789" or "-1.5". */
export function parsePaxTime(value: string): PaxTime | null {
  const m = /^(-?)(\d+)(?:\.(\d*))?$/.exec(value.trim())
  if (!m) return null
  const frac = (m[3] ?? '').slice(0, 9).padEnd(9, '0')
  let sec = Number(m[2])
  let nsec = Number(frac)
  if (m[1] === '-') {
    sec = -sec
    if (nsec > 0) {
      sec -= 1
      nsec = 1e9 - nsec
    }
  }
  return { sec, nsec }
}

/** A GNU sparse map: data segments of the logical file, stored one after another in the archive. */
export type SparseMap = Array<[number, number]>

/** The sparse map of an old GNU ('S') header and its extension blocks. */
export function parseGnuSparseBlock(h: Buffer, start: number, count: number, into: SparseMap): void {
  for (let i = 0; i < count; i++) {
    const off = start + i * 24
    if (h[off] === 0) return
    into.push([numeric(h, off, 12), numeric(h, off + 12, 12)])
  }
}
