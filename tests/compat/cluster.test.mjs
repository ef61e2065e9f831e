// A cluster: three `herald edge` processes sharing one real redis-server behave
// as one Pusher server to unmodified pusher-js clients and the `pusher` SDK.
//
// Each edge gets its own view (`edges[i]`, a CompatEnv from the harness): its
// `client()`/`sdk()` point at that edge's WebSocket and HTTP API, while the auth
// endpoint and the encryption master key are shared by the whole cluster.
//
// Needs redis-server on PATH (REDIS_SERVER overrides); this file starts its own
// (on ports it checks they hold, see `startOnPorts`) and stops them in `after`.
//
// "Did not arrive" across edges: a ping round trip only flushes what the
// client's own edge has queued, not what is still in flight through Redis. So
// these tests publish a sentinel on the same channel afterwards and wait for it
// on the connection in question: Redis delivers one publisher's messages to a
// channel in order, and Herald keeps each channel ordered (the first test
// checks both), so whatever was published before the sentinel has arrived.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import {
  APP,
  CompatEnv,
  heraldConfig,
  nextEvent,
  outage,
  record,
  recordFrames,
  roundTrip,
  startAuthServer,
  startHerald,
  startOnPorts,
  startProxy,
  subscribe,
  userInfo,
  waitFor,
  withAppOption,
  withHistory,
} from './harness.mjs';
import { withRecovery } from '../../clients/js/index.js';

const REDIS_SERVER = process.env.REDIS_SERVER ?? 'redis-server';
// The backbone the edges share: `single` (one redis-server), `sharded` (three
// independent ones, `[redis] shards`) or `cluster` (a six-node Redis Cluster,
// `[redis] cluster = true`, sharded pub/sub). scripts/test.sh runs all three.
const MODE = process.env.COMPAT_REDIS_MODE ?? 'single';
const EDGES = 3;
// Presence lease of every edge: a killed edge's members are removed within
// about 4/3 of it.
const LEASE_SECS = 1;
// History kept for the app's `history-*` channels.
const HISTORY_SIZE = 5;
const REAP_TIMEOUT_MS = 10_000;

// ---------------------------------------------------------------------------
// redis-server
// ---------------------------------------------------------------------------

/** Resolves with Redis's answer to PING on `port` (rejects if it cannot connect). */
function ping(port) {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    let reply = '';
    socket.setTimeout(1_000, () => socket.destroy(new Error('no answer to PING')));
    socket.on('error', reject);
    socket.on('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk) => {
      reply += chunk;
      if (reply.includes('\r\n')) {
        socket.end();
        resolve(reply.trim());
      }
    });
  });
}

/**
 * Starts a throwaway redis-server (no persistence) on a port of its own (and
 * `extraPorts` more for `extraArgs(ports)`: a cluster node's bus). redis-server
 * cannot bind port 0, so `startOnPorts` gives it candidates and checks that it
 * listens on them itself.
 */
async function startRedis(extraArgs = () => [], extraPorts = 0, ports = undefined) {
  const server = await startOnPorts({
    // A restart takes the port it had again.
    ...(ports ? { candidates: async () => ports } : {}),
    name: REDIS_SERVER,
    command: REDIS_SERVER,
    count: 1 + extraPorts,
    args: ([port, ...rest]) => [
      '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
      // A replica of a Redis Cluster writes what its master sends it to an RDB file:
      // never in the working directory (the repository), where the next Redis started
      // there would load it.
      '--dir', tmpdir(), '--dbfilename', `herald-compat-${port}.rdb`,
      ...extraArgs(port, rest),
    ],
    ready: async ([port]) => (await ping(port)) === '+PONG',
  });
  const [port] = server.ports;
  return { port, url: `redis://127.0.0.1:${port}/`, stop: server.stop };
}

/** Sends one inline command to Redis on `port` and resolves with the raw reply. */
function redisCommand(port, command) {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    let reply = '';
    socket.setTimeout(1_000, () => socket.destroy(new Error(`no answer to ${command}`)));
    socket.on('error', reject);
    socket.on('connect', () => socket.write(`${command}\r\n`));
    socket.on('data', (chunk) => {
      reply += chunk;
      if (reply.endsWith('\r\n') && (reply[0] !== '$' || reply.split('\r\n').length > 2)) {
        socket.end();
        resolve(reply);
      }
    });
  });
}

