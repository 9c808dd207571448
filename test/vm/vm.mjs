// The VM half of make vm-test (run.sh prepares the kernel, image and
// initramfs, then starts this inside a network namespace of its own, where
// the image's /etc/passwd and /etc/group are bound over the host's).
//
// It boots envd-init as PID 1 of a QEMU microvm (TCG unless VM_KVM=1) with
// user networking (restrict=on, 127.0.0.1:49983 forwarded to the guest's
// 169.254.0.21:49983) and drives it with the real E2B JS SDK:
//   boot 1: the process and filesystem conformance suites (the latter with
//           ENVD_CONFORMANCE_REMOTE=1: it checks the guest's disk through
//           commands run as root in the guest), PID 1 and orphan reaping,
//           cgroup placement, idle PSS of the envd tree, /snapshot/prepare,
//           poweroff (exit 0);
//   boot 2: a background process, a PTY and an open stream, then a whole-VM
//           save over QMP (migrate to exec:), and a restore (-incoming) that
//           must show all three alive, the open stream ended, and the clock
//           corrected by /init;
//   boot 3: boot time only (the median of three is reported).
// Only the QEMU processes started here are ever killed.

import assert from 'node:assert/strict'
import { spawn, execFileSync } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { pathToFileURL } from 'node:url'

const repo = process.env.VM_REPO
const work = process.env.VM_WORK
const kernel = process.env.VM_KERNEL
const initrd = process.env.VM_INITRD
const image = process.env.VM_IMAGE
const useKVM = process.env.VM_KVM === '1'
const PORT = 49983
const BASE = `http://127.0.0.1:${PORT}`
const BOOT_TIMEOUT_MS = 60_000

process.env.E2B_DEBUG = 'true'
const { Sandbox } = await import(pathToFileURL(path.join(repo, 'conformance/js/node_modules/e2b/dist/index.mjs')).href)

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const figures = {}
const started = []

function log(...a) {
  console.log('vm-test:', ...a)
}

// TCG on a loaded host may fail to calibrate the TSC and hang (VM.md):
// give the kernel the host's frequency and skip the clocksource watchdog,
// which under emulation sees skew that is not there.
function tscKHz() {
  const m = fs.readFileSync('/proc/cpuinfo', 'utf8').match(/cpu MHz\s*:\s*([\d.]+)/)
  return m ? Math.round(Number(m[1]) * 1000) : 0
}

// qemuArgs is the same for a boot, a save and a restore: a restore must
// see the very devices the saved VM had.
function qemuArgs({ drive, qmp }) {
  const khz = tscKHz()
  const append = [
    'console=ttyS0', 'root=/dev/vda', 'rw', 'panic=-1', 'quiet', 'loglevel=4',
    ...(khz && !useKVM ? [`tsc_early_khz=${khz}`, 'tsc=reliable'] : []),
    // Unknown name=value words reach init's environment: the canary the
    // conformance suite checks never leaks into user processes.
    'ENVD_CONFORMANCE_CANARY=leaked',
    '--', '--isnotfc', '--flavor', 'e2b',
  ].join(' ')
  return [
    '-M', 'microvm', ...(useKVM ? ['-enable-kvm', '-cpu', 'host'] : ['-accel', 'tcg']),
    '-m', '256', '-smp', '1',
    '-nodefaults', '-no-user-config', '-nographic', '-serial', 'stdio', '-monitor', 'none', '-no-reboot',
    '-kernel', kernel, '-initrd', initrd, '-append', append,
    '-drive', `id=root,if=none,${drive}`, '-device', 'virtio-blk-device,drive=root',
    // The guest addresses itself as in Wrenn's VMs (169.254.0.21/30, gateway
    // .22); slirp's network is widened to a /28 that holds both.
    '-netdev', 'user,id=n0,restrict=on,net=169.254.0.16/28,host=169.254.0.22,dns=169.254.0.19,' +
      `dhcpstart=169.254.0.24,hostfwd=tcp:127.0.0.1:${PORT}-169.254.0.21:${PORT}`,
    '-device', 'virtio-net-device,netdev=n0',
    '-device', 'virtio-rng-device',
    '-qmp', `unix:${qmp},server=on,wait=off`,
  ]
}

