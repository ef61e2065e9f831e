// Shared plumbing of the bad-input suite: raw sockets that say exactly what a
// misbehaving client says, and the checks every test ends with.
//
// The suite reproduces from outside the broad bad-input sweep of issue 11
// (handshakes, frames, Pusher messages, HTTP API, gRPC, slow consumers), so that
// none of its findings can come back. Each test file starts its own `herald dev`
// through ../compat/harness.mjs, sends hand-made bytes, asserts the exact answer
// (HTTP status and JSON error, close code, `pusher:error` code,
// `pusher:subscription_error` status, gRPC status) and then checks that the node
// still serves a fresh client (`stillServes`).
//
// Every wait has a deadline that fails the test rather than hanging; nothing
// waits a fixed time.

import assert from 'node:assert/strict';
import { createHash, createHmac, randomBytes } from 'node:crypto';
import { readFile, readdir, readlink } from 'node:fs/promises';
import http2 from 'node:http2';
import { createRequire } from 'node:module';
import { connect as tcpConnect } from 'node:net';

import { APP, heraldConfig, nextEvent, subscribe, waitFor } from '../compat/harness.mjs';

export { APP, DISABLED_APP, nextEvent, subscribe, useHerald, waitFor } from '../compat/harness.mjs';

// The official SDKs live in tests/compat/node_modules (scripts/install-node-deps.sh).
const compatRequire = createRequire(new URL('../compat/package.json', import.meta.url));
/** The official `pusher` server SDK, for channel and user authorization. */
export const PusherServer = compatRequire('pusher');

export const DEADLINE_MS = 5_000;

/** Resolves with `promise`'s value, or rejects if it takes longer than `ms`. */
export function withDeadline(promise, ms, what) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

/**
 * Adds `lines` (TOML `key = value` lines) to the table `[table]` of a config
 * text: after its header when the text has one, else as a new table before the
 * first `[[apps]]` (top-level tables cannot follow the array of apps).
 */
function withTable(text, table, lines) {
  const header = `[${table}]\n`;
  const at = text.indexOf(header);
  if (at >= 0) return text.slice(0, at + header.length) + lines + '\n' + text.slice(at + header.length);
  const apps = text.indexOf('[[apps]]');
  return text.slice(0, apps) + header + lines + '\n\n' + text.slice(apps);
}

/**
 * The compat suite's config (`heraldConfig`: fresh ports, the compat app and a
 * disabled app) plus settings of our own: `tables` maps a table name
 * (`connection`, `http`, `grpc`...) to TOML lines; `appLimits` are TOML lines
 * for `[apps.limits]` of the compat app (the first app).
 */
export function configWith({ tables = {}, appLimits } = {}) {
  return (ports) => {
    let text = heraldConfig(ports);
    for (const [table, lines] of Object.entries(tables)) text = withTable(text, table, lines);
    if (appLimits) {
      const second = text.indexOf('[[apps]]', text.indexOf('[[apps]]') + 1);
      text = text.slice(0, second) + `[apps.limits]\n${appLimits}\n\n` + text.slice(second);
    }
    return text;
  };
}

// ---------------------------------------------------------------------------
// The node still serves
// ---------------------------------------------------------------------------

/**
 * A fresh pusher-js client connects, subscribes to a channel of its own and
 * receives an event published through the HTTP API: what every test checks
 * after its bad input.
 */
export async function stillServes(env) {
  const client = await env.connectedClient();
  try {
    const name = `fresh-${randomBytes(6).toString('hex')}`;
    const channel = await subscribe(client, name);
    const tag = randomBytes(8).toString('hex');
    const arrival = nextEvent(channel, 'fresh-check', { filter: (data) => data?.tag === tag });
    await env.sdk().trigger(name, 'fresh-check', { tag });
    await arrival;
  } finally {
    env.disconnect(client);
  }
}

// ---------------------------------------------------------------------------
// Raw TCP
// ---------------------------------------------------------------------------

/**
 * A TCP connection that keeps everything it receives, for tests to wait on:
 * `received` (a Buffer of every byte so far), `ended` (resolves when the
 * server closed its side or the socket closed), `waitFor(predicate)`.
 */