/** The Redis servers of `MODE` and the `[redis]` lines that point the edges at them. */
async function startBackbone() {
  if (MODE === 'single') {
    const server = await startRedis();
    return { servers: [server], section: `url = "${server.url}"` };
  }
  if (MODE === 'sharded') {
    const servers = await Promise.all([startRedis(), startRedis(), startRedis()]);
    return { servers, section: `shards = [${servers.map((s) => `"${s.url}"`).join(', ')}]` };
  }
  if (MODE !== 'cluster') throw new Error(`COMPAT_REDIS_MODE must be single, sharded or cluster, not ${MODE}`);
  const dir = await mkdtemp(join(tmpdir(), 'herald-compat-cluster-'));
  const servers = await Promise.all(
    // The cluster bus gets a port of its own: the default, port + 10000, does not
    // exist for ports above 55535.
    Array.from({ length: 6 }, () =>
      startRedis(
        (port, [bus]) => [
          '--cluster-enabled', 'yes', '--cluster-port', String(bus),
          '--cluster-config-file', join(dir, `nodes-${port}.conf`),
        ],
        1,
      ),
    ),
  );
  const created = spawnSync(
    'redis-cli',
    ['--cluster', 'create', ...servers.map((s) => `127.0.0.1:${s.port}`), '--cluster-replicas', '1', '--cluster-yes'],
    { encoding: 'utf8', timeout: 30_000 },
  );
  if (created.status !== 0) throw new Error(`redis-cli --cluster create failed: ${created.stdout}${created.stderr}`);
  for (const server of servers) {
    await waitFor(async () => (await redisCommand(server.port, 'CLUSTER INFO')).includes('cluster_state:ok'), {
      timeoutMs: 20_000,
      intervalMs: 50,
      what: `Redis Cluster node ${server.port} to report cluster_state:ok`,
    });
  }
  return {
    servers,
    section: `shards = [${servers.map((s) => `"${s.url}"`).join(', ')}]\ncluster = true`,
    dir,
  };
}

// ---------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------

let backbone = null;
let auth = null;
/** The edges' `[redis] prefix`: every key and channel of this file's cluster starts with it. */
const redisPrefix = `compat-${randomBytes(4).toString('hex')}`;
const heralds = [];
/** One CompatEnv per edge: `edges[0]` is edge 1, and so on. */
const edges = [];

before(async () => {
  backbone = await startBackbone();
  const masterKeyBase64 = randomBytes(32).toString('base64');
  auth = await startAuthServer(APP, masterKeyBase64);
  const redisSection = `
[redis]
${backbone.section}
prefix = "${redisPrefix}"
lease_secs = ${LEASE_SECS}
`;
  const started = await Promise.allSettled(
    Array.from({ length: EDGES }, () =>
      startHerald({
        command: 'edge',
        config: (ports) => {
          const app = withHistory(heraldConfig(ports), { size: HISTORY_SIZE });
          const counted = withAppOption(app, 'enable_subscription_count = true');
          return withAppOption(counted, 'enable_watchlist_events = true') + redisSection;
        },
      }),
    ),
  );
  for (const result of started) if (result.status === 'fulfilled') heralds.push(result.value);
  const failed = started.find((result) => result.status === 'rejected');
  if (failed) throw failed.reason;
  for (const herald of heralds) edges.push(Object.assign(new CompatEnv(), { herald, auth, masterKeyBase64 }));
});

