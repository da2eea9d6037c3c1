// Tests of the client against a real `boxctl serve` (bin/boxctl of this
// repository, built by `make build`) in a temporary home: one server on its
// unix socket, one on loopback TCP with a token, sharing the home. Most
// boxes are created and never started; one boots a real VM (QEMU, the
// guest of build/guest) for exec and files.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

import { BoxctlClient, BoxctlError, ROUTES } from '../src/index.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const binDir = process.env.BOXCTL_BIN ?? path.join(root, 'bin');
const boxctl = path.join(binDir, 'boxctl');
const guest = process.env.BOXCTL_GUEST_DIR ?? path.join(root, 'build', 'guest');

let tmp, home, image, env;
const servers = [];
let unix, tcp;

function startServer(args) {
  const child = spawn(boxctl, ['--home', home, 'serve', ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  servers.push(child);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`boxctl serve ${args} did not listen within 30s: ${stderr}`)), 30000);
    child.once('exit', (code) => reject(new Error(`boxctl serve exited ${code}: ${stderr}`)));
    readline.createInterface({ input: child.stdout }).once('line', (line) => {
      clearTimeout(timer);
      resolve(line.replace('boxctl serve: listening on ', '').split(' ')[0]);
    });
  });
}

function cli(...args) {
  return execFileSync(boxctl, ['--home', home, ...args], { env, encoding: 'utf8' });
}

before(async () => {
  for (const f of [boxctl, path.join(binDir, 'boxctl-plugin-qemu'), path.join(guest, 'vmlinuz')]) {
    if (!fs.existsSync(f)) throw new Error(`${f} is missing: run make build guest in ${root}`);
  }
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bxts'));
  home = path.join(tmp, 'h');
  const layout = path.join(tmp, 'img');
  execFileSync('go', ['run', './test/images/cmd/mkbusybox', '-o', layout], { cwd: root, stdio: 'inherit' });
  image = `oci-layout:${layout}`;
  env = { ...process.env, BOXCTL_GUEST_DIR: guest, XDG_CONFIG_HOME: tmp, BOXCTL_LOG: '' };
  delete env.BOXCTL_CONFIG;
  const sock = await startServer([]);
  assert.equal(sock, `unix:${path.join(home, 'api.sock')}`);
  unix = new BoxctlClient({ socketPath: sock.slice('unix:'.length) });
  const addr = await startServer(['--listen', '127.0.0.1:0', '--token-file', path.join(tmp, 'token')]);
  tcp = { base: addr, token: fs.readFileSync(path.join(tmp, 'token'), 'utf8').trim() };
});

after(async () => {
  unix?.close();
  try { cli('rm', '-a', '-f'); } catch { /* nothing left */ }
  await Promise.all(servers.map((s) => new Promise((resolve) => {
    if (s.exitCode !== null) return resolve();
    s.once('exit', resolve);
    s.kill('SIGTERM');
  })));
  fs.rmSync(tmp, { recursive: true, force: true });
});

test('ROUTES are the operations of api/openapi.json, and the server serves that document', async () => {
  const doc = JSON.parse(fs.readFileSync(path.join(root, 'api', 'openapi.json'), 'utf8'));
  const documented = {};
  for (const [p, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) documented[op.operationId] = [method.toUpperCase(), p];
  }
  assert.deepEqual(Object.fromEntries(Object.entries(ROUTES).map(([k, v]) => [k, [...v]])), documented);
  assert.deepEqual(await unix.openapi(), doc);
});

test('TCP: no token or a wrong one is refused, the right one works', async () => {
  for (const token of [undefined, 'wrong-token-wrong-token']) {
    const c = new BoxctlClient({ baseUrl: tcp.base, token });
    await assert.rejects(c.listBoxes(), (e) => e instanceof BoxctlError && e.status === 401 && e.code === 'unauthorized');
    assert.equal((await c.health()).status, 'ok'); // public
    c.close();
  }
  const c = new BoxctlClient({ baseUrl: tcp.base, token: tcp.token });
  assert.equal((await c.health()).home, home);
  assert.ok(Array.isArray(await c.listBoxes()));
  c.close();
});

test('images: pull with progress, list', async () => {
  const events = [];
  const img = await unix.pullImage(image, { onProgress: (e) => events.push(e) });
  assert.match(img.digest, /^sha256:/);
  assert.equal(events.at(-1).type, 'done');
  assert.ok((await unix.listImages()).some((i) => i.digest === img.digest));
  await assert.rejects(unix.pullImage('oci-layout:/nonexistent'), (e) => e.code === 'not_found');
});

test('boxes: create (not started) over both transports, get, list, errors, remove', async () => {
  const c = new BoxctlClient({ baseUrl: tcp.base, token: tcp.token });
  const a = await unix.createBox({ image, name: 'ts-a', labels: { suite: 'ts' }, memory: '128MiB', env: ['A=1'] });
  assert.equal(a.status, 'configured');
  assert.equal(a.config.detach, true);
  const b = await c.createBox({ image, name: 'ts-b', labels: { suite: 'ts' } });
  assert.equal((await unix.getBox('ts-b')).id, b.id); // one home, two servers
  assert.deepEqual((await c.listBoxes({ label: 'suite=ts' })).map((x) => x.name).sort(), ['ts-a', 'ts-b']);
  await assert.rejects(unix.createBox({ image, name: 'ts-a' }), (e) => e.code === 'already_exists' && e.status === 409);
  await assert.rejects(unix.createBox({ image, memory: 'plenty' }), (e) => e.code === 'invalid_argument' && e.status === 400);
  await assert.rejects(unix.getBox('nobox'), (e) => e.code === 'not_found' && e.status === 404);
  await unix.removeBox('ts-a');
  await c.removeBox(b.id);
  await assert.rejects(unix.getBox('ts-a'), (e) => e.code === 'not_found');
  c.close();
});

test('a real VM: exec, streaming exec with stdin, files', async () => {
  const box = await unix.createBox({ image, name: 'ts-vm', start: true });
  assert.equal(box.status, 'running');
  const res = await unix.exec('ts-vm', { cmd: ['sh', '-c', 'cat; echo oops >&2; exit 4'], stdin: 'hello\n' });
  assert.deepEqual([res.exit_code, res.stdout, res.stderr], [4, 'hello\n', 'oops\n']);

  let out = '';
  let err = '';
  const s = unix.execStream('ts-vm', {
    cmd: ['sh', '-c', 'tr a-z A-Z; echo end >&2; exit 9'], stdin: true,
    onStdout: (d) => { out += d; }, onStderr: (d) => { err += d; },
  });
  await s.write('streamed\n');
  await s.closeStdin();
  const exit = await s.exit;
  assert.deepEqual([exit.exitCode, out, err], [9, 'STREAMED\n', 'end\n']);

  await unix.putFile('ts-vm', '/tmp/t/f.txt', 'file body\n', { mode: '0640' });
  assert.equal((await unix.getFile('ts-vm', '/tmp/t/f.txt')).toString(), 'file body\n');
  const st = await unix.statFile('ts-vm', '/tmp/t/f.txt');
  assert.deepEqual([st.type, st.size, st.mode], ['file', 10, '0640']);
  assert.deepEqual((await unix.listFiles('ts-vm', '/tmp/t')).map((e) => e.name), ['f.txt']);
  const tar = await unix.getTar('ts-vm', '/tmp/t');
  assert.ok(tar.length >= 1024 && tar.includes(Buffer.from('file body')));
  await assert.rejects(unix.statFile('ts-vm', '/nope'), (e) => e.code === 'not_found');
  await unix.removeBox('ts-vm', { force: true });
});
