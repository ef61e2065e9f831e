// Channel queries through the pusher SDK's get(): /channels, /channels/{name}
// and /channels/{name}/users, checked against subscriptions made with pusher-js.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { roundTrip, subscribe, useHerald, waitFor } from './harness.mjs';

// Occupancy used by every test below:
//   presence-lobby  alice (1 connection) + bob (2 connections)
//   presence-stage  alice
//   news            2 anonymous connections
const env = useHerald({
  async setup(env) {
    const alice = await env.connectedClient({ userId: 'alice' });
    const bobs = [await env.connectedClient({ userId: 'bob' }), await env.connectedClient({ userId: 'bob' })];
    const readers = [await env.connectedClient(), await env.connectedClient()];
    await subscribe(alice, 'presence-lobby');
    await subscribe(alice, 'presence-stage');
    for (const bob of bobs) await subscribe(bob, 'presence-lobby');
    for (const reader of readers) await subscribe(reader, 'news');
  },
});

async function getJson(path, params) {
  const res = await env.sdk().get({ path, params });
  assert.equal(res.status, 200);
  return res.json();
}

/** Resolves with the HTTP status of a request the SDK rejected. */
async function rejectedStatus(path, params) {
  const err = await env
    .sdk()
    .get({ path, params })
    .then(
      (res) => assert.fail(`expected an error status, got ${res.status}`),
      (error) => error,
    );
  return err.status;
}

test('GET /channels lists every occupied channel', async () => {
  assert.deepEqual(await getJson('/channels'), {
    channels: { news: {}, 'presence-lobby': {}, 'presence-stage': {} },
  });
});

test('GET /channels filtered to presence- returns user_count per channel', async () => {
  assert.deepEqual(await getJson('/channels', { filter_by_prefix: 'presence-', info: 'user_count' }), {
    channels: { 'presence-lobby': { user_count: 2 }, 'presence-stage': { user_count: 1 } },
  });
});

test('GET /channels/{presence channel} reports occupancy, users and connections', async () => {
  assert.deepEqual(await getJson('/channels/presence-lobby', { info: 'user_count,subscription_count' }), {
    occupied: true,
    user_count: 2,
    subscription_count: 3,
  });
});

test('GET /channels/{public channel} reports subscription_count', async () => {
  assert.deepEqual(await getJson('/channels/news', { info: 'subscription_count' }), {
    occupied: true,
    subscription_count: 2,
  });
});

test('GET /channels/{presence channel}/users lists each user once', async () => {
  const { users } = await getJson('/channels/presence-lobby/users');
  assert.deepEqual(
    users.sort((a, b) => a.id.localeCompare(b.id)),
    [{ id: 'alice' }, { id: 'bob' }],
  );
});

test('an unused channel is reported unoccupied', async () => {
  assert.deepEqual(await getJson('/channels/nobody-here'), { occupied: false });
});

test('a channel becomes unoccupied when its last subscriber leaves', async () => {
  const client = await env.connectedClient();
  await subscribe(client, 'short-lived');
  assert.deepEqual(await getJson('/channels/short-lived'), { occupied: true });

  client.unsubscribe('short-lived');
  await roundTrip(client);
  await waitFor(async () => (await getJson('/channels/short-lived')).occupied === false, {
    what: 'short-lived to be reported unoccupied',
  });
});

test('presence-only queries on other channels are rejected with 400', async () => {
  assert.equal(await rejectedStatus('/channels', { info: 'user_count' }), 400);
  assert.equal(await rejectedStatus('/channels/news', { info: 'user_count' }), 400);
  assert.equal(await rejectedStatus('/channels/news/users'), 400);
});