function startVM(name, { drive, incoming }) {
  const qmp = path.join(work, `${name}.qmp`)
  const console_ = path.join(work, `${name}.console.log`)
  fs.rmSync(qmp, { force: true })
  const out = fs.openSync(console_, 'w')
  const args = qemuArgs({ drive, qmp })
  if (incoming) args.push('-incoming', incoming)
  const t0 = performance.now()
  const proc = spawn('qemu-system-x86_64', args, { stdio: ['ignore', out, out] })
  fs.closeSync(out)
  const vm = { name, proc, qmp, console: console_, t0, code: undefined }
  vm.exited = new Promise((resolve) => proc.on('exit', (code, sig) => {
    vm.code = code ?? sig
    resolve(vm.code)
  }))
  started.push(vm)
  log(`${name}: QEMU pid ${proc.pid}${incoming ? ' (restore)' : ''}`)
  return vm
}

function consoleTail(vm, n = 80) {
  try {
    return fs.readFileSync(vm.console, 'utf8').split('\n').slice(-n).join('\n')
  } catch {
    return '(no console log)'
  }
}

function fail(vm, msg) {
  if (vm) console.error(`----- ${vm.name} console (last lines) -----\n${consoleTail(vm)}\n----- end -----`)
  throw new Error(msg)
}

async function waitExit(vm, ms) {
  const code = await Promise.race([vm.exited, sleep(ms).then(() => 'timeout')])
  if (code === 'timeout') fail(vm, `${vm.name}: QEMU did not exit within ${ms} ms`)
  return code
}

async function health() {
  try {
    const r = await fetch(`${BASE}/health`, { signal: AbortSignal.timeout(1000) })
    return r.status
  } catch {
    return 0
  }
}

// waitHealth polls /health until 204 and returns the time since QEMU start.
async function waitHealth(vm) {
  const deadline = vm.t0 + BOOT_TIMEOUT_MS
  for (;;) {
    if (vm.code !== undefined) fail(vm, `${vm.name}: QEMU exited (${vm.code}) before /health answered`)
    if ((await health()) === 204) return performance.now() - vm.t0
    if (performance.now() > deadline) fail(vm, `${vm.name}: no /health within ${BOOT_TIMEOUT_MS / 1000} s`)
    await sleep(50)
  }
}

// firstRun retries commands.run until one succeeds: the time since QEMU
// start at which a client first gets a command's output.
async function firstRun(vm, sbx) {
  const deadline = vm.t0 + BOOT_TIMEOUT_MS
  let last
  for (let attempt = 1; ; attempt++) {
    if (attempt > 1 && attempt % 20 === 2) log(`${vm.name}: commands.run attempt ${attempt - 1} failed: ${last}`)
    if (vm.code !== undefined) fail(vm, `${vm.name}: QEMU exited (${vm.code})`)
    try {
      const r = await sbx.commands.run('echo ready', { requestTimeoutMs: 5000, timeoutMs: 10_000 })
      if (r.stdout === 'ready\n') return performance.now() - vm.t0
      last = `stdout ${JSON.stringify(r.stdout)}`
    } catch (e) {
      last = e.message
    }
    if (performance.now() > deadline) fail(vm, `${vm.name}: no successful commands.run within ${BOOT_TIMEOUT_MS / 1000} s: ${last}`)
    await sleep(50)
  }
}

async function root(sbx, cmd, opts = {}) {
  return sbx.commands.run(cmd, { user: 'root', timeoutMs: 30_000, ...opts })
}

// poweroff asks PID 1 for a clean poweroff (the poweroff command, which
// sends SIGUSR2 to PID 1, or the signal itself) and expects QEMU to exit 0.
async function poweroff(vm, sbx, cmd = 'kill -USR2 1') {
  await root(sbx, cmd, { background: true }).catch(() => {})
  const code = await waitExit(vm, 30_000)
  if (code !== 0) fail(vm, `${vm.name}: QEMU exited ${code} after poweroff, want 0`)
  const c = fs.readFileSync(vm.console, 'utf8')
  if (!c.includes('system going down')) fail(vm, `${vm.name}: no "system going down" in the console`)
  log(`${vm.name}: clean poweroff, QEMU exit 0`)
}

