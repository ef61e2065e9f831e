// Bad opening handshakes (RFC 6455 section 4, Pusher's /app/{key}?protocol=N),
// sent byte by byte over raw TCP. Refusals Pusher defines (unknown app, disabled
// app, bad path or protocol version) are upgraded, then sent `pusher:error` and
// the close code with the same number, which is how Pusher clients learn why;
// malformed upgrades are answered in HTTP with a JSON error.
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import {
  APP,
  Conn,
  DISABLED_APP,
  WsClient,
  assertJsonError,
  assertPusherError,
  configWith,
  rawRequest,
  readResponse,
  stillServes,
  upgradeRequest,
  useHerald,
} from './lib.mjs';

// Short enough that the "head never finishes" case is quick; pusher-js sends
// its upgrade request at once, so fresh clients are unaffected.
const HANDSHAKE_TIMEOUT_SECS = 1;
const MAX_HEAD_BYTES = 16 * 1024;

const env = useHerald({
  config: configWith({
    tables: {
      connection: `handshake_timeout_secs = ${HANDSHAKE_TIMEOUT_SECS}\nmax_request_head_bytes = ${MAX_HEAD_BYTES}`,
    },
  }),
});

afterEach(() => stillServes(env));

/**
 * Upgrades `target` and expects Herald to refuse the connection the Pusher
 * way: `pusher:error` with `code`, then a close frame with the same code.
 */
async function assertRefusedWith(target, code, message) {
  const client = await WsClient.connect(env.herald.port, { target });
  const error = await client.nextMessage((m) => m.event === 'pusher:error', { what: `pusher:error ${code}` });
  assertPusherError(error, code, message);
  assert.equal(
    client.messages.filter((m) => m.event === 'pusher:connection_established').length,
    0,
    'a refused connection is not established',
  );
  const close = await client.closed();
  assert.equal(close.code, code, `close code (reason ${JSON.stringify(close.reason)})`);
}

test('a path other than /app/{key} is refused with 4005', async () => {
  await assertRefusedWith('/wrong/path?protocol=7', 4005, /path not found/);
  await assertRefusedWith('/app?protocol=7', 4005);
});

test('an unknown app key is refused with 4001', async () => {
  await assertRefusedWith('/app/no-such-key?protocol=7', 4001, /no-such-key/);
});

test('a disabled app is refused with 4003', async () => {
  await assertRefusedWith(`/app/${DISABLED_APP.key}?protocol=7`, 4003, /disabled/);
});

test('a missing protocol version is refused with 4008', async () => {
  await assertRefusedWith(`/app/${APP.key}`, 4008);
  await assertRefusedWith(`/app/${APP.key}?client=js&version=8.6.0`, 4008);
});

test('a protocol version that is not a number is refused with 4006', async () => {
  await assertRefusedWith(`/app/${APP.key}?protocol=seven`, 4006);
  await assertRefusedWith(`/app/${APP.key}?protocol=-1`, 4006);
  await assertRefusedWith(`/app/${APP.key}?protocol=99999999999999999999`, 4006);
});

test('an unsupported protocol version is refused with 4007', async () => {
  await assertRefusedWith(`/app/${APP.key}?protocol=4`, 4007);
  await assertRefusedWith(`/app/${APP.key}?protocol=8`, 4007);
});

test('an upgrade without Sec-WebSocket-Key is refused with 400', async () => {
  const { response, conn } = await rawRequest(env.herald.port, upgradeRequest(undefined, { 'Sec-WebSocket-Key': null }));
  assertJsonError(response, 400, /Sec-WebSocket-Key/);
  await conn.waitForEnd();
});

// RFC 6455 4.2.1: the key is a base64-encoded 16-byte value; anything else is
// not a WebSocket handshake (issue 11, defect 4: it was upgraded).
for (const [what, key] of [
  ['not base64', 'not base64 at all!'],
  ['15 bytes of base64', randomBytes(15).toString('base64')],
  ['17 bytes of base64', randomBytes(17).toString('base64')],
  ['empty', ''],
]) {
  test(`a Sec-WebSocket-Key that is ${what} is refused with 400`, async () => {
    const { response, conn } = await rawRequest(env.herald.port, upgradeRequest(undefined, { 'Sec-WebSocket-Key': key }));
    assertJsonError(response, 400, /Sec-WebSocket-Key/);
    await conn.waitForEnd();
  });
}

