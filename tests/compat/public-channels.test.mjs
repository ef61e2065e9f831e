// Public channels: pusher-js subscribes, the pusher server SDK publishes
// through Herald's HTTP API.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { firstEvent, nextEvent, record, recordFrames, roundTrip, subscribe, useHerald } from './harness.mjs';

const env = useHerald();

// Exercises the double encoding of `data`: nesting, unicode, every JSON type.
const payload = {
  text: 'hello, Herald — ünïcødé ✓',
  number: 42.5,
  negative: -7,
  flag: true,
  nothing: null,
  list: [1, 'two', { three: 3 }],
  nested: { deeper: { deepest: ['a', 'b'] } },
};

test('subscribing to a public channel fires pusher:subscription_succeeded', async () => {
  const client = await env.connectedClient();
  const channel = await subscribe(client, 'public-subscribe');
  assert.equal(channel.subscribed, true);
});

test('channel names are limited to 164 characters of A-Z a-z 0-9 _ - = @ , . ;', async () => {
  const client = await env.connectedClient();
  const longest = `${'a'.repeat(150)}_-=@,.;0123`.padEnd(164, 'z');
  assert.equal((await subscribe(client, longest)).subscribed, true);

  for (const name of [longest + 'z', 'has space', 'ümlaut']) {
    const channel = client.subscribe(name);
    const { source } = await firstEvent([
      [channel, 'pusher:subscription_succeeded'],
      [channel, 'pusher:subscription_error'],
      [client.connection, 'error'],
    ]);
    assert.notEqual(source, 0, `Herald accepted a subscription to an invalid channel name '${name}'`);
  }
});

test('an SDK trigger reaches the subscriber with the data object intact', async () => {
  const client = await env.connectedClient();
  const channel = await subscribe(client, 'public-trigger');

  const arrival = nextEvent(channel, 'news');
  const res = await env.sdk().trigger('public-trigger', 'news', payload);
  assert.equal(res.status, 200);
  const [data] = await arrival;
  assert.deepEqual(data, payload);
});

test('a non-JSON string payload arrives as the same string', async () => {
  const client = await env.connectedClient();
  const channel = await subscribe(client, 'public-plain');

  const arrival = nextEvent(channel, 'note');
  await env.sdk().trigger('public-plain', 'note', 'just some text');
  const [data] = await arrival;
  assert.equal(data, 'just some text');
});

test('one trigger to several channels reaches every channel', async () => {
  const alpha = await env.connectedClient();
  const beta = await env.connectedClient();
  const a1 = await subscribe(alpha, 'multi-1');
  const a2 = await subscribe(alpha, 'multi-2');
  const b3 = await subscribe(beta, 'multi-3');

  const arrivals = [a1, a2, b3].map((channel) => nextEvent(channel, 'fanout'));
  await env.sdk().trigger(['multi-1', 'multi-2', 'multi-3'], 'fanout', { n: 1 });
  for (const [data] of await Promise.all(arrivals)) assert.deepEqual(data, { n: 1 });
});

test('socket_id excludes that connection and only that connection', async () => {
  const excluded = await env.connectedClient();
  const included = await env.connectedClient();
  const excludedChannel = await subscribe(excluded, 'public-exclusion');
  const includedChannel = await subscribe(included, 'public-exclusion');
  const excludedSeen = record(excludedChannel, 'echo');

  const arrival = nextEvent(includedChannel, 'echo');
  await env.sdk().trigger('public-exclusion', 'echo', { from: 'server' }, { socket_id: excluded.connection.socket_id });
  const [data] = await arrival;
  assert.deepEqual(data, { from: 'server' });

  // The other subscriber has the event, so Herald has fanned it out; a ping
  // round trip flushes anything it queued for the excluded connection.
  await roundTrip(excluded);
  assert.deepEqual(excludedSeen, []);
});

test('triggerBatch delivers every event to every subscriber', async () => {
  const alpha = await env.connectedClient();
  const beta = await env.connectedClient();
  const alphaFirst = await subscribe(alpha, 'batch-1');
  const alphaSecond = await subscribe(alpha, 'batch-2');
  const betaFirst = await subscribe(beta, 'batch-1');

  const arrivals = [
    nextEvent(alphaFirst, 'first'),
    nextEvent(alphaSecond, 'second'),
    nextEvent(betaFirst, 'first'),
  ];
  const res = await env.sdk().triggerBatch([
    { channel: 'batch-1', name: 'first', data: { n: 1, payload } },
    { channel: 'batch-2', name: 'second', data: { n: 2 } },
  ]);
  assert.equal(res.status, 200);
  const [[a1], [a2], [b1]] = await Promise.all(arrivals);
  assert.deepEqual(a1, { n: 1, payload });
  assert.deepEqual(a2, { n: 2 });
  assert.deepEqual(b1, { n: 1, payload });
});

test('after unsubscribing, events on the channel are no longer delivered', async () => {
  const leaver = await env.connectedClient();
  const stayer = await env.connectedClient();
  await subscribe(leaver, 'public-unsubscribe');
  const stayerChannel = await subscribe(stayer, 'public-unsubscribe');
  // pusher-js drops frames for channels it unsubscribed from, so watch the
  // raw frames to see what Herald actually sends.
  const leaverFrames = recordFrames(leaver, (frame) => frame.channel === 'public-unsubscribe');

  leaver.unsubscribe('public-unsubscribe');
  // Herald has processed the unsubscribe once it answers a later ping.
  await roundTrip(leaver);

  const arrival = nextEvent(stayerChannel, 'after-leave');
  await env.sdk().trigger('public-unsubscribe', 'after-leave', { late: true });
  await arrival;
  await roundTrip(leaver);
  assert.deepEqual(leaverFrames, []);
});
