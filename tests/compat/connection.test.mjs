// Connecting with pusher-js: the handshake, socket ids, and the 40xx refusals
// pusher-js treats as "do not reconnect".
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { DISABLED_APP, recordErrors, roundTrip, useHerald, waitFor, waitForState } from './harness.mjs';

const env = useHerald();

test('pusher-js reaches connected with a Pusher-style socket id', async () => {
  const first = await env.connectedClient();
  const second = await env.connectedClient();

  assert.match(first.connection.socket_id, /^\d+\.\d+$/);
  assert.match(second.connection.socket_id, /^\d+\.\d+$/);
  assert.notEqual(first.connection.socket_id, second.connection.socket_id);
});

test('Herald answers pusher:ping with pusher:pong', async () => {
  const client = await env.connectedClient();
  await roundTrip(client);
  assert.equal(client.connection.state, 'connected');
});

/**
 * Connects with `key` and checks that Herald refuses it with `expectedCode`
 * and that pusher-js then gives up: it maps close codes 4000-4099 to
 * "refused", moves to 'disconnected' and does not reconnect.
 */
async function assertRefused(key, expectedCode) {
  const client = env.client({ key });
  const errors = recordErrors(client);
  await waitFor(() => errors.some((e) => e.code !== undefined), { what: 'pusher-js to report an error code' });
  const codes = errors.map((e) => e.code).filter((c) => c !== undefined);
  assert.ok(codes.includes(expectedCode), `expected error code ${expectedCode}, got ${JSON.stringify(codes)}`);
  await waitForState(client, ['disconnected', 'failed']);
}

test('an unknown app key is refused with 4001 and pusher-js does not reconnect', async () => {
  await assertRefused('no-such-key', 4001);
});

test('a disabled app is refused with 4003 and pusher-js does not reconnect', async () => {
  await assertRefused(DISABLED_APP.key, 4003);
});
