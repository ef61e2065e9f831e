// Bad calls to the gRPC API (herald.v1.Publisher), made by hand over node:http2
// with protobuf encoded here: missing and wrong credentials, bad arguments,
// oversized and garbage messages, wrong framing. Each is a clean gRPC status
// (never a reset stream or a dropped connection), and publishing over gRPC
// still works afterwards.
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  APP,
  DISABLED_APP,
  GRPC,
  configWith,
  grpcCall,
  grpcFrame,
  nextEvent,
  pbField,
  publishRequest,
  stillServes,
  subscribe,
  useHerald,
} from './lib.mjs';

const MAX_MESSAGE_BYTES = 64 * 1024;
const MAX_EVENT_DATA = 10 * 1024;
const PUBLISH = '/herald.v1.Publisher/Publish';

const env = useHerald({ config: configWith({ tables: { grpc: `max_message_bytes = ${MAX_MESSAGE_BYTES}` } }) });

const bearer = (token = APP.apiToken) => ({ authorization: `Bearer ${token}` });
const call = (body, options) => grpcCall(env.herald.grpcPort, options?.path ?? PUBLISH, body, options);

/** Asserts a clean gRPC answer with `code`: HTTP 200, a grpc-status, no reset stream. */
function assertStatus(result, code, message) {
  assert.equal(result.rstCode, 0, `the stream was reset (code ${result.rstCode}) instead of answered`);
  assert.equal(result.httpStatus, 200, `HTTP status ${result.httpStatus}`);
  assert.equal(result.grpcStatus, code, `expected gRPC status ${code}, got ${result.grpcStatus}: ${result.grpcMessage}`);
  if (message) assert.match(result.grpcMessage ?? '', message);
}

afterEach(async () => {
  // gRPC publishing still works and reaches a fresh pusher-js subscriber...
  const client = await env.connectedClient();
  try {
    const channel = await subscribe(client, 'grpc-fresh');
    const arrival = nextEvent(channel, 'grpc-check');
    const published = await call(grpcFrame(publishRequest({ name: 'grpc-check', channels: ['grpc-fresh'] })), {
      headers: bearer(),
    });
    assertStatus(published, GRPC.OK);
    await arrival;
  } finally {
    env.disconnect(client);
  }
  // ...and the WebSocket side is unaffected.
  await stillServes(env);
});

const valid = (fields = {}) => grpcFrame(publishRequest({ channels: ['grpc-bad'], ...fields }));

test('a call without a token is UNAUTHENTICATED', async () => {
  assertStatus(await call(valid()), GRPC.UNAUTHENTICATED, /authorization/);
});

test('a wrong token is UNAUTHENTICATED', async () => {
  for (const authorization of ['Bearer wrong-token-0123456789', 'Bearer ', `Basic ${APP.apiToken}`, APP.apiToken, 'Bearer \u00ff']) {
    assertStatus(await call(valid(), { headers: { authorization } }), GRPC.UNAUTHENTICATED);
  }
});

test("an unknown app, or another app's, is PERMISSION_DENIED", async () => {
  assertStatus(await call(valid({ appId: 'no-such-app' }), { headers: bearer() }), GRPC.PERMISSION_DENIED);
  assertStatus(await call(valid({ appId: DISABLED_APP.id }), { headers: bearer() }), GRPC.PERMISSION_DENIED);
});

test('a disabled app is FAILED_PRECONDITION', async () => {
  const result = await call(valid({ appId: DISABLED_APP.id }), { headers: bearer(DISABLED_APP.apiToken) });
  assertStatus(result, GRPC.FAILED_PRECONDITION, /disabled/);
});

test('invalid arguments are INVALID_ARGUMENT', async () => {
  const cases = [
    ['an invalid channel', { channels: ['bad channel'] }],
    ['a channel name too long', { channels: ['x'.repeat(165)] }],
    ['no channels', { channels: [] }],
    ['101 channels', { channels: Array.from({ length: 101 }, (_, i) => `c-${i}`) }],
    ['a reserved event name', { channels: ['c'], name: 'pusher:internal' }],
    ['an empty app id', { appId: '' }],
  ];
  for (const [what, fields] of cases) {
    const result = await call(valid(fields), { headers: bearer() });
    assert.equal(result.grpcStatus, GRPC.INVALID_ARGUMENT, `${what}: ${result.grpcStatus} ${result.grpcMessage}`);
    assertStatus(result, GRPC.INVALID_ARGUMENT);
  }
  // No event at all.
  assertStatus(await call(grpcFrame(pbField(1, APP.id)), { headers: bearer() }), GRPC.INVALID_ARGUMENT, /event/);
});

