// Client of `boxctl serve`: boxctl's HTTP/JSON API and its WebSocket
// exec streams, over the server's unix socket or TCP (with a bearer token).
// The routes are those of api/openapi.json in the boxctl repository; the
// tests check ROUTES against that document.
import http from 'node:http';
import https from 'node:https';
import WebSocket from 'ws';

/** Every operation of the API: operationId -> [method, path template]. */
export const ROUTES = Object.freeze({
  health: ['GET', '/v1/health'],
  openapi: ['GET', '/openapi.json'],
  metrics: ['GET', '/v1/metrics'],
  listBoxes: ['GET', '/v1/boxes'],
  createBox: ['POST', '/v1/boxes'],
  importBox: ['POST', '/v1/boxes/import'],
  getBox: ['GET', '/v1/boxes/{id}'],
  removeBox: ['DELETE', '/v1/boxes/{id}'],
  startBox: ['POST', '/v1/boxes/{id}/start'],
  stopBox: ['POST', '/v1/boxes/{id}/stop'],
  boxStats: ['GET', '/v1/boxes/{id}/stats'],
  exec: ['POST', '/v1/boxes/{id}/exec'],
  execStream: ['GET', '/v1/boxes/{id}/exec/ws'],
  putFiles: ['PUT', '/v1/boxes/{id}/files'],
  getFiles: ['GET', '/v1/boxes/{id}/files'],
  statFile: ['GET', '/v1/boxes/{id}/files/stat'],
  listFiles: ['GET', '/v1/boxes/{id}/files/list'],
  listSnapshots: ['GET', '/v1/boxes/{id}/snapshots'],
  createSnapshot: ['POST', '/v1/boxes/{id}/snapshots'],
  removeSnapshot: ['DELETE', '/v1/boxes/{id}/snapshots/{name}'],
  restoreSnapshot: ['POST', '/v1/boxes/{id}/snapshots/{name}/restore'],
  cloneBox: ['POST', '/v1/boxes/{id}/clone'],
  exportBox: ['GET', '/v1/boxes/{id}/export'],
  listCheckpoints: ['GET', '/v1/boxes/{id}/checkpoints'],
  createCheckpoint: ['POST', '/v1/boxes/{id}/checkpoints'],
  removeCheckpoint: ['DELETE', '/v1/boxes/{id}/checkpoints/{name}'],
  restoreCheckpoint: ['POST', '/v1/boxes/{id}/checkpoints/{name}/restore'],
  forkBox: ['POST', '/v1/boxes/{id}/fork'],
  listImages: ['GET', '/v1/images'],
  pullImage: ['POST', '/v1/images/pull'],
  removeImage: ['DELETE', '/v1/images'],
});

/** Stream prefixes of binary WebSocket frames. */
export const STDIN = 0;
export const STDOUT = 1;
export const STDERR = 2;

/** An error answer of the server: `code` is the API's stable error code. */
export class BoxctlError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'BoxctlError';
    this.status = status;
    this.code = code;
  }
}

function fill(template, params) {
  return template.replace(/\{(\w+)\}/g, (_, k) => {
    if (params[k] === undefined || params[k] === '') throw new TypeError(`missing path parameter ${k}`);
    return encodeURIComponent(String(params[k]));
  });
}

function queryString(query) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    for (const item of Array.isArray(v) ? v : [v]) q.append(k, String(item));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

function toError(status, body) {
  try {
    const e = JSON.parse(body.toString('utf8')).error;
    if (e && e.code) return new BoxctlError(status, e.code, e.message);
  } catch {
    // not a JSON error body
  }
  return new BoxctlError(status, '', body.toString('utf8').trim() || `HTTP ${status}`);
}

export class BoxctlClient {
  /**
   * @param {{socketPath?: string, baseUrl?: string, token?: string}} opts
   *   socketPath: the server's unix socket (default of `boxctl serve`);
   *   baseUrl: "http://127.0.0.1:7070" for `--listen`, with its token.
   */
  constructor(opts = {}) {
    if (!opts.socketPath === !opts.baseUrl) throw new TypeError('give exactly one of socketPath or baseUrl');
    this.socketPath = opts.socketPath;
    this.baseUrl = opts.baseUrl ? new URL(opts.baseUrl) : undefined;
    this.token = opts.token;
    const Agent = this.baseUrl?.protocol === 'https:' ? https.Agent : http.Agent;
    this.agent = new Agent({ keepAlive: true });
  }

  /** Drops the client's idle connections. */
  close() {
    this.agent.destroy();
  }

