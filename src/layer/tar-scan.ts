import { readSync } from 'node:fs'
import {
  BLOCK, TarFormatError, blockSum, checksumOk, isZeroBlock, parseGnuSparseBlock, parseHeader, parsePax, parsePaxTime,
  type PaxRecords, type PaxTime, type SparseMap,
} from './tar-headers'

/** One archive member after its PAX / GNU long-name records are applied. Names are raw byte strings. */
export interface Member {
  name: string
  /** '0' file, '1' hard link, '2' symlink, '3' char, '4' block, '5' dir, '6' fifo. */
  typeflag: string
  mode: number
  uid: number
  gid: number
  /** Logical size (the real size of a sparse file). */
  size: number
  /** Bytes stored in the archive, starting at dataOffset. */
  storedSize: number
  dataOffset: number
  mtime: PaxTime
  atime: PaxTime | null
  ctime: PaxTime | null
  linkname: string
  devmajor: number
  devminor: number
  sparse: SparseMap | null
  xattrs: Map<string, Buffer> | null
}

/** Member types whose stored bytes (if any) are not file content. */
const NO_DATA = new Set(['1', '2', '3', '4', '5', '6', 'D'])

/**
 * The bytes of a tar stream as the scan reads them: positions only move forward (a gzip stream is
 * inflated as it goes), and data the scan skips need not be read at all (a plain file is not).
 */
export interface ScanInput {
  /** `len` bytes at `pos` (a view valid until the next call); shorter only at the end of the stream. */
  get(pos: number, len: number): Buffer
  /** Whether the stream holds bytes up to `end`; later calls ask only for positions past it. */
  reaches(end: number): boolean
}

const WINDOW = 4 << 20

/**
 * Reads a tar stored plainly at [base, base + size) of a file through a sliding window: small members
 * are served from memory, large ones are skipped by moving the window (so only headers are read,
 * as `tar -t` does on a seekable file).
 */
export class FileScanInput implements ScanInput {
  private buf = Buffer.allocUnsafe(WINDOW)
  private start = 0
  private end = 0
  constructor(private readonly fd: number, private readonly base: number, readonly size: number) {}

  get(pos: number, len: number): Buffer {
    if (pos >= this.start && pos + len <= this.end) return this.buf.subarray(pos - this.start, pos - this.start + len)
    if (len > this.buf.length) this.buf = Buffer.allocUnsafe(len)
    const want = Math.min(this.buf.length, Math.max(0, this.size - pos))
    let got = 0
    while (got < want) {
      const n = readSync(this.fd, this.buf, got, want - got, this.base + pos + got)
      if (n === 0) break
      got += n
    }
    this.start = pos
    this.end = pos + got
    return this.buf.subarray(0, Math.min(len, got))
  }

  reaches(end: number): boolean {
    return end <= this.size
  }
}

export interface ScanOptions {
  /** Called now and then with the archive offset reached. */
  onProgress?: (offset: number) => void
}

