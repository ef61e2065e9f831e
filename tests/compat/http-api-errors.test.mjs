// The HTTP API's refusals as the pusher SDK sees them: a RequestError whose
// `status` is the HTTP status Pusher documents.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { APP, nextEvent, subscribe, useHerald } from './harness.mjs';

const env = useHerald();

/** Resolves with the RequestError a rejected SDK call produced. */
async function rejection(call) {
  return call.then(
    (res) => assert.fail(`expected the request to be rejected, got HTTP ${res.status}`),
    (error) => error,
  );
}

const channels = (count, prefix) => Array.from({ length: count }, (_, i) => `${prefix}-${i}`);

test('a request signed with the wrong secret is rejected with 401', async () => {
  const err = await rejection(env.sdk({ secret: `wrong-${APP.secret}` }).trigger('public-x', 'e', { a: 1 }));
  assert.equal(err.name, 'PusherRequestError');
  assert.equal(err.status, 401);
});

test('event data over 10 KB is rejected with 413', async () => {
  const err = await rejection(env.sdk().trigger('public-x', 'big', 'x'.repeat(11 * 1024)));
  assert.equal(err.status, 413);
});

test('event data of exactly 10 KB is accepted', async () => {
  const client = await env.connectedClient();
  const channel = await subscribe(client, 'public-10k');
  const data = 'y'.repeat(10 * 1024);

  const arrival = nextEvent(channel, 'big');
  const res = await env.sdk().trigger('public-10k', 'big', data);
  assert.equal(res.status, 200);
  const [received] = await arrival;
  assert.equal(received, data);
});

test('a trigger to 100 channels is accepted', async () => {
  const res = await env.sdk().trigger(channels(100, 'hundred'), 'wide', { ok: true });
  assert.equal(res.status, 200);
});

test('a trigger to 101 channels is rejected with 400', async () => {
  // The SDK refuses more than 100 channels itself, before any request...
  assert.throws(
    () => env.sdk().trigger(channels(101, 'too-many'), 'wide', {}),
    /more than 100 channels/,
  );
  // ...so send the same signed body through its generic post() to test Herald.
  const err = await rejection(
    env.sdk().post({
      path: '/events',
      body: { name: 'wide', data: '{}', channels: channels(101, 'too-many') },
    }),
  );
  assert.equal(err.status, 400);
});

test('a batch of more than 10 events is rejected with 400', async () => {
  const batch = channels(11, 'batch').map((channel) => ({ channel, name: 'e', data: { channel } }));
  const err = await rejection(env.sdk().triggerBatch(batch));
  assert.equal(err.status, 400);
});