export class Conn {
  static open(port, host = '127.0.0.1') {
    return new Promise((resolve, reject) => {
      const socket = tcpConnect({ port, host });
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new Conn(socket));
      });
      socket.once('error', reject);
    });
  }

  constructor(socket) {
    this.socket = socket;
    this.chunks = [];
    this.length = 0;
    this.error = null;
    this.endedBy = null;
    this.listeners = new Set();
    socket.on('data', (chunk) => {
      this.chunks.push(chunk);
      this.length += chunk.length;
      this.notify();
    });
    // A reset or a refused write ends the connection too; the test decides
    // whether that is the expected outcome.
    socket.on('error', (error) => {
      this.error = error;
    });
    this.ended = new Promise((resolve) => {
      socket.once('end', () => {
        this.endedBy ??= 'fin';
        resolve(this.endedBy);
        this.notify();
      });
      socket.once('close', () => {
        this.endedBy ??= this.error ? `error: ${this.error.code ?? this.error.message}` : 'close';
        resolve(this.endedBy);
        this.notify();
      });
    });
  }

  /** Every byte received so far. */
  get received() {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0] ?? Buffer.alloc(0);
  }

  notify() {
    for (const listener of [...this.listeners]) listener();
  }

  /**
   * Resolves with `predicate(received, ended)`'s first truthy value, checked
   * on every arrival and at the end of the connection.
   */
  waitFor(predicate, { timeoutMs = DEADLINE_MS, what = 'data from the server' } = {}) {
    let listener;
    const found = new Promise((resolve, reject) => {
      listener = () => {
        try {
          const value = predicate(this.received, this.endedBy !== null);
          if (value) resolve(value);
        } catch (error) {
          reject(error);
        }
      };
      this.listeners.add(listener);
      listener();
    });
    return withDeadline(found, timeoutMs, what).finally(() => this.listeners.delete(listener));
  }

  /** Resolves once the server has ended the connection; fails after the deadline. */
  waitForEnd({ timeoutMs = DEADLINE_MS, what = 'the server to close the connection' } = {}) {
    return withDeadline(this.ended, timeoutMs, what);
  }

  write(bytes) {
    return new Promise((resolve) => this.socket.write(bytes, () => resolve()));
  }

  destroy() {
    this.socket.destroy();
  }
}

/**
 * An HTTP/1.1 response at the start of `buf`, once it is complete (by its
 * Content-Length, or the end of the connection): `{ status, headers, text,
 * json, size }` (`size`: bytes it took); `null` before.
 */
export function parseResponse(buf, ended) {
  const headEnd = buf.indexOf('\r\n\r\n');
  if (headEnd < 0) {
    if (ended) throw new Error(`connection ended before a complete response head: ${JSON.stringify(buf.toString('latin1'))}`);
    return null;
  }
  const [statusLine, ...lines] = buf.subarray(0, headEnd).toString('latin1').split('\r\n');
  const match = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine);
  if (!match) throw new Error(`not an HTTP response: ${JSON.stringify(statusLine)}`);
  const headers = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  const status = Number(match[1]);
  const bodyStart = headEnd + 4;
  let size;
  if (status === 101 || status === 204 || status === 304) {
    size = bodyStart;
  } else if (headers['content-length'] !== undefined) {
    size = bodyStart + Number(headers['content-length']);
    if (buf.length < size) {
      if (ended) throw new Error(`connection ended inside a response body of ${headers['content-length']} bytes`);
      return null;
    }
  } else if (headers['transfer-encoding']?.includes('chunked')) {
    throw new Error('chunked responses are not expected from Herald');
  } else {
    if (!ended) return null;
    size = buf.length;
  }
  const text = buf.subarray(bodyStart, size).toString('utf8');
  let json;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  return { status, headers, text, json, size };
}

/** Waits for the (first) HTTP response on a raw connection. */
export function readResponse(conn, { timeoutMs = DEADLINE_MS, what = 'an HTTP response' } = {}) {
  return conn.waitFor((buf, ended) => parseResponse(buf, ended), { timeoutMs, what });
}

/**
 * Sends `bytes` on a new connection and resolves with the HTTP response and
 * the connection (still open if the server keeps it alive).
 */
export async function rawRequest(port, bytes, options) {
  const conn = await Conn.open(port);
  await conn.write(bytes);
  const response = await readResponse(conn, options);
  return { response, conn };
}

/** Asserts a JSON error answer: the status, and `{"error": <message matching `message`>}`. */
export function assertJsonError(response, status, message) {
  assert.equal(response.status, status, `expected HTTP ${status}, got ${response.status}: ${response.text}`);
  assert.match(response.headers['content-type'] ?? '', /^application\/json/);
  assert.equal(typeof response.json?.error, 'string', `expected a JSON {"error": ...} body, got ${response.text}`);
  if (message) assert.match(response.json.error, message);
}

