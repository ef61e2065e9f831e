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
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';

import PusherServer from 'pusher';
import { Webhook } from 'standardwebhooks';

import { APP, freePort, heraldConfig, roundTrip, startHerald, subscribe, useHerald, waitFor } from './harness.mjs';

const SECRET = `whsec_${randomBytes(32).toString('base64')}`;
const DEBOUNCE_MS = 500;
const MODE = process.env.COMPAT_WEBHOOKS_MODE ?? 'dev';
if (!['dev', 'cluster'].includes(MODE)) throw new Error(`COMPAT_WEBHOOKS_MODE must be dev or cluster, not ${MODE}`);

/** Starts `command args` and waits until `port` accepts connections. */
async function startService(name, command, args, port, options = {}) {
  const proc = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  let output = '';
  for (const stream of [proc.stdout, proc.stderr]) stream.on('data', (chunk) => (output = (output + chunk).slice(-8_000)));
  let exited = null;
  proc.on('error', (error) => (exited = error));
  proc.on('close', (code) => (exited ??= new Error(`exited with ${code}`)));
  const accepts = () =>
    new Promise((resolve) => {
      const socket = connect({ host: '127.0.0.1', port }, () => resolve(socket.end() && true));
      socket.on('error', () => resolve(false));
    });
  try {
    await waitFor(async () => {
      if (exited) throw exited;
      return accepts();
    }, { timeoutMs: 20_000, intervalMs: 50, what: `${name} on port ${port}` });
  } catch (err) {
    proc.kill('SIGKILL');
    err.message += `\n--- ${name} output ---\n${output}`;
    throw err;
  }
  return {
    stop: () =>
      new Promise((resolve) => {
        if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
        proc.on('close', resolve);
        proc.kill('SIGKILL');
      }),
  };
}

/** In cluster mode: redis-server and tansu, and the config lines that use them. */
async function startBackbone() {
  const redisPort = await freePort();
  const redis = await startService('redis-server', process.env.REDIS_SERVER ?? 'redis-server', [
    '--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
  ], redisPort);
  const kafkaPort = await freePort();
  const dir = await mkdtemp(join(tmpdir(), 'herald-compat-tansu-'));
  const listener = `tcp://127.0.0.1:${kafkaPort}`;
  // sqlite storage: tansu 0.6's memory engine cannot resume a group mid-batch.
  const tansu = await startService('tansu', process.env.TANSU ?? 'tansu', [
    'broker', '--listener-url', listener, '--advertised-listener-url', listener,
    '--storage-engine', `sqlite://${join(dir, 'tansu.db')}`,
  ], kafkaPort, { cwd: '/' });
  return {
    config: `
[redis]
url = "redis://127.0.0.1:${redisPort}/"

[kafka]
brokers = "127.0.0.1:${kafkaPort}"
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
after(async () => {
  await dispatcher?.stop();
  await backbone?.stop();
});

/** An HTTP receiver that records every request's headers and raw body, answers 200. */
async function startReceiver() {
  const received = [];
  const server = createServer((request, response) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => {
      received.push({ headers: request.headers, rawBody: Buffer.concat(chunks).toString('utf8'), at: Date.now() });
      response.writeHead(200).end('ok');
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}`, received, close: () => server.close() };
}

const standard = await startReceiver();
const pusherFormat = await startReceiver();

