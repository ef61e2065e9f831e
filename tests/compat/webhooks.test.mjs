// Webhooks checked by verifiers nobody here wrote: the official Standard Webhooks
// library (`standardwebhooks` on npm) and the pusher server SDK's webhook
// validation. Events come from pusher-js clients and the pusher SDK's `trigger`;
// the dispatcher delivers them to the HTTP receivers below (declared as
// [[webhooks]] in the config).
//
// COMPAT_WEBHOOKS_MODE picks what runs: `dev` (default: one `herald dev`, in-memory
// log, dispatcher in-process) or `cluster` (a real redis-server and tansu started
// here, a `herald edge` recording to Kafka and a separate `herald dispatcher`).
// REDIS_SERVER and TANSU override the binaries.
import { after, test } from 'node:test';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';

import PusherServer from 'pusher';
import { Webhook } from 'standardwebhooks';

import { APP, heraldConfig, nextEvent, startHerald, startOnPorts, subscribe, useHerald, waitFor } from './harness.mjs';

const SECRET = `whsec_${randomBytes(32).toString('base64')}`;
const DEBOUNCE_MS = 500;
const MODE = process.env.COMPAT_WEBHOOKS_MODE ?? 'dev';
if (!['dev', 'cluster'].includes(MODE)) throw new Error(`COMPAT_WEBHOOKS_MODE must be dev or cluster, not ${MODE}`);

/**
 * Starts a service that cannot bind port 0 on a port of its own (`startOnPorts`
 * checks that it listens there itself), and waits until it accepts connections.
 * `stop()` kills it (SIGKILL).
 */
async function startService(name, command, args, options = {}) {
  const service = await startOnPorts({ name, command, args: ([port]) => args(port), options });
  const [port] = service.ports;
  return {
    port,
    stop: () => {
      service.proc.kill('SIGKILL');
      return service.stop();
    },
  };
}

