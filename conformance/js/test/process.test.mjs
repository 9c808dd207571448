// Process service conformance: commands (pipe mode) and PTYs through the real
// E2B JS SDK. Expected values come from shared/spec/WIRE.md §4.2 and §5.

import { describe, test, before } from 'node:test'
import assert from 'node:assert/strict'

import {
  AuthenticationError,
  CommandExitError,
  InvalidArgumentError,
  NotFoundError,
  SandboxError,
  TimeoutError,
} from 'e2b'

import {
  Output,
  TEST_USER,
  connectSandbox,
  encoder,
  expectedGroups,
  passwd,
  settle,
  sleep,
  uniqueName,
  waitFor,
  withTimeout,
} from './helpers.mjs'

const T = { timeout: 30_000 }
// Tests bound by the guest's CPU rather than by envd: skipped where the
// guest is emulated (make vm-test under TCG sets ENVD_CONFORMANCE_SLOW_CPU).
const CPU_BOUND = { ...T, skip: process.env.ENVD_CONFORMANCE_SLOW_CPU === '1' && 'CPU-bound; runs natively in make test' }

let sbx
let userPw

before(async () => {
  sbx = await connectSandbox()
  userPw = passwd(TEST_USER)
  assert.ok(userPw, `user '${TEST_USER}' must exist in /etc/passwd (run.sh creates it)`)
})

async function listedPids() {
  return (await sbx.commands.list()).map((p) => p.pid)
}

