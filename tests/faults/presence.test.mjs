// Presence and occupancy through Redis faults, with real partitions (nftables in this
// file's own network namespace; see lib.mjs): two `herald edge`s share one Redis,
// edge A through 127.0.0.2 and edge B through 127.0.0.1, so cutting 127.0.0.2 cuts
// exactly A's path to Redis while its clients stay connected.
//
// What each scenario checks is what a client and an observer see:
// - the watcher on B (pusher-js) never gets `member_removed` for a client that never
//   left, except where an edge was cut off for longer than its lease (the others cannot
//   tell it from a crash): then it gets `member_added` back once the edge is healed;
// - the HTTP API (`/channels/{name}`, `/users`) shows the live clients again within one
//   lease of the fault ending, and publishes reach every subscriber again.
// Absence is proved by order, never by waiting a while: a canary member on a crashed
// edge (an expired lease planted in Redis) is reaped only once reaping runs again, so
// when the watcher sees the canary leave, anything reaped wrongly would have shown.
import { after, before, beforeEach, test } from 'node:test';
import assert from 'node:assert/strict';

import { APP, client, cut, eventually, heal, sdk, sigcont, sigstop, startHerald, startRedis } from './lib.mjs';

const REDIS_PORT = 16379;
const LEASE_SECS = 2;
const DEBOUNCE_MS = 300;
const ROOM = 'presence-room';
const NEWS = 'news';

let redis;
let edgeA;
let edgeB;

function edgeToml(redisAddr) {
  return `[redis]
url = "redis://${redisAddr}:${REDIS_PORT}/"
lease_secs = ${LEASE_SECS}

[events]
debounce_ms = ${DEBOUNCE_MS}
`;
}

before(async () => {
  redis = await startRedis({ port: REDIS_PORT, bind: ['127.0.0.1', '127.0.0.2'] });
  edgeA = await startHerald('edge', {
    name: 'edge-a',
    port: 16001,
    metricsPort: 19091,
    grpcPort: 15051,
    toml: edgeToml('127.0.0.2'),
  });
  edgeB = await startHerald('edge', {
    name: 'edge-b',
    port: 16002,
    metricsPort: 19092,
    grpcPort: 15052,
    toml: edgeToml('127.0.0.1'),
  });
});

after(async () => {
  await heal();
});

/** Every client a test made: disconnected when the test ends, whatever happened. */
const open = new Set();

/**
 * Each test starts from an empty cluster: its clients are gone and the channels they
 * were in are empty again (on every edge's view).
 */
beforeEach(async () => {
  for (const pusher of open) pusher.disconnect();
  open.clear();
  await eventually(async () => (await users(edgeB)).length === 0 && !(await occupied(edgeB, NEWS)).occupied, {
    what: 'the previous test\'s clients to be gone',
  });
});

/** A pusher-js client of `edge`, connected, subscribed to `channels`. */
async function member(edge, userId, channels = [ROOM]) {
  const pusher = await client(edge, { userId });
  open.add(pusher);
  const subscribed = {};
  for (const name of channels) {
    const channel = pusher.subscribe(name);
    await eventually(() => channel.subscribed, { what: `${userId} subscribed to ${name}` });
    subscribed[name] = channel;
  }
  return { pusher, channels: subscribed, userId };
}

/** Every member_added / member_removed the channel's client sees, in order. */
function watch(channel) {
  const seen = [];
  channel.bind('pusher:member_added', (m) => seen.push(`+${m.id}`));
  channel.bind('pusher:member_removed', (m) => seen.push(`-${m.id}`));
  return seen;
}

async function users(edge, channel = ROOM) {
  const res = await sdk(edge).get({ path: `/channels/${channel}/users` });
  const body = await res.json();
  return body.users.map((u) => u.id).sort();
}

async function occupied(edge, channel) {
  const res = await sdk(edge).get({ path: `/channels/${channel}`, params: { info: 'subscription_count' } });
  return res.json();
}

/**
 * Plants a crashed edge (node `node`) holding `user` in the room, its lease expiring
 * in `expiresInMs`: reaped as soon as its lease is out and reaping runs.
 */
async function plantCanary(node, user, expiresInMs) {
  const key = (what) => `herald:{${APP.id.length}:${APP.id}:${ROOM}}:${what}`;
  const socket = `${node}.1`;
  // Its count of the room (one connection) and that connection as a member.
  await redis.command(['HSET', key('occupancy'), String(node), 1]);
  await redis.command(['HINCRBY', key('occupancy'), 'all', 1]);
  await redis.command(['SADD', `herald:{${APP.id.length}:${APP.id}}:channels`, ROOM]);
  await redis.command(['HSET', key('sockets'), socket, user]);
  await redis.command(['HINCRBY', key('counts'), user, 1]);
  await redis.command(['HSET', key('members'), user, '{}']);
  const count = JSON.stringify(['c', APP.id, ROOM]);
  const member = JSON.stringify(['m', APP.id, ROOM, socket]);
  await redis.command(['SADD', `herald:node:${node}:entries`, count, member]);
  await redis.command(['ZADD', 'herald:nodes', Date.now() + expiresInMs, String(node)]);
}

/** A publish through `edge` reaches `channel` on `subscriber`. */
async function publishReaches(edge, subscriber, channelName) {
  const marker = `m-${Date.now()}-${Math.random()}`;
  let got = false;
  const channel = subscriber.channels[channelName];
  const onEvent = (data) => {
    if (data?.marker === marker) got = true;
  };
  channel.bind('probe', onEvent);
  try {
    await eventually(async () => {
      if (got) return true;
      await sdk(edge).trigger(channelName, 'probe', { marker }).catch(() => {});
      return eventually(() => got, { timeoutMs: 1_000, what: 'probe' }).catch(() => false);
    }, { timeoutMs: 20_000, what: `a publish through ${edge.name} to reach ${channelName}` });
  } finally {
    channel.unbind('probe', onEvent);
  }
}

