// Filesystem service and /files conformance through the real E2B JS SDK.
// Expected values come from shared/spec/WIRE.md §6 and §7.6–7.7. Fixtures are
// made and results checked through hostFS (helpers.mjs), never through the
// filesystem service: with node:fs where envd runs on this host (then these
// tests do not depend on the process service), with a root shell run through
// commands.run where it runs in a VM (ENVD_CONFORMANCE_REMOTE=1, make vm-test).

import { describe, test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import path from 'node:path'

import {
  AuthenticationError,
  FileNotFoundError,
  InvalidArgumentError,
  NotFoundError,
  SandboxError,
} from 'e2b'

import {
  TEST_USER,
  connectSandbox,
  groupName,
  hostFS,
  passwd,
  settle,
  sleep,
  uniqueName,
  waitFor,
} from './helpers.mjs'

const T = { timeout: 30_000 }

let sbx
let host
let base
let userPw

before(async () => {
  sbx = await connectSandbox()
  host = hostFS(sbx)
  userPw = passwd(TEST_USER)
  assert.ok(userPw, `user '${TEST_USER}' must exist in /etc/passwd (run.sh creates it)`)
  base = path.join(host.scratch, uniqueName('envd-conf-fs'))
  await host.mkdir(base, { mode: 0o755 })
})

after(async () => {
  if (base) await host.rm(base)
  await host?.close()
})

// p makes a fresh path under the suite's base directory.
function p(...parts) {
  return path.join(base, ...parts)
}

function fresh(prefix = 'f') {
  return p(uniqueName(prefix))
}

function sha256(buf) {
  return createHash('sha256').update(buf).digest('hex')
}

async function collect(stream) {
  const chunks = []
  for await (const c of stream) chunks.push(Buffer.from(c))
  return Buffer.concat(chunks)
}

function streamOf(buf, chunkSize = 64 * 1024) {
  let off = 0
  return new ReadableStream({
    pull(controller) {
      if (off >= buf.length) {
        controller.close()
        return
      }
      controller.enqueue(new Uint8Array(buf.subarray(off, off + chunkSize)))
      off += chunkSize
    },
  })
}

// goPerm renders mode bits the way Go's FileMode.String() does for the cases
// the suite meets (regular file, directory, symlink).
function goPerm(kind, mode) {
  const rwx = 'rwxrwxrwx'
  let s = ''
  for (let i = 0; i < 9; i++) s += mode & (1 << (8 - i)) ? rwx[i] : '-'
  return ({ file: '-', dir: 'd', symlink: 'L' })[kind] + s
}

function mtimeDate(st) {
  return new Date(Number(st.mtimeNs / 1_000_000n))
}

async function assertRejects(promise, Class, pattern) {
  const { error, value } = await settle(promise)
  assert.ok(error, `expected ${Class.name}, but the call succeeded with ${JSON.stringify(value)}`)
  assert.ok(error instanceof Class, `expected ${Class.name}, got ${error?.constructor?.name}: ${error?.message}`)
  if (pattern) assert.match(error.message, pattern)
  return error
}

describe('files.write / files.read', () => {
  test('text round trip; write returns path, name and type', T, async () => {
    const f = fresh('text')
    const info = await sbx.files.write(f, 'hello wörld\n')
    assert.equal(info.path, f)
    assert.equal(info.name, path.basename(f))
    assert.equal(info.type, 'file')
    assert.equal(await host.readText(f), 'hello wörld\n')
    assert.equal(await sbx.files.read(f), 'hello wörld\n')
  })

  test('binary ArrayBuffer round trip as bytes and blob', T, async () => {
    const f = fresh('bytes')
    const data = randomBytes(256 * 1024 + 17)
    await sbx.files.write(f, data.buffer.slice(data.byteOffset, data.byteOffset + data.length))
    assert.equal(await host.sha256(f), sha256(data))
    const bytes = await sbx.files.read(f, { format: 'bytes' })
    assert.ok(bytes instanceof Uint8Array)
    assert.equal(bytes.length, data.length)
    assert.equal(sha256(bytes), sha256(data))
    const blob = await sbx.files.read(f, { format: 'blob' })
    assert.ok(blob instanceof Blob)
    assert.equal(blob.size, data.length)
    assert.equal(sha256(Buffer.from(await blob.arrayBuffer())), sha256(data))
  })

  test('Blob data is written verbatim', T, async () => {
    const f = fresh('blob')
    const blob = new Blob(['head-', new Uint8Array([0, 1, 2, 255]), '-tail'])
    await sbx.files.write(f, blob)
    assert.deepEqual(await host.readFile(f), Buffer.concat([Buffer.from('head-'), Buffer.from([0, 1, 2, 255]), Buffer.from('-tail')]))
  })

  test('ReadableStream upload (octet-stream) and stream download of 6 MiB', T, async () => {
    const f = fresh('stream')
    const data = randomBytes(6 * 1024 * 1024)
    const info = await sbx.files.write(f, streamOf(data))
    assert.equal(info.path, f)
    assert.equal((await host.stat(f)).size, data.length)
    assert.equal(await host.sha256(f), sha256(data))
    const stream = await sbx.files.read(f, { format: 'stream' })
    const back = await collect(stream)
    assert.equal(back.length, data.length)
    assert.equal(sha256(back), sha256(data))
  })

  test('useOctetStream with a plain string', T, async () => {
    const f = fresh('octet')
    const info = await sbx.files.write(f, 'raw body', { useOctetStream: true })
    assert.equal(info.path, f)
    assert.equal(await host.readText(f), 'raw body')
  })

  test('overwrite truncates', T, async () => {
    const f = fresh('over')
    await sbx.files.write(f, 'a much longer first content')
    await sbx.files.write(f, 'short')
    assert.equal(await host.readText(f), 'short')
    assert.equal(await sbx.files.read(f), 'short')
  })

  test('empty file', T, async () => {
    const f = fresh('empty')
    await sbx.files.write(f, '')
    assert.equal((await host.stat(f)).size, 0)
    assert.equal(await sbx.files.read(f), '')
    assert.equal((await sbx.files.read(f, { format: 'bytes' })).length, 0)
  })

  test('missing parent directories are created', T, async () => {
    const dir = fresh('parents')
    const f = path.join(dir, 'a', 'b', 'c.txt')
    await sbx.files.write(f, 'deep')
    assert.equal(await host.readText(f), 'deep')
    assert.ok((await host.stat(path.join(dir, 'a', 'b'))).isDirectory())
  })

  test('several files at once (multipart)', T, async () => {
    const dir = fresh('multi')
    const bin = randomBytes(1000)
    const files = [
      { path: path.join(dir, 'one.txt'), data: 'first' },
      { path: path.join(dir, 'nested', 'two.bin'), data: bin.buffer.slice(bin.byteOffset, bin.byteOffset + bin.length) },
      { path: path.join(dir, 'three.txt'), data: new Blob(['third']) },
    ]
    const infos = await sbx.files.write(files)
    assert.ok(Array.isArray(infos))
    assert.deepEqual(infos.map((i) => i.path).sort(), files.map((f) => f.path).sort())
    for (const i of infos) {
      assert.equal(i.type, 'file')
      assert.equal(i.name, path.basename(i.path))
    }
    assert.equal(await host.readText(files[0].path), 'first')
    assert.deepEqual(await host.readFile(files[1].path), bin)
    assert.equal(await host.readText(files[2].path), 'third')
  })

  test('several streamed files at once (one octet-stream request each)', T, async () => {
    const dir = fresh('multistream')
    const a = randomBytes(200_000)
    const b = randomBytes(300_000)
    const infos = await sbx.files.write([
      { path: path.join(dir, 'a'), data: streamOf(a) },
      { path: path.join(dir, 'b'), data: streamOf(b) },
    ])
    assert.deepEqual(infos.map((i) => i.path).sort(), [path.join(dir, 'a'), path.join(dir, 'b')])
    assert.deepEqual(await host.readFile(path.join(dir, 'a')), a)
    assert.deepEqual(await host.readFile(path.join(dir, 'b')), b)
  })

  test('gzip upload and gzip download', T, async () => {
    const f = fresh('gzip')
    const text = 'compressible line of text\n'.repeat(50_000)
    const info = await sbx.files.write(f, text, { gzip: true })
    assert.equal(info.path, f)
    assert.equal(await host.readText(f), text, 'the file on disk holds the decompressed bytes')
    assert.equal(await sbx.files.read(f, { gzip: true }), text)
    const bytes = await sbx.files.read(f, { gzip: true, format: 'bytes' })
    assert.equal(Buffer.from(bytes).toString('utf8'), text)
  })

  test('gzip upload of a stream', T, async () => {
    const f = fresh('gzipstream')
    const data = randomBytes(500_000)
    await sbx.files.write(f, streamOf(data), { gzip: true })
    assert.equal(await host.sha256(f), sha256(data))
  })

  test('relative paths resolve against the home of the user', T, async () => {
    const name = uniqueName('rel')
    const root = passwd('root')
    try {
      const info = await sbx.files.write(name, 'root-rel')
      assert.equal(info.path, path.join(root.home, name))
      assert.equal(await host.readText(path.join(root.home, name)), 'root-rel')
      assert.equal(await sbx.files.read(`~/${name}`), 'root-rel')

      const uinfo = await sbx.files.write(`~/${name}`, 'user-rel', { user: TEST_USER })
      assert.equal(uinfo.path, path.join(userPw.home, name))
      assert.equal(await host.readText(path.join(userPw.home, name)), 'user-rel')
      assert.equal(await sbx.files.read(name, { user: TEST_USER }), 'user-rel')
    } finally {
      await host.rm(path.join(root.home, name))
      await host.rm(path.join(userPw.home, name))
    }
  })

  test('reading a missing file is FileNotFoundError', T, async () => {
    const f = fresh('missing')
    await assertRejects(sbx.files.read(f), FileNotFoundError, /does not exist/)
  })

  test('reading a directory is InvalidArgumentError "is a directory"', T, async () => {
    await assertRejects(sbx.files.read(base), InvalidArgumentError, /is a directory/)
  })

  test('writing onto a directory is InvalidArgumentError', T, async () => {
    const d = fresh('isdir')
    await host.mkdir(d)
    await assertRejects(sbx.files.write(d, 'x'), InvalidArgumentError, /is a directory/)
    assert.ok((await host.stat(d)).isDirectory())
  })

  test('writing below a regular file fails with a server error and creates nothing', T, async () => {
    const f = fresh('parentfile')
    await host.writeFile(f, 'plain')
    const { error } = await settle(sbx.files.write(path.join(f, 'child.txt'), 'x'))
    assert.ok(error instanceof SandboxError, `expected SandboxError, got ${error}`)
    assert.match(error.message, /^500: /)
    assert.equal(await host.readText(f), 'plain')
  })

  test('~otheruser paths are InvalidArgumentError', T, async () => {
    await assertRejects(sbx.files.read('~root/x'), InvalidArgumentError, /cannot expand user-specific home dir/)
  })

  test('an unknown user is AuthenticationError for read and write', T, async () => {
    const f = fresh('nouser')
    await host.writeFile(f, 'x')
    await assertRejects(sbx.files.read(f, { user: 'no-such-user-envd' }), AuthenticationError)
    await assertRejects(sbx.files.write(fresh('nouser'), 'x', { user: 'no-such-user-envd' }), AuthenticationError)
  })
})

describe('list / exists / getInfo', () => {
  let tree
  before(async () => {
    tree = fresh('tree')
    await host.mkdir(path.join(tree, 'sub', 'deep'), { recursive: true })
    await host.writeFile(path.join(tree, 'a.txt'), 'aaa')
    await host.writeFile(path.join(tree, 'sub', 'b.txt'), 'bb')
    await host.writeFile(path.join(tree, 'sub', 'deep', 'c.txt'), 'c')
  })

  test('list with depth 1, 2 and 3', T, async () => {
    const rel = (entries) => entries.map((e) => path.relative(tree, e.path)).sort()
    const d1 = await sbx.files.list(tree)
    assert.deepEqual(rel(d1), ['a.txt', 'sub'])
    const d2 = await sbx.files.list(tree, { depth: 2 })
    assert.deepEqual(rel(d2), ['a.txt', 'sub', 'sub/b.txt', 'sub/deep'])
    const d3 = await sbx.files.list(tree, { depth: 3 })
    assert.deepEqual(rel(d3), ['a.txt', 'sub', 'sub/b.txt', 'sub/deep', 'sub/deep/c.txt'])
    const a = d1.find((e) => e.name === 'a.txt')
    assert.equal(a.type, 'file')
    assert.equal(a.size, 3)
    assert.equal(a.owner, 'root')
    const sub = d1.find((e) => e.name === 'sub')
    assert.equal(sub.type, 'dir')
    assert.equal(sub.permissions[0], 'd')
  })

  test('list through a symlinked directory reports paths under the link', T, async () => {
    const link = fresh('treelink')
    await host.symlink(tree, link)
    const entries = await sbx.files.list(link)
    assert.deepEqual(entries.map((e) => e.path).sort(), [path.join(link, 'a.txt'), path.join(link, 'sub')])
  })

  test('list does not descend into symlinked subdirectories; the link is listed as its target type', T, async () => {
    const dir = fresh('listlinks')
    await host.mkdir(dir)
    await host.symlink(path.join(tree, 'sub'), path.join(dir, 'linked-sub'))
    await host.writeFile(path.join(dir, 'plain.txt'), 'p')
    const entries = await sbx.files.list(dir, { depth: 3 })
    assert.deepEqual(entries.map((e) => e.name).sort(), ['linked-sub', 'plain.txt'])
    const link = entries.find((e) => e.name === 'linked-sub')
    assert.equal(link.type, 'dir')
    assert.equal(link.symlinkTarget, path.join(tree, 'sub'))
    assert.equal(link.permissions, 'Lrwxrwxrwx')
  })

  test('list of a file is InvalidArgumentError, of a missing path FileNotFoundError', T, async () => {
    await assertRejects(sbx.files.list(path.join(tree, 'a.txt')), InvalidArgumentError, /not a directory/)
    await assertRejects(sbx.files.list(path.join(tree, 'nope')), FileNotFoundError)
  })

  test('exists', T, async () => {
    assert.equal(await sbx.files.exists(path.join(tree, 'a.txt')), true)
    assert.equal(await sbx.files.exists(path.join(tree, 'sub')), true)
    assert.equal(await sbx.files.exists(path.join(tree, 'nope')), false)
    assert.equal(await sbx.files.exists(path.join(tree, 'nope', 'deeper')), false)
  })

  test('getInfo of a file matches lstat', T, async () => {
    const f = path.join(tree, 'a.txt')
    await host.chmod(f, 0o640)
    const st = await host.lstat(f)
    const e = await sbx.files.getInfo(f)
    assert.equal(e.name, 'a.txt')
    assert.equal(e.path, f)
    assert.equal(e.type, 'file')
    assert.equal(e.size, 3)
    assert.equal(e.mode, 0o640)
    assert.equal(e.permissions, '-rw-r-----')
    assert.equal(e.owner, 'root')
    assert.equal(e.group, groupName(0))
    assert.ok(e.modifiedTime instanceof Date)
    assert.equal(e.modifiedTime.getTime(), mtimeDate(st).getTime())
    assert.equal(e.symlinkTarget, undefined)
    assert.equal(e.metadata, undefined)
  })

  test('getInfo of a directory', T, async () => {
    const d = path.join(tree, 'sub')
    await host.chmod(d, 0o755)
    const e = await sbx.files.getInfo(d)
    assert.equal(e.type, 'dir')
    assert.equal(e.name, 'sub')
    assert.equal(e.mode, 0o755)
    assert.equal(e.permissions, 'drwxr-xr-x')
  })

  test('getInfo of a symlink: type and mode of the target, L permissions, resolved symlinkTarget', T, async () => {
    const target = path.join(tree, 'sub', 'b.txt')
    await host.chmod(target, 0o600)
    const link = fresh('filelink')
    await host.symlink(target, link)
    const e = await sbx.files.getInfo(link)
    assert.equal(e.name, path.basename(link))
    assert.equal(e.path, link)
    assert.equal(e.type, 'file')
    assert.equal(e.symlinkTarget, target)
    assert.equal(e.permissions, 'Lrwxrwxrwx')
    assert.equal(e.mode, 0o600)
    assert.equal(e.size, target.length, 'size is lstat size: the length of the link text')
  })

  test('getInfo of a relative symlink chain resolves to the final absolute target', T, async () => {
    const dir = fresh('chain')
    await host.mkdir(dir)
    await host.writeFile(path.join(dir, 'real.txt'), 'r')
    await host.symlink('real.txt', path.join(dir, 'l1'))
    await host.symlink('l1', path.join(dir, 'l2'))
    const e = await sbx.files.getInfo(path.join(dir, 'l2'))
    assert.equal(e.type, 'file')
    assert.equal(e.symlinkTarget, path.join(dir, 'real.txt'))
  })

  test('getInfo of a symlink to a directory is type dir', T, async () => {
    const link = fresh('dirlink')
    await host.symlink(path.join(tree, 'sub'), link)
    const e = await sbx.files.getInfo(link)
    assert.equal(e.type, 'dir')
    assert.equal(e.symlinkTarget, path.join(tree, 'sub'))
    assert.equal(e.permissions, 'Lrwxrwxrwx')
  })

  test('getInfo of a dangling symlink: no type, symlinkTarget is the link itself', T, async () => {
    const link = fresh('dangling')
    await host.symlink(path.join(base, 'does-not-exist'), link)
    const e = await sbx.files.getInfo(link)
    assert.equal(e.type, undefined)
    assert.equal(e.symlinkTarget, link)
    assert.equal(e.mode, 0)
    assert.equal(await sbx.files.exists(link), true)
  })

  test('getInfo of a missing path is FileNotFoundError (a NotFoundError)', T, async () => {
    const err = await assertRejects(sbx.files.getInfo(fresh('gone')), FileNotFoundError)
    assert.ok(err instanceof NotFoundError)
  })

  test('metadata written with a file is reported by write, getInfo and list, and cleared by a plain overwrite', T, async () => {
    const dir = fresh('meta')
    const f = path.join(dir, 'm.txt')
    const info = await sbx.files.write(f, 'with metadata', { metadata: { Owner: 'alice', 'build-id': '42' } })
    assert.deepEqual(info.metadata, { owner: 'alice', 'build-id': '42' })
    const e = await sbx.files.getInfo(f)
    assert.deepEqual(e.metadata, { owner: 'alice', 'build-id': '42' })
    const listed = await sbx.files.list(dir)
    assert.deepEqual(listed.find((x) => x.name === 'm.txt').metadata, { owner: 'alice', 'build-id': '42' })

    const plain = await sbx.files.write(f, 'no metadata now')
    assert.equal(plain.metadata, undefined)
    assert.equal((await sbx.files.getInfo(f)).metadata, undefined)
  })
})

describe('makeDir / rename / remove', () => {
  test('makeDir creates all components, then returns false', T, async () => {
    const d = path.join(fresh('mk'), 'x', 'y')
    assert.equal(await sbx.files.makeDir(d), true)
    assert.ok((await host.stat(d)).isDirectory())
    assert.equal((await host.stat(d)).mode & 0o777, 0o755)
    assert.equal(await sbx.files.makeDir(d), false)
    assert.equal((await sbx.files.getInfo(d)).type, 'dir')
  })

  test('makeDir over a file is InvalidArgumentError', T, async () => {
    const f = fresh('mkfile')
    await host.writeFile(f, 'x')
    await assertRejects(sbx.files.makeDir(f), InvalidArgumentError)
  })

  test('rename a file: content moves, source disappears, entry of destination returned', T, async () => {
    const src = fresh('src')
    const dst = fresh('dst')
    await host.writeFile(src, 'moving')
    const e = await sbx.files.rename(src, dst)
    assert.equal(e.path, dst)
    assert.equal(e.name, path.basename(dst))
    assert.equal(e.type, 'file')
    assert.equal(e.size, 6)
    assert.equal(await host.exists(src), false)
    assert.equal(await host.readText(dst), 'moving')
  })

  test('rename into missing parents and over an existing file', T, async () => {
    const src = fresh('src2')
    await host.writeFile(src, 'new')
    const dst = path.join(fresh('newparent'), 'p', 'q.txt')
    await sbx.files.rename(src, dst)
    assert.equal(await host.readText(dst), 'new')

    const src3 = fresh('src3')
    await host.writeFile(src3, 'winner')
    await sbx.files.rename(src3, dst)
    assert.equal(await host.readText(dst), 'winner')
  })

  test('rename a directory', T, async () => {
    const src = fresh('dsrc')
    await host.mkdir(path.join(src, 'in'), { recursive: true })
    await host.writeFile(path.join(src, 'in', 'f'), 'f')
    const dst = fresh('ddst')
    const e = await sbx.files.rename(src, dst)
    assert.equal(e.type, 'dir')
    assert.equal(await host.readText(path.join(dst, 'in', 'f')), 'f')
  })

  test('rename of a missing source is FileNotFoundError', T, async () => {
    await assertRejects(sbx.files.rename(fresh('nosrc'), fresh('nodst')), FileNotFoundError)
  })

  test('remove a file, a directory tree, and a missing path (success)', T, async () => {
    const f = fresh('rmf')
    await host.writeFile(f, 'x')
    await sbx.files.remove(f)
    assert.equal(await host.exists(f), false)

    const d = fresh('rmd')
    await host.mkdir(path.join(d, 'a', 'b'), { recursive: true })
    await host.writeFile(path.join(d, 'a', 'b', 'c'), 'x')
    await sbx.files.remove(d)
    assert.equal(await host.exists(d), false)

    await sbx.files.remove(fresh('never-existed'))
  })
})

describe(`ownership as user '${TEST_USER}'`, () => {
  test('write as user: file and created parents belong to the user', T, async () => {
    const dir = fresh('uown')
    const f = path.join(dir, 'sub', 'file.txt')
    await sbx.files.write(f, 'mine', { user: TEST_USER })
    for (const x of [f, path.join(dir, 'sub'), dir]) {
      const st = await host.stat(x)
      assert.equal(st.uid, userPw.uid, `${x} uid`)
      assert.equal(st.gid, userPw.gid, `${x} gid`)
    }
    const e = await sbx.files.getInfo(f, { user: TEST_USER })
    assert.equal(e.owner, TEST_USER)
    assert.equal(e.group, groupName(userPw.gid))
  })

  // E2B chowns an existing target to the user (WIRE §7.7 step 6); we write
  // it in place and never chown what the call did not create (issue 12: a
  // chown of whatever a planted link led to gave the user root's files).
  test('write as user over a root-owned file writes it in place and keeps its owner', T, async () => {
    const f = fresh('chown')
    await host.writeFile(f, 'root was here')
    const ino = (await host.stat(f)).ino
    await sbx.files.write(f, 'user now', { user: TEST_USER })
    const st = await host.stat(f)
    assert.equal(st.uid, 0)
    assert.equal(st.ino, ino)
    assert.equal(await host.readText(f), 'user now')
  })

  // Issue 12: a symlink the user planted never leads a write as the user
  // into a place the user could not write (E2B follows it and chowns the
  // target); reading a FIFO is refused instead of hanging.
  test('write as user through a planted symlink into a root-only directory is refused, nothing changes', T, async () => {
    const vdir = fresh('victim')
    await host.mkdir(vdir, { mode: 0o700 })
    const secret = path.join(vdir, 'secret')
    await host.writeFile(secret, 'top secret', { mode: 0o600 })
    const udir = fresh('uhome')
    await host.mkdir(udir, { mode: 0o755 })
    await host.chown(udir, userPw.uid, userPw.gid)
    const link = path.join(udir, 'innocent.txt')
    await host.symlink(secret, link)
    await assertRejects(sbx.files.write(link, 'pwned', { user: TEST_USER }), SandboxError, /403: permission denied/)
    assert.equal(await host.readText(secret), 'top secret')
    assert.equal((await host.stat(secret)).uid, 0)
    const linkdir = path.join(udir, 'linkdir')
    await host.symlink(vdir, linkdir)
    await assertRejects(sbx.files.makeDir(path.join(linkdir, 'd'), { user: TEST_USER }), SandboxError, /permission denied/)
    await assertRejects(sbx.files.write(path.join(linkdir, 'new.txt'), 'pwned', { user: TEST_USER }), SandboxError, /403/)
    assert.deepEqual(await host.readdir(vdir), ['secret'])
    // Root writes through links as before.
    await sbx.files.write(link, 'by root', { user: 'root' })
    assert.equal(await host.readText(secret), 'by root')
  })

  test('reading a FIFO is InvalidArgumentError at once', T, async () => {
    const f = fresh('fifo')
    await host.mkfifo(f)
    await assertRejects(sbx.files.read(f), InvalidArgumentError, /is not a regular file/)
  })

  test('write as root leaves root ownership', T, async () => {
    const f = fresh('rootown')
    await sbx.files.write(f, 'root')
    const e = await sbx.files.getInfo(f)
    assert.equal(e.owner, 'root')
    assert.equal((await host.stat(f)).uid, 0)
  })

  test('makeDir as user: every new component belongs to the user, existing ones stay', T, async () => {
    const top = fresh('umk')
    await host.mkdir(top)
    const d = path.join(top, 'a', 'b')
    assert.equal(await sbx.files.makeDir(d, { user: TEST_USER }), true)
    assert.equal((await host.stat(top)).uid, 0)
    assert.equal((await host.stat(path.join(top, 'a'))).uid, userPw.uid)
    assert.equal((await host.stat(d)).uid, userPw.uid)
    const e = await sbx.files.getInfo(d)
    assert.equal(e.owner, TEST_USER)
  })

  test('read as user of a file in its home via ~', T, async () => {
    const name = uniqueName('uread')
    const f = path.join(userPw.home, name)
    await host.writeFile(f, 'home file')
    try {
      assert.equal(await sbx.files.read(`~/${name}`, { user: TEST_USER }), 'home file')
      assert.equal((await sbx.files.getInfo(`~/${name}`, { user: TEST_USER })).path, f)
    } finally {
      await host.rm(f)
    }
  })

  test('an empty path is the user\'s home (no default workdir set), .. is cleaned lexically', T, async () => {
    assert.equal((await sbx.files.getInfo('', { user: TEST_USER })).path, userPw.home)
    const name = uniqueName('emptypath')
    await host.writeFile(path.join(userPw.home, name), 'x')
    try {
      const names = (await sbx.files.list('', { user: TEST_USER })).map((e) => e.name)
      assert.ok(names.includes(name), `listing of '' must be ${userPw.home}; got ${JSON.stringify(names)}`)
    } finally {
      await host.rm(path.join(userPw.home, name))
    }
    const up = path.relative(userPw.home, '/tmp')
    assert.equal((await sbx.files.getInfo(up, { user: TEST_USER })).path, '/tmp')
  })

  test('rename as user: created destination parents belong to the user', T, async () => {
    const src = fresh('urensrc')
    await host.writeFile(src, 'r')
    const top = fresh('urendst')
    const dst = path.join(top, 'd', 'moved.txt')
    await sbx.files.rename(src, dst, { user: TEST_USER })
    assert.equal(await host.readText(dst), 'r')
    assert.equal((await host.stat(top)).uid, userPw.uid)
    assert.equal((await host.stat(path.join(top, 'd'))).uid, userPw.uid)
  })

  test('RPCs with an unknown user are AuthenticationError', T, async () => {
    await assertRejects(sbx.files.getInfo(base, { user: 'no-such-user-envd' }), AuthenticationError, /invalid username/)
  })
})

describe('uploadUrl / downloadUrl (plain HTTP on /files)', () => {
  test('downloadUrl serves the file with length, disposition and ranges', T, async () => {
    const f = fresh('dl')
    const data = Buffer.from('0123456789abcdefghij')
    await host.writeFile(f, data)
    const url = await sbx.downloadUrl(f)
    assert.equal(new URL(url).searchParams.get('path'), f)

    // fetch advertises gzip by default; identity is what gives Content-Length.
    const res = await fetch(url, { headers: { 'Accept-Encoding': 'identity' } })
    assert.equal(res.status, 200)
    assert.equal(res.headers.get('content-encoding'), null)
    assert.equal(res.headers.get('content-length'), String(data.length))
    assert.equal(res.headers.get('content-disposition'), `inline; filename=${path.basename(f)}`)
    assert.equal(res.headers.get('accept-ranges'), 'bytes')
    assert.deepEqual(Buffer.from(await res.arrayBuffer()), data)

    // A Range request forces identity even when gzip is acceptable (WIRE.md §7.6 step 7).
    const part = await fetch(url, { headers: { Range: 'bytes=5-9', 'Accept-Encoding': 'gzip' } })
    assert.equal(part.status, 206)
    assert.equal(part.headers.get('content-range'), `bytes 5-9/${data.length}`)
    assert.equal(await part.text(), '56789')

    const beyond = await fetch(url, { headers: { Range: 'bytes=100-200' } })
    assert.equal(beyond.status, 416)
    await beyond.arrayBuffer()
  })

  test('downloadUrl with Accept-Encoding: gzip answers gzip', T, async () => {
    const f = fresh('dlgz')
    const text = 'gzip me please\n'.repeat(1000)
    await host.writeFile(f, text)
    const res = await fetch(await sbx.downloadUrl(f), { headers: { 'Accept-Encoding': 'gzip' } })
    assert.equal(res.status, 200)
    assert.equal(res.headers.get('content-encoding'), 'gzip')
    assert.match(res.headers.get('vary') ?? '', /Accept-Encoding/i)
    assert.equal(await res.text(), text)
  })

  test('downloadUrl of a missing file is 404 with a JSON error', T, async () => {
    const res = await fetch(await sbx.downloadUrl(fresh('dlmissing')))
    assert.equal(res.status, 404)
    const body = await res.json()
    assert.equal(body.code, 404)
    assert.match(body.message, /does not exist/)
  })

  test('uploadUrl accepts a multipart form and writes as the given user', T, async () => {
    const f = path.join(fresh('ul'), 'up.txt')
    const url = await sbx.uploadUrl(f, { user: TEST_USER })
    assert.equal(new URL(url).searchParams.get('username'), TEST_USER)
    const form = new FormData()
    form.append('file', new Blob(['uploaded via url']), 'ignored-name.txt')
    const res = await fetch(url, { method: 'POST', body: form })
    assert.equal(res.status, 200)
    const infos = await res.json()
    assert.deepEqual(infos, [{ path: f, name: 'up.txt', type: 'file' }])
    assert.equal(await host.readText(f), 'uploaded via url')
    assert.equal((await host.stat(f)).uid, userPw.uid)
  })
})

describe('watchDir', () => {
  // watch starts a watcher and records events; waitEvent waits for one.
  async function watch(dir, opts = {}) {
    const events = []
    const handle = await sbx.files.watchDir(dir, (e) => events.push(e), { timeoutMs: 30_000, ...opts })
    const waitEvent = (type, name) =>
      waitFor(() => events.find((e) => e.type === type && e.name === name), {
        timeoutMs: 5000,
        what: `${type} event for ${name}; got ${JSON.stringify(events.map((e) => [e.type, e.name]))}`,
      })
    return { events, handle, waitEvent }
  }

  test('create, write, chmod, rename and remove in the watched directory', T, async () => {
    const dir = fresh('watch')
    await host.mkdir(dir)
    const { events, handle, waitEvent } = await watch(dir)
    try {
      await host.writeFile(path.join(dir, 'f.txt'), 'data')
      await waitEvent('create', 'f.txt')
      await waitEvent('write', 'f.txt')
      await host.chmod(path.join(dir, 'f.txt'), 0o600)
      await waitEvent('chmod', 'f.txt')
      await host.rename(path.join(dir, 'f.txt'), path.join(dir, 'g.txt'))
      await waitEvent('rename', 'f.txt')
      await waitEvent('create', 'g.txt')
      await host.rm(path.join(dir, 'g.txt'))
      await waitEvent('remove', 'g.txt')
      for (const e of events) assert.equal(e.entry, undefined, 'no entry without includeEntry')
    } finally {
      await handle.stop()
    }
  })

  test('non-recursive watch ignores subdirectories', T, async () => {
    const dir = fresh('watchflat')
    await host.mkdir(path.join(dir, 'sub'), { recursive: true })
    const { events, handle, waitEvent } = await watch(dir)
    try {
      await host.writeFile(path.join(dir, 'sub', 'hidden.txt'), 'x')
      await sleep(200)
      await host.writeFile(path.join(dir, 'marker'), 'x')
      await waitEvent('create', 'marker')
      assert.ok(!events.some((e) => e.name.includes('hidden')), `unexpected events ${JSON.stringify(events)}`)
    } finally {
      await handle.stop()
    }
  })

  test('recursive watch reports paths relative to the root, also in new subdirectories', T, async () => {
    const dir = fresh('watchrec')
    await host.mkdir(path.join(dir, 'old'), { recursive: true })
    const { handle, waitEvent } = await watch(dir, { recursive: true })
    try {
      await host.writeFile(path.join(dir, 'old', 'a.txt'), 'x')
      await waitEvent('create', 'old/a.txt')
      await host.mkdir(path.join(dir, 'new'))
      await waitEvent('create', 'new')
      await sleep(300)
      await host.writeFile(path.join(dir, 'new', 'b.txt'), 'y')
      await waitEvent('create', 'new/b.txt')
      await waitEvent('write', 'new/b.txt')
    } finally {
      await handle.stop()
    }
  })

  test('includeEntry attaches entry info to create/write events, never to remove', T, async () => {
    const dir = fresh('watchentry')
    await host.mkdir(dir)
    const { handle, waitEvent } = await watch(dir, { includeEntry: true })
    try {
      const f = path.join(dir, 'e.txt')
      await host.writeFile(f, 'hello')
      const created = await waitEvent('create', 'e.txt')
      assert.ok(created.entry, 'create event carries an entry')
      assert.equal(created.entry.name, 'e.txt')
      assert.equal(created.entry.path, f)
      assert.equal(created.entry.type, 'file')
      const written = await waitEvent('write', 'e.txt')
      assert.ok(written.entry, 'write event carries an entry')
      await host.rm(f)
      const removed = await waitEvent('remove', 'e.txt')
      assert.equal(removed.entry, undefined)
    } finally {
      await handle.stop()
    }
  })

  test('events made through the SDK are seen (write via files.write)', T, async () => {
    const dir = fresh('watchsdk')
    await host.mkdir(dir)
    const { handle, waitEvent } = await watch(dir)
    try {
      await sbx.files.write(path.join(dir, 'via-sdk.txt'), 'content')
      await waitEvent('create', 'via-sdk.txt')
    } finally {
      await handle.stop()
    }
  })

  test('after stop no more events are delivered', T, async () => {
    const dir = fresh('watchstop')
    await host.mkdir(dir)
    const { events, handle, waitEvent } = await watch(dir)
    await host.writeFile(path.join(dir, 'before'), 'x')
    await waitEvent('create', 'before')
    await handle.stop()
    await sleep(100)
    const n = events.length
    await host.writeFile(path.join(dir, 'after'), 'x')
    await sleep(500)
    assert.equal(events.length, n)
  })

  test('watching a missing directory is FileNotFoundError, a file InvalidArgumentError', T, async () => {
    await assertRejects(sbx.files.watchDir(fresh('nowatch'), () => {}), FileNotFoundError)
    const f = fresh('watchfile')
    await host.writeFile(f, 'x')
    await assertRejects(sbx.files.watchDir(f, () => {}), InvalidArgumentError)
  })
})