test('a GET without Upgrade: websocket on /app/{key} is answered 426 and not upgraded', async () => {
  const request = upgradeRequest(undefined, { Upgrade: null, Connection: null });
  const { response, conn } = await rawRequest(env.herald.port, request);
  assertJsonError(response, 426, /WebSocket/);
  conn.destroy();
  const other = upgradeRequest(undefined, { Upgrade: 'h2c', Connection: 'Upgrade' });
  const second = await rawRequest(env.herald.port, other);
  assertJsonError(second.response, 426, /WebSocket/);
  second.conn.destroy();
});

// RFC 6455 asks for `Connection: Upgrade` too; Herald goes by the Upgrade
// header alone (as browsers always send both, nothing depends on it). Pinned
// here so that a change is deliberate.
test('an upgrade without a Connection header is still upgraded', async () => {
  const client = await WsClient.established(env.herald.port, { headers: { Connection: null } });
  await client.roundTrip();
  client.destroy();
});

test('a Sec-WebSocket-Version other than 13 is answered 426 with Sec-WebSocket-Version: 13', async () => {
  for (const version of ['8', '14', 'thirteen', null]) {
    const request = upgradeRequest(undefined, { 'Sec-WebSocket-Version': version });
    const { response, conn } = await rawRequest(env.herald.port, request);
    assertJsonError(response, 426, /version/);
    assert.equal(response.headers['sec-websocket-version'], '13');
    await conn.waitForEnd();
  }
});

test('a request head that reaches max_request_head_bytes unfinished is answered 431', async () => {
  // Exactly the limit, so that Herald has read every byte when it answers
  // (unread input would make its close a reset, which could destroy the answer).
  const start = upgradeRequest(undefined, { 'X-Padding': '' });
  const head = Buffer.concat([start.subarray(0, start.length - 4), Buffer.from('\r\nX-More: ')]);
  const request = Buffer.concat([head, Buffer.alloc(MAX_HEAD_BYTES - head.length, 'p')]);
  assert.equal(request.length, MAX_HEAD_BYTES);
  const { response, conn } = await rawRequest(env.herald.port, request);
  assertJsonError(response, 431, new RegExp(`${MAX_HEAD_BYTES}`));
  await conn.waitForEnd();
});

test('a request head with too many headers is answered 431', async () => {
  const extra = Object.fromEntries(Array.from({ length: 100 }, (_, i) => [`X-Header-${i}`, 'v']));
  const { response, conn } = await rawRequest(env.herald.port, upgradeRequest(undefined, extra));
  assertJsonError(response, 431);
  await conn.waitForEnd();
});

test('a head that never finishes is closed after the handshake timeout, unanswered', async () => {
  const conn = await Conn.open(env.herald.port);
  const request = upgradeRequest();
  // Everything but the blank line that ends the head.
  await conn.write(request.subarray(0, request.length - 2));
  await conn.waitForEnd({ timeoutMs: (HANDSHAKE_TIMEOUT_SECS + 10) * 1000 });
  assert.equal(conn.received.length, 0, `nothing is answered: ${conn.received.toString('latin1')}`);
});

test('a connection that sends nothing is closed after the handshake timeout', async () => {
  const conn = await Conn.open(env.herald.port);
  await conn.waitForEnd({ timeoutMs: (HANDSHAKE_TIMEOUT_SECS + 10) * 1000 });
  assert.equal(conn.received.length, 0);
});

test('garbage instead of a request is answered 400', async () => {
  for (const garbage of [
    Buffer.from('\x00\x01 nonsense\r\n\r\n', 'latin1'),
    // A TLS ClientHello's first bytes: a client speaking TLS to the plain port.
    Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]),
    Buffer.from('GET /app/key HTTP/9.9\r\n\r\n'),
    Buffer.from('GET\r\n\r\n'),
  ]) {
    const { response, conn } = await rawRequest(env.herald.port, garbage);
    assertJsonError(response, 400, /malformed request/);
    await conn.waitForEnd();
  }
});

test('random bytes are answered 400, never upgraded', async () => {
  for (let i = 0; i < 20; i++) {
    const conn = await Conn.open(env.herald.port);
    // A first byte that cannot start a method, so the request is malformed at once.
    await conn.write(Buffer.concat([Buffer.from([0x01]), randomBytes(512)]));
    const response = await readResponse(conn);
    assertJsonError(response, 400, /malformed request/);
    await conn.waitForEnd();
  }
});

test('a valid handshake still works after all of the above', async () => {
  const client = await WsClient.established(env.herald.port);
  assert.match(client.socketId, /^\d+\.\d+$/);
  const answer = await client.subscribe('handshake-after');
  assert.equal(answer.event, 'pusher_internal:subscription_succeeded');
  client.destroy();
});
