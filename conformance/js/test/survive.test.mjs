// User processes outlive envd-proc (issue 9): through the real E2B JS SDK, a
// background command started before a kill -9 of envd-proc is still listed,
// can be connected to (and shows output written after the crash) and killed;
// the stream the SDK held open from the start keeps receiving.
//
// run.sh exports ENVD_INIT_PID; envd-proc is the child of envd-init that
// carries that name (other envd trees may run on this host).

import { describe, test, before } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync, readdirSync } from 'node:fs'

import { CommandExitError } from 'e2b'

import { Output, connectSandbox, settle, waitFor, withTimeout } from './helpers.mjs'

const T = { timeout: 60_000 }
const initPid = Number(process.env.ENVD_INIT_PID || 0)

function envdProcPid() {
  for (const task of readdirSync(`/proc/${initPid}/task`)) {
    let children = ''
    try {
      children = readFileSync(`/proc/${initPid}/task/${task}/children`, 'utf8')
    } catch {
      continue
    }
    for (const pid of children.split(/\s+/).filter(Boolean).map(Number)) {
      try {
        if (readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'envd-proc') return pid
      } catch {}
    }
  }
  return 0
}

// lastLine is the highest counter value in text ("n-<i>" lines).
function lastLine(text) {
  const m = [...text.matchAll(/n-(\d+)\n/g)]
  return m.length ? Number(m[m.length - 1][1]) : -1
}

let sbx

before(async () => {
  sbx = await connectSandbox()
})

describe('a crash of envd-proc', { skip: initPid ? false : 'ENVD_INIT_PID is not set (run through conformance/run.sh)' }, () => {
  test('a background command survives: list, connect with new output, kill', T, async () => {
    const held = new Output()
    const h = await sbx.commands.run('i=0; while true; do echo n-$i; i=$((i+1)); sleep 0.02; done', {
      background: true,
      onStdout: held.push,
    })
    await held.waitFor('n-3\n')
    const old = envdProcPid()
    assert.ok(old > 0, 'envd-proc not found among the children of envd-init')
    process.kill(old, 'SIGKILL')
    await waitFor(() => {
      const now = envdProcPid()
      return now && now !== old
    }, { timeoutMs: 20_000, what: 'envd-proc restarted' })
    const atCrash = lastLine(held.text)

    const procs = await sbx.commands.list()
    assert.ok(procs.some((p) => p.pid === h.pid), `pid ${h.pid} missing from list ${JSON.stringify(procs.map((p) => p.pid))}`)

    const seen = new Output()
    const c = await sbx.commands.connect(h.pid, { onStdout: seen.push })
    assert.equal(c.pid, h.pid)
    await waitFor(() => lastLine(seen.text) > atCrash, { timeoutMs: 10_000, what: 'output written after the crash on the new connection' })
    // The stream held open since the start was re-attached by envd-init.
    await waitFor(() => lastLine(held.text) > atCrash + 2, { timeoutMs: 10_000, what: 'output on the stream held through the crash' })

    assert.equal(await sbx.commands.kill(h.pid), true)
    for (const handle of [c, h]) {
      const { error } = await settle(withTimeout(handle.wait(), 10_000, 'wait after kill'))
      assert.ok(error instanceof CommandExitError, `expected CommandExitError, got ${error}`)
      assert.equal(error.error, 'signal: killed')
    }
    const after = await sbx.commands.list()
    assert.ok(!after.some((p) => p.pid === h.pid), 'a killed command is no longer listed')
  })
})