// ---- QMP -----------------------------------------------------------------

async function qmpConnect(vm) {
  const deadline = performance.now() + 10_000
  let sock
  for (;;) {
    try {
      sock = await new Promise((resolve, reject) => {
        const s = net.connect(vm.qmp)
        s.once('connect', () => resolve(s))
        s.once('error', reject)
      })
      break
    } catch (e) {
      if (performance.now() > deadline) fail(vm, `${vm.name}: no QMP socket: ${e.message}`)
      await sleep(20)
    }
  }
  let buf = ''
  const waiters = []
  sock.setEncoding('utf8')
  sock.on('data', (d) => {
    buf += d
    let i
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i).trim()
      buf = buf.slice(i + 1)
      if (!line) continue
      const msg = JSON.parse(line)
      if (msg.event || msg.QMP) continue
      waiters.shift()?.(msg)
    }
  })
  const cmd = (execute, args) => new Promise((resolve, reject) => {
    waiters.push((msg) => (msg.error ? reject(new Error(`QMP ${execute}: ${msg.error.desc}`)) : resolve(msg.return)))
    sock.write(JSON.stringify(args ? { execute, arguments: args } : { execute }) + '\n')
  })
  await cmd('qmp_capabilities')
  return { cmd, close: () => sock.destroy() }
}

// ---- checks ----------------------------------------------------------------

// ENVD_CONFORMANCE_SLOW_CPU skips the two process tests that push tens of
// thousands of tiny writes (one write(2) per shell builtin) through the
// tree: under TCG the guest's shell alone needs most of their 30 s budget.
// They run natively in make test. ENVD_CONFORMANCE_REMOTE makes the files
// suite check the guest's disk instead of this host's.
async function conformance(suite) {
  const t = performance.now()
  const code = await new Promise((resolve) => {
    const p = spawn(process.execPath, ['--test', '--test-concurrency=1', '--test-timeout=180000',
      `test/${suite}.test.mjs`], {
      cwd: path.join(repo, 'conformance/js'),
      stdio: 'inherit',
      env: {
        ...process.env, E2B_DEBUG: 'true', ENVD_CONFORMANCE_FLAVOR: 'e2b',
        ENVD_CONFORMANCE_SLOW_CPU: '1', ENVD_CONFORMANCE_REMOTE: '1',
      },
    })
    p.on('exit', (c) => resolve(c))
  })
  figures.conformanceSeconds ??= {}
  figures.conformanceSeconds[suite] = (performance.now() - t) / 1000
  assert.equal(code, 0, `the ${suite} conformance suite failed against the VM`)
}

async function checkPID1(sbx) {
  const r = await root(sbx, 'readlink /proc/1/exe; cat /proc/1/comm; cat /proc/1/cmdline | tr "\\0" " "')
  const [exe, comm] = r.stdout.split('\n')
  assert.equal(exe, '/usr/local/bin/envd-init', 'PID 1 is envd-init from the root filesystem')
  assert.equal(comm, 'envd-init')
  // An orphan: its parent exits at once, so it is re-parented to PID 1,
  // which must reap it when it ends (no zombie left behind).
  const o = await root(sbx, "sh -c 'sleep 1.5 </dev/null >/dev/null 2>&1 & echo $!'")
  const orphan = Number(o.stdout.trim())
  assert.ok(orphan > 1, `orphan pid from ${JSON.stringify(o.stdout)}`)
  const ppid = await root(sbx, `awk '{print $4}' /proc/${orphan}/stat`)
  assert.equal(ppid.stdout.trim(), '1', 'the orphan is re-parented to PID 1')
  await sleep(2000)
  const gone = await root(sbx, `test -e /proc/${orphan} && cat /proc/${orphan}/stat || echo reaped`)
  assert.equal(gone.stdout.trim(), 'reaped', `orphan ${orphan} left a zombie: ${gone.stdout}`)
  log('PID 1 is envd-init and reaps orphans')
}