describe('commands.run: output and exit codes', () => {
  test('stdout of a successful command', T, async () => {
    const r = await sbx.commands.run('echo hello; printf "two\\nlines"')
    assert.equal(r.exitCode, 0)
    assert.equal(r.stdout, 'hello\ntwo\nlines')
    assert.equal(r.stderr, '')
    assert.equal(r.error, undefined)
  })

  test('stderr is kept apart from stdout', T, async () => {
    const r = await sbx.commands.run('echo to-err >&2; echo to-out')
    assert.equal(r.exitCode, 0)
    assert.equal(r.stdout, 'to-out\n')
    assert.equal(r.stderr, 'to-err\n')
  })

  test('onStdout/onStderr callbacks get the data', T, async () => {
    const out = []
    const err = []
    const r = await sbx.commands.run('echo a; echo b >&2; echo c', {
      onStdout: (d) => out.push(d),
      onStderr: (d) => err.push(d),
    })
    assert.equal(out.join(''), 'a\nc\n')
    assert.equal(err.join(''), 'b\n')
    assert.equal(r.stdout, 'a\nc\n')
  })

  test('non-zero exit rejects with CommandExitError carrying code, output and "exit status N"', T, async () => {
    const { error } = await settle(sbx.commands.run('echo partial; echo bad >&2; exit 7'))
    assert.ok(error instanceof CommandExitError, `expected CommandExitError, got ${error}`)
    assert.equal(error.exitCode, 7)
    assert.equal(error.error, 'exit status 7')
    assert.equal(error.stdout, 'partial\n')
    assert.equal(error.stderr, 'bad\n')
  })

  test('exit code 1 from a failing builtin', T, async () => {
    const { error } = await settle(sbx.commands.run('false'))
    assert.ok(error instanceof CommandExitError)
    assert.equal(error.exitCode, 1)
    assert.equal(error.error, 'exit status 1')
  })

  test('an unknown command is exit 127 with "not found" on stderr, not an RPC error', T, async () => {
    const { error } = await settle(sbx.commands.run('no-such-command-envd-conformance'))
    assert.ok(error instanceof CommandExitError, `expected CommandExitError, got ${error}`)
    assert.equal(error.exitCode, 127)
    assert.match(error.stderr, /not found/)
  })

  test('death by a signal is exit code -1 with "signal: terminated"', T, async () => {
    const { error } = await settle(sbx.commands.run('kill -TERM $$; sleep 5'))
    assert.ok(error instanceof CommandExitError, `expected CommandExitError, got ${error}`)
    assert.equal(error.exitCode, -1)
    assert.equal(error.error, 'signal: terminated')
  })

  test('1 MB of output arrives complete and in order', T, async () => {
    const r = await sbx.commands.run("seq 1 150000 | tr '\\n' ' '")
    const expected = Array.from({ length: 150000 }, (_, i) => i + 1).join(' ') + ' '
    assert.equal(r.stdout.length, expected.length)
    assert.equal(r.stdout, expected)
  })

  test('multi-byte UTF-8 split across reads decodes intact', CPU_BOUND, async () => {
    // 40,000 × 4-byte characters = 160 KB, more than several 32 KiB reads.
    const r = await sbx.commands.run("for i in $(seq 1 40000); do printf '\\xf0\\x9f\\x98\\x80'; done")
    assert.equal(r.stdout, '😀'.repeat(40000))
  })

  test('many small writes (a shell loop printing 50,000 lines) all arrive', CPU_BOUND, async () => {
    // Each echo is its own write(2): the reader keeps up and sends tens of
    // thousands of tiny data events. A client reading at full speed must get
    // every one of them.
    const r = await sbx.commands.run('for i in $(seq 1 50000); do echo "line $i"; done')
    const lines = r.stdout.split('\n')
    assert.equal(lines.length, 50001)
    assert.equal(lines[0], 'line 1')
    assert.equal(lines[49999], 'line 50000')
    assert.equal(r.stdout, Array.from({ length: 50000 }, (_, i) => `line ${i + 1}\n`).join(''))
  })

  test('100,000 one-byte writes at full speed all arrive', T, async () => {
    // The worst case for per-event queues: a writer flushing every byte.
    // Bounded buffering is fine, dropping a subscriber that reads as fast as
    // it can is not.
    const r = await sbx.commands.run('awk \'BEGIN { for (i = 0; i < 100000; i++) { printf "x"; fflush() } }\'')
    assert.equal(r.stdout.length, 100000)
    assert.equal(r.stdout, 'x'.repeat(100000))
  })

  test('stdout arrives in data events of at most 32 KiB', T, async () => {
    const sizes = []
    const r = await sbx.commands.run("head -c 400000 /dev/zero | tr '\\0' a", { onStdout: (d) => sizes.push(d.length) })
    assert.equal(r.stdout.length, 400000)
    assert.ok(sizes.length >= Math.ceil(400000 / 32768), `at least 13 events expected, got ${sizes.length}`)
    assert.ok(Math.max(...sizes) <= 32768, `largest event ${Math.max(...sizes)} bytes`)
  })

  test('several commands at once each get their own output', T, async () => {
    const results = await Promise.all(
      Array.from({ length: 6 }, (_, i) => sbx.commands.run(`sleep 0.$((RANDOM % 3)); echo run-${i}`)),
    )
    results.forEach((r, i) => assert.equal(r.stdout, `run-${i}\n`))
  })
})

