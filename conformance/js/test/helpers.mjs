// Shared helpers for the envd conformance suite.
//
// The suite drives a locally running envd with the real E2B JS SDK in debug
// mode: with E2B_DEBUG=true, Sandbox.create() makes no cloud API call, uses the
// sandbox id "debug_sandbox_id", assumes envd version 99.99.99 (every feature
// gate open) and talks to http://localhost:49983. envd runs on this same host,
// so tests may cross-check what the SDK reports against /etc/passwd and the
// local filesystem (through hostFS); with ENVD_CONFORMANCE_REMOTE=1 envd runs
// elsewhere (make vm-test: inside a VM) and hostFS reaches its disk through
// commands run as root in it.

import { createHash, randomBytes } from 'node:crypto'
import fs, { readFileSync } from 'node:fs'

// ConnectionConfig reads E2B_DEBUG when a Sandbox is built, not at import
// time, so setting it here is enough even if the runner forgot to.
process.env.E2B_DEBUG = 'true'

const { Sandbox } = await import('e2b')

export const TEST_USER = 'user'

// Every request gets a client-side bound so a hung envd fails a test instead of
// hanging the whole run.
const REQUEST_TIMEOUT_MS = 15_000

export async function connectSandbox() {
  return Sandbox.create({ requestTimeoutMs: REQUEST_TIMEOUT_MS })
}

// passwd returns the /etc/passwd record of name, or undefined. envd must take
// uid, gid and home from the same file, so this is the expected value.
export function passwd(name) {
  for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
    const f = line.split(':')
    if (f[0] === name && f.length >= 7) {
      return { name, uid: Number(f[2]), gid: Number(f[3]), home: f[5], shell: f[6] }
    }
  }
  return undefined
}

// groupName maps a gid to its /etc/group name (numeric string if absent, as
// envd reports it).
export function groupName(gid) {
  for (const line of readFileSync('/etc/group', 'utf8').split('\n')) {
    const f = line.split(':')
    if (f.length >= 3 && Number(f[2]) === gid) return f[0]
  }
  return String(gid)
}

// expectedGroups lists the gids /etc/group names `name` a member of,
// plus its primary gid, sorted.
export function expectedGroups(name) {
  const pw = passwd(name)
  const gids = new Set([pw.gid])
  for (const line of readFileSync('/etc/group', 'utf8').split('\n')) {
    const f = line.split(':')
    if (f.length >= 4 && f[3].split(',').includes(name)) gids.add(Number(f[2]))
  }
  return [...gids].sort((a, b) => a - b)
}

let counter = 0