test('event data over the limit is RESOURCE_EXHAUSTED', async () => {
  const result = await call(valid({ data: 'x'.repeat(MAX_EVENT_DATA + 1) }), { headers: bearer() });
  assertStatus(result, GRPC.RESOURCE_EXHAUSTED);
});

test('a message over grpc.max_message_bytes is RESOURCE_EXHAUSTED', async () => {
  const result = await call(valid({ data: 'x'.repeat(MAX_MESSAGE_BYTES + 1) }), { headers: bearer() });
  assertStatus(result, GRPC.RESOURCE_EXHAUSTED);
  // Declared over the limit, none of it sent.
  const declared = await call(grpcFrame(Buffer.alloc(0), { length: 1 << 30 }), { headers: bearer() });
  assertStatus(declared, GRPC.RESOURCE_EXHAUSTED);
});

test('a message that is not protobuf is INTERNAL', async () => {
  for (const garbage of [
    Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
    Buffer.from('{"app_id": "compat-app"}'),
    // A length-delimited field longer than the message.
    Buffer.from([0x0a, 0x7f, 0x61]),
    // Field 2 (event) holding bytes that are not an Event.
    pbField(2, Buffer.from([0x0f, 0x0f, 0x0f])),
  ]) {
    assertStatus(await call(grpcFrame(garbage), { headers: bearer() }), GRPC.INTERNAL, /decode/);
  }
});

test('broken gRPC framing is a clean status', async () => {
  const message = publishRequest({ channels: ['grpc-bad'] });
  // The stream ends inside the message its frame header announced.
  const truncated = grpcFrame(message, { length: message.length + 100 });
  assertStatus(await call(truncated, { headers: bearer() }), GRPC.INTERNAL, /EOF/);
  // Fewer than the 5 bytes of a frame header.
  assertStatus(await call(Buffer.from([0, 0, 0]), { headers: bearer() }), GRPC.INTERNAL, /EOF/);
  // No message at all.
  assertStatus(await call(Buffer.alloc(0), { headers: bearer() }), GRPC.INTERNAL, /missing request message/i);
  // Two messages for a unary call: tonic serves the first and ignores the rest
  // (gRPC leaves this to the server). Pinned so that a change is deliberate.
  assertStatus(await call(Buffer.concat([valid(), valid()]), { headers: bearer() }), GRPC.OK);
  // The compressed flag without a grpc-encoding.
  assertStatus(await call(grpcFrame(message, { compressed: true }), { headers: bearer() }), GRPC.INTERNAL, /compressed/);
  // A compression Herald does not support.
  const unsupported = await call(grpcFrame(message, { compressed: true }), { headers: { ...bearer(), 'grpc-encoding': 'snappy' } });
  assertStatus(unsupported, GRPC.UNIMPLEMENTED, /snappy/);
});

test('an unknown service or method is UNIMPLEMENTED', async () => {
  assertStatus(await call(valid(), { path: '/herald.v1.Publisher/NoSuchMethod', headers: bearer() }), GRPC.UNIMPLEMENTED);
  assertStatus(await call(valid(), { path: '/no.such.Service/Publish', headers: bearer() }), GRPC.UNIMPLEMENTED);
  assertStatus(await call(valid(), { path: '/', headers: bearer() }), GRPC.UNIMPLEMENTED);
});

// gRPC over HTTP/2 says a server SHOULD answer a content-type other than
// application/grpc* with HTTP 415; tonic serves the call as gRPC whatever the
// content-type. Harmless (the body must still be gRPC-framed protobuf), and
// pinned here so that a change is deliberate.
test('a content-type that is not gRPC is served as gRPC', async () => {
  for (const contentType of ['application/json', 'text/plain', 'application/grpc-web']) {
    const result = await call(valid(), { headers: { ...bearer(), 'content-type': contentType } });
    assertStatus(result, GRPC.OK);
    assert.equal(result.headers['content-type'], 'application/grpc');
  }
  // Not protobuf, whatever the content-type says: INTERNAL as above.
  const json = await call(grpcFrame(Buffer.from('{"app_id":"compat-app"}')), {
    headers: { ...bearer(), 'content-type': 'application/json' },
  });
  assertStatus(json, GRPC.INTERNAL, /decode/);
});
