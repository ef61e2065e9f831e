// Bad requests to the Pusher HTTP API, written by hand over raw TCP: bad or
// missing signatures, unknown apps and routes, bad bodies, and bodies that are
// too large, declared too large, or never sent. Every refusal is a JSON
// `{"error": ...}` with the status Pusher documents. (Bodies that arrive too
// slowly are in http-slow.test.mjs, with a short body timeout.)
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  APP,
  Conn,
  DEADLINE_MS,
  DISABLED_APP,
  assertJsonError,
  httpRequest,
  parseResponse,
  rawRequest,
  readResponse,
  signedQuery,
  signedRequest,
  stillServes,
  useHerald,
} from './lib.mjs';

// Herald's defaults (config/herald.example.toml).
const MAX_BODY_BYTES = 256 * 1024;
const TOLERANCE_SECS = 600;
const MAX_EVENT_DATA = 10 * 1024;
const BODY_TIMEOUT_SECS = 10;

const env = useHerald();

afterEach(() => stillServes(env));

const send = async (bytes) => {
  const { response, conn } = await rawRequest(env.herald.port, bytes);
  conn.destroy();
  return response;
};
const eventBody = (extra = {}) => JSON.stringify({ name: 'e', data: '{}', channels: ['http-bad'], ...extra });
const eventsPath = `/apps/${APP.id}/events`;
const now = () => Math.floor(Date.now() / 1000);

test('a correctly signed request is accepted (the baseline the refusals differ from)', async () => {
  const response = await send(signedRequest('POST', '/events', { body: eventBody() }));
  assert.equal(response.status, 200, response.text);
  assert.deepEqual(response.json, {});
});

test('an unsigned request is refused with 401', async () => {
  assertJsonError(await send(httpRequest('POST', eventsPath, { body: eventBody() })), 401, /auth_key/);
  assertJsonError(await send(httpRequest('GET', `/apps/${APP.id}/channels`)), 401, /auth_key/);
  const partial = `${eventsPath}?auth_key=${APP.key}&auth_timestamp=${now()}&auth_version=1.0`;
  assertJsonError(await send(httpRequest('POST', partial, { body: eventBody() })), 401, /missing/);
});

test('a bad signature is refused with 401', async () => {
  const body = eventBody();
  const wrongSecret = signedQuery('POST', eventsPath, { body, secret: `not-${APP.secret}` });
  assertJsonError(await send(httpRequest('POST', `${eventsPath}?${wrongSecret}`, { body })), 401, /signature/);
  const otherPath = signedQuery('POST', `/apps/${APP.id}/batch_events`, { body });
  assertJsonError(await send(httpRequest('POST', `${eventsPath}?${otherPath}`, { body })), 401, /signature/);
  const wrongKey = signedQuery('POST', eventsPath, { body, key: DISABLED_APP.key });
  assertJsonError(await send(httpRequest('POST', `${eventsPath}?${wrongKey}`, { body })), 401, /auth_key/);
  const otherBody = signedQuery('POST', eventsPath, { body, bodyForMd5: eventBody({ name: 'other' }) });
  assertJsonError(await send(httpRequest('POST', `${eventsPath}?${otherBody}`, { body })), 401, /body_md5/);
});

test('a stale or future auth_timestamp is refused with 401', async () => {
  for (const timestamp of [now() - TOLERANCE_SECS - 60, now() + TOLERANCE_SECS + 60, 0]) {
    const response = await send(signedRequest('POST', '/events', { body: eventBody(), timestamp }));
    assertJsonError(response, 401, /auth_timestamp/);
  }
  const response = await send(signedRequest('POST', '/events', { body: eventBody(), timestamp: 'yesterday' }));
  assertJsonError(response, 401, /auth_timestamp/);
});

test('an unknown app is refused with 404', async () => {
  const path = '/apps/no-such-app/events';
  const query = signedQuery('POST', path, { body: eventBody() });
  assertJsonError(await send(httpRequest('POST', `${path}?${query}`, { body: eventBody() })), 404, /no-such-app/);
});

test('a disabled app is refused with 403', async () => {
  const path = `/apps/${DISABLED_APP.id}/events`;
  const body = eventBody();
  const query = signedQuery('POST', path, { body, key: DISABLED_APP.key, secret: DISABLED_APP.secret });
  assertJsonError(await send(httpRequest('POST', `${path}?${query}`, { body })), 403, /disabled/);
});

test('an unknown route is answered 404', async () => {
  assertJsonError(await send(signedRequest('GET', '/no-such-endpoint')), 404);
  assertJsonError(await send(signedRequest('POST', '/no-such-endpoint', { body: eventBody() })), 404);
  assertJsonError(await send(httpRequest('GET', '/no/such/path')), 404, /not found/);
  assertJsonError(await send(httpRequest('GET', '/')), 404, /not found/);
});

test('a wrong method is answered 405', async () => {
  assertJsonError(await send(signedRequest('GET', '/events')), 405);
  assertJsonError(await send(signedRequest('PUT', '/batch_events', { body: '{"batch":[]}' })), 405);
  assertJsonError(await send(signedRequest('DELETE', '/channels')), 405);
  assertJsonError(await send(signedRequest('POST', '/channels/x/users', { body: '{}' })), 405);
});

test('a body that is not the JSON the endpoint takes is answered 400', async () => {
  const bodies = [
    '{',
    'not json',
    '[]',
    '"text"',
    '{"name":"e","data":{"a":1},"channels":["c"]}',
    '{"name":"e","channels":["c"]}',
    '{"name":"e","data":"{}"}',
  ];
  for (const body of bodies) {
    assertJsonError(await send(signedRequest('POST', '/events', { body })), 400);
  }
  assertJsonError(await send(signedRequest('POST', '/batch_events', { body: '{"batch":{}}' })), 400);
});