// ---------------------------------------------------------------------------
// The Pusher HTTP API, signed by hand (so that a test can sign it wrongly)
// ---------------------------------------------------------------------------

/**
 * The query string of a Pusher HTTP API request signed as Pusher signs it:
 * `auth_key`, `auth_timestamp`, `auth_version`, `body_md5` (for a body), then
 * `auth_signature` = hex HMAC-SHA256 of "METHOD\nPATH\nsorted query".
 * `bodyForMd5` is the body the MD5 is computed over (the real body by default);
 * `timestamp` in seconds; `key`/`secret` default to the compat app's.
 */
export function signedQuery(
  method,
  path,
  { body = '', bodyForMd5 = body, timestamp, key = APP.key, secret = APP.secret, params = {} } = {},
) {
  const query = {
    ...params,
    auth_key: key,
    auth_timestamp: String(timestamp ?? Math.floor(Date.now() / 1000)),
    auth_version: '1.0',
  };
  if (bodyForMd5.length > 0) query.body_md5 = createHash('md5').update(bodyForMd5).digest('hex');
  const sorted = Object.keys(query)
    .map((k) => [k.toLowerCase(), query[k]])
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
  const signature = createHmac('sha256', secret).update(`${method}\n${path}\n${sorted}`).digest('hex');
  return new URLSearchParams({ ...query, auth_signature: signature }).toString();
}

/**
 * A raw HTTP/1.1 request head (and body): `headers` are added as given,
 * Content-Length is the body's unless `contentLength` says otherwise (or is
 * `null`: none).
 */
export function httpRequest(method, target, { body = '', headers = {}, contentLength } = {}) {
  const lines = [`${method} ${target} HTTP/1.1`, 'Host: 127.0.0.1'];
  const length = contentLength === undefined ? Buffer.byteLength(body) : contentLength;
  if (length !== null && (method !== 'GET' || length !== 0)) lines.push(`Content-Length: ${length}`);
  for (const [name, value] of Object.entries(headers)) lines.push(`${name}: ${value}`);
  if (body && !Object.keys(headers).some((h) => h.toLowerCase() === 'content-type')) {
    lines.push('Content-Type: application/json');
  }
  return Buffer.concat([Buffer.from(lines.join('\r\n') + '\r\n\r\n', 'latin1'), Buffer.from(body)]);
}

/** A correctly signed request to the compat app's API: `path` below `/apps/<id>`. */
export function signedRequest(method, path, { body = '', ...options } = {}) {
  const fullPath = `/apps/${APP.id}${path}`;
  const query = signedQuery(method, fullPath, { body, ...options });
  return httpRequest(method, `${fullPath}?${query}`, { body, ...options });
}

// ---------------------------------------------------------------------------
// WebSocket (RFC 6455) by hand
// ---------------------------------------------------------------------------

export const OP = Object.freeze({ continuation: 0x0, text: 0x1, binary: 0x2, close: 0x8, ping: 0x9, pong: 0xa });

/**
 * A client frame: masked (unless `mask` is false) with `maskKey` (random by
 * default); `rsv` is the three reserved bits (0-7); `length` overrides the
 * declared payload length (to declare more than is sent).
 */
export function encodeFrame({ opcode, payload = Buffer.alloc(0), fin = true, rsv = 0, mask = true, maskKey = randomBytes(4), length }) {
  const data = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  const declared = length ?? data.length;
  let header;
  if (declared < 126) {
    header = Buffer.from([0, declared]);
  } else if (declared <= 0xffff) {
    header = Buffer.alloc(4);
    header.writeUInt16BE(declared, 2);
    header[1] = 126;
  } else {
    header = Buffer.alloc(10);
    header.writeBigUInt64BE(BigInt(declared), 2);
    header[1] = 127;
  }
  header[0] = (fin ? 0x80 : 0) | ((rsv & 7) << 4) | (opcode & 0x0f);
  if (!mask) return Buffer.concat([header, data]);
  header[1] |= 0x80;
  const masked = Buffer.from(data.map((b, i) => b ^ maskKey[i % 4]));
  return Buffer.concat([header, maskKey, masked]);
}

/** A close frame's payload: the code (2 bytes) and a reason (string or bytes). */
export function closePayload(code, reason = '') {
  const head = Buffer.alloc(2);
  head.writeUInt16BE(code);
  return Buffer.concat([head, Buffer.isBuffer(reason) ? reason : Buffer.from(reason)]);
}

