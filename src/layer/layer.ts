// The read-only Layer seen by the union: already decoded from its own whiteout dialect into
// entries, whiteouts and opaque directories. A Layer knows nothing of other layers.

export type EntryKind = 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket'

export interface Timestamp {
  readonly sec: number
  readonly nsec: number
}

/** One entry of a layer, in the union's model. Paths are '/'-rooted byte strings (see paths.ts). */
export interface Entry {
  readonly kind: EntryKind
  /** Permission bits, 0o7777. */
  readonly mode: number
  readonly uid: number
  readonly gid: number
  /** Logical size: the file's length (holes included) or the symlink target's length. */
  readonly size: number
  readonly mtime: Timestamp
  readonly atime: Timestamp
  readonly ctime: Timestamp
  /** Link count inside this layer (hard links of a file, 2 + subdirectories for a directory). */
  readonly nlink: number
  /** Unique inside this layer and the same on every open of the same layer; hard links share it. */
  readonly ino: number
  /** Device number (Linux encoding) of char and block devices; 0 otherwise. */
  readonly rdev: number
  /** A directory that hides whatever lower layers have below its path. */
  readonly opaque: boolean
  /**
   * A directory renamed in an upper layer (kernel overlayfs's redirect_dir): where the layers below
   * hold its contents, absolute ('/a/b') or a sibling name ('b'); null when not redirected.
   */
  readonly redirect?: string | null
  /** A file that holds only metadata (kernel overlayfs's metacopy): its data is the layers' below. */
  readonly metacopy?: boolean
  /** Bytes stored for the file (less than size for sparse files); for st_blocks. */
  readonly storedSize: number
}

export interface LayerLookup {
  /** The entry this layer has at the path, if any. */
  readonly entry: Entry | null
  /** This layer hides the path in the layers below it (whatever it holds there itself). */
  readonly whiteout: boolean
}

export interface DirListing {
  /** This layer's entries in the directory, by name (markers never appear here). */
  readonly entries: ReadonlyMap<string, Entry>
  /** Names this layer hides in the layers below it. */
  readonly whiteouts: ReadonlySet<string>
}

/** An open regular file of a layer. */
export interface LayerFile {
  /** Reads up to `length` bytes at `position` into `buf`; returns the count (0 at end of file). Rejects with EIO. */
  read(buf: Buffer, length: number, position: number): Promise<number>
  /**
   * Where all of the file's bytes lie, in order, in a local descriptor (a directory layer's file, a
   * plain tar member that is not sparse): copy-up then lets the kernel copy them. Null otherwise.
   */
  span?(): { fd: number; offset: number } | null
  close(): Promise<void>
}

export interface Layer {
  /** What the user named (a path), for messages and listings. */
  readonly source: string
  /** What the layer is: 'dir', 'tar'. */
  readonly kind: string
  /**
   * Synchronous (an index in memory, or local lstats): the union resolves a path without a promise
   * per layer. A missing path is `{ entry: null, whiteout: false }`; throws EIO on I/O failure.
   */
  lookup(path: string): LayerLookup
  /** The directory's own entries and whiteouts; `path` must be a directory of this layer (else ENOTDIR). */
  readdir(path: string): Promise<DirListing>
  /** Opens a regular file of this layer for reading. */
  open(path: string, entry: Entry): Promise<LayerFile>
  /**
   * Where a regular file's bytes lie, in order, in a descriptor the layer holds open anyway (a plain
   * tar): known without opening anything. Null (or absent) otherwise.
   */
  spanOf?(path: string, entry: Entry): { fd: number; offset: number } | null
  /** The target of a symlink entry (byte string). */
  readlink(path: string, entry: Entry): Promise<string>
  /** Names of the entry's extended attributes, overlay's own (`*.overlay.*`) left out. */
  listXattrs(path: string, entry: Entry): Promise<string[]>
  /** The value of one extended attribute, or null when it has none of that name. */
  getXattr(path: string, entry: Entry, name: string): Promise<Buffer | null>
  /**
   * The entry's extended attributes (shown names, values) at once, where the layer has them in
   * memory (a tar's index): a copy-up from it then waits for no promise. Absent where it would
   * mean I/O.
   */
  xattrsNow?(path: string, entry: Entry): Array<[string, Buffer]>
  /**
   * The names of the regular files and of the directories in a directory of this layer, where the
   * layer has its listing in memory (a tar's index) and it holds no more than `max` entries; null
   * otherwise.
   */
  childrenNow?(path: string, max: number): { files: string[]; dirs: string[] } | null
  /** Releases file descriptors. */
  close(): Promise<void>
}

export const S_IFMT = 0o170000
const kindBits: Record<EntryKind, number> = {
  file: 0o100000, dir: 0o040000, symlink: 0o120000, char: 0o020000, block: 0o060000, fifo: 0o010000, socket: 0o140000,
}

/** The st_mode of an entry: type bits and permission bits. */
export function modeOf(entry: Entry): number {
  return kindBits[entry.kind] | entry.mode
}

export function kindOfMode(mode: number): EntryKind | null {
  const t = mode & S_IFMT
  for (const [kind, bits] of Object.entries(kindBits) as [EntryKind, number][]) if (bits === t) return kind
  return null
}

/** Linux's dev_t encoding (glibc makedev), as st_rdev carries it. */
export function makeDev(major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0
}

export function majorOf(dev: number): number {
  return (dev >>> 8) & 0xfff
}

export function minorOf(dev: number): number {
  return (dev & 0xff) | ((dev >>> 12) & 0xfff00)
}

const OVERLAY_PREFIXES = ['trusted.overlay.', 'user.overlay.'] as const

/**
 * The name a stored attribute is shown under, or null for overlay's own bookkeeping. Kernel
 * overlayfs (Linux 6.7+) stores a user's `trusted.overlay.X` escaped as `trusted.overlay.overlay.X`
 * (so that overlays can nest); layerfs reads and writes that form too.
 */
export function shownXattrName(stored: string): string | null {
  for (const p of OVERLAY_PREFIXES) {
    if (stored.startsWith(p)) return stored.startsWith(p + 'overlay.') ? p + stored.slice(p.length + 'overlay.'.length) : null
  }
  return stored
}

/** The name an attribute the user sets or reads is stored under (escaping overlay's namespace). */
export function storedXattrName(shown: string): string {
  for (const p of OVERLAY_PREFIXES) if (shown.startsWith(p)) return p + 'overlay.' + shown.slice(p.length)
  return shown
}
