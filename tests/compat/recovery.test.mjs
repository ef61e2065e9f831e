// Recovery after a lost connection, end to end: unmodified pusher-js (and
// Laravel Echo) made recovering by clients/js (`withRecovery`), against a
// Herald that keeps history for the app's `history-*` channels (5 messages,
// 5 minutes).
//
// The recovering clients reach Herald through a TCP proxy in this file, so a
// test can cut the connection (both sides destroyed: to pusher-js a network
// failure, after which it reconnects by itself about a second later) and hold
// the reconnection until it has published what the client must miss. Those
// messages can then only reach the client through recovery.
//
// The wire contract checked here: messages of a history-enabled channel carry
// top-level `offset` (integer, strictly increasing) and `epoch` (string);
// `pusher_internal:subscription_succeeded` carries `position` for such a
// channel, and `recovered` when the subscribe asked to resume (`since`),
// after replaying what was missed. Plain pusher-js ignores all of it.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import Echo from 'laravel-echo';

import { withRecovery } from '../../clients/js/index.js';
import {
  APP,
  heraldConfig,
  nextEvent,
  outage,
  roundTrip,
  startProxy,
  subscribe,
  useHerald,
  waitFor,
  withHistory,
} from './harness.mjs';

const HISTORY_SIZE = 5;

const env = useHerald({ config: (ports) => withHistory(heraldConfig(ports), { size: HISTORY_SIZE }) });

// ---------------------------------------------------------------------------
// Clients and records
// ---------------------------------------------------------------------------

/** A pusher-js client of this file's Herald connecting through port `port`. */
function clientVia(port) {
  return env.clientVia(port);
}

/** A proxy for one test, closed after it. */
async function proxyFor(t) {
  const proxy = await startProxy(env.herald.port);
  t.after(() => proxy.close());
  return proxy;
}

/** Every event on a pusher-js channel, in order, as `[event, data]`. */
function recordAll(channel) {
  const seen = [];
  channel.bind_global((event, data) => seen.push([event, data]));
  return seen;
}

/** A record shortened to `event` or, for messages of these tests, `event n`. */
function summary(log) {
  return log.map(([event, data]) => (typeof data?.n === 'number' ? `${event} ${data.n}` : event));
}

/** The raw frames (JSON-decoded, nothing dropped) a connected client receives from now on. */
function recordRawFrames(client) {
  const frames = [];
  client.connection.connection.transport.bind('message', (message) => frames.push(JSON.parse(message.data)));
  return frames;
}

async function trigger(channelName, n) {
  const res = await env.sdk().trigger(channelName, 'my-event', { n });
  assert.equal(res.status, 200, `trigger ${n} on ${channelName}`);
}

const isPosition = (value) => Number.isInteger(value?.offset) && typeof value?.epoch === 'string';

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

test('a reconnecting client gets the missed events in order, then herald:recovered, then live ones', async (t) => {
  const proxy = await proxyFor(t);
  const recovered = [];
  const client = withRecovery(clientVia(proxy.port), { onRecovered: (...args) => recovered.push(args) });
  const log = recordAll(client.subscribe('history-a'));
  await subscribe(client, 'history-a');
  assert.equal(client.recovery.position('history-a')?.offset, 0, 'the ack of a channel with no message yet');

  await trigger('history-a', 1);
  await waitFor(() => log.length === 2, { what: 'the first live event' });
  const before = client.recovery.position('history-a');
  assert.ok(isPosition(before) && before.offset >= 1, `position after one event: ${JSON.stringify(before)}`);

  await outage(proxy, async () => {
    for (const n of [2, 3, 4]) await trigger('history-a', n);
  });
  await waitFor(() => summary(log).includes('herald:recovered'), {
    what: `herald:recovered (events so far: ${summary(log)})`,
  });
  await trigger('history-a', 5);
  await waitFor(() => summary(log).includes('my-event 5'), { what: 'the live event after the recovery' });
  await roundTrip(client);

  assert.deepEqual(summary(log), [
    'pusher:subscription_succeeded',
    'my-event 1',
    'my-event 2',
    'my-event 3',
    'my-event 4',
    'pusher:subscription_succeeded',
    'herald:recovered',
    'my-event 5',
  ]);
  const info = log.find(([event]) => event === 'herald:recovered')[1];
  assert.deepEqual(info.since, before);
  assert.equal(info.replayed, 3);
  assert.equal(info.position.epoch, before.epoch);
  assert.ok(info.position.offset >= before.offset + 3, `position ${JSON.stringify(info.position)} after 3 more`);
  assert.deepEqual(recovered, [['history-a', info]]);
  const after = client.recovery.position('history-a');
  assert.ok(after.epoch === before.epoch && after.offset > info.position.offset, `position after the live event: ${JSON.stringify(after)}`);
});