/** In cluster mode: redis-server and tansu, and the config lines that use them. */
async function startBackbone() {
  const redis = await startService('redis-server', process.env.REDIS_SERVER ?? 'redis-server', (port) => [
    '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
  ]);
  const dir = await mkdtemp(join(tmpdir(), 'herald-compat-tansu-'));
  // sqlite storage: tansu 0.6's memory engine cannot resume a group mid-batch.
  const tansu = await startService('tansu', process.env.TANSU ?? 'tansu', (port) => [
    'broker', '--listener-url', `tcp://127.0.0.1:${port}`, '--advertised-listener-url', `tcp://127.0.0.1:${port}`,
    '--storage-engine', `sqlite://${join(dir, 'tansu.db')}`,
  ], { cwd: '/' });
  return {
    config: `
[redis]
url = "redis://127.0.0.1:${redis.port}/"

[kafka]
brokers = "127.0.0.1:${tansu.port}"
`,
    async stop() {
      await tansu.stop();
      await redis.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

const backbone = MODE === 'cluster' ? await startBackbone() : null;
let dispatcher = null;

/**
 * An HTTP receiver that records every request's headers and raw body (and when it
 * arrived) and answers `respond(request)`, 200 unless a test scripts otherwise.
 */
async function startReceiver() {
  const receiver = { received: [], respond: () => 200 };
  const server = createServer((request, response) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => {
      const delivery = { headers: request.headers, rawBody: Buffer.concat(chunks).toString('utf8'), at: Date.now() };
      delivery.status = receiver.respond(delivery);
      receiver.received.push(delivery);
      response.writeHead(delivery.status).end(delivery.status === 200 ? 'ok' : 'failed');
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  receiver.url = `http://127.0.0.1:${server.address().port}`;
  receiver.close = () => {
    server.closeAllConnections();
    server.close();
  };
  return receiver;
}

const standard = await startReceiver();
const pusherFormat = await startReceiver();
const RETRY_DELAYS_MS = [200, 400];
const RETRY_JITTER = 0.2;

const config = (ports) => `${heraldConfig(ports)}${backbone?.config ?? ''}
[events]
debounce_ms = ${DEBOUNCE_MS}
partitions = 2

[dispatcher]
retry_schedule = [${RETRY_DELAYS_MS.map((ms) => `"${ms}ms"`).join(', ')}]
retry_jitter = ${RETRY_JITTER}
partitions = 2
allow_addresses = ["127.0.0.1"]

[[webhooks]]
app_id = "${APP.id}"
id = "standard"
url = "${standard.url}/standard"
secret = "${SECRET}"

[[webhooks]]
app_id = "${APP.id}"
id = "pusher"
url = "${pusherFormat.url}/pusher"
format = "pusher"
channel_patterns = ["presence-*", "private-*"]
`;

const env = useHerald({
  config,
  command: MODE === 'cluster' ? 'edge' : 'dev',
  async setup(env) {
    if (MODE === 'cluster') {
      dispatcher = await startHerald({ command: 'dispatcher', config });
      await warmUp(env);
    }
  },
});
// Registered after useHerald's hook, so it runs after the edge has stopped: the
// services go last, and the edge's shutdown finds them still there.
after(async () => {
  await dispatcher?.stop();
  await backbone?.stop();
  standard.close();
  pusherFormat.close();
});

// Over Kafka the dispatcher's consumer group can still be settling for seconds
// after /readyz: its consumers (events, each retry tier, parked) join one group one
// by one, and each join rebalances the others. Until it settles deliveries wait, and
// some are delivered again (same webhook-id: at least once). So in cluster mode the
// tests start once the dispatcher has delivered a first webhook, and allow longer.
const DELIVERY_TIMEOUT_MS = MODE === 'cluster' ? 15_000 : 5_000;
const RETRY_SLACK_MS = MODE === 'cluster' ? 2_500 : 400;
const WARM_UP_TIMEOUT_MS = 60_000;

/** Waits until a channel_occupied recorded by the edge comes out of the dispatcher. */
async function warmUp(env) {
  const started = Date.now();
  const client = await env.connectedClient();
  await subscribe(client, 'hooks-warm-up');
  await waitFor(() => standard.received.some(({ rawBody }) => rawBody.includes('"hooks-warm-up"')), {
    what: 'the dispatcher to deliver its first webhook',
    timeoutMs: WARM_UP_TIMEOUT_MS,
    intervalMs: 50,
  });
  env.disconnect(client);
  console.log(`cluster mode: the first webhook came ${Date.now() - started} ms after the dispatcher was ready`);
}

const verifier = new Webhook(SECRET);
const pusherVerifier = new PusherServer({ appId: APP.id, key: APP.key, secret: APP.secret });

// Delivery is at least once. A Standard Webhooks receiver handles each `webhook-id`
// once (a retry or a redelivery repeats it), and so do these helpers. Pusher events
// have no id, and a redelivered one may come in another batch: identical Pusher
// events count once. Each event's uniqueness is checked on the Standard Webhooks
// side, where the event ids are.

/**
 * Every Standard Webhooks event so far, each delivery (repeats included) verified by
 * the official library, which throws when a signature does not match.
 */
function standardEvents() {
  const events = new Map();
  for (const { headers, rawBody } of standard.received) {
    const event = verifier.verify(rawBody, headers);
    if (!events.has(headers['webhook-id'])) events.set(headers['webhook-id'], event);
  }
  return [...events.values()];
}

/** Every Pusher event so far, from deliveries (repeats included) the pusher SDK validates. */
function pusherEvents() {
  for (const { headers, rawBody } of pusherFormat.received) {
    const webhook = pusherVerifier.webhook({ headers, rawBody });
    assert.ok(webhook.isValid(), `the pusher SDK refused a delivery: ${JSON.stringify(headers)} ${rawBody}`);
  }
  const events = new Map();
  for (const delivery of pusherFormat.received) {
    for (const event of pusherVerifier.webhook(delivery).getEvents()) events.set(JSON.stringify(event), event);
  }
  return [...events.values()];
}

function standardOf(type, channel) {
  return standardEvents().filter((e) => e.type === type && e.data.channel === channel);
}

function pusherOf(name, channel) {
  return pusherEvents().filter((e) => e.name === name && e.channel === channel);
}

/**
 * Waits until `find()` (a list) holds exactly one event and resolves with it; a
 * timeout says what it held instead.
 */
async function exactlyOne(find, what, timeoutMs = DELIVERY_TIMEOUT_MS) {
  let all = [];
  try {
    await waitFor(() => (all = find()).length === 1, { what: `exactly one ${what}`, timeoutMs });
  } catch (err) {
    err.message += `; found ${all.length}: ${JSON.stringify(all)}`;
    throw err;
  }
  return all[0];
}

/** The Standard Webhooks deliveries (raw requests, repeats included) of events on `channel`. */
function standardDeliveriesOn(channel) {
  return standard.received.filter(({ rawBody }) => JSON.parse(rawBody).data?.channel === channel);
}

test('a presence subscription is announced as channel_occupied and member_added, in both formats', async () => {
  const channel = 'presence-hooks';
  const subscribed = Date.now();
  const alice = await env.connectedClient({ userId: 'alice' });
  await subscribe(alice, channel);

  const occupied = await exactlyOne(() => standardOf('channel.occupied', channel), 'channel.occupied');
  const added = await exactlyOne(() => standardOf('member.added', channel), 'member.added');
  for (const event of [occupied, added]) {
    assert.equal(event.data.app_id, APP.id);
    assert.equal(event.data.channel, channel);
    assert.match(event.data.id, /\S/);
    const time = Date.parse(event.timestamp);
    assert.ok(time >= subscribed - 1_000 && time <= Date.now() + 1_000, `timestamp ${event.timestamp}`);
  }
  assert.equal(added.data.user_id, 'alice');
  assert.notEqual(occupied.data.id, added.data.id);
  for (const { headers } of standardDeliveriesOn(channel)) {
    assert.equal(headers['content-type'], 'application/json');
    assert.match(headers['webhook-id'], /\S/);
  }

  await exactlyOne(() => pusherOf('channel_occupied', channel), 'pusher channel_occupied');
  const pusherAdded = await exactlyOne(() => pusherOf('member_added', channel), 'pusher member_added');
  assert.deepEqual(pusherAdded, { name: 'member_added', channel, user_id: 'alice' });
  for (const delivery of pusherFormat.received) {
    assert.equal(delivery.headers['x-pusher-key'], APP.key);
    const time = pusherVerifier.webhook(delivery).getTime().getTime();
    assert.ok(time >= subscribed - 1_000 && time <= Date.now() + 1_000, `time_ms ${time}`);
  }
});

test('subscriptions to an empty cache channel are announced as cache_miss, once, in both formats', async () => {
  const channel = 'private-cache-hooks';
  const clients = await Promise.all([1, 2, 3].map(() => env.connectedClient()));
  // pusher-js's own pusher:cache_miss, on every client.
  await Promise.all(clients.map((client) => nextEvent(client.subscribe(channel), 'pusher:cache_miss')));
  const miss = await exactlyOne(() => standardOf('cache.miss', channel), 'cache.miss');
  assert.equal(miss.data.app_id, APP.id);
  const pusherMiss = await exactlyOne(() => pusherOf('cache_miss', channel), 'pusher cache_miss');
  assert.deepEqual(pusherMiss, { name: 'cache_miss', channel });
});

test('a publication reaches the Standard Webhooks endpoint as channel.event, never the Pusher one', async () => {
  // A presence channel, which the Pusher endpoint's channel_patterns match: only
  // the format can keep the publication away from it.
  const channel = 'presence-hooks-news';
  const dora = await env.connectedClient({ userId: 'dora' });
  const room = await subscribe(dora, channel);
  await exactlyOne(() => pusherOf('member_added', channel), 'pusher member_added (dora)');

  await env.sdk().trigger(channel, 'order-shipped', { id: 7 }, { socket_id: dora.connection.socket_id });
  const event = await exactlyOne(() => standardOf('channel.event', channel), 'channel.event');
  assert.equal(event.data.app_id, APP.id);
  assert.equal(event.data.event, 'order-shipped');
  assert.equal(typeof event.data.data, 'string');
  assert.deepEqual(JSON.parse(event.data.data), { id: 7 });
  assert.equal(event.data.socket_id, dora.connection.socket_id);

  // Events of one channel are recorded and dispatched in order, so once a later
  // event on the channel (erin joining) has reached the Pusher endpoint, the
  // publication would have too, in the same batch or an earlier one. A client
  // event sent after the publication is the control: it must be there by then.
  room.trigger('client-control', {});
  await exactlyOne(() => standardOf('client.event', channel), 'client.event (control)');
  const erin = await env.connectedClient({ userId: 'erin' });
  await subscribe(erin, channel);
  await waitFor(() => pusherOf('member_added', channel).some((e) => e.user_id === 'erin'), {
    what: 'pusher member_added (erin)',
    timeoutMs: DELIVERY_TIMEOUT_MS,
  });
  assert.equal(pusherOf('client_event', channel).filter((e) => e.event === 'client-control').length, 1, 'the control');
  const names = new Set(pusherEvents().filter((e) => e.channel === channel).map((e) => e.name));
  const expected = ['channel_occupied', 'member_added', 'client_event', 'subscription_count'];
  assert.deepEqual([...names].filter((n) => !expected.includes(n)), []);
  assert.equal(pusherFormat.received.filter(({ rawBody }) => rawBody.includes('order-shipped')).length, 0);
});

test('client events arrive with their socket, and their user on presence channels', async () => {
  const bob = await env.connectedClient({ userId: 'bob' });
  const room = await subscribe(bob, 'presence-chat');
  const notes = await subscribe(bob, 'private-notes');
  room.trigger('client-typing', { typing: true });
  notes.trigger('client-note', { text: 'hi' });

  const typing = await exactlyOne(() => standardOf('client.event', 'presence-chat'), 'client.event (presence)');
  assert.equal(typing.data.app_id, APP.id);
  assert.equal(typing.data.event, 'client-typing');
  assert.deepEqual(JSON.parse(typing.data.data), { typing: true });
  assert.equal(typing.data.socket_id, bob.connection.socket_id);
  assert.equal(typing.data.user_id, 'bob');
  const pusherTyping = await exactlyOne(() => pusherOf('client_event', 'presence-chat'), 'pusher client_event (presence)');
  assert.equal(pusherTyping.event, 'client-typing');
  assert.deepEqual(JSON.parse(pusherTyping.data), { typing: true });
  assert.equal(pusherTyping.socket_id, bob.connection.socket_id);
  assert.equal(pusherTyping.user_id, 'bob');

  // A private channel has no members: the socket, no user.
  const note = await exactlyOne(() => standardOf('client.event', 'private-notes'), 'client.event (private)');
  assert.equal(note.data.event, 'client-note');
  assert.deepEqual(JSON.parse(note.data.data), { text: 'hi' });
  assert.equal(note.data.socket_id, bob.connection.socket_id);
  assert.equal(note.data.user_id, undefined);
  const pusherNote = await exactlyOne(() => pusherOf('client_event', 'private-notes'), 'pusher client_event (private)');
  assert.deepEqual(pusherNote, {
    name: 'client_event',
    channel: 'private-notes',
    event: 'client-note',
    data: JSON.stringify({ text: 'hi' }),
    socket_id: bob.connection.socket_id,
  });
});

test('a quick reconnect announces nothing; leaving for good announces member_removed and channel_vacated', async () => {
  const channel = 'presence-flaky';
  let carol = await env.connectedClient({ userId: 'carol' });
  await subscribe(carol, channel);
  await exactlyOne(() => standardOf('member.added', channel), 'member.added');
  await exactlyOne(() => pusherOf('member_added', channel), 'pusher member_added');

  // Carol's connection drops and comes back well within the debounce.
  const firstLeave = Date.now();
  env.disconnect(carol);
  carol = await env.connectedClient({ userId: 'carol' });
  await subscribe(carol, channel);
  assert.ok(Date.now() - firstLeave < DEBOUNCE_MS, 'the reconnect took longer than the debounce');
  // Proving that nothing is sent needs a wait: past the first leave's debounce,
  // plus a margin for the dispatcher and the Pusher batch window (250 ms).
  await new Promise((resolve) => setTimeout(resolve, firstLeave + DEBOUNCE_MS + 700 - Date.now()));
  assert.equal(standardOf('member.removed', channel).length, 0, 'a reconnect is not a departure');
  assert.equal(standardOf('channel.vacated', channel).length, 0);
  const lifecycle = () =>
    JSON.stringify(standardDeliveriesOn(channel).map(({ headers, rawBody }) => [headers['webhook-id'], JSON.parse(rawBody)]));
  assert.equal(standardOf('member.added', channel).length, 1, `nor a new arrival: ${lifecycle()}`);
  assert.equal(standardOf('channel.occupied', channel).length, 1);
  assert.deepEqual(
    pusherEvents().filter((e) => e.channel === channel && ['member_removed', 'channel_vacated'].includes(e.name)),
    [],
  );
  assert.equal(pusherOf('member_added', channel).length, 1);

  const left = Date.now();
  env.disconnect(carol);
  const removed = await exactlyOne(() => standardOf('member.removed', channel), 'member.removed');
  assert.equal(removed.data.user_id, 'carol');
  await exactlyOne(() => standardOf('channel.vacated', channel), 'channel.vacated');
  const announced = standardDeliveriesOn(channel).filter(({ rawBody }) =>
    ['member.removed', 'channel.vacated'].includes(JSON.parse(rawBody).type),
  );
  for (const { at, rawBody } of announced) {
    assert.ok(at - left >= DEBOUNCE_MS - 50, `${JSON.parse(rawBody).type} announced ${at - left} ms after leaving`);
  }
  const pusherRemoved = await exactlyOne(() => pusherOf('member_removed', channel), 'pusher member_removed');
  assert.deepEqual(pusherRemoved, { name: 'member_removed', channel, user_id: 'carol' });
  await exactlyOne(() => pusherOf('channel_vacated', channel), 'pusher channel_vacated');
});

test('a delivery the receiver fails is retried on the schedule with the same webhook-id, re-signed', async (t) => {
  const channel = 'hooks-retried';
  // The first two attempts fail; the third succeeds.
  standard.respond = (delivery) =>
    JSON.parse(delivery.rawBody).data?.channel === channel && standardDeliveriesOn(channel).length < 2 ? 500 : 200;
  try {
    await env.sdk().trigger(channel, 'retry-me', { n: 1 });
    await waitFor(() => standardDeliveriesOn(channel).length >= 3, { what: 'three attempts', timeoutMs: DELIVERY_TIMEOUT_MS });
  } finally {
    standard.respond = () => 200;
  }
  const attempts = standardDeliveriesOn(channel).slice(0, 3);
  assert.deepEqual(
    attempts.map(({ status }) => status),
    [500, 500, 200],
  );
  assert.equal(new Set(attempts.map(({ headers }) => headers['webhook-id'])).size, 1, 'one webhook-id');
  assert.equal(new Set(attempts.map(({ rawBody }) => rawBody)).size, 1, 'the same body');
  for (const { headers, rawBody } of attempts) {
    assert.equal(verifier.verify(rawBody, headers).data.event, 'retry-me');
  }
  // Each retry waits its delay ±jitter after the previous attempt failed; the
  // upper bound leaves room for the dispatcher's own work (retry topics).
  const gaps = attempts.slice(1).map(({ at }, i) => at - attempts[i].at);
  t.diagnostic(`gaps between attempts: ${gaps.join(', ')} ms`);
  for (const [i, delay] of RETRY_DELAYS_MS.entries()) {
    const gap = gaps[i];
    const [min, max] = [delay * (1 - RETRY_JITTER) - 5, delay * (1 + RETRY_JITTER) + RETRY_SLACK_MS];
    assert.ok(gap >= min && gap <= max, `retry ${i + 1} came ${gap} ms after attempt ${i + 1} (expected ${min}..${max})`);
  }
});

test('the verifiers really check: a tampered delivery or another secret is refused', async () => {
  const channel = 'presence-hooks-tamper';
  const frank = await env.connectedClient({ userId: 'frank' });
  await subscribe(frank, channel);
  await waitFor(() => standardDeliveriesOn(channel).length > 0, {
    what: 'a Standard Webhooks delivery',
    timeoutMs: DELIVERY_TIMEOUT_MS,
  });
  const pusherDelivery = await waitFor(() => pusherFormat.received.find(({ rawBody }) => rawBody.includes(channel)), {
    what: 'a Pusher delivery',
    timeoutMs: DELIVERY_TIMEOUT_MS,
  });

  const { headers, rawBody } = standardDeliveriesOn(channel)[0];
  assert.equal(verifier.verify(rawBody, headers).data.channel, channel, 'the genuine delivery verifies');
  assert.throws(() => verifier.verify(rawBody.replace(channel, `${channel}-x`), headers), /signature/i);
  assert.throws(() => verifier.verify(rawBody, { ...headers, 'webhook-id': `${headers['webhook-id']}x` }), /signature/i);
  const otherSecret = `whsec_${randomBytes(32).toString('base64')}`;
  assert.throws(() => new Webhook(otherSecret).verify(rawBody, headers), /signature/i);

  assert.equal(pusherVerifier.webhook(pusherDelivery).isValid(), true, 'the genuine delivery verifies');
  const tampered = pusherDelivery.rawBody.replace(channel, `${channel}-x`);
  assert.equal(pusherVerifier.webhook({ ...pusherDelivery, rawBody: tampered }).isValid(), false);
  const impostor = new PusherServer({ appId: APP.id, key: APP.key, secret: 'not-the-secret' });
  assert.equal(impostor.webhook(pusherDelivery).isValid(), false);
});