const config = (ports) => `${heraldConfig(ports)}${backbone?.config ?? ''}
[events]
debounce_ms = ${DEBOUNCE_MS}
partitions = 2

[dispatcher]
retry_schedule = ["200ms", "400ms"]
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
  async setup() {
    if (MODE === 'cluster') dispatcher = await startHerald({ command: 'dispatcher', config });
  },
});

const verifier = new Webhook(SECRET);
const pusherVerifier = new PusherServer({ appId: APP.id, key: APP.key, secret: APP.secret });

/** Every Standard Webhooks delivery so far, verified by the official library. */
function standardEvents() {
  return standard.received.map(({ headers, rawBody }) => verifier.verify(rawBody, headers));
}

/** Every Pusher event so far, from deliveries the pusher SDK validates. */
function pusherEvents() {
  return pusherFormat.received.flatMap(({ headers, rawBody }) => {
    const webhook = pusherVerifier.webhook({ headers, rawBody });
    assert.ok(webhook.isValid(), `the pusher SDK refused a delivery: ${rawBody}`);
    return webhook.getEvents();
  });
}

function standardOf(type, channel) {
  return standardEvents().filter((e) => e.type === type && e.data.channel === channel);
}

function pusherOf(name, channel) {
  return pusherEvents().filter((e) => e.name === name && e.channel === channel);
}

test('a presence subscription is announced as channel_occupied and member_added, in both formats', async () => {
  const alice = await env.connectedClient({ userId: 'alice' });
  await subscribe(alice, 'presence-hooks');
  await waitFor(() => standardOf('channel.occupied', 'presence-hooks').length === 1, { what: 'channel.occupied' });
  const [added] = await waitFor(() => {
    const found = standardOf('member.added', 'presence-hooks');
    return found.length === 1 && found;
  }, { what: 'member.added' });
  assert.equal(added.data.user_id, 'alice');
  assert.equal(added.data.app_id, APP.id);
  assert.ok(!Number.isNaN(Date.parse(added.timestamp)), added.timestamp);

  await waitFor(() => pusherOf('channel_occupied', 'presence-hooks').length === 1, { what: 'pusher channel_occupied' });
  const [pusherAdded] = await waitFor(() => {
    const found = pusherOf('member_added', 'presence-hooks');
    return found.length === 1 && found;
  }, { what: 'pusher member_added' });
  assert.deepEqual(pusherAdded, { name: 'member_added', channel: 'presence-hooks', user_id: 'alice' });
  for (const { headers } of pusherFormat.received) {
    assert.equal(headers['x-pusher-key'], APP.key);
  }
});

test('a publication reaches the Standard Webhooks endpoint as channel.event, never the Pusher one', async () => {
  const watcher = await env.connectedClient();
  await subscribe(watcher, 'hooks-news');
  await env.sdk().trigger('hooks-news', 'order-shipped', { id: 7 });
  const [event] = await waitFor(() => {
    const found = standardOf('channel.event', 'hooks-news');
    return found.length === 1 && found;
  }, { what: 'channel.event' });
  assert.equal(event.data.event, 'order-shipped');
  assert.deepEqual(JSON.parse(event.data.data), { id: 7 });
  // The Pusher endpoint only wants presence-/private- channels, and Pusher has no
  // webhook for publications anyway: what it got so far is all it will get.
  await roundTrip(watcher);
  assert.equal(pusherEvents().filter((e) => e.channel === 'hooks-news').length, 0);
});

test('client events arrive with their socket and user', async () => {
  const bob = await env.connectedClient({ userId: 'bob' });
  const room = await subscribe(bob, 'presence-chat');
  room.trigger('client-typing', { typing: true });
  const [event] = await waitFor(() => {
    const found = standardOf('client.event', 'presence-chat');
    return found.length === 1 && found;
  }, { what: 'client.event' });
  assert.equal(event.data.event, 'client-typing');
  assert.deepEqual(JSON.parse(event.data.data), { typing: true });
  assert.equal(event.data.socket_id, bob.connection.socket_id);
  assert.equal(event.data.user_id, 'bob');
  const [pusherEvent] = await waitFor(() => {
    const found = pusherOf('client_event', 'presence-chat');
    return found.length === 1 && found;
  }, { what: 'pusher client_event' });
  assert.equal(pusherEvent.event, 'client-typing');
  assert.equal(pusherEvent.socket_id, bob.connection.socket_id);
  assert.equal(pusherEvent.user_id, 'bob');
});

test('a quick reconnect announces nothing; leaving for good announces member_removed and channel_vacated', async () => {
  const channel = 'presence-flaky';
  let carol = await env.connectedClient({ userId: 'carol' });
  await subscribe(carol, channel);
  await waitFor(() => standardOf('member.added', channel).length === 1, { what: 'member.added' });

  // Carol's connection drops and comes back well within the debounce.
  env.disconnect(carol);
  carol = await env.connectedClient({ userId: 'carol' });
  await subscribe(carol, channel);
  // Past the debounce of the first leave (and a margin for the dispatcher): nothing.
  await new Promise((resolve) => setTimeout(resolve, DEBOUNCE_MS + 700));
  assert.equal(standardOf('member.removed', channel).length, 0, 'a reconnect is not a departure');
  assert.equal(standardOf('channel.vacated', channel).length, 0);
  assert.equal(standardOf('member.added', channel).length, 1, 'nor a new arrival');
  assert.equal(standardOf('channel.occupied', channel).length, 1);

  const left = Date.now();
  env.disconnect(carol);
  const [removed] = await waitFor(() => {
    const found = standardOf('member.removed', channel);
    return found.length === 1 && found;
  }, { what: 'member.removed' });
  assert.equal(removed.data.user_id, 'carol');
  await waitFor(() => standardOf('channel.vacated', channel).length === 1, { what: 'channel.vacated' });
  const arrived = standard.received.at(-1).at;
  assert.ok(arrived - left >= DEBOUNCE_MS - 50, `announced ${arrived - left} ms after leaving`);
  await waitFor(() => pusherOf('member_removed', channel).length === 1 && pusherOf('channel_vacated', channel).length === 1, {
    what: 'pusher member_removed and channel_vacated',
  });
});

test('the verifiers really check: a tampered body or another secret is refused', async () => {
  await waitFor(() => standard.received.length > 0 && pusherFormat.received.length > 0, { what: 'deliveries' });
  const { headers, rawBody } = standard.received[0];
  assert.throws(() => verifier.verify(rawBody.replace('"type"', '"typo"'), headers));
  assert.throws(() => new Webhook(`whsec_${randomBytes(32).toString('base64')}`).verify(rawBody, headers));
  const pusherDelivery = pusherFormat.received[0];
  assert.equal(pusherVerifier.webhook({ ...pusherDelivery, rawBody: `${pusherDelivery.rawBody} ` }).isValid(), false);
  const impostor = new PusherServer({ appId: APP.id, key: APP.key, secret: 'not-the-secret' });
  assert.equal(impostor.webhook(pusherDelivery).isValid(), false);
});

test.after(() => {
  standard.close();
  pusherFormat.close();
});
