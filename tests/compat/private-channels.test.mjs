// Private and end-to-end encrypted channels: pusher-js authorizes through an
// auth endpoint built on the pusher SDK's authorizeChannel().
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { firstEvent, nextEvent, record, recordFrames, roundTrip, subscribe, useHerald } from './harness.mjs';

const env = useHerald();

test('a private channel authorized by the SDK receives triggered events', async () => {
  const client = await env.connectedClient();
  const channel = await subscribe(client, 'private-orders');

  const arrival = nextEvent(channel, 'order-shipped');
  await env.sdk().trigger('private-orders', 'order-shipped', { order: 1234, items: ['book'] });
  const [data] = await arrival;
  assert.deepEqual(data, { order: 1234, items: ['book'] });
});

test('a subscription signed with the wrong secret gets pusher:subscription_error', async (t) => {
  const client = await env.connectedClient({ authPath: '/pusher/bad-auth' });
  const channelFrames = recordFrames(client, (frame) => frame.channel === 'private-guarded');
  const channel = client.subscribe('private-guarded');
  const succeeded = record(channel, 'pusher:subscription_succeeded');

  // pusher-js surfaces a rejection either on the channel (a
  // pusher:subscription_error frame for that channel) or, if the server sends
  // a bare pusher:error, on the connection. Watch both to report which.
  const { source, args } = await firstEvent([
    [channel, 'pusher:subscription_error'],
    [client.connection, 'error'],
  ]);
  t.diagnostic(`rejection: ${JSON.stringify(args[0])}`);
  assert.equal(source, 0, `expected pusher:subscription_error on the channel, got connection error ${JSON.stringify(args[0])}`);

  // The connection survives the refusal, and the channel stays closed to it.
  const witness = await env.connectedClient();
  const witnessChannel = await subscribe(witness, 'private-guarded');
  const arrival = nextEvent(witnessChannel, 'leak');
  await env.sdk().trigger('private-guarded', 'leak', { secret: true });
  await arrival;
  await roundTrip(client);
  assert.equal(client.connection.state, 'connected');
  assert.equal(channel.subscribed, false);
  assert.deepEqual(succeeded, []);
  assert.deepEqual(
    channelFrames.filter((frame) => frame.event === 'leak'),
    [],
    'the event reached a connection whose subscription was refused',
  );
});

test('an encrypted channel event from the SDK is decrypted by pusher-js', async () => {
  const secret = { card: '4111 1111 1111 1111', note: 'end-to-end ✓', amounts: [1, 2.5] };
  const client = await env.connectedClient();
  const rawFrames = recordFrames(client, (frame) => frame.event === 'statement');
  const channel = await subscribe(client, 'private-encrypted-vault');

  const arrival = nextEvent(channel, 'statement');
  await env.sdk().trigger('private-encrypted-vault', 'statement', secret);
  const [data] = await arrival;
  assert.deepEqual(data, secret);

  // Herald relayed the SDK's ciphertext untouched: the wire carried only the
  // nonce and ciphertext, never the plaintext.
  assert.equal(rawFrames.length, 1);
  assert.deepEqual(Object.keys(rawFrames[0].data).sort(), ['ciphertext', 'nonce']);
  assert.ok(!JSON.stringify(rawFrames[0]).includes(secret.card));
});
