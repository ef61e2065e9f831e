// Laravel Echo 2.5.0 over a recovering pusher-js: both ways of handing Echo
// the client work, `.listen`-ed events arrive (replayed ones too), and the
// recovery events can be listened to through Echo like any other.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import Echo from 'laravel-echo';
import Pusher from 'pusher-js';

import { withRecovery } from '../index.js';
import { KEY, clientOptions, setup, waitFor } from './fake-herald.mjs';

/**
 * Drives one recovery through `echo`: a live event, a dropped connection, a
 * replayed one, the ack, a live one. Returns what the app's listeners got.
 */
async function recoverThroughEcho(echo, server) {
  const received = [];
  const recovered = [];
  echo
    .channel('orders')
    .listen('.order-shipped', (data) => received.push(data.id))
    .listen('.herald:recovered', (info) => recovered.push(info));

  const first = await server.connection(1);
  assert.deepEqual(await first.waitForSubscribes(1), [
    { event: 'pusher:subscribe', data: { auth: '', channel: 'orders' } },
  ]);
  first.ack('orders', { position: { offset: 0, epoch: 'e1' } });
  first.publish('orders', 'order-shipped', { id: 1 }, { offset: 1, epoch: 'e1' });
  await waitFor(() => received.length === 1, 'the first event');

  first.drop();
  const second = await server.connection(2);
  assert.deepEqual(await second.waitForSubscribes(1), [
    { event: 'pusher:subscribe', data: { auth: '', channel: 'orders', since: { offset: 1, epoch: 'e1', socket_id: '1.100' } } },
  ]);
  second.publish('orders', 'order-shipped', { id: 2 }, { offset: 2, epoch: 'e1' });
  second.ack('orders', { recovered: true, position: { offset: 2, epoch: 'e1' } });
  second.publish('orders', 'order-shipped', { id: 3 }, { offset: 3, epoch: 'e1' });
  await waitFor(() => received.length === 3, `three events (got ${received})`);

  assert.deepEqual(received, [1, 2, 3]);
  assert.deepEqual(recovered, [
    { channel: 'orders', since: { offset: 1, epoch: 'e1' }, position: { offset: 2, epoch: 'e1' }, replayed: 1 },
  ]);
}

test('Echo given a recovering client (options.client) re-subscribes with since', async (t) => {
  const { server, track } = await setup(t);
  const client = track(withRecovery(new Pusher(KEY, clientOptions(server))));
  const echo = new Echo({ broadcaster: 'pusher', key: KEY, client });
  assert.equal(echo.connector.pusher, client);
  await recoverThroughEcho(echo, server);
  assert.deepEqual(client.recovery.position('orders'), { offset: 3, epoch: 'e1' });
});

test('Echo creating the client itself (options.Pusher), then withRecovery(echo.connector.pusher)', async (t) => {
  const { server, track } = await setup(t);
  const echo = new Echo({ broadcaster: 'pusher', key: KEY, Pusher, ...clientOptions(server) });
  track(echo.connector.pusher);
  // Before the first channel: Echo's constructor created the client (which
  // started connecting) but subscribed to nothing yet.
  withRecovery(echo.connector.pusher);
  await recoverThroughEcho(echo, server);
  assert.deepEqual(echo.connector.pusher.recovery.position('orders'), { offset: 3, epoch: 'e1' });
});
