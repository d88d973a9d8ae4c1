import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { Row, System } from './bench'

// The benchmark's plots, as SVG, drawn by Vega-Lite (no canvas needed for SVG output).

// vega and vega-lite are ES modules with top-level await: a CommonJS build must load them with a
// real dynamic import, which TypeScript would otherwise turn into require().
const importEsm = new Function('specifier', 'return import(specifier)') as (specifier: string) => Promise<unknown>

interface VegaLite {
  compile(spec: object): { spec: object }
}
interface Vega {
  parse(spec: object): unknown
  View: new (runtime: unknown, opts: { renderer: 'none' }) => { toSVG(): Promise<string> }
}

const SYSTEMS: readonly System[] = ['kernel', 'fuse-overlayfs', 'layerfs']
const COLORS = { domain: ['kernel overlayfs', 'fuse-overlayfs', 'layerfs'], range: ['#4c78a8', '#f58518', '#54a24b'] }
const NAME: Record<System, string> = { kernel: 'kernel overlayfs', 'fuse-overlayfs': 'fuse-overlayfs', layerfs: 'layerfs' }

function med(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}

/** Median per system of each row, as Vega-Lite data. */
function table(rows: readonly Row[], value: (r: Row, v: number) => number = (_r, v) => v): Array<Record<string, unknown>> {
  const out: Array<Record<string, unknown>> = []
  for (const r of rows) for (const s of SYSTEMS) if (r.values[s].length) out.push({ row: r.title, system: NAME[s], value: value(r, med(r.values[s])), bytes: r.bytes })
  return out
}

function bars(title: string, data: Array<Record<string, unknown>>, axis: string): object {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json', title, data: { values: data }, width: 520,
    mark: 'bar',
    encoding: {
      y: { field: 'row', type: 'nominal', title: null, axis: { labelLimit: 320 } },
      yOffset: { field: 'system', sort: COLORS.domain },
      x: { field: 'value', type: 'quantitative', title: axis },
      color: { field: 'system', type: 'nominal', scale: COLORS, title: null },
    },
  }
}

export async function plots(rows: readonly Row[], out: string): Promise<void> {
  const vl = (await importEsm('vega-lite')) as VegaLite
  const vega = (await importEsm('vega')) as Vega
  const svg = async (name: string, spec: object): Promise<void> => {
    const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: 'none' })
    writeFileSync(join(out, name), await view.toSVG())
  }
  const byId = (prefix: string): Row[] => rows.filter((r) => r.id.startsWith(prefix))

  await svg('copyup.svg', {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json', title: 'Copy-up: first 1-byte append to a lower file',
    data: { values: table(byId('copyup-')) }, width: 480, height: 320,
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: 'bytes', type: 'quantitative', scale: { type: 'log' }, title: 'file size (bytes, log)' },
      y: { field: 'value', type: 'quantitative', scale: { type: 'log' }, title: 'seconds (median, log)' },
      color: { field: 'system', type: 'nominal', scale: COLORS, title: null },
    },
  })
  await svg('walk.svg', bars('Walks and reads of the small-files tree (median seconds; lower is better)',
    table([...byId('walk-'), ...byId('read-all-'), ...byId('first-ls'), ...byId('mount-ready')]), 'seconds'))
  const seq = byId('seq-')
  const mib = (r: Row): number => Number(/of (\d+) MiB/.exec(r.title)?.[1] ?? 1)
  await svg('read-throughput.svg', bars('Sequential read throughput (MiB/s; higher is better)', table(seq, (r, v) => mib(r) / v), 'MiB/s'))
  await svg('first-byte.svg', bars('First-byte latency, cold (median seconds)', table(byId('first-byte')), 'seconds'))
  await svg('random-read.svg', bars('Random 4 KiB reads (IOPS; higher is better)', table(byId('rand-iops')), 'IOPS'))
}
