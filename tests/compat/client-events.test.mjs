// Client events (`client-*`) sent with pusher-js channel.trigger(): relayed to
// the other subscribers only, tagged with user_id on presence channels, and
// rate limited per connection.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { nextEvent, record, recordErrors, roundTrip, subscribe, useHerald } from './harness.mjs';

const env = useHerald();

/** Two connected clients subscribed to `channelName`, as `userIds[0]` and `userIds[1]`. */
async function pair(channelName, userIds = ['alice', 'bob']) {
  const [sender, receiver] = await Promise.all(userIds.map((userId) => env.connectedClient({ userId })));
  const senderChannel = await subscribe(sender, channelName);
  const receiverChannel = await subscribe(receiver, channelName);
  return { sender, receiver, senderChannel, receiverChannel };
}

test('a client event on a private channel reaches the other subscriber, not the sender', async () => {
  const { sender, senderChannel, receiverChannel } = await pair('private-chat');
  const echoed = record(senderChannel, 'client-typing');

  const arrival = nextEvent(receiverChannel, 'client-typing');
  assert.equal(senderChannel.trigger('client-typing', { typing: true, text: 'hé' }), true);
  const [data, metadata] = await arrival;
  assert.deepEqual(data, { typing: true, text: 'hé' });
  assert.equal(metadata?.user_id, undefined, 'user_id is only attached on presence channels');

  await roundTrip(sender);
  assert.deepEqual(echoed, [], 'the sender received its own client event');
});

test('a client event on a presence channel carries the sender user_id', async () => {
  const { sender, senderChannel, receiverChannel } = await pair('presence-chat');
  const echoed = record(senderChannel, 'client-typing');

  const arrival = nextEvent(receiverChannel, 'client-typing');
  senderChannel.trigger('client-typing', { typing: true });
  const [data, metadata] = await arrival;
  assert.deepEqual(data, { typing: true });
  assert.equal(metadata?.user_id, 'alice');

  await roundTrip(sender);
  assert.deepEqual(echoed, []);
});

test('a client event on a public channel is not relayed', async () => {
  const { sender, receiverChannel } = await pair('public-no-client-events');
  const relayed = record(receiverChannel, 'client-sneaky');

  sender.channel('public-no-client-events').trigger('client-sneaky', { nope: true });
  // Once the sender's ping is answered Herald has handled the client event;
  // the sentinel, published after it on the same channel, flushes delivery.
  await roundTrip(sender);
  await env.sentinel('public-no-client-events', [receiverChannel]);
  assert.deepEqual(relayed, []);
});

test('a client event over 10 KB is rejected and not relayed', async () => {
  const { sender, senderChannel, receiverChannel } = await pair('private-large');
  const senderErrors = recordErrors(sender);
  const relayed = record(receiverChannel, 'client-large');

  senderChannel.trigger('client-large', { blob: 'z'.repeat(11 * 1024) });
  await roundTrip(sender);
  await env.sentinel('private-large', [receiverChannel]);
  assert.deepEqual(relayed, []);
  assert.ok(senderErrors.length > 0, 'the sender was not told its client event was rejected');
  assert.equal(sender.connection.state, 'connected');
});

test('a burst of client events is cut at the rate limit with error 4301', async (t) => {
  const burst = 30;
  const { sender, senderChannel, receiverChannel } = await pair('private-burst');
  const senderErrors = recordErrors(sender);
  const relayed = record(receiverChannel, 'client-burst');

  const started = Date.now();
  for (let i = 0; i < burst; i++) senderChannel.trigger('client-burst', { i });
  await roundTrip(sender);
  await env.sentinel('private-burst', [receiverChannel]);
  const elapsed = Date.now() - started;
  const rejections = senderErrors.filter((error) => error.code === 4301);
  t.diagnostic(`relayed ${relayed.length} of ${burst} in ${elapsed} ms; ${rejections.length} errors 4301`);

  assert.ok(rejections.length > 0, `expected a pusher:error with code 4301, got ${JSON.stringify(senderErrors)}`);
  // The limit is 10 per second, plus one for a window boundary. The burst
  // normally fits in one window; on a stalled machine allow 10 per window.
  const windows = Math.max(1, Math.ceil(elapsed / 1000));
  assert.ok(relayed.length >= 1, 'no client event of the burst was relayed');
  assert.ok(relayed.length <= 10 * windows + 1, `${relayed.length} client events relayed in ${elapsed} ms`);
  // The burst starts with accepted events, and what is relayed keeps its order.
  const indices = relayed.map(({ data }) => data.i);
  assert.equal(indices[0], 0);
  assert.deepEqual(indices, [...indices].sort((a, b) => a - b));
  // Rate limiting rejects events; it does not cost the connection.
  assert.equal(sender.connection.state, 'connected');
});
