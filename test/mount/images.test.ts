import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { readFile, readdir, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fixturesDir } from '../support/fixtures'
import { mountKernelOverlay, mountLayerfs, mountLayerfsImage, testCache, unmountAll } from '../support/mounts'
import { extractedLayer } from '../support/oracle'
import { LAYERFS, must, removeTemps, run, tempDir } from '../support/run'
import { diffTrees, snapshotTree } from '../support/tree'
import { expectFailure, freshMountpoint, mountedAt } from '../support/cli'

// Images as docker save, skopeo and umoci leave them, mounted by reference and served in place
// (gzip layers through checkpoints), against kernel overlayfs over the same layers extracted.
// Fixtures: test/fixtures/build-fixtures.sh, part `images` (see its README).

let fx: string
let img: string
let cache: string
let env: NodeJS.ProcessEnv

before(async () => {
  fx = await fixturesDir()
  img = join(fx, 'images')
  cache = await tempDir('oracle-img')
  env = { ...process.env, XDG_CACHE_HOME: await testCache }
})
after(async () => {
  await unmountAll()
  await removeTemps()
})

/** The uncompressed layers of the `latest` OCI image, top first. */
async function ociLayerTars(count?: number): Promise<string[]> {
  const order = (await readFile(join(img, 'oci.layers', 'order'), 'utf8')).split('\n').filter(Boolean)
  return order.slice(0, count ?? order.length).map((s) => join(img, 'oci.layers', `${s}.tar`)).reverse()
}

/** Kernel overlayfs over the tars extracted, against layerfs mounted by `mountOurs`. */
async function againstKernel(tars: string[], mountOurs: () => Promise<{ path: string; unmount(): Promise<void> }>, what: string): Promise<number> {
  const dirs = await Promise.all(tars.map((t) => extractedLayer(t, cache)))
  const kernel = await mountKernelOverlay(dirs)
  const ours = await mountOurs()
  try {
    const [k, l] = [await snapshotTree(kernel.path), await snapshotTree(ours.path)]
    assert.deepEqual(diffTrees(k, l), [], `${what}: layerfs differs from kernel overlayfs`)
    return k.size
  } finally {
    await ours.unmount()
    await kernel.unmount()
  }
}

