// Slow and stalled HTTP API requests (issue 11, defect 3): a body that stops
// after a few bytes, or trickles in, must cost the server a bounded time. With
// `[http] body_timeout_secs` set short here, each is answered 408 (JSON) and
// its connection closed; so are 200 of them at once. A head that never
// finishes, and an idle keep-alive connection, are closed after
// `[connection] handshake_timeout_secs`.
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  APP,
  Conn,
  assertJsonError,
  configWith,
  httpRequest,
  parseResponse,
  readResponse,
  signedQuery,
  signedRequest,
  stillServes,
  useHerald,
} from './lib.mjs';

const BODY_TIMEOUT_SECS = 1;
const HANDSHAKE_TIMEOUT_SECS = 1;
// Generous: a timeout of a second, on a loaded machine.
const CLOSE_DEADLINE_MS = (BODY_TIMEOUT_SECS + HANDSHAKE_TIMEOUT_SECS + 8) * 1000;
const STALLED_CONNECTIONS = 200;

const env = useHerald({
  config: configWith({
    tables: {
      http: `body_timeout_secs = ${BODY_TIMEOUT_SECS}`,
      connection: `handshake_timeout_secs = ${HANDSHAKE_TIMEOUT_SECS}`,
    },
  }),
});

afterEach(() => stillServes(env));

const eventsPath = `/apps/${APP.id}/events`;
const body = JSON.stringify({ name: 'slow', data: 'x'.repeat(1000), channels: ['http-slow'] });

/**
 * The head of a correctly signed publish whose body is `body`, declared in
 * full, and the first `sent` bytes of that body: nothing but the body's
 * arrival is wrong with it.
 */
function stalledRequest(sent = 10) {
  const query = signedQuery('POST', eventsPath, { body });
  const head = httpRequest('POST', `${eventsPath}?${query}`, { contentLength: Buffer.byteLength(body) });
  return Buffer.concat([head, Buffer.from(body.slice(0, sent))]);
}

/** Waits for a 408 JSON answer and the end of the connection. */
async function assertTimedOut(conn) {
  const response = await readResponse(conn, { timeoutMs: CLOSE_DEADLINE_MS, what: 'a 408 for the stalled body' });
  assertJsonError(response, 408);
  await conn.waitForEnd({ timeoutMs: CLOSE_DEADLINE_MS });
}

test('a body that stalls after a few bytes is answered 408 and the connection closed', async () => {
  const conn = await Conn.open(env.herald.port);
  await conn.write(stalledRequest(10));
  await assertTimedOut(conn);
});

test('a body that never starts is answered 408 and the connection closed', async () => {
  const conn = await Conn.open(env.herald.port);
  await conn.write(stalledRequest(0));
  await assertTimedOut(conn);
});

test('a body that trickles in slower than the body timeout is answered 408', async () => {
  const conn = await Conn.open(env.herald.port);
  await conn.write(stalledRequest(1));
  // One byte every 100 ms: never idle long, but the whole body would take
  // minutes. A load pattern, not synchronisation: the test waits for the answer.
  let next = 1;
  const trickle = setInterval(() => {
    if (conn.endedBy === null && next < body.length) conn.socket.write(body[next++]);
  }, 100);
  try {
    await assertTimedOut(conn);
  } finally {
    clearInterval(trickle);
  }
  assert.ok(next < body.length, 'answered before the body was complete');
});

test(`${STALLED_CONNECTIONS} stalled bodies are all answered 408 and closed`, async () => {
  const conns = [];
  try {
    for (let i = 0; i < STALLED_CONNECTIONS; i++) {
      const conn = await Conn.open(env.herald.port);
      conns.push(conn);
      await conn.write(stalledRequest(10));
    }
    const results = await Promise.allSettled(conns.map((conn) => assertTimedOut(conn)));
    const failed = results.filter((r) => r.status === 'rejected');
    const first = failed[0]?.reason?.message;
    assert.equal(failed.length, 0, `${failed.length} of ${STALLED_CONNECTIONS} not answered and closed; first: ${first}`);
  } finally {
    for (const conn of conns) conn.destroy();
  }
});

test('a request head that stalls on a keep-alive connection is closed after the handshake timeout', async () => {
  const conn = await Conn.open(env.herald.port);
  const good = signedRequest('POST', '/events', { body });
  const second = good.subarray(0, 40);
  await conn.write(Buffer.concat([good, second]));
  const first = await readResponse(conn);
  assert.equal(first.status, 200, first.text);
  await conn.waitForEnd({ timeoutMs: CLOSE_DEADLINE_MS });
  assertNothingOr408(conn.received.subarray(first.size));
});

test('an idle keep-alive connection is closed after the handshake timeout', async () => {
  const conn = await Conn.open(env.herald.port);
  await conn.write(signedRequest('POST', '/events', { body }));
  const first = await readResponse(conn);
  assert.equal(first.status, 200, first.text);
  await conn.waitForEnd({ timeoutMs: CLOSE_DEADLINE_MS });
  assertNothingOr408(conn.received.subarray(first.size));
});

/** After a timeout on a head, a server may say nothing or 408; anything else is wrong. */
function assertNothingOr408(rest) {
  if (rest.length === 0) return;
  const response = parseResponse(rest, true);
  assert.equal(response.status, 408, `after the timeout: ${rest.toString('latin1')}`);
}