describe('commands.run: environment, cwd and user', () => {
  test('env vars from the request reach the process', T, async () => {
    const r = await sbx.commands.run('printf "%s|%s|%s" "$CONF_A" "$CONF_B" "$CONF_EMPTY-x"', {
      envs: { CONF_A: 'alpha', CONF_B: 'with spaces = and "quotes"', CONF_EMPTY: '' },
    })
    assert.equal(r.stdout, 'alpha|with spaces = and "quotes"|-x')
  })

  test('request env vars win over HOME/USER defaults', T, async () => {
    const r = await sbx.commands.run('printf "%s" "$USER"', { envs: { USER: 'overridden' } })
    assert.equal(r.stdout, 'overridden')
  })

  test("envd's own environment does not leak into processes", T, async () => {
    // run.sh starts envd with ENVD_CONFORMANCE_CANARY set; WIRE.md §5.1 step 6.
    const r = await sbx.commands.run('printf "%s" "${ENVD_CONFORMANCE_CANARY-unset}"')
    assert.equal(r.stdout, 'unset')
  })

  test('default user is root with HOME, USER, LOGNAME and cwd from /etc/passwd', T, async () => {
    const root = passwd('root')
    const r = await sbx.commands.run('printf "%s|%s|%s|%s|%s|%s|%s" "$(whoami)" "$(id -u)" "$(id -g)" "$HOME" "$USER" "$LOGNAME" "$(pwd)"')
    assert.equal(r.stdout, ['root', '0', '0', root.home, 'root', 'root', root.home].join('|'))
  })

  test(`user '${TEST_USER}' runs with its uid, gid, groups, HOME and home cwd`, T, async () => {
    const r = await sbx.commands.run('printf "%s|%s|%s|%s|%s|%s|%s" "$(whoami)" "$(id -u)" "$(id -g)" "$HOME" "$USER" "$LOGNAME" "$(pwd)"', {
      user: TEST_USER,
    })
    assert.equal(
      r.stdout,
      [TEST_USER, userPw.uid, userPw.gid, userPw.home, TEST_USER, TEST_USER, userPw.home].join('|'),
    )
    const g = await sbx.commands.run('id -G', { user: TEST_USER })
    const groups = g.stdout.trim().split(/\s+/).map(Number).sort((a, b) => a - b)
    assert.deepEqual(groups, expectedGroups(TEST_USER), 'supplementary groups must be the user\'s, not root\'s')
  })

  test('explicit user root', T, async () => {
    const r = await sbx.commands.run('id -u', { user: 'root' })
    assert.equal(r.stdout, '0\n')
  })

  test('files created by a command belong to its user', T, async () => {
    const p = `/tmp/${uniqueName('owned')}`
    try {
      await sbx.commands.run(`touch ${p}`, { user: TEST_USER })
      const r = await sbx.commands.run(`stat -c %u:%g ${p}`)
      assert.equal(r.stdout, `${userPw.uid}:${userPw.gid}\n`)
    } finally {
      await sbx.commands.run(`rm -f ${p}`)
    }
  })

  test('cwd is honoured', T, async () => {
    const r = await sbx.commands.run('pwd', { cwd: '/tmp' })
    assert.equal(r.stdout, '/tmp\n')
    const r2 = await sbx.commands.run('pwd', { cwd: '/usr/bin' , user: TEST_USER })
    assert.equal(r2.stdout, '/usr/bin\n')
  })

  test('relative and ~ cwd resolve against the user home', T, async () => {
    const dir = uniqueName('cwd')
    await sbx.commands.run(`mkdir -p ~/${dir}/inner`, { user: TEST_USER })
    try {
      const r = await sbx.commands.run('pwd', { cwd: `${dir}/inner`, user: TEST_USER })
      assert.equal(r.stdout, `${userPw.home}/${dir}/inner\n`)
      const r2 = await sbx.commands.run('pwd', { cwd: `~/${dir}`, user: TEST_USER })
      assert.equal(r2.stdout, `${userPw.home}/${dir}\n`)
    } finally {
      await sbx.commands.run(`rm -rf ~/${dir}`, { user: TEST_USER })
    }
  })

  test('a missing cwd is invalid_argument "cwd \'…\' does not exist"', T, async () => {
    const missing = `/tmp/${uniqueName('nocwd')}`
    const { error } = await settle(sbx.commands.run('pwd', { cwd: missing }))
    assert.ok(error instanceof InvalidArgumentError, `expected InvalidArgumentError, got ${error}`)
    assert.match(error.message, new RegExp(`cwd '${missing}' does not exist`))
  })

  test('a cwd that is a regular file is InvalidArgumentError', T, async () => {
    const { error } = await settle(sbx.commands.run('pwd', { cwd: '/etc/passwd' }))
    assert.ok(error instanceof InvalidArgumentError, `expected InvalidArgumentError, got ${error}`)
  })

  test('the flavor\'s <PREFIX>_SANDBOX variable is "false" under --isnotfc', T, async (t) => {
    const prefix = { e2b: 'E2B', wrenn: 'WRENN' }[process.env.ENVD_CONFORMANCE_FLAVOR]
    if (!prefix) {
      t.skip('ENVD_CONFORMANCE_FLAVOR not set (run.sh sets it)')
      return
    }
    const r = await sbx.commands.run(`printf "%s" "\${${prefix}_SANDBOX-unset}"`)
    assert.equal(r.stdout, 'false')
  })

  test('an unknown user is unauthenticated "invalid username"', T, async () => {
    const { error } = await settle(sbx.commands.run('true', { user: 'no-such-user-envd' }))
    assert.ok(error instanceof AuthenticationError, `expected AuthenticationError, got ${error}`)
    assert.match(error.message, /invalid username: 'no-such-user-envd'/)
  })
})