/** Walks every member of the tar stream; throws TarFormatError on damage. */
export function scanTar(reader: ScanInput, onMember: (m: Member) => void, opts: ScanOptions = {}): void {
  let pos = 0
  let global: PaxRecords = []
  let pax: PaxRecords | null = null
  let longName: string | null = null
  let longLink: string | null = null
  let members = 0
  let nextProgress = 0

  for (;;) {
    const h = reader.get(pos, BLOCK)
    // no end-of-archive blocks (umoci writes such layers): the members are complete
    if (h.length === 0) break
    if (h.length < BLOCK) {
      if (isZeroBlock(h)) break
      throw new TarFormatError(`truncated tar: partial header at offset ${pos}`, pos)
    }
    const sum = blockSum(h)
    if (sum === 0) break // end of archive; whatever follows is not ours
    if (!checksumOk(h, sum)) {
      throw new TarFormatError(members === 0 && pos === 0 ? 'not a tar archive (no valid header at offset 0)'
        : `tar header with a bad checksum at offset ${pos}`, pos)
    }
    const hdr = parseHeader(h)
    const headerPos = pos
    let dataOffset = pos + BLOCK
    const t = hdr.typeflag

    if (t === 'x' || t === 'g' || t === 'L' || t === 'K') {
      const body = Buffer.from(readBody(reader, dataOffset, hdr.size, headerPos))
      pos = dataOffset + padded(hdr.size)
      if (t === 'x') pax = parsePax(body, headerPos)
      else if (t === 'g') global = global.concat(parsePax(body, headerPos))
      else {
        const nul = body.indexOf(0)
        const value = body.toString('latin1', 0, nul < 0 ? body.length : nul)
        if (t === 'L') longName = value
        else longLink = value
      }
      continue
    }

    const records = pax ? (global.length > 0 ? global.concat(pax) : pax) : global
    let name = longName ?? hdr.name
    let linkname = longLink ?? hdr.linkname
    let realSize = hdr.size
    let storedSize = hdr.size
    let mtime: PaxTime = { sec: hdr.mtime, nsec: 0 }
    let atime: PaxTime | null = hdr.atime ? { sec: hdr.atime, nsec: 0 } : null
    let ctime: PaxTime | null = hdr.ctime ? { sec: hdr.ctime, nsec: 0 } : null
    let { uid, gid, devmajor, devminor } = hdr
    let xattrs: Map<string, Buffer> | null = null
    let sparse: SparseMap | null = null
    let sparseMajor = -1
    let sparseSize = -1
    let sparseOffsets: number[] | null = null
    let sparseLengths: number[] | null = null
    let libarchiveXattrs: Map<string, Buffer> | null = null

    for (const [key, value] of records) {
      const str = (): string => value.toString('latin1')
      switch (key) {
        case 'path': name = str(); break
        case 'linkpath': linkname = str(); break
        case 'size': realSize = storedSize = Number(str()); break
        case 'uid': uid = Number(str()); break
        case 'gid': gid = Number(str()); break
        case 'mtime': mtime = parsePaxTime(str()) ?? mtime; break
        case 'atime': atime = parsePaxTime(str()) ?? atime; break
        case 'ctime': ctime = parsePaxTime(str()) ?? ctime; break
        case 'SCHILY.devmajor': devmajor = Number(str()); break
        case 'SCHILY.devminor': devminor = Number(str()); break
        case 'GNU.sparse.major': sparseMajor = Number(str()); break
        case 'GNU.sparse.name': name = str(); break
        case 'GNU.sparse.realsize': case 'GNU.sparse.size': sparseSize = Number(str()); break
        case 'GNU.sparse.offset': (sparseOffsets ??= []).push(Number(str())); break
        case 'GNU.sparse.numbytes': (sparseLengths ??= []).push(Number(str())); break
        case 'GNU.sparse.map': {
          const nums = str().split(',').map(Number)
          for (let i = 0; i + 1 < nums.length; i += 2) { (sparseOffsets ??= []).push(nums[i]); (sparseLengths ??= []).push(nums[i + 1]) }
          break
        }
        default:
          if (key.startsWith('SCHILY.xattr.')) {
            ;(xattrs ??= new Map()).set(key.slice('SCHILY.xattr.'.length), Buffer.from(value))
          } else if (key.startsWith('LIBARCHIVE.xattr.')) {
            const xname = Buffer.from(decodeURIComponent(key.slice('LIBARCHIVE.xattr.'.length)), 'utf8').toString('latin1')
            ;(libarchiveXattrs ??= new Map()).set(xname, Buffer.from(value.toString('latin1'), 'base64'))
          }
      }
    }
    // bsdtar writes both forms; SCHILY wins, LIBARCHIVE fills in what it alone has
    if (libarchiveXattrs) for (const [k, v] of libarchiveXattrs) if (!xattrs?.has(k)) (xattrs ??= new Map()).set(k, v)

    if (t === 'S') {
      // old GNU sparse: map in the header, continued in extension blocks before the data
      sparse = []
      parseGnuSparseBlock(h, 386, 4, sparse)
      let extended = h[482] !== 0
      realSize = hdr.format === 'gnu' ? numericRealSize(h) : realSize
      while (extended) {
        const ext = reader.get(dataOffset, BLOCK)
        if (ext.length < BLOCK) throw new TarFormatError(`truncated tar: sparse header at offset ${dataOffset}`, dataOffset)
        parseGnuSparseBlock(ext, 0, 21, sparse)
        extended = ext[504] !== 0
        dataOffset += BLOCK
      }
    } else if (sparseMajor === 1) {
      // PAX sparse 1.0: the map is decimal text at the start of the data, padded to a block
      const parsed = readSparse10(reader, dataOffset, storedSize, headerPos)
      sparse = parsed.map
      dataOffset += parsed.bytes
      storedSize -= parsed.bytes
      realSize = sparseSize >= 0 ? sparseSize : realSize
    } else if (sparseOffsets !== null) {
      const lengths = sparseLengths ?? []
      sparse = sparseOffsets.map((o, i) => [o, lengths[i] ?? 0] as [number, number])
      realSize = sparseSize >= 0 ? sparseSize : realSize
    }

    // a hard link, symlink, device, fifo or directory has no content; bytes it stores anyway
    // (POSIX allows data on a hard link, GNU dumpdirs list names) are skipped
    const hasData = !NO_DATA.has(t)
    const end = dataOffset + storedSize
    if (!reader.reaches(end)) {
      throw new TarFormatError(`truncated tar: ${JSON.stringify(Buffer.from(name, 'latin1').toString('utf8'))} (at offset ${headerPos}) ends past the end of the data`, headerPos)
    }
    if (t !== 'V' && t !== 'M' && t !== 'N') {
      onMember({
        name, typeflag: t, mode: hdr.mode & 0o7777, uid, gid,
        size: hasData ? realSize : 0, storedSize: hasData ? storedSize : 0, dataOffset,
        mtime, atime, ctime, linkname, devmajor, devminor, sparse, xattrs,
      })
    } else if (t === 'M') {
      throw new TarFormatError('multi-volume tar members are not supported', headerPos)
    }
    members++
    pax = null
    longName = null
    longLink = null
    pos = end + ((BLOCK - (end % BLOCK)) % BLOCK)
    if (opts.onProgress && pos >= nextProgress) {
      opts.onProgress(pos)
      nextProgress = pos + (16 << 20)
    }
  }
}