// uniqueName gives a name no other test (or earlier run) uses.
export function uniqueName(prefix = 't') {
  counter += 1
  return `${prefix}-${process.pid}-${counter}-${randomBytes(4).toString('hex')}`
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

// waitFor polls fn until it returns a truthy value or timeoutMs passes; it
// returns the value or throws with the description of what was awaited.
export async function waitFor(fn, { timeoutMs = 5000, intervalMs = 50, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs
  let last
  for (;;) {
    last = await fn()
    if (last) return last
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    }
    await sleep(intervalMs)
  }
}

// withTimeout rejects if promise does not settle in ms; used where an SDK call
// could block forever on a misbehaving server (e.g. handle.wait()).
export async function withTimeout(promise, ms, what) {
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

// settle returns {value} or {error} so a test can assert on a rejection's
// class and fields without try/catch noise.
export async function settle(promise) {
  try {
    return { value: await promise }
  } catch (error) {
    return { error }
  }
}

export const encoder = new TextEncoder()

// Output collects PTY/stream chunks and lets a test wait for a substring.
export class Output {
  constructor() {
    this.text = ''
    this.waiters = []
    this.decoder = new TextDecoder()
  }

  push = (chunk) => {
    this.text += typeof chunk === 'string' ? chunk : this.decoder.decode(chunk, { stream: true })
    for (const w of [...this.waiters]) {
      if (this.text.includes(w.needle, w.from)) {
        clearTimeout(w.timer)
        this.waiters.splice(this.waiters.indexOf(w), 1)
        w.resolve(this.text)
      }
    }
  }

  // waitFor resolves once needle appears at or after offset `from`.
  waitFor(needle, { from = 0, timeoutMs = 10_000 } = {}) {
    if (this.text.includes(needle, from)) return Promise.resolve(this.text)
    return new Promise((resolve, reject) => {
      const w = { needle, from, resolve }
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1)
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${JSON.stringify(needle)}; output so far: ${JSON.stringify(this.text.slice(-2000))}`))
      }, timeoutMs)
      this.waiters.push(w)
    })
  }
}

// ---- the disk envd serves, seen from outside the filesystem service --------

// REMOTE is set where envd does not share this host's disk (make vm-test).
export const REMOTE = process.env.ENVD_CONFORMANCE_REMOTE === '1'

// hostFS gives the tests their independent view of envd's disk: fixtures are
// made and results checked through it, never through the filesystem service
// under test. Locally it is node:fs; remotely it is a shell run as root
// through the process service (bash and busybox in the VM image), so the
// values compared stay the same: bytes, sizes, uids, gids, modes, inodes and
// nanosecond mtimes.
export function hostFS(sbx) {
  return REMOTE ? new RemoteFS(sbx) : new LocalFS()
}

// Stat is what both views report of a path.
function statOf({ size, uid, gid, ino, mode, mtimeNs }) {
  return {
    size: Number(size),
    uid: Number(uid),
    gid: Number(gid),
    ino: BigInt(ino),
    mode: Number(mode),
    mtimeNs: BigInt(mtimeNs),
    isDirectory() { return (this.mode & 0o170000) === 0o040000 },
  }
}

class LocalFS {
  // scratch is where the suite makes its fixtures.
  scratch = '/tmp'

  async close() {}

  async mkdir(p, opts) { fs.mkdirSync(p, opts) }
  async writeFile(p, data, opts) { fs.writeFileSync(p, data, opts) }
  async readFile(p) { return fs.readFileSync(p) }
  async readText(p) { return fs.readFileSync(p, 'utf8') }
  async sha256(p) { return createHash('sha256').update(fs.readFileSync(p)).digest('hex') }
  async stat(p) { return statOf(fs.statSync(p, { bigint: true })) }
  async lstat(p) { return statOf(fs.lstatSync(p, { bigint: true })) }
  async exists(p) { return fs.existsSync(p) }
  async readdir(p) { return fs.readdirSync(p).sort() }
  async rm(p) { fs.rmSync(p, { recursive: true, force: true }) }
  async chmod(p, mode) { fs.chmodSync(p, mode) }
  async chown(p, uid, gid) { fs.chownSync(p, uid, gid) }
  async symlink(target, link) { fs.symlinkSync(target, link) }
  async rename(from, to) { fs.renameSync(from, to) }
  async mkfifo(p) {
    const { execFileSync } = await import('node:child_process')
    execFileSync('mkfifo', [p])
  }
}

// q quotes a word for the guest's shell.
function q(s) {
  return `'${String(s).replaceAll("'", "'\\''")}'`
}

// Data travels as base64 lines of the shell's input, in pieces of a size
// any read(2) of bash's takes comfortably.
const B64_PIECE = 64 * 1024

class RemoteFS {
  // The VM's /tmp is a tmpfs, which has no user.* xattrs before Linux 6.6
  // (make vm-test boots Debian 12's 6.1): file metadata would be dropped
  // there, as WIRE §7.7 allows. /var/tmp is on the root ext4.
  scratch = '/var/tmp'

  #sbx
  #shell
  #queue = Promise.resolve()
  #n = 0

  constructor(sbx) {
    this.#sbx = sbx
  }

  // sh runs script as root in the guest and returns its stdout; a non-zero
  // exit rejects with its status and stderr. Every script runs in a subshell
  // of one long-lived root bash fed through stdin: a commands.run each would
  // cost a login shell's start, about a second on an emulated guest under
  // load, and the suite makes some hundred such checks.
  sh(script) {
    const run = this.#queue.then(() => this.#exec(script))
    this.#queue = run.catch(() => {})
    return run
  }

  async close() {
    const s = await this.#shell?.catch(() => undefined)
    if (!s) return
    this.#shell = undefined
    // Its own exit, with its temp file gone; a kill if it does not come.
    const exited = this.#sbx.commands.sendStdin(s.handle.pid, 'rm -f "$HOSTFS_ERR"; exit 0\n')
      .then(() => withTimeout(s.handle.wait(), 10_000, 'the hostFS shell to exit'))
    if (!(await settle(exited)).value) await s.handle.kill().catch(() => {})
  }

  async #start() {
    const s = { out: '', waiter: undefined, ended: undefined }
    s.handle = await this.#sbx.commands.run('exec bash --noprofile --norc', {
      user: 'root', background: true, stdin: true, timeoutMs: 0,
      onStdout: (d) => {
        s.out += d
        s.waiter?.()
      },
    })
    s.handle.wait().then(
      () => { s.ended = 'the hostFS shell exited' },
      (e) => { s.ended = `the hostFS shell ended: ${e.message}` },
    ).finally(() => s.waiter?.())
    await this.#sbx.commands.sendStdin(s.handle.pid, 'HOSTFS_ERR=$(mktemp)\n')
    return s
  }

  async #exec(script) {
    const s = await (this.#shell ??= this.#start())
    const n = ++this.#n
    const mark = new RegExp(`\n@@hostfs-${n}-(\\d+)-([A-Za-z0-9+/=]*)@@\n`)
    await this.#sbx.commands.sendStdin(s.handle.pid,
      `( set -e\n${script}\n) </dev/null 2>"$HOSTFS_ERR"; rc=$?; ` +
      `printf '\\n@@hostfs-${n}-%d-%s@@\\n' $rc "$(test $rc -eq 0 || base64 < "$HOSTFS_ERR" | tr -d '\\n')"\n`)
    const deadline = Date.now() + 30_000
    for (;;) {
      const m = s.out.match(mark)
      if (m) {
        const stdout = s.out.slice(0, m.index)
        s.out = s.out.slice(m.index + m[0].length)
        if (m[1] !== '0') {
          throw new Error(`hostFS: exit ${m[1]}: ${Buffer.from(m[2], 'base64').toString().trim()}: ${script.slice(0, 200)}`)
        }
        return stdout
      }
      if (s.ended) throw new Error(`${s.ended} before answering: ${script.slice(0, 200)}`)
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`hostFS: no answer within 30 s: ${script.slice(0, 200)}`)
      await new Promise((resolve) => {
        const t = setTimeout(resolve, left)
        s.waiter = () => { clearTimeout(t); resolve() }
      })
    }
  }

  async mkdir(p, { mode, recursive } = {}) {
    // mkdir -m is not masked by the umask, fs.mkdirSync's mode is; the suite
    // only asks for modes the usual 022 umask leaves as they are.
    await this.sh(`mkdir ${recursive ? '-p ' : ''}${mode !== undefined ? `-m ${mode.toString(8)} ` : ''}-- ${q(p)}`)
  }

  async writeFile(p, data, { mode } = {}) {
    const b64 = Buffer.from(data).toString('base64')
    const pieces = []
    for (let i = 0; i < b64.length; i += B64_PIECE) pieces.push(b64.slice(i, i + B64_PIECE))
    if (pieces.length === 0) pieces.push('')
    // One open(O_CREAT|O_TRUNC) then the writes, as fs.writeFileSync does
    // (a watcher sees create, then write).
    await this.sh(`printf %s ${q(pieces[0])} | base64 -d > ${q(p)}${mode !== undefined ? `; chmod ${mode.toString(8)} ${q(p)}` : ''}`)
    for (const piece of pieces.slice(1)) await this.sh(`printf %s ${q(piece)} | base64 -d >> ${q(p)}`)
  }

  async readFile(p) {
    return Buffer.from((await this.sh(`base64 < ${q(p)}`)).replace(/\s+/g, ''), 'base64')
  }

  async readText(p) {
    return (await this.readFile(p)).toString('utf8')
  }

  async sha256(p) {
    const out = await this.sh(`sha256sum < ${q(p)}`)
    const m = out.match(/^([0-9a-f]{64})\b/)
    if (!m) throw new Error(`sha256sum of ${p}: ${JSON.stringify(out)}`)
    return m[1]
  }

  async #stat(p, follow) {
    // %y carries the nanoseconds (busybox's %Y has seconds only).
    const out = await this.sh(`stat ${follow ? '-L ' : ''}-c '%s %u %g %i %f %Y %y' -- ${q(p)}`)
    const m = out.trim().match(/^(\d+) (\d+) (\d+) (\d+) ([0-9a-f]+) (\d+) \S+ \d\d:\d\d:\d\d(?:\.(\d{1,9}))? /)
    if (!m) throw new Error(`stat of ${p}: ${JSON.stringify(out)}`)
    const [, size, uid, gid, ino, modeHex, sec, frac = '0'] = m
    return statOf({
      size, uid, gid, ino, mode: parseInt(modeHex, 16),
      mtimeNs: BigInt(sec) * 1_000_000_000n + BigInt(frac.padEnd(9, '0')),
    })
  }

  stat(p) { return this.#stat(p, true) }
  lstat(p) { return this.#stat(p, false) }

  async exists(p) {
    return (await this.sh(`if test -e ${q(p)}; then echo yes; else echo no; fi`)).trim() === 'yes'
  }

  async readdir(p) {
    const out = await this.sh(`cd -- ${q(p)} && for f in * .[!.]* ..?*; do if test -e "$f" || test -L "$f"; then printf '%s\\n' "$f"; fi; done`)
    return out.split('\n').filter(Boolean).sort()
  }

  async rm(p) { await this.sh(`rm -rf -- ${q(p)}`) }
  async chmod(p, mode) { await this.sh(`chmod ${mode.toString(8)} ${q(p)}`) }
  async chown(p, uid, gid) { await this.sh(`chown ${uid}:${gid} ${q(p)}`) }
  async symlink(target, link) { await this.sh(`ln -s -- ${q(target)} ${q(link)}`) }
  async rename(from, to) { await this.sh(`mv -- ${q(from)} ${q(to)}`) }
  async mkfifo(p) { await this.sh(`mkfifo -- ${q(p)}`) }
}