describe('images by reference equal kernel overlayfs over their layers extracted', () => {
  it('an OCI layout (umoci, gzip layers, one of them multi-member): oci:DIR, oci:DIR:REF, the bare path', async () => {
    const tars = await ociLayerTars()
    assert.ok(tars.length >= 6, `${tars.length} layers`)
    const n = await againstKernel(tars, () => mountLayerfsImage(`oci:${join(img, 'oci')}:latest`), 'oci:latest')
    assert.ok(n > 20, `${n} entries`)
    await againstKernel(tars, () => mountLayerfsImage(`oci:${join(img, 'oci')}`), 'oci: default (latest)')
    await againstKernel(await ociLayerTars(2), () => mountLayerfsImage(`oci:${join(img, 'oci')}:v1`), 'oci:v1')
    await againstKernel(tars, () => mountLayerfsImage(join(img, 'oci')), 'bare OCI path')
  })

  it('a docker-save archive written by skopeo, by reference and as a bare path; its layers are read inside it', async () => {
    const tars = await ociLayerTars()
    await againstKernel(tars, () => mountLayerfsImage(`docker-archive:${join(img, 'docker-archive.tar')}`), 'docker-archive')
    await againstKernel(tars, () => mountLayerfsImage(join(img, 'docker-archive.tar')), 'bare archive path')
  })

  it('an archive of two images: by NAME:TAG and @N; without a name it lists them', async () => {
    const multi = join(img, 'docker-multi.tar')
    await againstKernel(await ociLayerTars(), () => mountLayerfsImage(`docker-archive:${multi}:layerfs/test:latest`), 'multi latest')
    await againstKernel(await ociLayerTars(2), () => mountLayerfsImage(`docker-archive:${multi}:layerfs/test:v1`), 'multi v1')
    const mnt = await freshMountpoint()
    await expectFailure(['mount', `docker-archive:${multi}`, mnt], mnt, /holds 2 images.*layerfs\/test:latest.*layerfs\/test:v1|holds 2 images.*layerfs\/test:v1.*layerfs\/test:latest/, env)
    await expectFailure(['mount', `docker-archive:${multi}:layerfs/test:nope`, mnt], mnt, /no image named layerfs\/test:nope/, env)
    await expectFailure(['mount', `docker-archive:${multi}:@7`, mnt], mnt, /no image @7/, env)
  })

  it('a multi-platform index: the host platform by default, another with --platform', async () => {
    const dir = join(img, 'oci-multiplatform')
    const host = await mountLayerfsImage(`oci:${dir}`)
    try {
      await assert.rejects(stat(join(host.path, 'arch')), 'the amd64 image has no /arch')
    } finally {
      await host.unmount()
    }
    const arm = await mountLayerfsImage(`oci:${dir}`, { args: ['--platform', 'linux/arm64'] })
    try {
      assert.equal((await readFile(join(arm.path, 'arch'), 'utf8')).trim(), 'arm64')
    } finally {
      await arm.unmount()
    }
    const mnt = await freshMountpoint()
    await expectFailure(['mount', '--platform', 'linux/s390x', `oci:${dir}`, mnt], mnt, /no manifest for linux\/s390x.*linux\/amd64/, env)
  })

  it('writable: an image with an upper dir (copy-up from a gzip layer, whiteout, opaque dir)', async () => {
    const tars = await ociLayerTars()
    const dirs = await Promise.all(tars.map((t) => extractedLayer(t, cache)))
    const [ku, kw, lu, lw] = await Promise.all(['ku', 'kw', 'lu', 'lw'].map((n) => tempDir(n)))
    const kernel = await mountKernelOverlay(dirs, { upper: ku, work: kw })
    const ours = await mountLayerfsImage(`oci:${join(img, 'oci')}:latest`, { upper: lu, work: lw })
    try {
      for (const root of [kernel.path, ours.path]) {
        // the same changes on both: append to a lower file, delete one, replace a lower directory
        const files = (await must('find', [root, '-type', 'f', '-size', '+1k'])).split('\n').filter(Boolean).sort()
        const dirsIn = (await must('find', [root, '-mindepth', '2', '-type', 'd'])).split('\n').filter(Boolean).sort()
        await writeFile(files[0], 'appended\n', { flag: 'a' })
        await must('rm', ['-f', files[1]])
        await must('rm', ['-rf', dirsIn[0]])
        await must('mkdir', [dirsIn[0]])
        await writeFile(join(dirsIn[0], 'new'), 'new\n')
      }
      // times are those of the writes, different on each side
      assert.deepEqual(diffTrees(await snapshotTree(kernel.path), await snapshotTree(ours.path), { ignore: (_p, f) => f === 'mtimeNs' }), [], 'merged trees after writes')
    } finally {
      await ours.unmount()
      await kernel.unmount()
    }
    assert.deepEqual(diffTrees(await snapshotTree(ku, { overlayXattrs: true }), await snapshotTree(lu, { overlayXattrs: true }), { ignore: (_p, f) => f === 'mtimeNs' }), [], 'upper dirs (times are those of the writes)')
  })
})

describe('.tar.gz layers as lowers', () => {
  it('each gzip variant (gzip, pigz, pigz -i, multi-member, trailing zeros, misnamed) equals the plain tar', async () => {
    const gz = join(img, 'gz')
    const plain = join(gz, 'plain.tar')
    for (const name of ['plain.tar.gz', 'pigz.tar.gz', 'pigz-independent.tar.gz', 'multi-member.tar.gz', 'trailing-zeros.tar.gz', 'gzip-named-as.tar', 'plain-named-as.tar.gz']) {
      await againstKernel([plain], () => mountLayerfs([join(gz, name)]), name)
    }
  })

  it('a stack of gzip layers (the OCI blobs themselves) equals kernel overlayfs', async () => {
    const index = JSON.parse(await readFile(join(img, 'oci', 'index.json'), 'utf8')) as { manifests: Array<{ digest: string; annotations?: Record<string, string> }> }
    const blob = (d: string): string => join(img, 'oci', 'blobs', ...d.split(':'))
    const latest = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === 'latest')!
    const manifest = JSON.parse(await readFile(blob(latest.digest), 'utf8')) as { layers: Array<{ digest: string }> }
    const blobs = manifest.layers.map((l) => blob(l.digest)).reverse()
    await againstKernel(await ociLayerTars(), () => mountLayerfs(blobs), 'gzip blobs as lowerdir')
  })

  it('empty archives mount (a tar of nothing, gzip of it, a 0-byte file)', async () => {
    const dir = await tempDir('empty')
    await writeFile(join(dir, 'zero.tar'), '')
    for (const f of [join(img, 'gz', 'empty.tar'), join(img, 'gz', 'empty.tar.gz'), join(dir, 'zero.tar')]) {
      const m = await mountLayerfs([f])
      try {
        assert.deepEqual(await readdir(m.path), [], f)
      } finally {
        await m.unmount()
      }
    }
  })
})

