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

/** A bar on `write` (a terminal's stderr), at most ten redraws a second; shown only for work over 0.3 s. */
export function terminalProgress(label: string, write: (s: string) => void, width = 30): Progress {
  const started = Date.now()
  let last = 0
  let drawn = false
  return {
    update(done, total) {
      const now = Date.now()
      if (now - started < 300 || (now - last < 100 && done < total)) return
      last = now
      const frac = total > 0 ? Math.min(1, done / total) : 0
      const fill = Math.round(frac * width)
      const rate = done / Math.max(0.001, (now - started) / 1000)
      write(`\r\x1b[2K${label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${(frac * 100).toFixed(0).padStart(3)}% ${human(done)}/${human(total)} ${human(rate)}/s`)
      drawn = true
    },
    finish() {
      if (drawn) write('\r\x1b[2K')
    },
  }
}