  /** Sends a request and returns its status, headers and body (a Buffer). */
  async raw(method, path, { query, body, contentType } = {}) {
    let data;
    const headers = {};
    if (body !== undefined) {
      if (Buffer.isBuffer(body) || body instanceof Uint8Array || typeof body === 'string') {
        data = Buffer.from(body);
        headers['content-type'] = contentType ?? 'application/octet-stream';
      } else {
        data = Buffer.from(JSON.stringify(body));
        headers['content-type'] = 'application/json';
      }
      headers['content-length'] = String(data.length);
    }
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    const target = path + queryString(query);
    const mod = this.baseUrl?.protocol === 'https:' ? https : http;
    const opts = this.socketPath
      ? { socketPath: this.socketPath, path: target, method, headers, agent: this.agent }
      : { host: this.baseUrl.hostname, port: this.baseUrl.port, path: target, method, headers, agent: this.agent };
    return new Promise((resolve, reject) => {
      const req = mod.request(opts, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end(data);
    });
  }

  /** Calls an operation by its operationId and returns the decoded JSON answer. */
  async call(op, { params = {}, query, body, contentType, binary } = {}) {
    const route = ROUTES[op];
    if (!route) throw new TypeError(`unknown operation ${op}`);
    const res = await this.raw(route[0], fill(route[1], params), { query, body, contentType });
    if (res.status >= 400) throw toError(res.status, res.body);
    if (binary) return res.body;
    if (res.status === 204 || res.body.length === 0) return undefined;
    return JSON.parse(res.body.toString('utf8'));
  }

  health() { return this.call('health'); }
  openapi() { return this.call('openapi'); }
  metrics() { return this.call('metrics'); }

  async listBoxes({ label } = {}) { return (await this.call('listBoxes', { query: { label } })).boxes; }
  createBox(req) { return this.call('createBox', { body: req }); }
  getBox(id) { return this.call('getBox', { params: { id } }); }
  removeBox(id, { force } = {}) { return this.call('removeBox', { params: { id }, query: { force } }); }
  startBox(id, { cold } = {}) { return this.call('startBox', { params: { id }, body: { cold } }); }
  stopBox(id, { timeoutSeconds } = {}) { return this.call('stopBox', { params: { id }, body: { timeout_seconds: timeoutSeconds } }); }
  boxStats(id) { return this.call('boxStats', { params: { id } }); }

  /** Runs a command and collects its output: {exit_code, stdout, stderr, ...}. */
  exec(id, req) { return this.call('exec', { params: { id }, body: req }); }

  /**
   * Starts a streaming exec over WebSocket.
   * @param {string} id
   * @param {{cmd: string[], env?: string[], workdir?: string, user?: string, tty?: boolean,
   *          cols?: number, rows?: number, stdin?: boolean, timeoutSeconds?: number,
   *          onStdout?: (b: Buffer) => void, onStderr?: (b: Buffer) => void}} opts
   */
  execStream(id, opts) {
    const query = queryString({
      cmd: opts.cmd, env: opts.env, workdir: opts.workdir, user: opts.user, tty: opts.tty ? 1 : undefined,
      cols: opts.cols, rows: opts.rows, stdin: opts.stdin ? 1 : undefined, timeout_seconds: opts.timeoutSeconds,
    });
    const path = fill(ROUTES.execStream[1], { id }) + query;
    let url;
    if (this.socketPath) url = `ws+unix://${this.socketPath}:${path}`;
    else url = `${this.baseUrl.protocol === 'https:' ? 'wss' : 'ws'}://${this.baseUrl.host}${path}`;
    const headers = this.token ? { authorization: `Bearer ${this.token}` } : {};
    return new ExecStream(new WebSocket(url, { headers }), opts);
  }

  /** Uploads one file's bytes to path (created or replaced). */
  putFile(id, path, data, { mode } = {}) {
    return this.call('putFiles', { params: { id }, query: { path, mode }, body: Buffer.from(data) });
  }
  /** Extracts a tar archive (a Buffer) into the directory dir of the box. */
  putTar(id, dir, tar, { noOverwrite } = {}) {
    return this.call('putFiles', { params: { id }, query: { path: dir, no_overwrite: noOverwrite }, body: tar, contentType: 'application/x-tar' });
  }
  /** A regular file's bytes. */
  getFile(id, path) { return this.call('getFiles', { params: { id }, query: { path, format: 'raw' }, binary: true }); }
  /** A tar of path (from the guest: not trusted; extract it with care). */
  getTar(id, path, { followSymlinks } = {}) {
    return this.call('getFiles', { params: { id }, query: { path, follow_symlinks: followSymlinks }, binary: true });
  }
  statFile(id, path) { return this.call('statFile', { params: { id }, query: { path } }); }
  async listFiles(id, path) { return (await this.call('listFiles', { params: { id }, query: { path } })).entries; }

  async listImages() { return (await this.call('listImages')).images; }
  /**
   * Pulls an image; onProgress gets each NDJSON event. Resolves to the image.
   */
  async pullImage(ref, { platform, onProgress } = {}) {
    const res = await this.raw('POST', ROUTES.pullImage[1], { body: { ref, platform } });
    if (res.status >= 400) throw toError(res.status, res.body);
    let last;
    for (const line of res.body.toString('utf8').split('\n')) {
      if (!line.trim()) continue;
      last = JSON.parse(line);
      onProgress?.(last);
      if (last.type === 'error') throw new BoxctlError(0, last.error.code, last.error.message);
    }
    if (!last || last.type !== 'done') throw new BoxctlError(0, 'internal', `pull ${ref}: the stream ended without a result`);
    return last.image;
  }
  removeImage(ref, { force } = {}) { return this.call('removeImage', { query: { ref, force } }); }

  async listSnapshots(id) { return (await this.call('listSnapshots', { params: { id } })).snapshots; }
  createSnapshot(id, name) { return this.call('createSnapshot', { params: { id }, body: { name } }); }
  removeSnapshot(id, name) { return this.call('removeSnapshot', { params: { id, name } }); }
  restoreSnapshot(id, name, { force, timeoutSeconds } = {}) {
    return this.call('restoreSnapshot', { params: { id, name }, body: { force, timeout_seconds: timeoutSeconds } });
  }
  async cloneBox(id, req = {}) { return (await this.call('cloneBox', { params: { id }, body: req })).boxes; }
  exportBox(id, { withSnapshots, withImage } = {}) {
    return this.call('exportBox', { params: { id }, query: { with_snapshots: withSnapshots, with_image: withImage }, binary: true });
  }
  importBox(archive, { name } = {}) { return this.call('importBox', { query: { name }, body: archive }); }
  async listCheckpoints(id) { return (await this.call('listCheckpoints', { params: { id } })).checkpoints; }
  createCheckpoint(id, name) { return this.call('createCheckpoint', { params: { id }, body: { name } }); }
  removeCheckpoint(id, name) { return this.call('removeCheckpoint', { params: { id, name } }); }
  restoreCheckpoint(id, name, { force, timeoutSeconds } = {}) {
    return this.call('restoreCheckpoint', { params: { id, name }, body: { force, timeout_seconds: timeoutSeconds } });
  }
  async forkBox(id, req = {}) { return (await this.call('forkBox', { params: { id }, body: req })).boxes; }
}

/** A streaming exec: write stdin, resize, signal; `exit` resolves to the exit code. */
export class ExecStream {
  constructor(ws, opts) {
    this.ws = ws;
    this.opened = new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('unexpected-response', (_req, res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => reject(toError(res.statusCode, Buffer.concat(chunks))));
      });
      ws.once('error', reject);
    });
    this.exit = new Promise((resolve, reject) => {
      let done = false;
      ws.on('message', (data, isBinary) => {
        const buf = Buffer.isBuffer(data) ? data : Buffer.from(data);
        if (isBinary) {
          if (buf[0] === STDOUT) opts.onStdout?.(buf.subarray(1));
          else if (buf[0] === STDERR) opts.onStderr?.(buf.subarray(1));
          return;
        }
        const ctl = JSON.parse(buf.toString('utf8'));
        if (ctl.type === 'exit') {
          done = true;
          resolve({ exitCode: ctl.exit_code, signal: ctl.signal ?? 0, timedOut: !!ctl.timed_out });
        } else if (ctl.type === 'error') {
          done = true;
          reject(new BoxctlError(0, ctl.error.code, ctl.error.message));
        }
      });
      ws.on('close', () => { if (!done) reject(new BoxctlError(0, 'internal', 'the exec stream closed without an exit frame')); });
      this.opened.catch(reject);
    });
    // Callers that only await `opened` must not see an unhandled rejection.
    this.exit.catch(() => {});
  }

  async write(data) {
    await this.opened;
    this.ws.send(Buffer.concat([Buffer.from([STDIN]), Buffer.from(data)]), { binary: true });
  }
  async control(msg) {
    await this.opened;
    this.ws.send(JSON.stringify(msg));
  }
  resize(cols, rows) { return this.control({ type: 'resize', cols, rows }); }
  signal(signal) { return this.control({ type: 'signal', signal }); }
  closeStdin() { return this.control({ type: 'close_stdin' }); }
  /** Closes the stream; a command still running is killed by the server. */
  close() { this.ws.close(); }
}