describe('bad images and layers: one clear line naming the file or layer, nothing mounted', () => {
  const cases: Array<[string, (img: string) => string[], RegExp]> = [
    ['truncated gzip', (i) => ['-o', `lowerdir=${join(i, 'bad', 'truncated.tar.gz')}`], /truncated\.tar\.gz: .*(unexpected end|truncated)/],
    ['corrupt gzip', (i) => ['-o', `lowerdir=${join(i, 'bad', 'corrupt.tar.gz')}`], /corrupt\.tar\.gz: .*(corrupt gzip|unexpected end|bad checksum|truncated)/],
    ['gzip with a bad CRC', (i) => ['-o', `lowerdir=${join(i, 'bad', 'bad-crc.tar.gz')}`], /bad-crc\.tar\.gz: corrupt gzip data \(incorrect data check\)/],
    ['tar header with a bad checksum', (i) => ['-o', `lowerdir=${join(i, 'bad', 'bad-checksum.tar')}`], /bad-checksum\.tar: tar header with a bad checksum/],
    ['truncated tar', (i) => ['-o', `lowerdir=${join(i, 'bad', 'truncated.tar')}`], /truncated\.tar: truncated tar/],
    ['no archive at all', (i) => ['-o', `lowerdir=${join(i, 'bad', 'not-an-archive.bin')}`], /not-an-archive\.bin: not a tar archive/],
    ['random bytes', (i) => ['-o', `lowerdir=${join(i, 'bad', 'random.bin')}`], /random\.bin: not a tar archive/],
    ['zstd layer', (i) => ['-o', `lowerdir=${join(i, 'gz', 'layer.tar.zst')}`], /layer\.tar\.zst: zstd-compressed layers are not supported/],
    ['OCI: missing blob', (i) => [`oci:${join(i, 'bad', 'oci-missing-blob')}:latest`], /layer \d+\/\d+ \([0-9a-f]{12}\): blob missing/],
    ['OCI: digest mismatch', (i) => [`oci:${join(i, 'bad', 'oci-digest-mismatch')}:latest`], /layer \d+\/\d+ \([0-9a-f]{12}\): digest mismatch/],
    ['OCI: diff_id mismatch', (i) => [`oci:${join(i, 'bad', 'oci-diffid-mismatch')}:latest`], /layer 2\/\d+ \([0-9a-f]{12}\): diff_id mismatch/],
    ['OCI: no index.json', (i) => [`oci:${join(i, 'bad', 'oci-no-index')}`], /not an OCI image layout \(no index\.json\)/],
    ['OCI: unknown reference', (i) => [`oci:${join(i, 'oci')}:nope`], /no image named "nope".*latest/],
    ['docker-archive: manifest names a missing layer', (i) => [`docker-archive:${join(i, 'bad', 'docker-missing-layer.tar')}`], /layer 1\/\d+ .*no such layer in the archive/],
    ['docker-archive: not an archive', (i) => [`docker-archive:${join(i, 'bad', 'not-an-archive.bin')}`], /not-an-archive\.bin: not a docker-save archive/],
    ['docker-archive: a plain layer tar', (i) => [`docker-archive:${join(i, 'gz', 'plain.tar')}`], /plain\.tar: not a docker-save archive \(no manifest\.json\)/],
    ['missing image file', (i) => [`docker-archive:${join(i, 'nope.tar')}`], /nope\.tar: no such file/],
    ['unsupported transport', () => ['docker://debian:12'], /docker: transport is not supported/],
  ]
  for (const [what, args, re] of cases) {
    it(what, async () => {
      const mnt = await freshMountpoint()
      await expectFailure(['mount', ...args(img), mnt], mnt, re, env)
    })
  }

  it('a damaged layer leaves the upper dir as it was', async () => {
    const [u, w] = [await tempDir('keep-u'), await tempDir('keep-w')]
    await writeFile(join(u, 'precious'), 'keep me\n')
    const mnt = await freshMountpoint()
    await expectFailure(['mount', '-o', `lowerdir=${join(img, 'bad', 'truncated.tar.gz')},upperdir=${u},workdir=${w}`, mnt], mnt, /truncated/, env)
    assert.equal(await readFile(join(u, 'precious'), 'utf8'), 'keep me\n')
  })
})