after(async () => {
  for (const edge of edges) edge.disconnectAll();
  await auth?.close();
  await Promise.allSettled(heralds.map((herald) => herald.stop()));
  await Promise.allSettled((backbone?.servers ?? []).map((server) => server.stop()));
  if (backbone?.dir) await rm(backbone.dir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/** Raw frames of `event` on `channelName` that Herald sent a client (duplicates included). */
function framesOf(client, channelName, event) {
  return recordFrames(client, (frame) => frame.channel === channelName && frame.event === event);
}

function memberIds(channel) {
  const ids = [];
  channel.members.each((member) => ids.push(member.id));
  return ids.sort();
}

async function getJson(edge, path, params) {
  const res = await edge.sdk().get({ path, params });
  assert.equal(res.status, 200, `GET ${path} through edge on port ${edge.herald.port}`);
  return res.json();
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

test('a trigger through edge 2 reaches subscribers on every edge once, 20 in order', async () => {
  const channelName = 'cluster-news';
  const clients = await Promise.all(edges.map((edge) => edge.connectedClient()));
  const channels = await Promise.all(clients.map((client) => subscribe(client, channelName)));
  const frames = clients.map((client) => framesOf(client, channelName, 'tick'));
  const seen = channels.map((channel) => record(channel, 'tick'));
  const sdk = edges[1].sdk();

  const res = await sdk.trigger(channelName, 'tick', { n: 'first' });
  assert.equal(res.status, 200);
  await waitFor(() => seen.every((events) => events.length >= 1), { what: 'the first tick on every edge' });

  for (let n = 0; n < 20; n++) {
    const res = await sdk.trigger(channelName, 'tick', { n });
    assert.equal(res.status, 200);
  }
  await waitFor(() => seen.every((events) => events.length >= 21), {
    what: `21 ticks on every edge (got ${seen.map((events) => events.length)})`,
  });
  await edges[1].sentinel(channelName, channels);

  const expected = ['first', ...Array.from({ length: 20 }, (_, n) => n)];
  seen.forEach((events, i) =>
    assert.deepEqual(
      events.map(({ data }) => data.n),
      expected,
      `ticks received by the client on edge ${i + 1}`,
    ),
  );
  frames.forEach((received, i) => assert.equal(received.length, 21, `tick frames sent to the client on edge ${i + 1}`));
});

test('a triggerBatch through edge 3 arrives on every edge, in order', async () => {
  const clients = await Promise.all(edges.map((edge) => edge.connectedClient()));
  const first = await Promise.all(clients.map((client) => subscribe(client, 'cluster-batch-1')));
  const second = await Promise.all(clients.map((client) => subscribe(client, 'cluster-batch-2')));
  const seenFirst = first.map((channel) => record(channel, 'item'));
  const seenSecond = second.map((channel) => record(channel, 'item'));

  // Pusher's batch limit is 10 events.
  const batch = Array.from({ length: 10 }, (_, n) => ({
    channel: n % 3 === 2 ? 'cluster-batch-2' : 'cluster-batch-1',
    name: 'item',
    data: { n },
  }));
  // Before the call: the SDK replaces each event's data with its JSON text.
  const expectedFirst = batch.filter((e) => e.channel === 'cluster-batch-1').map((e) => e.data.n);
  const expectedSecond = batch.filter((e) => e.channel === 'cluster-batch-2').map((e) => e.data.n);
  const res = await edges[2].sdk().triggerBatch(batch);
  assert.equal(res.status, 200);

  await waitFor(
    () =>
      seenFirst.every((events) => events.length >= expectedFirst.length) &&
      seenSecond.every((events) => events.length >= expectedSecond.length),
    { what: 'the whole batch on every edge' },
  );
  await edges[2].sentinel('cluster-batch-1', first);
  await edges[2].sentinel('cluster-batch-2', second);
  for (let i = 0; i < EDGES; i++) {
    assert.deepEqual(seenFirst[i].map(({ data }) => data.n), expectedFirst, `cluster-batch-1 on edge ${i + 1}`);
    assert.deepEqual(seenSecond[i].map(({ data }) => data.n), expectedSecond, `cluster-batch-2 on edge ${i + 1}`);
  }
});

test('client events on a private channel cross edges and are not echoed to the sender', async () => {
  const channelName = 'private-cluster-chat';
  const sender = await edges[0].connectedClient({ userId: 'sender' });
  const neighbour = await edges[0].connectedClient({ userId: 'neighbour' });
  const far = await edges[2].connectedClient({ userId: 'far' });
  const middle = await edges[1].connectedClient({ userId: 'middle' });
  const senderChannel = await subscribe(sender, channelName);
  const others = [
    await subscribe(far, channelName),
    await subscribe(middle, channelName),
    await subscribe(neighbour, channelName),
  ];
  const senderFrames = framesOf(sender, channelName, 'client-typing');

  const seen = others.map((channel) => record(channel, 'client-typing'));
  for (let n = 0; n < 3; n++) assert.equal(senderChannel.trigger('client-typing', { n }), true);
  await waitFor(() => seen.every((events) => events.length >= 3), {
    what: `three client events on each of edges 3, 2 and 1 (got ${seen.map((events) => events.length)})`,
  });
  seen.forEach((events, i) =>
    assert.deepEqual(
      events.map(({ data }) => data.n),
      [0, 1, 2],
      `client events at ${['far (edge 3)', 'middle (edge 2)', 'neighbour (edge 1)'][i]}`,
    ),
  );

  // Published after the client events reached edge 3, so any echo has reached
  // the sender before this.
  await edges[1].sentinel(channelName, [senderChannel, ...others]);
  await roundTrip(sender);
  assert.deepEqual(senderFrames, [], 'client events echoed to the sender');
});

test('presence members agree across edges; member_added and member_removed fire once', async () => {
  const channelName = 'presence-cluster-members';
  const users = [
    ['alice', edges[0]],
    ['bob', edges[1]],
    ['carol', edges[2]],
  ];
  const clients = {};
  const channels = {};
  const frames = {};
  for (const [userId, edge] of users) {
    clients[userId] = await edge.connectedClient({ userId });
    frames[userId] = {
      added: framesOf(clients[userId], channelName, 'pusher_internal:member_added'),
      removed: framesOf(clients[userId], channelName, 'pusher_internal:member_removed'),
    };
  }

  // Join one after the other; each earlier member sees the newcomer once.
  const joined = [];
  for (const [userId] of users) {
    const announced = joined.map((other) =>
      nextEvent(channels[other], 'pusher:member_added', {
        filter: (member) => member.id === userId,
        what: `${other} to see ${userId} join`,
      }),
    );
    channels[userId] = await subscribe(clients[userId], channelName);
    for (const [member] of await Promise.all(announced)) assert.deepEqual(member, { id: userId, info: userInfo(userId) });
    joined.push(userId);
  }

  for (const userId of joined) {
    assert.equal(channels[userId].members.count, 3, `${userId}'s member count`);
    assert.deepEqual(memberIds(channels[userId]), ['alice', 'bob', 'carol'], `${userId}'s members`);
    assert.deepEqual(channels[userId].members.me, { id: userId, info: userInfo(userId) });
    assert.deepEqual(channels[userId].members.get('alice'), { id: 'alice', info: userInfo('alice') });
  }
  await edges[0].sentinel(channelName, Object.values(channels));
  assert.deepEqual(frames.alice.added.map((f) => f.data.user_id), ['bob', 'carol']);
  assert.deepEqual(frames.bob.added.map((f) => f.data.user_id), ['carol']);
  assert.deepEqual(frames.carol.added.map((f) => f.data.user_id), []);

  const removals = ['alice', 'carol'].map((userId) =>
    nextEvent(channels[userId], 'pusher:member_removed', { what: `${userId} to see bob leave` }),
  );
  edges[1].disconnect(clients.bob);
  for (const [member] of await Promise.all(removals)) assert.deepEqual(member, { id: 'bob', info: userInfo('bob') });

  await edges[2].sentinel(channelName, [channels.alice, channels.carol]);
  for (const userId of ['alice', 'carol']) {
    assert.deepEqual(frames[userId].removed.map((f) => f.data.user_id), ['bob'], `member_removed frames at ${userId}`);
    assert.deepEqual(memberIds(channels[userId]), ['alice', 'carol'], `${userId}'s members after bob left`);
  }
});

test('channel info through any edge reports the cluster totals', async () => {
  // presence-cluster-info: dave on edge 1 and on edge 3, erin on edge 2, frank on edge 3
  // info-news: one anonymous connection on edge 2, one on edge 3 (none on edge 1)
  const presence = 'presence-cluster-info';
  for (const [userId, edge] of [
    ['dave', edges[0]],
    ['dave', edges[2]],
    ['erin', edges[1]],
    ['frank', edges[2]],
  ]) {
    await subscribe(await edge.connectedClient({ userId }), presence);
  }
  const readers = [await edges[1].connectedClient(), await edges[2].connectedClient()];
  for (const reader of readers) await subscribe(reader, 'info-news');
  // Each edge sends its subscription counts to Redis in batches (server.occupancy_flush,
  // 50 ms): the others' subscriptions are in the totals once their batches are.
  const count = async (channel) =>
    (await getJson(edges[0], `/channels/${channel}`, { info: 'subscription_count' })).subscription_count;
  await waitFor(async () => (await count(presence)) === 4, { what: `four ${presence} subscriptions counted` });
  await waitFor(async () => (await count('info-news')) === 2, { what: 'two info-news subscriptions counted' });

  for (const [i, edge] of edges.entries()) {
    const via = `through edge ${i + 1}`;
    assert.deepEqual(
      await getJson(edge, `/channels/${presence}`, { info: 'user_count,subscription_count' }),
      { occupied: true, user_count: 3, subscription_count: 4 },
      via,
    );
    assert.deepEqual(
      await getJson(edge, '/channels/info-news', { info: 'subscription_count' }),
      { occupied: true, subscription_count: 2 },
      via,
    );
    assert.deepEqual(await getJson(edge, '/channels', { filter_by_prefix: 'info-' }), { channels: { 'info-news': {} } }, via);
    assert.deepEqual(
      await getJson(edge, '/channels', { filter_by_prefix: 'presence-cluster-info', info: 'user_count' }),
      { channels: { [presence]: { user_count: 3 } } },
      via,
    );
    const { users } = await getJson(edge, `/channels/${presence}/users`);
    assert.deepEqual(users.map((u) => u.id).sort(), ['dave', 'erin', 'frank'], via);
  }

  // The last subscriber on edge 3 leaves: edge 1 sees the count drop, and the
  // channel vanish when edge 2's goes too.
  readers[1].unsubscribe('info-news');
  await roundTrip(readers[1]);
  await waitFor(
    async () => (await getJson(edges[0], '/channels/info-news', { info: 'subscription_count' })).subscription_count === 1,
    { what: 'edge 1 to report one info-news subscriber' },
  );
  readers[0].unsubscribe('info-news');
  await roundTrip(readers[0]);
  await waitFor(async () => (await getJson(edges[0], '/channels/info-news')).occupied === false, {
    what: 'edge 1 to report info-news unoccupied',
  });
});

test(
  'GET /channels matching no channel is an empty list on every edge',
  async () => {
    for (const [i, edge] of edges.entries()) {
      assert.deepEqual(
        await getJson(edge, '/channels', { filter_by_prefix: 'cluster-nothing-' }),
        { channels: {} },
        `through edge ${i + 1}`,
      );
    }
  },
);

test('socket_id in a trigger through edge 2 excludes that connection on edge 1 only', async () => {
  const channelName = 'cluster-exclusion';
  const excluded = await edges[0].connectedClient();
  const clients = [excluded, await edges[0].connectedClient(), await edges[1].connectedClient(), await edges[2].connectedClient()];
  const channels = await Promise.all(clients.map((client) => subscribe(client, channelName)));
  const excludedFrames = framesOf(excluded, channelName, 'echo');

  const arrivals = channels.slice(1).map((channel) => nextEvent(channel, 'echo'));
  const res = await edges[1]
    .sdk()
    .trigger(channelName, 'echo', { from: 'server' }, { socket_id: excluded.connection.socket_id });
  assert.equal(res.status, 200);
  for (const [data] of await Promise.all(arrivals)) assert.deepEqual(data, { from: 'server' });

  await edges[1].sentinel(channelName, channels);
  assert.deepEqual(excludedFrames, [], 'the excluded connection received the event');
});

test('terminateUserConnections through edge 1 closes the user on edge 3 (and edge 2) only', async (t) => {
  const victims = [await edges[2].signedInClient('gina'), await edges[1].signedInClient('gina')];
  const bystanders = [await edges[2].signedInClient('hank'), await edges[0].signedInClient('hank')];
  const dropped = victims.map((client) =>
    nextEvent(client.connection, 'state_change', {
      filter: ({ previous }) => previous === 'connected',
      what: "gina's connection to leave the connected state",
    }),
  );

  const res = await edges[0].sdk().terminateUserConnections('gina');
  assert.equal(res.status, 200);
  const changes = await Promise.all(dropped);
  t.diagnostic(`state changes: ${JSON.stringify(changes.map(([change]) => change))}`);

  for (const bystander of bystanders) {
    await roundTrip(bystander);
    assert.equal(bystander.connection.state, 'connected');
  }
});

/**
 * Every event of a pusher-js channel, in order, as `event` or `event n`; but the
 * subscription counts the edges of this file tell (they come and go with the
 * clients of every test).
 */
function recordSummary(channel) {
  const seen = [];
  channel.bind_global((event, data) => {
    if (event !== 'pusher:subscription_count') seen.push(typeof data?.n === 'number' ? `${event} ${data.n}` : event);
  });
  return seen;
}

/**
 * A recovering pusher-js client on edge 1 behind a proxy (closed after the test),
 * subscribed to `channelName`, after one live event published through edge 2.
 */
async function recoveringClient(t, channelName) {
  const proxy = await startProxy(edges[0].herald.port);
  t.after(() => proxy.close());
  const client = withRecovery(edges[0].clientVia(proxy.port));
  const log = recordSummary(client.subscribe(channelName));
  await subscribe(client, channelName);
  await trigger(channelName, 1);
  await waitFor(() => log.includes('my-event 1'), { what: 'the first live event' });
  return { proxy, client, log };
}

async function trigger(channelName, n) {
  const res = await edges[1].sdk().trigger(channelName, 'my-event', { n });
  assert.equal(res.status, 200, `trigger ${n} on ${channelName} through edge 2`);
}

/** A trigger through edge 2 that may fail (503 while Redis is away): its status. */
async function tryTrigger(channelName, n) {
  try {
    return (await edges[1].sdk().trigger(channelName, 'my-event', { n })).status;
  } catch (err) {
    return err.status ?? 0;
  }
}

test("pusher-js's pusher.user.watchlist hears a user on another edge come online and go offline", async () => {
  const wanda = await edges[0].connectedClient({ userId: 'wanda', watchlist: ['wes'] });
  const told = [];
  for (const name of ['online', 'offline']) {
    wanda.user.watchlist.bind(name, (event) => told.push(`${event.name} ${event.user_ids.join(',')}`));
  }
  wanda.signin();
  await waitFor(() => told.length === 1, { what: 'the watchlist as it is at sign-in' });
  const wes = await edges[2].signedInClient('wes');
  const wesAgain = await edges[1].signedInClient('wes');
  await waitFor(() => told.length === 2, { what: `wes online (told: ${told})` });
  edges[2].disconnect(wes);
  edges[1].disconnect(wesAgain);
  await waitFor(() => told.length === 3, { what: `wes offline (told: ${told})` });
  assert.deepEqual(told, ['offline wes', 'online wes', 'offline wes']);
});

test("pusher-js's pusher:subscription_count follows the cluster-wide count across edges", async () => {
  const channelName = 'cluster-counted';
  const alice = await edges[0].connectedClient();
  const aliceChannel = alice.subscribe(channelName);
  const counts = record(aliceChannel, 'pusher:subscription_count');
  await waitFor(() => aliceChannel.subscriptionCount === 1, { what: 'a count of 1 at alice' });
  const bob = await edges[2].connectedClient();
  await subscribe(bob, channelName);
  await waitFor(() => aliceChannel.subscriptionCount === 2, { what: `a count of 2 at alice (told: ${JSON.stringify(counts)})` });
  edges[2].disconnect(bob);
  await waitFor(() => aliceChannel.subscriptionCount === 1, { what: 'a count of 1 again once bob left' });
  assert.deepEqual(counts.map(({ data }) => data.subscription_count), [1, 2, 1]);
});

test('a client cut off from edge 1 recovers on edge 3 what was published through edge 2 meanwhile', async (t) => {
  const { proxy, client, log } = await recoveringClient(t, 'history-cluster');
  await outage(proxy, async () => {
    proxy.target = edges[2].herald.port;
    for (const n of [2, 3, 4]) await trigger('history-cluster', n);
  });
  await waitFor(() => log.includes('herald:recovered'), { what: `herald:recovered (so far: ${log})` });
  await trigger('history-cluster', 5);
  await waitFor(() => log.includes('my-event 5'), { what: 'the live event after the recovery' });
  await edges[1].sentinel('history-cluster', [client.channel('history-cluster')]);
  assert.deepEqual(log.filter((e) => e !== 'compat-sentinel'), [
    'pusher:subscription_succeeded',
    'my-event 1',
    'my-event 2',
    'my-event 3',
    'my-event 4',
    'pusher:subscription_succeeded',
    'herald:recovered',
    'my-event 5',
  ]);
});

test(`across edges, more missed than the history keeps (${HISTORY_SIZE}) is unrecoverable`, async (t) => {
  const { proxy, log } = await recoveringClient(t, 'history-cluster-long');
  await outage(proxy, async () => {
    proxy.target = edges[2].herald.port;
    for (let n = 2; n <= HISTORY_SIZE + 3; n++) await trigger('history-cluster-long', n);
  });
  await waitFor(() => log.includes('herald:unrecoverable'), { what: `herald:unrecoverable (so far: ${log})` });
  assert.deepEqual(log, ['pusher:subscription_succeeded', 'my-event 1', 'pusher:subscription_succeeded', 'herald:unrecoverable']);
});

test('a channel whose history Redis lost (restarted empty: a new epoch) is unrecoverable, then recovers again', async (t) => {
  const channelName = 'history-cluster-lost';
  const { proxy, client, log } = await recoveringClient(t, channelName);
  const before = client.recovery.position(channelName);
  await outage(proxy, async () => {
    if (MODE === 'single') {
      // The Redis restarts, empty, on its port; the edges reconnect by themselves.
      const [old] = backbone.servers;
      await old.stop();
      backbone.servers[0] = await startRedis(() => [], 0, [old.port]);
      await waitFor(async () => (await tryTrigger(channelName, 2)) === 200, {
        timeoutMs: 15_000,
        what: 'a publish through the restarted Redis',
      });
      // Edge 1 takes subscriptions again once its pub/sub connection is back (until
      // then they are refused with 503, which pusher-js does not retry).
      let probes = 0;
      await waitFor(
        async () => {
          const probe = await edges[0].connectedClient();
          try {
            await subscribe(probe, `cluster-probe-${probes++}`, 1_000);
            return true;
          } catch {
            return false;
          } finally {
            edges[0].disconnect(probe);
          }
        },
        { timeoutMs: 15_000, what: "edge 1's pub/sub connection back after the restart" },
      );
      return;
    }
    // Sharded and Cluster: what a Redis restarted empty would have lost, the channel's
    // offset, epoch and list, deleted where it lives.
    const channel = `${redisPrefix}:${APP.id.length}:${APP.id}:${channelName}`;
    for (const server of backbone.servers) {
      const deleted = spawnSync('redis-cli', ['-c', '-p', String(server.port), 'DEL', `{${channel}}:meta`, `{${channel}}:list`], {
        encoding: 'utf8',
        timeout: 10_000,
      });
      assert.equal(deleted.status, 0, `redis-cli DEL: ${deleted.stderr}`);
    }
    await trigger(channelName, 2);
  });
  await waitFor(() => log.includes('herald:unrecoverable'), { what: `herald:unrecoverable (so far: ${log})` });
  const after = client.recovery.position(channelName);
  assert.notEqual(after.epoch, before.epoch, 'a new epoch');
  assert.equal(after.offset, 1, 'the one publication of the new epoch');
  // From the new epoch's position on, recovery works again.
  await outage(proxy, async () => {
    await trigger(channelName, 3);
  });
  await waitFor(() => log.includes('herald:recovered'), { what: `herald:recovered (so far: ${log})` });
  assert.deepEqual(log, [
    'pusher:subscription_succeeded',
    'my-event 1',
    'pusher:subscription_succeeded',
    'herald:unrecoverable',
    'my-event 3',
    'pusher:subscription_succeeded',
    'herald:recovered',
  ]);
});

// Last: edge 2 stays dead.
test('after edge 2 is killed, its presence members leave everywhere and the rest keeps working', async (t) => {
  const channelName = 'presence-cluster-crash';
  const alice = await edges[0].connectedClient({ userId: 'alice' });
  const carol = await edges[2].connectedClient({ userId: 'carol' });
  const bob = await edges[1].connectedClient({ userId: 'bob' });
  // Victor, signed in on edge 2 only, is watched from edge 1.
  const wendy = await edges[0].connectedClient({ userId: 'wendy', watchlist: ['victor'] });
  const watched = [];
  wendy.user.watchlist.bind('online', (event) => watched.push(`online ${event.user_ids}`));
  wendy.user.watchlist.bind('offline', (event) => watched.push(`offline ${event.user_ids}`));
  await edges[1].signedInClient('victor');
  wendy.signin();
  await waitFor(() => watched.length === 1, { what: 'victor online at sign-in' });
  const aliceChannel = await subscribe(alice, channelName);
  const carolChannel = await subscribe(carol, channelName);
  const removedFrames = [alice, carol].map((client) => framesOf(client, channelName, 'pusher_internal:member_removed'));
  const bobJoined = [aliceChannel, carolChannel].map((channel) =>
    nextEvent(channel, 'pusher:member_added', { filter: (member) => member.id === 'bob' }),
  );
  await subscribe(bob, channelName);
  await Promise.all(bobJoined);
  const news = await subscribe(alice, 'cluster-after-crash');

  const bobLeft = [aliceChannel, carolChannel].map((channel) =>
    nextEvent(channel, 'pusher:member_removed', {
      filter: (member) => member.id === 'bob',
      timeoutMs: REAP_TIMEOUT_MS,
      what: "bob's member_removed after edge 2 was killed",
    }),
  );
  const killedAt = Date.now();
  const status = await edges[1].herald.kill();
  assert.equal(status.signal, 'SIGKILL');
  // Stop edge 2's clients from reconnecting: its port is free now, and a
  // Herald of another test file could get it.
  edges[1].disconnectAll();
  await Promise.all(bobLeft);
  t.diagnostic(`member_removed for bob ${Date.now() - killedAt} ms after SIGKILL (lease ${LEASE_SECS} s)`);
  // The crashed edge's signed-in user went offline for its watchers on other edges.
  await waitFor(() => watched.length === 2, { timeoutMs: REAP_TIMEOUT_MS, what: `victor offline (told: ${watched})` });
  assert.deepEqual(watched, ['online victor', 'offline victor']);

  for (const channel of [aliceChannel, carolChannel]) assert.deepEqual(memberIds(channel), ['alice', 'carol']);
  assert.deepEqual((await getJson(edges[2], `/channels/${channelName}/users`)).users.map((u) => u.id).sort(), [
    'alice',
    'carol',
  ]);

  // Edge 1 still receives what is published through edge 3.
  const seen = record(news, 'still-here');
  for (let n = 0; n < 3; n++) {
    const res = await edges[2].sdk().trigger('cluster-after-crash', 'still-here', { n });
    assert.equal(res.status, 200);
  }
  await waitFor(() => seen.length >= 3, { what: 'three events through edge 3 at alice on edge 1' });
  assert.deepEqual(seen.map(({ data }) => data.n), [0, 1, 2]);

  // So does a connection and subscription made after the crash.
  const latecomer = await subscribe(await edges[0].connectedClient(), 'cluster-after-crash');
  const arrival = nextEvent(latecomer, 'still-here', { filter: (data) => data.n === 3 });
  await edges[2].sdk().trigger('cluster-after-crash', 'still-here', { n: 3 });
  await arrival;

  // bob left exactly once for each of them.
  await edges[2].sentinel(channelName, [aliceChannel, carolChannel]);
  for (const frames of removedFrames) assert.deepEqual(frames.map((f) => f.data.user_id), ['bob']);
});