/**
 * Server frames (unmasked) from the start of `buf`: `{ frames, used }`, each
 * frame `{ fin, rsv, opcode, payload }`. Stops at an incomplete frame.
 */
export function parseServerFrames(buf) {
  const frames = [];
  let at = 0;
  for (;;) {
    if (buf.length - at < 2) break;
    const first = buf[at];
    const second = buf[at + 1];
    if (second & 0x80) throw new Error('the server sent a masked frame');
    let length = second & 0x7f;
    let header = 2;
    if (length === 126) {
      if (buf.length - at < 4) break;
      length = buf.readUInt16BE(at + 2);
      header = 4;
    } else if (length === 127) {
      if (buf.length - at < 10) break;
      length = Number(buf.readBigUInt64BE(at + 2));
      header = 10;
    }
    if (buf.length - at < header + length) break;
    frames.push({
      fin: (first & 0x80) !== 0,
      rsv: (first >> 4) & 7,
      opcode: first & 0x0f,
      payload: buf.subarray(at + header, at + header + length),
    });
    at += header + length;
  }
  return { frames, used: at };
}

/** The opening handshake's request, with `headers` overriding the standard ones (`null` drops one). */
export function upgradeRequest(target = `/app/${APP.key}?protocol=7`, headers = {}) {
  const standard = {
    Host: '127.0.0.1',
    Upgrade: 'websocket',
    Connection: 'Upgrade',
    'Sec-WebSocket-Key': randomBytes(16).toString('base64'),
    'Sec-WebSocket-Version': '13',
  };
  const lines = [`GET ${target} HTTP/1.1`];
  for (const [name, value] of Object.entries({ ...standard, ...headers })) {
    if (value !== null) lines.push(`${name}: ${value}`);
  }
  return Buffer.from(lines.join('\r\n') + '\r\n\r\n', 'latin1');
}

/** RFC 6455's accept value for a key. */
export function acceptFor(key) {
  return createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
}

/**
 * A WebSocket client over a raw connection, after a `101`: it parses the
 * server's frames as they come and keeps them (`frames`), and sends whatever
 * bytes a test makes. JSON text messages are available parsed (`messages`).
 */
export class WsClient {
  /**
   * Performs the opening handshake on `target`; resolves with the client once
   * the server answered 101 (and checks its Sec-WebSocket-Accept), rejects
   * with the response otherwise.
   */
  static async connect(port, { target, headers } = {}) {
    const request = upgradeRequest(target, headers);
    const conn = await Conn.open(port);
    await conn.write(request);
    const response = await readResponse(conn, { what: 'the answer to the upgrade request' });
    if (response.status !== 101) {
      conn.destroy();
      const error = new Error(`upgrade refused: HTTP ${response.status} ${response.text}`);
      error.response = response;
      throw error;
    }
    const key = /Sec-WebSocket-Key: (.*)\r\n/.exec(request.toString('latin1'))?.[1];
    if (key) assert.equal(response.headers['sec-websocket-accept'], acceptFor(key), 'Sec-WebSocket-Accept');
    return new WsClient(conn, response.size);
  }

  /** Connects and waits for `pusher:connection_established`; `socketId` is then set. */
  static async established(port, options) {
    const client = await WsClient.connect(port, options);
    const established = await client.nextMessage((m) => m.event === 'pusher:connection_established');
    client.socketId = JSON.parse(established.data).socket_id;
    return client;
  }

  constructor(conn, offset) {
    this.conn = conn;
    this.offset = offset;
    this.frames = [];
    this.parsed = [];
  }

  /** Parses whatever arrived since the last look. */
  update() {
    const { frames, used } = parseServerFrames(this.conn.received.subarray(this.offset));
    this.offset += used;
    for (const frame of frames) {
      this.frames.push(frame);
      if (frame.opcode === OP.text) this.parsed.push(JSON.parse(frame.payload.toString('utf8')));
    }
    return this.frames;
  }

  /** Waits for a frame satisfying `predicate` (among all received so far); resolves with it. */
  nextFrame(predicate, { timeoutMs = DEADLINE_MS, what = 'a frame' } = {}) {
    return this.conn.waitFor(
      () => {
        const found = this.update().find(predicate);
        if (found) return found;
        return null;
      },
      { timeoutMs, what },
    );
  }

  /** Every JSON text message received so far. */
  get messages() {
    this.update();
    return this.parsed;
  }