describe('the index cache', () => {
  it('is keyed by layer digest: an image sharing layers indexes only its new ones; cache ls and prune', async () => {
    const cacheHome = await tempDir('cache-home')
    const e = { ...process.env, XDG_CACHE_HOME: cacheHome }
    const indexDir = join(cacheHome, 'layerfs', 'index')
    const v1 = await mountLayerfsImage(`oci:${join(img, 'oci')}:v1`, { env: e })
    await v1.unmount()
    const afterV1 = (await readdir(indexDir)).filter((n) => n.endsWith('.idx')).sort()
    assert.equal(afterV1.length, 2, `v1 has 2 layers: ${afterV1.join(' ')}`)
    assert.ok(afterV1.every((n) => /^sha256-[0-9a-f]{64}\.idx$/.test(n)))
    const before = await Promise.all(afterV1.map(async (n) => (await stat(join(indexDir, n))).ino))
    const latest = await mountLayerfsImage(`oci:${join(img, 'oci')}:latest`, { env: e })
    await latest.unmount()
    const afterLatest = (await readdir(indexDir)).filter((n) => n.endsWith('.idx')).sort()
    const tars = await ociLayerTars()
    assert.equal(afterLatest.length, tars.length, 'one index per layer digest')
    assert.deepEqual(await Promise.all(afterV1.map(async (n) => (await stat(join(indexDir, n))).ino)), before, 'the shared layers were not indexed again')
    // what is kept for gzip layers stays small next to their uncompressed size
    let kept = 0
    for (const n of afterLatest) kept += (await stat(join(indexDir, n))).size
    let tarBytes = 0
    for (const t of tars) tarBytes += (await stat(t)).size
    assert.ok(kept < tarBytes * 0.1 || kept < 256 << 10, `index ${kept} bytes for ${tarBytes} bytes of tar`)

    const ls = await must(LAYERFS, ['cache', 'ls'], { env: e })
    assert.match(ls, /KEY\s+FORMAT\s+ENTRIES/)
    assert.equal(ls.split('\n').filter((l) => /^sha256:[0-9a-f]{12}\s+gzip/.test(l)).length, tars.length, ls)
    const pruned = await must(LAYERFS, ['cache', 'prune'], { env: e })
    assert.match(pruned, /^0 index\(es\) removed/m, 'nothing stale to prune')
    const all = await must(LAYERFS, ['cache', 'prune', '--all'], { env: e })
    assert.match(all, new RegExp(`^${tars.length} index\\(es\\) removed`, 'm'))
    assert.deepEqual((await readdir(indexDir)).filter((n) => n.endsWith('.idx')), [])
  })

  it('prune removes the index of a loose tar that is gone', async () => {
    const cacheHome = await tempDir('cache-home2')
    const e = { ...process.env, XDG_CACHE_HOME: cacheHome }
    const dir = await tempDir('gone')
    const tar = join(dir, 'l.tar')
    await must('cp', [join(img, 'gz', 'plain.tar'), tar])
    const m = await mountLayerfs([tar], { env: e })
    await m.unmount()
    await must('rm', [tar])
    const out = await must(LAYERFS, ['cache', 'prune'], { env: e })
    assert.match(out, /its archive is gone/)
    assert.match(out, /^1 index\(es\) removed/m)
  })
})

describe('progress', () => {
  it('a terminal gets a bar redrawn in place; a file gets no control characters; --quiet none', async () => {
    const cacheHome = await tempDir('progress-cache')
    const mnt = await freshMountpoint()
    const blob = join(img, 'gz', 'pigz.tar.gz')
    // script(1) gives layerfs a terminal; the index is built afresh (own cache). The bar shows
    // from the start (it waits 0.3 s by default, longer than this small layer takes).
    const now = 'LAYERFS_PROGRESS_AFTER_MS=0'
    const r = spawnSync('script', ['-qfec', `${now} XDG_CACHE_HOME=${cacheHome} ${LAYERFS} mount -o lowerdir=${blob} ${mnt}`, '/dev/null'], { encoding: 'latin1' })
    try {
      assert.equal(r.status, 0, r.stdout)
      assert.match(r.stdout, /\r\x1b\[2Kindexing .*pigz\.tar\.gz \[[#.]+\]\s+\d+% of [\d.]+ MiB, [\d.]+ [KMG]?i?B\/s/, 'a bar with percent and rate on the terminal')
    } finally {
      await run(LAYERFS, ['umount', mnt])
    }
    await must('rm', ['-rf', cacheHome])
    const log = join(await tempDir('progress-log'), 'err')
    const p = spawnSync('sh', ['-c', `${now} XDG_CACHE_HOME=${cacheHome} ${LAYERFS} mount -o lowerdir=${blob} ${mnt} 2>${log}`])
    assert.equal(p.status, 0)
    await run(LAYERFS, ['umount', mnt])
    assert.doesNotMatch(await readFile(log, 'latin1'), /[\r\x1b]/, 'no control characters in a file')
    await must('rm', ['-rf', cacheHome])
    const q = spawnSync('script', ['-qfec', `${now} XDG_CACHE_HOME=${cacheHome} ${LAYERFS} mount -q -o lowerdir=${blob} ${mnt}`, '/dev/null'], { encoding: 'latin1' })
    await run(LAYERFS, ['umount', mnt])
    assert.equal(q.status, 0)
    assert.doesNotMatch(q.stdout, /indexing/, '--quiet')
    assert.equal(await mountedAt(mnt), null)
  })
})