async function checkSystem(sbx) {
  const r = await root(sbx, [
    'cat /proc/self/cgroup',
    'cat /sys/fs/cgroup/cgroup.subtree_control',
    'hostname',
    'grep -c "$(hostname)" /etc/hosts',
    'cat /etc/resolv.conf',
    'ip -4 -o addr show dev eth0 | awk \'{print $4}\'',
    'ip route show default | awk \'/^default/{print $3; exit}\'',
    'awk \'$2=="/dev/pts"||$2=="/dev/shm"||$2=="/run"||$2=="/tmp"||$2=="/sys/fs/cgroup"{print $2}\' /proc/mounts | sort | tr "\\n" " "',
    'echo "$PATH"',
  ].join('; echo @@; '))
  const [cg, ctl, host, hosts, resolv, addr, gw, mounts, pathEnv] = r.stdout.split('@@\n').map((s) => s.trim())
  assert.equal(cg, '0::/user', 'a command is placed in the user cgroup')
  for (const c of ['cpu', 'memory', 'io']) assert.ok(ctl.split(/\s+/).includes(c), `controller ${c} enabled for children: ${ctl}`)
  assert.ok(host.length > 0 && host !== '(none)', `hostname ${host}`)
  assert.ok(Number(hosts) >= 1, 'the hostname resolves through /etc/hosts')
  assert.match(resolv, /^nameserver /m)
  assert.equal(addr, '169.254.0.21/30')
  assert.equal(gw, '169.254.0.22')
  assert.equal(mounts, '/dev/pts /dev/shm /run /sys/fs/cgroup /tmp')
  assert.ok(pathEnv.includes('/usr/local/bin') && pathEnv.includes('/usr/bin'), `PATH ${pathEnv}`)
  const pty = await new Promise(async (resolve, reject) => {
    let text = ''
    const h = await sbx.pty.create({ cols: 80, rows: 24, user: 'root', onData: (d) => {
      text += new TextDecoder().decode(d)
      const m = text.match(/CG=(\S+)=/)
      if (m) { h.kill().catch(() => {}); resolve(m[1]) }
    } })
    await sbx.pty.sendInput(h.pid, new TextEncoder().encode('echo "CG=$(cut -d: -f3 /proc/self/cgroup)="\n'))
    setTimeout(() => reject(new Error(`no PTY answer: ${JSON.stringify(text)}`)), 15_000)
  })
  assert.equal(pty, '/ptys', 'a PTY is placed in the ptys cgroup')
  log(`cgroups: commands in /user, PTYs in /ptys, controllers "${ctl}"; eth0 ${addr} via ${gw}`)
}

// pss sums Pss of PID 1 and its plugins (KiB) after the tree has been idle
// long enough to trim (memtrim runs 3-6 s after the last request).
async function pss(sbx) {
  await sleep(7000)
  const r = await root(sbx, 'for d in /proc/[0-9]*; do c=$(cat $d/comm 2>/dev/null); case "$c" in envd-*) awk -v c=$c \'/^Pss:/{t=$2} /^Pss_Anon:/{a=$2} /^Pss_File:/{f=$2} END{print c, t, a, f}\' $d/smaps_rollup;; esac; done')
  const rows = r.stdout.trim().split('\n').map((l) => l.split(' '))
  assert.ok(rows.length >= 4, `PSS of envd-init and three plugins: ${r.stdout}`)
  // Anonymous (heaps, stacks) and file-backed (the shared executable's
  // pages, split between the four) apart: they answer different questions.
  log(`PSS KiB (total anon file): ${rows.map((f) => f.join(' ')).join('; ')}`)
  return rows.reduce((a, [, kb]) => a + Number(kb), 0)
}

async function prepare() {
  const r = await fetch(`${BASE}/snapshot/prepare`, { method: 'POST', signal: AbortSignal.timeout(5000) })
  assert.equal(r.status, 204, '/snapshot/prepare answers 204')
}

// ---- the three boots ---------------------------------------------------------

async function boot1() {
  const vm = startVM('boot1', { drive: `file=${image},format=raw,snapshot=on` })
  figures.health = [await waitHealth(vm)]
  const sbx = await Sandbox.create({ requestTimeoutMs: 15_000 })
  figures.firstRun = await firstRun(vm, sbx)
  log(`boot1: /health after ${(figures.health[0] / 1000).toFixed(2)} s, first commands.run after ${(figures.firstRun / 1000).toFixed(2)} s`)
  await conformance('process')
  await conformance('files')
  await checkPID1(sbx)
  await checkSystem(sbx)
  figures.pssKiB = await pss(sbx)
  await prepare()
  await poweroff(vm, sbx)
}