describe('background commands: connect, list, kill', () => {
  test('a background command keeps running after disconnect and can be re-attached', T, async () => {
    const early = new Output()
    const h = await sbx.commands.run('echo early; read a; echo "got:$a"', { background: true, stdin: true, onStdout: early.push })
    assert.ok(Number.isInteger(h.pid) && h.pid > 0)
    await early.waitFor('early\n')
    await h.disconnect()
    await sleep(300)
    assert.ok((await listedPids()).includes(h.pid), 'process must survive the closed stream')

    const c = await sbx.commands.connect(h.pid)
    assert.equal(c.pid, h.pid)
    await c.sendStdin('zeta\n')
    const r = await withTimeout(c.wait(), 10_000, 'wait after connect')
    assert.equal(r.exitCode, 0)
    assert.equal(r.stdout, 'got:zeta\n', 'only output produced after connect, no replay of "early"')
  })

  test('several subscribers each receive every event (fan-out)', T, async () => {
    const o0 = new Output()
    const o1 = new Output()
    const o2 = new Output()
    const h = await sbx.commands.run('read a; echo "first:$a"; read b; echo "second:$b" >&2', {
      background: true,
      stdin: true,
      onStdout: o0.push,
    })
    const c1 = await sbx.commands.connect(h.pid, { onStdout: o1.push })
    const c2 = await sbx.commands.connect(h.pid, { onStdout: o2.push, onStderr: o2.push })
    await sbx.commands.sendStdin(h.pid, 'x\n')
    await Promise.all([o0.waitFor('first:x'), o1.waitFor('first:x'), o2.waitFor('first:x')])
    await sbx.commands.sendStdin(h.pid, 'y\n')
    const [r0, r1, r2] = await withTimeout(Promise.all([h.wait(), c1.wait(), c2.wait()]), 10_000, 'three waits')
    for (const r of [r0, r1, r2]) {
      assert.equal(r.exitCode, 0)
      assert.equal(r.stdout, 'first:x\n')
      assert.equal(r.stderr, 'second:y\n')
    }
  })

  test('connect after exit (within 30 s) yields the retained end event, no old output', T, async () => {
    const h = await sbx.commands.run('echo before-exit; exit 5', { background: true })
    const first = await settle(withTimeout(h.wait(), 10_000, 'first wait'))
    assert.ok(first.error instanceof CommandExitError)
    assert.equal(first.error.exitCode, 5)
    assert.equal(first.error.stdout, 'before-exit\n')

    const c = await sbx.commands.connect(h.pid)
    assert.equal(c.pid, h.pid)
    const { error } = await settle(withTimeout(c.wait(), 10_000, 'wait on retained process'))
    assert.ok(error instanceof CommandExitError, `expected CommandExitError, got ${error}`)
    assert.equal(error.exitCode, 5)
    assert.equal(error.error, 'exit status 5')
    assert.equal(error.stdout, '', 'output is not replayed to later subscribers')
  })

  test('connect to an unknown pid is NotFoundError "process with pid N not found"', T, async () => {
    const { error } = await settle(sbx.commands.connect(999999999))
    assert.ok(error instanceof NotFoundError, `expected NotFoundError, got ${error}`)
    assert.match(error.message, /process with pid 999999999 not found/)
  })

  test('list reports running commands with the config as sent', T, async () => {
    const cmd = 'sleep 31'
    const h = await sbx.commands.run(cmd, { background: true, envs: { CONF_LIST: 'yes' }, cwd: '/tmp' })
    try {
      const procs = await sbx.commands.list()
      const p = procs.find((x) => x.pid === h.pid)
      assert.ok(p, `pid ${h.pid} missing from list ${JSON.stringify(procs.map((x) => x.pid))}`)
      assert.equal(p.cmd, '/bin/bash')
      assert.deepEqual(p.args, ['-l', '-c', cmd])
      assert.deepEqual(p.envs, { CONF_LIST: 'yes' })
      assert.equal(p.cwd, '/tmp')
      assert.equal(p.tag, undefined)
    } finally {
      await h.kill()
    }
    await waitFor(async () => !(await listedPids()).includes(h.pid), { what: `pid ${h.pid} to leave the list` })
  })

  test('kill ends the command with SIGKILL (exit -1, "signal: killed"); a second kill returns false', T, async () => {
    const h = await sbx.commands.run('sleep 30', { background: true })
    assert.equal(await h.kill(), true)
    const { error } = await settle(withTimeout(h.wait(), 10_000, 'wait after kill'))
    assert.ok(error instanceof CommandExitError, `expected CommandExitError, got ${error}`)
    assert.equal(error.exitCode, -1)
    assert.equal(error.error, 'signal: killed')
    await waitFor(async () => !(await listedPids()).includes(h.pid), { what: `pid ${h.pid} to leave the list` })
    assert.equal(await sbx.commands.kill(h.pid), false)
  })

  test('kill of an unknown pid returns false', T, async () => {
    assert.equal(await sbx.commands.kill(999999999), false)
  })

  test('kill delivers the end event even while a grandchild holds the pipes', T, async () => {
    const out = new Output()
    const h = await sbx.commands.run('sleep 60 & echo "child=$!"; wait', { background: true, onStdout: out.push })
    await out.waitFor('\n')
    const child = Number(/child=(\d+)/.exec(out.text)[1])
    try {
      assert.equal(await h.kill(), true)
      const { error } = await settle(withTimeout(h.wait(), 8_000, 'end event after kill'))
      assert.ok(error instanceof CommandExitError, `expected CommandExitError, got ${error}`)
      assert.equal(error.exitCode, -1)
    } finally {
      await sbx.commands.run(`kill -9 ${child} 2>/dev/null; true`)
    }
  })

  test('timeoutMs kills the process at the deadline', T, async () => {
    const marker = `/tmp/${uniqueName('timeout-marker')}`
    const h = await sbx.commands.run(`sleep 2; touch ${marker}`, { background: true, timeoutMs: 700 })
    const { error } = await settle(withTimeout(h.wait(), 10_000, 'wait of timed-out command'))
    // Whichever comes first: the client deadline (TimeoutError) or envd's kill
    // reported as an end event (exit -1, killed).
    assert.ok(
      error instanceof TimeoutError || (error instanceof CommandExitError && error.exitCode === -1),
      `expected TimeoutError or a killed CommandExitError, got ${error}`,
    )
    await waitFor(async () => !(await listedPids()).includes(h.pid), {
      timeoutMs: 3000,
      what: `timed-out pid ${h.pid} to be killed and leave the list`,
    })
    await sleep(2000)
    const r = await sbx.commands.run(`test -e ${marker} && echo exists || echo absent`)
    assert.equal(r.stdout, 'absent\n', 'the command must have been killed before it could finish')
  })

  test('timeoutMs: 0 means no deadline', T, async () => {
    const r = await sbx.commands.run('sleep 1.5; echo alive', { timeoutMs: 0 })
    assert.equal(r.stdout, 'alive\n')
  })

  test('timeoutMs on a foreground run rejects with TimeoutError', T, async () => {
    const { error } = await settle(sbx.commands.run('sleep 10', { timeoutMs: 500 }))
    assert.ok(error instanceof TimeoutError || (error instanceof CommandExitError && error.exitCode === -1),
      `expected TimeoutError or a killed CommandExitError, got ${error}`)
  })
})