  /**
   * Waits for a JSON message satisfying `predicate` that arrived after the
   * `skip` first ones; resolves with it.
   */
  nextMessage(predicate, { skip = 0, timeoutMs = DEADLINE_MS, what = 'a message' } = {}) {
    return this.conn.waitFor(() => this.messages.slice(skip).find(predicate) ?? null, { timeoutMs, what });
  }

  /**
   * Waits for the server's close: `{ code, reason, frame }` from its close
   * frame (`code` 1005 for an empty one), or `{ code: 1006 }` when the
   * connection ended without one. Also waits for the server to end the TCP
   * connection (it does after its close frame, once we close our side).
   */
  async closed({ timeoutMs = DEADLINE_MS } = {}) {
    const outcome = await this.conn.waitFor(
      (_, ended) => {
        const close = this.update().find((f) => f.opcode === OP.close);
        if (close) return { close };
        return ended ? { close: null } : null;
      },
      { timeoutMs, what: 'the server to close the WebSocket' },
    );
    // Answer the close handshake, as a client must, so the server can finish.
    this.conn.socket.end();
    await this.conn.waitForEnd({ timeoutMs, what: 'the server to end the TCP connection after its close' });
    if (!outcome.close) return { code: 1006, reason: '', frame: null };
    const payload = outcome.close.payload;
    if (payload.length === 0) return { code: 1005, reason: '', frame: outcome.close };
    return { code: payload.readUInt16BE(0), reason: payload.subarray(2).toString('utf8'), frame: outcome.close };
  }

  send(bytes) {
    return this.conn.write(bytes);
  }

  sendFrame(options) {
    return this.send(encodeFrame(options));
  }

  sendText(text) {
    return this.sendFrame({ opcode: OP.text, payload: Buffer.from(text) });
  }

  sendJson(message) {
    return this.sendText(JSON.stringify(message));
  }

  /**
   * Sends `pusher:ping` and waits for its `pusher:pong`: the server has then
   * handled everything sent before, and everything it sent before is here.
   */
  async roundTrip({ timeoutMs = DEADLINE_MS } = {}) {
    const skip = this.messages.length;
    await this.sendJson({ event: 'pusher:ping', data: {} });
    await this.nextMessage((m) => m.event === 'pusher:pong', { skip, timeoutMs, what: 'pusher:pong' });
  }

  /**
   * Sends what came in after the last `skip` messages, up to a round trip:
   * resolves with the messages (other than the pong) that answered `send()`.
   */
  async answersTo(send) {
    const skip = this.messages.length;
    await send();
    await this.roundTrip();
    return this.messages.slice(skip).filter((m) => m.event !== 'pusher:pong');
  }

  /** Subscribes and resolves with the answer: `subscription_succeeded` or `subscription_error`. */
  async subscribe(channel, extra = {}) {
    const skip = this.messages.length;
    await this.sendJson({ event: 'pusher:subscribe', data: { channel, ...extra } });
    return this.nextMessage(
      (m) =>
        m.channel === channel &&
        (m.event === 'pusher_internal:subscription_succeeded' || m.event === 'pusher:subscription_error'),
      { skip, what: `the answer to subscribing to ${channel}` },
    );
  }

  destroy() {
    this.conn.destroy();
  }
}

/** Asserts that `message` is a `pusher:error` with `code` (null: none) and a message matching `text`. */
export function assertPusherError(message, code, text) {
  assert.equal(message?.event, 'pusher:error', `expected pusher:error, got ${JSON.stringify(message)}`);
  assert.equal(message.data.code, code, `pusher:error code: ${JSON.stringify(message)}`);
  if (text) assert.match(message.data.message, text);
}

// ---------------------------------------------------------------------------
// gRPC by hand (HTTP/2, protobuf encoded here)
// ---------------------------------------------------------------------------

function varint(value) {
  const bytes = [];
  let v = BigInt(value);
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) byte |= 0x80;
    bytes.push(byte);
  } while (v > 0n);
  return Buffer.from(bytes);
}

/** A length-delimited protobuf field (strings, bytes, messages). */
export function pbField(number, value) {
  const bytes = Buffer.isBuffer(value) ? value : Buffer.from(value);
  return Buffer.concat([varint((number << 3) | 2), varint(bytes.length), bytes]);
}

/** `herald.v1.PublishRequest { app_id, event: Event { name, data, channels } }`. */
export function publishRequest({ appId = APP.id, name = 'e', data = '{}', channels = [] }) {
  const event = Buffer.concat([pbField(1, name), pbField(2, data), ...channels.map((c) => pbField(4, c))]);
  return Buffer.concat([pbField(1, appId), pbField(2, event)]);
}