async function boot2() {
  // The source writes to its own overlay: after the save that overlay is
  // the frozen disk, and the restore writes to an overlay above it.
  const ov1 = path.join(work, 'source.qcow2')
  const ov2 = path.join(work, 'restore.qcow2')
  const state = path.join(work, 'vm.state')
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', image, ov1])
  const vm = startVM('boot2', { drive: `file=${ov1},format=qcow2` })
  figures.health.push(await waitHealth(vm))
  const sbx = await Sandbox.create({ requestTimeoutMs: 15_000 })
  await firstRun(vm, sbx)

  let ticks = ''
  const bg = await sbx.commands.run('i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.3; done',
    { background: true, onStdout: (d) => { ticks += d }, timeoutMs: 0 })
  let ptyText = ''
  const pty = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => { ptyText += new TextDecoder().decode(d) }, timeoutMs: 0 })
  await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('echo "P$((20+1))P"\n'))
  for (const deadline = performance.now() + 15_000; !(ticks.includes('tick-1') && ptyText.includes('P21P'));) {
    assert.ok(performance.now() < deadline, `no output before the snapshot: ${JSON.stringify({ ticks, ptyText })}`)
    await sleep(50)
  }
  // bg's stream stays open across the save: it must end, not hang.
  let heldEnd
  const held = bg.wait().then(() => 'ended', (e) => `error: ${e.message}`).then((r) => { heldEnd = { r, at: performance.now() } })

  await prepare()
  const qmp = await qmpConnect(vm)
  const tSave = performance.now()
  await qmp.cmd('stop')
  await qmp.cmd('migrate-set-parameters', { 'max-bandwidth': 10 * 1024 * 1024 * 1024 })
  await qmp.cmd('migrate', { uri: `exec:cat > ${state}` })
  for (;;) {
    const s = await qmp.cmd('query-migrate')
    if (s.status === 'completed') break
    if (s.status === 'failed' || s.status === 'cancelled') fail(vm, `migration ${s.status}: ${s['error-desc'] ?? ''}`)
    assert.ok(performance.now() - tSave < 30_000, 'save took over 30 s')
    await sleep(20)
  }
  figures.saveSeconds = (performance.now() - tSave) / 1000
  figures.stateMB = fs.statSync(state).size / 1e6
  await qmp.cmd('quit').catch(() => {})
  qmp.close()
  const tQuit = performance.now()
  await waitExit(vm, 10_000)
  log(`boot2: saved ${figures.stateMB.toFixed(0)} MB in ${figures.saveSeconds.toFixed(2)} s`)

  // The stream that was open when the source went away ends within
  // seconds (EOF from slirp), instead of hanging the client.
  await Promise.race([held, sleep(15_000)])
  assert.ok(heldEnd, 'the stream open across the snapshot did not end within 15 s of the source quitting')
  log(`open stream across the snapshot ended after ${((heldEnd.at - tQuit) / 1000).toFixed(2)} s (${heldEnd.r})`)

  // Let wall time run on so that the guest's clock visibly lags.
  await sleep(3000)
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', ov1, ov2])
  const rv = startVM('restore', { drive: `file=${ov2},format=qcow2`, incoming: `exec:cat ${state}` })
  const rq = await qmpConnect(rv)
  for (const deadline = performance.now() + 30_000; ;) {
    const s = await rq.cmd('query-status')
    if (s.status !== 'inmigrate') {
      if (s.status !== 'running') await rq.cmd('cont')
      break
    }
    if (performance.now() > deadline) fail(rv, 'restore stuck in inmigrate for 30 s')
    await sleep(20)
  }
  rq.close()
  figures.restoreCont = performance.now() - rv.t0
  figures.restoreRun = await firstRun(rv, sbx)
  log(`restore: running ${(figures.restoreCont / 1000).toFixed(2)} s, first commands.run ${(figures.restoreRun / 1000).toFixed(2)} s after QEMU start`)
  assert.equal(await health(), 204, '/health after the restore')

  const pids = (await sbx.commands.list()).map((p) => p.pid)
  assert.ok(pids.includes(bg.pid), `background pid ${bg.pid} listed after the restore: ${JSON.stringify(pids)}`)
  let after = ''
  const c = await sbx.commands.connect(bg.pid, { onStdout: (d) => { after += d }, timeoutMs: 0 })
  for (const deadline = performance.now() + 10_000; !/tick-\d+\n.*tick-\d+/s.test(after);) {
    assert.ok(performance.now() < deadline, `no new ticks after the restore: ${JSON.stringify(after)}`)
    await sleep(50)
  }
  await c.disconnect()
  let ptyAfter = ''
  const pc = await sbx.pty.connect(pty.pid, { onData: (d) => { ptyAfter += new TextDecoder().decode(d) }, timeoutMs: 0 })
  await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('echo "Q$((40+2))Q"\n'))
  for (const deadline = performance.now() + 10_000; !ptyAfter.includes('Q42Q');) {
    assert.ok(performance.now() < deadline, `the PTY did not answer after the restore: ${JSON.stringify(ptyAfter)}`)
    await sleep(50)
  }
  await pc.disconnect()
  log('restore: background process listed and streaming, PTY answers')

  // The guest clock stood still while the VM was saved; /init with the
  // host's time (what E2B's orchestrator sends after a resume) steps it.
  const skew = async () => {
    const before = Date.now()
    // bash's EPOCHREALTIME: microseconds (busybox date has no %N).
    const r = await root(sbx, 'echo $EPOCHREALTIME')
    const mid = (before + Date.now()) / 2
    return Number(r.stdout.trim()) * 1000 - mid
  }
  figures.skewBefore = await skew()
  assert.ok(figures.skewBefore < -2000, `the guest clock should lag after a 3 s+ pause, skew ${figures.skewBefore} ms`)
  const init = await fetch(`${BASE}/init`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ timestamp: new Date().toISOString() }), signal: AbortSignal.timeout(10_000),
  })
  assert.equal(init.status, 204)
  figures.skewAfter = await skew()
  // Within 2 s: the /init request and the measuring command each take a
  // round trip through an emulated guest on a shared host.
  assert.ok(Math.abs(figures.skewAfter) < 2000, `clock corrected by /init: skew ${figures.skewAfter} ms`)
  log(`clock: ${(figures.skewBefore / 1000).toFixed(2)} s behind after the restore, ${figures.skewAfter.toFixed(0)} ms after /init`)
  await poweroff(rv, sbx)
}