test('invalid channels and too many channels are answered 400', async () => {
  const channels = Array.from({ length: 101 }, (_, i) => `c-${i}`);
  assertJsonError(await send(signedRequest('POST', '/events', { body: eventBody({ channels }) })), 400, /100/);
  assertJsonError(await send(signedRequest('POST', '/events', { body: eventBody({ channels: [] }) })), 400);
  assertJsonError(await send(signedRequest('POST', '/events', { body: eventBody({ channels: ['bad channel'] }) })), 400);
  assertJsonError(await send(signedRequest('POST', '/events', { body: eventBody({ channels: ['x'.repeat(165)] }) })), 400);
  assertJsonError(await send(signedRequest('GET', `/channels/${encodeURIComponent('bad channel')}`)), 400);
  const batch = JSON.stringify({ batch: Array.from({ length: 11 }, () => ({ name: 'e', data: '{}', channel: 'c' })) });
  assertJsonError(await send(signedRequest('POST', '/batch_events', { body: batch })), 400);
});

test('event data over the limit is answered 413', async () => {
  const body = eventBody({ data: 'x'.repeat(MAX_EVENT_DATA + 1) });
  assertJsonError(await send(signedRequest('POST', '/events', { body })), 413);
});

test(`a body over max_body_bytes is answered 413`, async () => {
  const body = eventBody({ data: 'x'.repeat(MAX_BODY_BYTES) });
  assertJsonError(await send(signedRequest('POST', '/events', { body })), 413);
  // Chunked: no Content-Length to go by, the limit applies as the body arrives.
  const chunk = 'y'.repeat(16 * 1024);
  const chunks = Array.from({ length: MAX_BODY_BYTES / chunk.length + 2 }, () => `${chunk.length.toString(16)}\r\n${chunk}\r\n`);
  const head = httpRequest('POST', `${eventsPath}?${signedQuery('POST', eventsPath)}`, {
    contentLength: null,
    headers: { 'Transfer-Encoding': 'chunked', 'Content-Type': 'application/json' },
  });
  assertJsonError(await send(Buffer.concat([head, Buffer.from(chunks.join('') + '0\r\n\r\n')])), 413);
});

test('a malformed Content-Length is answered 400 and the connection closed', async () => {
  for (const length of ['abc', '-1', '1, 2']) {
    const request = httpRequest('POST', `${eventsPath}?${signedQuery('POST', eventsPath)}`, { body: '{}', contentLength: length });
    const { response, conn } = await rawRequest(env.herald.port, request);
    assert.equal(response.status, 400, `Content-Length: ${length}: ${response.text}`);
    await conn.waitForEnd();
  }
});

test('pipelined requests are each answered in order', async () => {
  const conn = await Conn.open(env.herald.port);
  const good = signedRequest('POST', '/events', { body: eventBody() });
  // Without a body: a refusal with a body to come may close the connection.
  const bad = httpRequest('GET', `/apps/${APP.id}/channels`);
  await conn.write(Buffer.concat([good, bad, good]));
  const statuses = await conn.waitFor((buf, ended) => {
    const found = [];
    let rest = buf;
    while (found.length < 3) {
      const response = readOne(rest, ended);
      if (!response) return null;
      found.push(response.status);
      rest = rest.subarray(response.size);
    }
    return found;
  });
  assert.deepEqual(statuses, [200, 401, 200]);
  conn.destroy();
});

function readOne(buf, ended) {
  return buf.length === 0 ? null : parseResponse(buf, ended);
}

// Issue 11, defect 3: Herald read the whole body before any check, and waited
// for it forever. What can be checked without the body (the path, the app, the
// credentials, the declared length) must be answered at once, with the body
// never sent; each case here declares a body and sends none of it (or a few
// bytes), so an answer that waits for the body never comes.
test('what can be checked before the body is answered without waiting for it', { concurrency: true }, async (t) => {
  const body = eventBody();
  const declared = (method, target, contentLength, sent = '') =>
    Buffer.concat([httpRequest(method, target, { contentLength }), Buffer.from(sent)]);
  const signed = (path, options) => `${path}?${signedQuery('POST', path, { body, ...options })}`;
  const cases = [
    ['a Content-Length over max_body_bytes: 413', declared('POST', signed(eventsPath), MAX_BODY_BYTES + 1), 413],
    ['Content-Length: 1000000000000: 413', declared('POST', signed(eventsPath), 1_000_000_000_000), 413],
    ['no credentials: 401', declared('POST', eventsPath, 100_000, '{"name":'), 401],
    ['a wrong auth_key: 401', declared('POST', signed(eventsPath, { key: 'wrong-key' }), 100_000, '{"na'), 401],
    ['a stale auth_timestamp: 401', declared('POST', signed(eventsPath, { timestamp: now() - 3600 }), 100_000), 401],
    ['a bad signature: 401', declared('POST', signed(eventsPath, { secret: 'wrong' }), 100_000, '{'), 401],
    ['an unknown app: 404', declared('POST', signed('/apps/no-such-app/events'), 100_000), 404],
    ['an unknown route: 404', declared('POST', signed(`/apps/${APP.id}/nowhere`), 100_000), 404],
  ];
  await Promise.all(
    cases.map(([name, request, status]) =>
      t.test(name, async () => {
        const conn = await Conn.open(env.herald.port);
        try {
          await conn.write(request);
          const response = await readResponse(conn, { what: `the answer (${status}) before the body` });
          assertJsonError(response, status);
          // The body is still to come: the connection cannot be used further,
          // and is not kept open for it.
          await conn.waitForEnd({ timeoutMs: BODY_TIMEOUT_SECS * 1000 + DEADLINE_MS });
        } finally {
          conn.destroy();
        }
      }),
    ),
  );
});