/** A gRPC message frame: compression flag, 4-byte big-endian length, message. */
export function grpcFrame(message, { compressed = false, length } = {}) {
  const head = Buffer.alloc(5);
  head[0] = compressed ? 1 : 0;
  head.writeUInt32BE(length ?? message.length, 1);
  return Buffer.concat([head, message]);
}

/**
 * One gRPC call over a new HTTP/2 connection: `body` is sent as the request's
 * DATA and the stream ended. Resolves with `{ httpStatus, headers, trailers,
 * grpcStatus, grpcMessage, data, rstCode }`: `grpcStatus` from the trailers,
 * or from the headers of a trailers-only answer.
 */
export function grpcCall(port, path, body, { headers = {}, timeoutMs = DEADLINE_MS } = {}) {
  const session = http2.connect(`http://127.0.0.1:${port}`);
  const call = new Promise((resolve, reject) => {
    session.on('error', reject);
    const request = session.request({
      ':method': 'POST',
      ':path': path,
      'content-type': 'application/grpc',
      te: 'trailers',
      ...headers,
    });
    const result = { httpStatus: null, headers: null, trailers: null, data: Buffer.alloc(0), rstCode: null };
    request.on('response', (h) => {
      result.httpStatus = h[':status'];
      result.headers = h;
    });
    request.on('trailers', (t) => {
      result.trailers = t;
    });
    request.on('data', (chunk) => {
      result.data = Buffer.concat([result.data, chunk]);
    });
    request.on('error', () => {});
    request.on('close', () => {
      result.rstCode = request.rstCode;
      const source = result.trailers ?? result.headers ?? {};
      const status = source['grpc-status'];
      result.grpcStatus = status === undefined ? null : Number(status);
      const message = source['grpc-message'];
      result.grpcMessage = message === undefined ? null : decodeURIComponent(message);
      resolve(result);
    });
    request.end(body);
  });
  return withDeadline(call, timeoutMs, `the answer to ${path}`).finally(() => session.destroy());
}

export const GRPC = Object.freeze({
  OK: 0,
  INVALID_ARGUMENT: 3,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAUTHENTICATED: 16,
});

// ---------------------------------------------------------------------------
// The Herald process: metrics and memory
// ---------------------------------------------------------------------------

/** The sum of a Prometheus metric's samples (every label set) on Herald's metrics port. */
export async function metricValue(env, name) {
  const res = await fetch(`http://127.0.0.1:${env.herald.metricsPort}/metrics`);
  const text = await res.text();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name} `) || line.startsWith(`${name}{`)) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

/** The values of the `code` label of herald_connections_closed_total on Herald's metrics port. */
export async function closeCodeLabels(env) {
  const res = await fetch(`http://127.0.0.1:${env.herald.metricsPort}/metrics`);
  const text = await res.text();
  const values = new Set();
  for (const line of text.split('\n')) {
    if (!line.startsWith('herald_connections_closed_total{')) continue;
    const code = /[{,]code="([^"]*)"/.exec(line)?.[1];
    if (code !== undefined) values.add(code);
  }
  return values;
}

/** The pid of a Herald: the harness's, or found from its listening port. */
export async function heraldPid(env) {
  return env.herald.pid ?? pidListeningOn(env.herald.port);
}

/**
 * The pid of the process listening on 127.0.0.1:`port`: its listening
 * socket's inode from /proc/net/tcp, then the process holding that inode.
 * (The harness does not hand out its child process.)
 */
export async function pidListeningOn(port) {
  const table = await readFile('/proc/net/tcp', 'utf8');
  const wanted = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  const row = table
    .split('\n')
    .slice(1)
    .map((line) => line.trim().split(/\s+/))
    .find((cols) => cols[1] === wanted && cols[3] === '0A');
  if (!row) throw new Error(`nothing listens on 127.0.0.1:${port}`);
  const socket = `socket:[${row[9]}]`;
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    let fds;
    try {
      fds = await readdir(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        if ((await readlink(`/proc/${pid}/fd/${fd}`)) === socket) return Number(pid);
      } catch {
        // The fd closed meanwhile.
      }
    }
  }
  throw new Error(`no process holds the socket listening on port ${port}`);
}

/** Resident memory of a process, in bytes (VmRSS). */
export async function rssBytes(pid) {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = /^VmRSS:\s+(\d+) kB/m.exec(status);
  if (!kb) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(kb[1]) * 1024;
}