async function boot3() {
  const vm = startVM('boot3', { drive: `file=${image},format=raw,snapshot=on` })
  figures.health.push(await waitHealth(vm))
  const sbx = await Sandbox.create({ requestTimeoutMs: 15_000 })
  await firstRun(vm, sbx)
  await poweroff(vm, sbx, 'poweroff')
}

let status = 0
try {
  await boot1()
  await boot2()
  await boot3()
  const h = [...figures.health].sort((a, b) => a - b)
  const s = (ms) => (ms / 1000).toFixed(2) + ' s'
  console.log('vm-test figures:')
  console.log(`  QEMU start -> /health: median ${s(h[1])} (${figures.health.map(s).join(', ')})`)
  console.log(`  QEMU start -> first commands.run: ${s(figures.firstRun)}`)
  console.log(`  restore (QEMU start with -incoming) -> first commands.run: ${s(figures.restoreRun)}`)
  console.log(`  save: ${figures.saveSeconds.toFixed(2)} s, state ${figures.stateMB.toFixed(0)} MB`)
  console.log(`  envd tree PSS idle in the guest: ${(figures.pssKiB / 1024).toFixed(1)} MiB`)
  for (const [suite, sec] of Object.entries(figures.conformanceSeconds)) console.log(`  ${suite} conformance suite: ${sec.toFixed(1)} s`)
} catch (e) {
  console.error('vm-test FAILED:', e.stack ?? e)
  status = 1
} finally {
  for (const vm of started) {
    if (vm.code === undefined) {
      vm.proc.kill('SIGKILL')
      await vm.exited
    }
  }
}
process.exit(status)
