// A progress bar for long work (indexing a big layer): redrawn in place on a terminal, silent
// otherwise, so that logs and pipes never see control characters.

export interface Progress {
  update(done: number, total: number): void
  finish(): void
}

export const silentProgress: Progress = { update: () => undefined, finish: () => undefined }

function human(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++ }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`
}

/** Work shorter than this shows no bar ($LAYERFS_PROGRESS_AFTER_MS: tests draw from the start). */
const SHOW_AFTER_MS = Number(process.env.LAYERFS_PROGRESS_AFTER_MS ?? 300)

/** A bar on `write` (a terminal's stderr), at most ten redraws a second; shown only for work over 0.3 s. */
export function terminalProgress(label: string, write: (s: string) => void, columns = 80): Progress {
  const started = Date.now()
  const width = 20
  // the whole line must fit the terminal, or '\r' cannot redraw it: a long label keeps its first
  // word (what is being done) and the end of the rest (which file)
  const room = Math.max(16, columns - width - 34)
  let shown = label
  if (label.length > room) {
    const sp = label.indexOf(' ')
    const verb = sp > 0 && sp < room / 2 ? label.slice(0, sp + 1) : ''
    shown = verb + '…' + label.slice(label.length - (room - verb.length - 1))
  }
  let last = 0
  let drawn = false
  return {
    update(done, total) {
      const now = Date.now()
      if (now - started < SHOW_AFTER_MS || (now - last < 100 && done < total)) return
      last = now
      const frac = total > 0 ? Math.min(1, done / total) : 0
      const fill = Math.round(frac * width)
      const rate = done / Math.max(0.001, (now - started) / 1000)
      write(`\r\x1b[2K${shown} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${(frac * 100).toFixed(0).padStart(3)}% of ${human(total)}, ${human(rate)}/s`)
      drawn = true
    },
    finish() {
      if (drawn) write('\r\x1b[2K')
    },
  }
}