function padded(n: number): number {
  return Math.ceil(n / BLOCK) * BLOCK
}

function numericRealSize(h: Buffer): number {
  // GNU 'S' header: realsize at 483, 12 bytes
  let v = 0
  for (let i = 483; i < 495; i++) {
    const c = h[i]
    if (c >= 0x30 && c <= 0x37) v = v * 8 + (c - 0x30)
    else if (v > 0) break
  }
  if (h[483] & 0x80) {
    v = h[483] & 0x7f
    for (let i = 484; i < 495; i++) v = v * 256 + h[i]
  }
  return v
}

function readBody(reader: ScanInput, pos: number, len: number, headerPos: number): Buffer {
  if (len > 64 << 20) throw new TarFormatError(`extended header of ${len} bytes is implausible`, headerPos)
  const body = reader.get(pos, len)
  if (body.length < len) throw new TarFormatError(`truncated tar: extended header at offset ${headerPos}`, headerPos)
  return body
}

function readSparse10(reader: ScanInput, pos: number, stored: number, headerPos: number): { map: SparseMap; bytes: number } {
  // numbers separated by '\n': count, then offset/length pairs; read block by block as needed
  const nums: number[] = []
  let cur = ''
  let used = 0
  let count = -1
  while (count < 0 || nums.length < 1 + count * 2) {
    if (used >= stored) throw new TarFormatError('truncated sparse map', headerPos)
    const block = reader.get(pos + used, BLOCK)
    if (block.length < BLOCK) throw new TarFormatError('truncated tar: sparse map', headerPos)
    used += BLOCK
    for (let i = 0; i < BLOCK; i++) {
      const c = block[i]
      if (c === 0x0a) {
        nums.push(Number(cur))
        cur = ''
        if (nums.length === 1) count = nums[0]
        if (count >= 0 && nums.length >= 1 + count * 2) break
      } else cur += String.fromCharCode(c)
    }
  }
  const map: SparseMap = []
  for (let i = 0; i < count; i++) map.push([nums[1 + i * 2], nums[2 + i * 2]])
  return { map, bytes: used }
}