describe('stdin', () => {
  test('sendStdin then closeStdin: the process sees the bytes and EOF', T, async () => {
    const h = await sbx.commands.run('cat; echo "[eof]"', { background: true, stdin: true })
    await h.sendStdin('hello\n')
    await sbx.commands.sendStdin(h.pid, encoder.encode('wörld'))
    await h.closeStdin()
    const r = await withTimeout(h.wait(), 10_000, 'cat to end after closeStdin')
    assert.equal(r.stdout, 'hello\nwörld[eof]\n')
  })

  test('byte count of stdin is exact', T, async () => {
    const h = await sbx.commands.run('wc -c', { background: true, stdin: true })
    const chunk = 'x'.repeat(10_000)
    for (let i = 0; i < 5; i++) await h.sendStdin(chunk)
    await h.closeStdin()
    const r = await withTimeout(h.wait(), 10_000, 'wc to end')
    assert.equal(r.stdout.trim(), '50000')
  })

  test('closeStdin is idempotent', T, async () => {
    const h = await sbx.commands.run('cat', { background: true, stdin: true })
    await h.closeStdin()
    await h.closeStdin()
    const r = await withTimeout(h.wait(), 10_000, 'cat to end')
    assert.equal(r.exitCode, 0)
  })

  test('without stdin:true the process reads EOF at once and sendStdin fails', T, async () => {
    const r = await withTimeout(sbx.commands.run('cat; echo done'), 10_000, 'cat with stdin disabled')
    assert.equal(r.stdout, 'done\n')

    const h = await sbx.commands.run('sleep 30', { background: true })
    try {
      const { error } = await settle(h.sendStdin('nope'))
      assert.ok(error instanceof SandboxError, `expected SandboxError, got ${error}`)
      assert.match(error.message, /stdin not enabled or closed/)
    } finally {
      await h.kill()
    }
  })

  test('sendStdin after closeStdin fails', T, async () => {
    const h = await sbx.commands.run('sleep 30', { background: true, stdin: true })
    try {
      await h.closeStdin()
      const { error } = await settle(h.sendStdin('late'))
      assert.ok(error instanceof SandboxError, `expected SandboxError, got ${error}`)
      assert.match(error.message, /stdin not enabled or closed/)
    } finally {
      await h.kill()
    }
  })

  test('sendStdin to an unknown pid is NotFoundError', T, async () => {
    const { error } = await settle(sbx.commands.sendStdin(999999999, 'x'))
    assert.ok(error instanceof NotFoundError, `expected NotFoundError, got ${error}`)
  })
})