test('redis stalled past the lease (SIGSTOP): no edge reaps another, nobody is told a live client left', async (t) => {
  const alice = await member(edgeA, 'alice', [ROOM, NEWS]);
  const bob = await member(edgeB, 'bob');
  const seen = watch(bob.channels[ROOM]);
  assert.deepEqual(await users(edgeB), ['alice', 'bob']);

  sigstop(redis);
  const stoppedAt = Date.now();
  // The stall itself: three leases, so every lease runs out meanwhile.
  await new Promise((r) => setTimeout(r, LEASE_SECS * 3_000));
  sigcont(redis);
  const resumedAt = Date.now();
  t.diagnostic(`redis stopped for ${resumedAt - stoppedAt} ms (lease ${LEASE_SECS} s)`);

  // A client learns of a member from its subscription or from member_added: a second
  // watcher subscribes while the canary is there, and sees it leave once reaped.
  await plantCanary(900_001, 'canary-1', 1_000);
  const eve = await member(edgeB, 'eve');
  assert.ok(eve.channels[ROOM].members.get('canary-1'), 'eve sees the canary');
  const seenByEve = watch(eve.channels[ROOM]);
  await eventually(() => seenByEve.includes('-canary-1'), { timeoutMs: 30_000, what: 'the canary to be reaped' });
  const reapedAt = Date.now();
  assert.deepEqual(seen.filter((e) => !e.endsWith('canary-1') && e !== '+eve'), [], 'no live member was removed');
  assert.deepEqual(seenByEve.filter((e) => !e.endsWith('canary-1')), [], 'no live member was removed');
  t.diagnostic(`reaping resumed ${reapedAt - resumedAt} ms after the stall`);
  assert.deepEqual(await users(edgeB), ['alice', 'bob', 'eve']);
  assert.equal((await occupied(edgeB, NEWS)).occupied, true);
  await publishReaches(edgeB, alice, NEWS);
});

test('redis restarted empty: every edge rebuilds its share within a lease; leaves are announced again', async (t) => {
  const alice = await member(edgeA, 'alice', [ROOM, NEWS]);
  const bob = await member(edgeB, 'bob');
  const seen = watch(bob.channels[ROOM]);

  const killedAt = Date.now();
  await redis.restart({ empty: true });
  await eventually(async () => (await users(edgeB).catch(() => [])).join() === 'alice,bob', {
    timeoutMs: 30_000,
    what: 'the room to be rebuilt',
  });
  t.diagnostic(`presence rebuilt ${Date.now() - killedAt} ms after the kill -9 of redis (lease ${LEASE_SECS} s)`);
  await eventually(async () => (await occupied(edgeB, NEWS)).occupied === true, { what: 'news occupied again' });
  assert.equal((await occupied(edgeB, NEWS)).subscription_count, 1);
  await publishReaches(edgeB, alice, NEWS);

  // A later joiner sees everyone; the rebuilt member's leave is announced.
  const carol = await member(edgeB, 'carol');
  assert.equal(carol.channels[ROOM].members.count, 3);
  assert.ok(!seen.includes('-alice'), `alice never left: ${seen}`);
  alice.pusher.disconnect();
  await eventually(() => seen.includes('-alice'), { what: 'bob to see alice leave' });
});

test('an edge cut off from redis (clients still connected) then healed: state rebuilt, leaves during the cut announced', async (t) => {
  const alice = await member(edgeA, 'alice', [ROOM, NEWS]);
  const dave = await member(edgeA, 'dave');
  const bob = await member(edgeB, 'bob');
  const seen = watch(bob.channels[ROOM]);

  // Shorter than the lease: A is not taken for crashed, but what happens meanwhile
  // (dave leaves) cannot reach Redis.
  const path = await cut({ addr: '127.0.0.2', port: REDIS_PORT });
  dave.pusher.disconnect();
  await new Promise((r) => setTimeout(r, (LEASE_SECS * 1_000) / 2));
  await path.heal();
  const healedAt = Date.now();
  await eventually(() => seen.includes('-dave'), { timeoutMs: 30_000, what: 'bob to see dave leave' });
  t.diagnostic(`dave's leave during the cut announced ${Date.now() - healedAt} ms after the heal`);
  assert.deepEqual(await users(edgeB), ['alice', 'bob']);
  assert.ok(!seen.includes('-alice'), `alice never left: ${seen}`);
  await publishReaches(edgeA, bob, ROOM);

  // Longer than the lease: the other edge takes A for crashed (it cannot tell) and
  // tells bob alice left; once healed, A re-asserts: alice is back, bob is told so.
  const long = await cut({ addr: '127.0.0.2', port: REDIS_PORT });
  await eventually(() => seen.includes('-alice'), { timeoutMs: 30_000, what: 'B to reap A while cut off' });
  const reapedAt = Date.now();
  await long.heal();
  await eventually(() => seen.lastIndexOf('+alice') > seen.lastIndexOf('-alice'), {
    timeoutMs: 30_000,
    what: 'bob to see alice again',
  });
  t.diagnostic(`alice back for bob ${Date.now() - reapedAt} ms after the reap (healed right after it)`);
  assert.deepEqual(await users(edgeB), ['alice', 'bob']);
  await eventually(async () => (await occupied(edgeB, NEWS)).occupied === true, { what: 'news occupied again' });
  await publishReaches(edgeB, alice, NEWS);
});
