// Shared helpers for the envd conformance suite.
//
// The suite drives a locally running envd with the real E2B JS SDK in debug
// mode: with E2B_DEBUG=true, Sandbox.create() makes no cloud API call, uses the
// sandbox id "debug_sandbox_id", assumes envd version 99.99.99 (every feature
// gate open) and talks to http://localhost:49983. envd runs on this same host,
// so tests may cross-check what the SDK reports against /etc/passwd and the
// local filesystem.

import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'

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