test(`more missed events than the history keeps (${HISTORY_SIZE}): herald:unrecoverable, no replay`, async (t) => {
  const proxy = await proxyFor(t);
  const unrecoverable = [];
  const client = withRecovery(clientVia(proxy.port), { onUnrecoverable: (...args) => unrecoverable.push(args) });
  const log = recordAll(client.subscribe('history-b'));
  await subscribe(client, 'history-b');

  await trigger('history-b', 1);
  await waitFor(() => log.length === 2, { what: 'the first live event' });
  const before = client.recovery.position('history-b');

  await outage(proxy, async () => {
    for (let n = 2; n <= HISTORY_SIZE + 3; n++) await trigger('history-b', n);
  });
  await waitFor(() => summary(log).includes('herald:unrecoverable'), {
    what: `herald:unrecoverable (events so far: ${summary(log)})`,
  });
  await trigger('history-b', 100);
  await waitFor(() => summary(log).includes('my-event 100'), { what: 'the live event after the reconnect' });
  await roundTrip(client);

  assert.deepEqual(summary(log), [
    'pusher:subscription_succeeded',
    'my-event 1',
    'pusher:subscription_succeeded',
    'herald:unrecoverable',
    'my-event 100',
  ]);
  const info = log.find(([event]) => event === 'herald:unrecoverable')[1];
  assert.deepEqual(info.since, before);
  assert.equal(info.position.epoch, before.epoch);
  assert.ok(info.position.offset >= before.offset + HISTORY_SIZE + 2, `position ${JSON.stringify(info.position)}`);
  assert.deepEqual(unrecoverable, [['history-b', info]]);
});

test("what the backend excluded for the client's old connection (Laravel's toOthers) is not replayed to it", async (t) => {
  const proxy = await proxyFor(t);
  const client = withRecovery(clientVia(proxy.port));
  const log = recordAll(client.subscribe('history-others'));
  await subscribe(client, 'history-others');
  await trigger('history-others', 1);
  await waitFor(() => log.length === 2, { what: 'the first live event' });
  const oldSocket = client.connection.socket_id;
  await outage(proxy, async () => {
    // The client's own message, sent by its backend to the others only...
    const res = await env.sdk().trigger('history-others', 'my-event', { n: 2 }, { socket_id: oldSocket });
    assert.equal(res.status, 200);
    // ... and someone else's.
    await trigger('history-others', 3);
  });
  await waitFor(() => summary(log).includes('herald:recovered'), { what: `herald:recovered (so far: ${summary(log)})` });
  assert.deepEqual(summary(log), [
    'pusher:subscription_succeeded',
    'my-event 1',
    'my-event 3',
    'pusher:subscription_succeeded',
    'herald:recovered',
  ]);
});

test('a client without the module sees the events as before: data intact, extra fields ignored', async () => {
  const client = await env.connectedClient();
  const frames = recordRawFrames(client);
  const history = recordAll(client.subscribe('history-c'));
  const plain = recordAll(client.subscribe('plain-c'));
  await subscribe(client, 'history-c');
  await subscribe(client, 'plain-c');

  const payload = { n: 1, text: 'ünïcødé ✓', nested: { list: [1, 'two', null], offset: 'not the position' } };
  let res = await env.sdk().trigger('history-c', 'my-event', payload);
  assert.equal(res.status, 200);
  res = await env.sdk().trigger('history-c', 'my-event', { n: 2 });
  assert.equal(res.status, 200);
  res = await env.sdk().trigger('plain-c', 'my-event', { n: 3 });
  assert.equal(res.status, 200);
  await waitFor(() => history.length === 3 && plain.length === 2, { what: 'three events' });
  await roundTrip(client);

  // What pusher-js gives the app is what it always did.
  assert.deepEqual(history.map(([event]) => event), ['pusher:subscription_succeeded', 'my-event', 'my-event']);
  assert.deepEqual(history[1][1], payload);
  assert.deepEqual(history[2][1], { n: 2 });
  assert.deepEqual(plain.map(([event, data]) => [event, data?.n]), [
    ['pusher:subscription_succeeded', undefined],
    ['my-event', 3],
  ]);

  // What Herald sent: positions on the history channel's messages and ack only.
  const of = (channel, event) => frames.filter((frame) => frame.channel === channel && frame.event === event);
  const [historyAck] = of('history-c', 'pusher_internal:subscription_succeeded');
  const ackData = JSON.parse(historyAck.data);
  assert.ok(isPosition(ackData.position) && ackData.position.offset === 0, `ack data ${historyAck.data}`);
  assert.equal('recovered' in ackData, false, 'recovered only answers a subscribe with since');
  const messages = of('history-c', 'my-event');
  assert.equal(messages.length, 2);
  for (const message of messages) {
    assert.ok(Number.isInteger(message.offset) && message.offset >= 1, `offset of ${JSON.stringify(message)}`);
    assert.equal(message.epoch, ackData.position.epoch);
    assert.equal(typeof message.data, 'string');
  }
  assert.deepEqual(JSON.parse(messages[0].data), payload);
  assert.ok(messages[1].offset > messages[0].offset);

  const [plainAck] = of('plain-c', 'pusher_internal:subscription_succeeded');
  assert.equal('position' in JSON.parse(plainAck.data), false, `ack data of a channel without history: ${plainAck.data}`);
  const [plainMessage] = of('plain-c', 'my-event');
  assert.equal('offset' in plainMessage, false);
  assert.equal('epoch' in plainMessage, false);
});