describe('pty', () => {
  async function createPty(opts = {}) {
    const out = new Output()
    const h = await sbx.pty.create({ cols: 80, rows: 24, onData: out.push, ...opts })
    return { h, out }
  }

  // run types a line into the terminal and waits for a marker computed by the
  // shell, so the echo of the typed line itself can never match.
  async function run(h, out, line, marker) {
    const from = out.text.length
    await sbx.pty.sendInput(h.pid, encoder.encode(line + '\n'))
    await out.waitFor(marker, { from })
  }

  test('create, type a command, read its output, kill', T, async () => {
    const { h, out } = await createPty()
    assert.ok(h.pid > 0)
    await run(h, out, 'echo "M$((6*7))K"', 'M42K')
    await run(h, out, 'echo "T=$TERM L=$LANG"', 'T=xterm-256color L=C.UTF-8')
    assert.ok((await listedPids()).includes(h.pid), 'a PTY is listed')
    assert.equal(await h.kill(), true)
    const { error } = await settle(withTimeout(h.wait(), 10_000, 'pty end after kill'))
    assert.ok(error instanceof CommandExitError, `expected CommandExitError, got ${error}`)
    assert.equal(error.exitCode, -1)
    await waitFor(async () => !(await listedPids()).includes(h.pid), { what: 'killed pty to leave the list' })
    assert.equal(await sbx.pty.kill(h.pid), false)
  })

  test('PTY output arrives in data events of at most 16 KiB', T, async () => {
    const sizes = []
    const out = new Output()
    const h = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => { sizes.push(d.length); out.push(d) } })
    try {
      await run(h, out, "head -c 200000 /dev/zero | tr '\\0' b; echo; echo \"E$((3*3))E\"", 'E9E')
      assert.ok(out.text.split('b').length - 1 >= 200000, 'all 200000 bytes arrived')
      assert.ok(Math.max(...sizes) <= 16384, `largest event ${Math.max(...sizes)} bytes`)
    } finally {
      await h.kill()
    }
  })

  test('two PTYs at once keep their output apart', T, async () => {
    const a = await createPty()
    const b = await createPty()
    try {
      await Promise.all([
        run(a.h, a.out, 'echo "A$((10+1))A"', 'A11A'),
        run(b.h, b.out, 'echo "B$((20+2))B"', 'B22B'),
      ])
      assert.ok(!a.out.text.includes('B22B'))
      assert.ok(!b.out.text.includes('A11A'))
    } finally {
      await a.h.kill()
      await b.h.kill()
    }
  })

  test('initial size and resize are seen by stty', T, async () => {
    const { h, out } = await createPty({ cols: 80, rows: 24 })
    try {
      await run(h, out, 'echo "S=$(stty size)="', 'S=24 80=')
      await sbx.pty.resize(h.pid, { cols: 132, rows: 43 })
      await run(h, out, 'echo "S=$(stty size)="', 'S=43 132=')
    } finally {
      await h.kill()
    }
  })

  test('exit from the shell ends the PTY with its exit code', T, async () => {
    const { h, out } = await createPty()
    await run(h, out, 'echo "R$((1+1))"', 'R2')
    await sbx.pty.sendInput(h.pid, encoder.encode('exit 3\n'))
    const { error } = await settle(withTimeout(h.wait(), 10_000, 'pty end after exit'))
    assert.ok(error instanceof CommandExitError, `expected CommandExitError, got ${error}`)
    assert.equal(error.exitCode, 3)
  })

  test('Ctrl-C interrupts the foreground job', T, async () => {
    const { h, out } = await createPty()
    try {
      await run(h, out, 'echo "ready$((2+3))"', 'ready5')
      await sbx.pty.sendInput(h.pid, encoder.encode('sleep 30\n'))
      await sleep(300)
      await sbx.pty.sendInput(h.pid, new Uint8Array([0x03]))
      await run(h, out, 'echo "after$((1+1))"', 'after2')
    } finally {
      await h.kill()
    }
  })

  test(`a PTY as user '${TEST_USER}' in a given cwd`, T, async () => {
    const { h, out } = await createPty({ user: TEST_USER, cwd: '/tmp' })
    try {
      await run(h, out, 'echo "U=$(whoami)|$(id -u)|$HOME|$(pwd)="', `U=${TEST_USER}|${userPw.uid}|${userPw.home}|/tmp=`)
    } finally {
      await h.kill()
    }
  })

  test('pty.connect re-attaches to a running terminal', T, async () => {
    const { h, out } = await createPty()
    try {
      await run(h, out, 'echo "one$((0+1))"', 'one1')
      await h.disconnect()
      const out2 = new Output()
      const c = await sbx.pty.connect(h.pid, { onData: out2.push })
      await sbx.pty.sendInput(h.pid, encoder.encode('echo "two$((1+1))"\n'))
      await out2.waitFor('two2')
      await c.disconnect()
    } finally {
      await sbx.pty.kill(h.pid)
    }
  })

  test('resize of a pipe process fails with "tty not assigned"', T, async () => {
    const h = await sbx.commands.run('sleep 30', { background: true })
    try {
      const { error } = await settle(sbx.pty.resize(h.pid, { cols: 10, rows: 10 }))
      assert.ok(error instanceof SandboxError, `expected SandboxError, got ${error}`)
      assert.match(error.message, /tty not assigned to process/)
    } finally {
      await h.kill()
    }
  })

  test('closeStdin on a PTY fails and tells to send Ctrl-D', T, async () => {
    const { h } = await createPty()
    try {
      const { error } = await settle(sbx.commands.closeStdin(h.pid))
      assert.ok(error instanceof SandboxError, `expected SandboxError, got ${error}`)
      assert.match(error.message, /cannot close stdin for PTY process/)
    } finally {
      await h.kill()
    }
  })

  test('sendInput to an unknown pid is NotFoundError', T, async () => {
    const { error } = await settle(sbx.pty.sendInput(999999999, encoder.encode('x')))
    assert.ok(error instanceof NotFoundError, `expected NotFoundError, got ${error}`)
  })
})
