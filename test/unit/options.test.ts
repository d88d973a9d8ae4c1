import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { parseArgs, splitOptions } from '../../src/options'
import { UserError } from '../../src/errors'

// The command-line forms that fuse-overlayfs callers, mount(8)/mount.fuse and people use.

describe('parseArgs', () => {
  const mount = (argv: string[], cwd = '/w') => {
    const cmd = parseArgs(argv, cwd, {})
    assert.equal(cmd.kind, 'mount')
    return (cmd as Extract<typeof cmd, { kind: 'mount' }>).request
  }

  it('layerfs mount -o lowerdir=TOP:BASE MNT: leftmost is topmost, relative paths from cwd', () => {
    const r = mount(['mount', '-o', 'lowerdir=top.tar:sub/base:/abs/x.tar', 'mnt'])
    assert.deepEqual(r.lowers, ['/w/top.tar', '/w/sub/base', '/abs/x.tar'])
    assert.equal(r.mountpoint, '/w/mnt')
    assert.equal(r.foreground, false)
    assert.equal(r.upper, null)
  })

  it('the fuse-overlayfs form, -f, repeated -o, -oOPTS, unknown options accepted', () => {
    const r = mount(['-f', '-o', 'rw,fsync=0', '-olowerdir=/l1:/l2,upperdir=u,workdir=w', '-o', 'xino=off', '/m'])
    assert.deepEqual(r.lowers, ['/l1', '/l2'])
    assert.equal(r.upper, '/w/u')
    assert.equal(r.work, '/w/w')
    assert.equal(r.foreground, true)
  })

  it('the mount.fuse form: SOURCE MOUNTPOINT -o OPTS, the source as fsname', () => {
    const r = mount(['layerfs', '/mnt', '-o', 'rw,lowerdir=/a,dev,suid'])
    assert.equal(r.fsname, 'layerfs')
    assert.equal(r.mountpoint, '/mnt')
    assert.deepEqual(r.lowers, ['/a'])
  })

  it('escaped commas and colons stay in paths', () => {
    assert.deepEqual(splitOptions('lowerdir=/a\\,b:/c,x'), ['lowerdir=/a,b:/c', 'x'])
    assert.deepEqual(mount(['-o', 'lowerdir=/a\\:b:/c', '/m']).lowers, ['/a:b', '/c'])
  })

  it('umount, tree, stats, help', () => {
    assert.deepEqual(parseArgs(['umount', 'm'], '/w', {}), { kind: 'umount', mountpoint: '/w/m' })
    assert.deepEqual(parseArgs(['tree', '/m'], '/w', {}), { kind: 'tree', mountpoint: '/m' })
    assert.deepEqual(parseArgs(['stats', '/m', '--json'], '/w', {}), { kind: 'stats', mountpoint: '/m', json: true })
    assert.equal(parseArgs(['--help'], '/w', {}).kind, 'help')
  })

  it('-o readaround=SIZE: 128k unless given, 0 turns it off, k and m suffixes, powers of two only', () => {
    assert.equal(mount(['-o', 'lowerdir=/a', '/m']).readaround, 128 * 1024)
    assert.equal(mount(['-o', 'lowerdir=/a,readaround=0', '/m']).readaround, 0)
    assert.equal(mount(['-o', 'lowerdir=/a,readaround=1M', '/m']).readaround, 1 << 20)
    assert.equal(mount(['-o', 'lowerdir=/a,readaround=65536', '/m']).readaround, 65536)
    for (const bad of ['readaround', 'readaround=100k', 'readaround=4k', 'readaround=32m', 'readaround=x']) {
      assert.throws(() => parseArgs(['-o', `lowerdir=/a,${bad}`, '/m'], '/w', {}), UserError, bad)
    }
  })

  it('bad syntax is a UserError with a message', () => {
    for (const argv of [['mount'], ['-o'], ['-o', 'lowerdir=', '/m'], ['-o', '=x', '/m'], ['-o', 'rw', '/m'],
      ['-o', 'lowerdir=/a::/b', '/m'], ['-o', 'lowerdir=/a,upperdir=/u', '/m'], ['--bogus', '/m'], ['a', 'b', 'c']]) {
      assert.throws(() => parseArgs(argv, '/w', {}), UserError, argv.join(' '))
    }
  })
})
