import { after, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { mountKernelOverlay, mountLayerfs, unmountAll } from '../support/mounts'
import { must, removeTemps, run, tempDir } from '../support/run'

// Corners a POSIX conformance suite (pjdfstest) found, checked against kernel overlayfs: one time
// set at a time (libfuse 2 dropped such utimens calls), and names over NAME_MAX.

after(async () => {
  await unmountAll()
  await removeTemps()
})

const SCRIPT = String.raw`
cd "$1" || exit 99
t() { "$@" 2>/dev/null; echo "$? $*"; }
touch -d 2020-01-01 f g
t touch -a -d 2031-01-01 f
t touch -m -d 2032-02-02 g
stat -c '%n %X %Y' f g
t touch -a lower
t touch -m -d 2030-03-03 lower
stat -c '%n %Y' lower
long=$(printf 'x%.0s' $(seq 1 256))
t touch "$long"
t mkdir "$long"
t mv f "$long"
ok=$(printf 'y%.0s' $(seq 1 255))
t touch "$ok"
`

describe('POSIX corners, as kernel overlayfs answers them', () => {
  it('touch -a, touch -m (utimensat with UTIME_OMIT), and 256-byte names', async () => {
    const dir = await tempDir('posix')
    const lower = join(dir, 'lower')
    await mkdir(lower)
    await writeFile(join(lower, 'lower'), 'l')
    const tar = join(dir, 'lower.tar')
    await must('tar', ['-C', lower, '-cf', tar, '.'])
    const outputs: string[] = []
    for (const kind of ['kernel', 'layerfs']) {
      const upper = join(dir, `${kind}-u`)
      const work = join(dir, `${kind}-w`)
      await mkdir(upper)
      await mkdir(work)
      const m = kind === 'kernel' ? await mountKernelOverlay([lower], { upper, work }) : await mountLayerfs([tar], { upper, work })
      try {
        const r = await run('sh', ['-c', SCRIPT, 'sh', m.path])
        outputs.push(r.stdout.replace(/^\/\S+ /gm, ''))
      } finally {
        await m.unmount()
      }
    }
    assert.equal(outputs[1], outputs[0])
    assert.match(outputs[0], /^1 touch x{256}$/m)
    assert.match(outputs[0], /^0 touch y{255}$/m)
  })
})