test("Laravel Echo: .listen-ed events are recovered, then .herald:recovered, then live ones", async (t) => {
  const proxy = await proxyFor(t);
  const pusher = withRecovery(clientVia(proxy.port));
  const echo = new Echo({ broadcaster: 'pusher', key: APP.key, client: pusher });
  assert.equal(echo.connector.pusher, pusher);

  const log = [];
  echo
    .channel('history-echo')
    .listen('.my-event', (data) => log.push(`my-event ${data.n}`))
    .listen('.herald:recovered', (info) => log.push(`herald:recovered ${info.replayed}`));
  await waitFor(() => pusher.channel('history-echo')?.subscribed, { what: 'the Echo channel subscription' });

  await trigger('history-echo', 1);
  await waitFor(() => log.length === 1, { what: 'the first live event' });
  await outage(proxy, async () => {
    for (const n of [2, 3, 4]) await trigger('history-echo', n);
  });
  await waitFor(() => log.length === 5, { what: `the recovery (so far: ${log})` });
  await trigger('history-echo', 5);
  await waitFor(() => log.length === 6, { what: 'the live event after the recovery' });
  await roundTrip(pusher);

  assert.deepEqual(log, [
    'my-event 1',
    'my-event 2',
    'my-event 3',
    'my-event 4',
    'herald:recovered 3',
    'my-event 5',
  ]);
});

test('backends read a channel history through the Pusher HTTP API, signed by the pusher SDK', async () => {
  for (const n of [1, 2, 3]) await trigger('history-api', n);
  const get = async (path, params) => {
    const res = await env.sdk().get({ path, params });
    return { status: res.status, body: await res.json() };
  };
  const latest = await get('/channels/history-api/history', { limit: 2 });
  assert.equal(latest.status, 200);
  assert.deepEqual(latest.body.publications.map((p) => [p.offset, p.event, JSON.parse(p.data).n]), [
    [3, 'my-event', 3],
    [2, 'my-event', 2],
  ]);
  assert.equal(latest.body.position.offset, 3);
  assert.equal(latest.body.first_offset, 1);
  const { epoch } = latest.body.position;
  const after = await get('/channels/history-api/history', { since: 1, epoch });
  assert.deepEqual(after.body.publications.map((p) => p.offset), [2, 3]);
  assert.equal(after.body.recovered, true);

  const refused = await get('/channels/plain-api/history', {}).catch((e) => ({ status: e.status, body: e.body }));
  assert.equal(refused.status, 400);
  assert.match(String(refused.body), /keeps no history/);
});

test("cache channels: pusher-js's pusher:cache_miss on an empty one, the last event first to a new subscriber", async () => {
  const first = await env.connectedClient();
  const channel = first.subscribe('cache-compat');
  await nextEvent(channel, 'pusher:cache_miss');
  const seen = recordAll(channel);
  await trigger('cache-compat', 1);
  await trigger('cache-compat', 2);
  await waitFor(() => seen.length === 2, { what: 'two live events' });

  const second = await env.connectedClient();
  const later = second.subscribe('cache-compat');
  const log = recordAll(later);
  await waitFor(() => log.length === 2, { what: `the ack and the cached event (so far: ${summary(log)})` });
  await trigger('cache-compat', 3);
  await waitFor(() => log.length === 3, { what: 'the live event' });
  assert.deepEqual(summary(log), ['pusher:subscription_succeeded', 'my-event 2', 'my-event 3']);
});

test('operators count recoveries in herald_recoveries_total, by outcome', async () => {
  const count = async (outcome) => {
    const res = await fetch(`http://127.0.0.1:${env.herald.metricsPort}/metrics`);
    const line = (await res.text()).split('\n').find((l) => l.startsWith(`herald_recoveries_total{outcome="${outcome}"}`));
    return line ? Number(line.split(' ').pop()) : 0;
  };
  const before = { recovered: await count('recovered'), unrecoverable: await count('unrecoverable') };
  await trigger('history-metrics', 1);
  const body = await (await env.sdk().get({ path: '/channels/history-metrics/history', params: {} })).json();
  const client = await env.connectedClient();
  // Raw subscribes with a position: one that recovers, one on a channel without history.
  const acks = ['history-metrics', 'plain-metrics'].map((channel) =>
    nextEvent(client.connection, 'message', {
      filter: (frame) => frame.event === 'pusher_internal:subscription_succeeded' && frame.channel === channel,
    }),
  );
  client.send_event('pusher:subscribe', { channel: 'history-metrics', since: body.position });
  client.send_event('pusher:subscribe', { channel: 'plain-metrics', since: body.position });
  await Promise.all(acks);
  await waitFor(async () => (await count('recovered')) === before.recovered + 1, { what: 'one more recovered' });
  assert.equal(await count('unrecoverable'), before.unrecoverable + 1);
});
