// A subscriber that stops reading while its channel is flooded: Herald cuts it
// off with 4100 once its bounded outbound queue overflows, keeps delivering
// every publication to the subscriber that keeps up, and its memory stays
// bounded (the queue is what it holds for the slow one, not the flood).
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import {
  WsClient,
  assertPusherError,
  configWith,
  metricValue,
  nextEvent,
  heraldPid,
  rssBytes,
  stillServes,
  subscribe,
  useHerald,
  waitFor,
} from './lib.mjs';

const OUTBOUND_QUEUE_BYTES = 16 * 1024;
// Longer than the flood takes: the slow client must be cut off because its
// queue overflowed (4100), not because it stopped reading for this long
// (which drops it without a close frame).
const WRITE_TIMEOUT_SECS = 60;
// A sanity bound, not a performance assertion: the flood is a few MB, and
// anything near this would mean the slow client's backlog is being kept.
const RSS_GROWTH_BOUND = 200 * 1024 * 1024;
const EVENT_BYTES = 9 * 1024;
const BATCH = 10;
// Far more than loopback socket buffers and the queue hold together (a few MB).
const MAX_BATCHES = 2000;
const FLOOD_DEADLINE_MS = 60_000;

const env = useHerald({
  config: configWith({
    tables: {
      connection: `outbound_queue_bytes = ${OUTBOUND_QUEUE_BYTES}\nwrite_timeout_secs = ${WRITE_TIMEOUT_SECS}`,
    },
  }),
});

let cleanup = [];
after(() => cleanup.forEach((f) => f()));

const title = 'a subscriber that stops reading is closed with 4100; the others get every publication; memory stays bounded';
test(title, { timeout: 120_000 }, async (t) => {
  const pid = await heraldPid(env);
  const rssBefore = await rssBytes(pid);
  const channelName = `flood-${randomBytes(4).toString('hex')}`;

  const slow = await WsClient.established(env.herald.port);
  cleanup.push(() => slow.destroy());
  assert.equal((await slow.subscribe(channelName)).event, 'pusher_internal:subscription_succeeded');

  const steady = await env.connectedClient();
  const channel = await subscribe(steady, channelName);
  const received = [];
  channel.bind('flood', (data) => received.push(data.seq));

  // The slow client stops reading: what Herald sends it piles up in the
  // socket buffers, then in its outbound queue, until that overflows.
  slow.conn.socket.pause();
  const slowBefore = await metricValue(env, 'herald_slow_consumers_total');
  const sdk = env.sdk();
  const pad = 'p'.repeat(EVENT_BYTES);
  let seq = 0;
  let rssPeak = rssBefore;
  const started = Date.now();
  for (let batch = 0; ; batch++) {
    if ((await metricValue(env, 'herald_slow_consumers_total')) > slowBefore) break;
    assert.ok(batch < MAX_BATCHES, `no slow consumer cut off after ${batch * BATCH} events`);
    assert.ok(Date.now() - started < FLOOD_DEADLINE_MS, 'flood deadline: no slow consumer cut off');
    const events = Array.from({ length: BATCH }, () => ({ channel: channelName, name: 'flood', data: { seq: seq++, pad } }));
    const res = await sdk.triggerBatch(events);
    assert.equal(res.status, 200);
    rssPeak = Math.max(rssPeak, await rssBytes(pid));
  }
  // A few more after the cut: they must still reach the steady subscriber.
  for (let i = 0; i < 3; i++) {
    await sdk.triggerBatch(Array.from({ length: BATCH }, () => ({ channel: channelName, name: 'flood', data: { seq: seq++, pad } })));
    rssPeak = Math.max(rssPeak, await rssBytes(pid));
  }

  // The steady subscriber got every publication, in order.
  await env.sentinel(channelName, [channel]);
  assert.equal(received.length, seq, `the steady subscriber got ${received.length} of ${seq}`);
  assert.deepEqual(received, Array.from({ length: seq }, (_, i) => i), 'in order, none missing');

  // The slow client reads again: what was in flight, then pusher:error 4100 and close 4100.
  slow.conn.socket.resume();
  const close = await slow.closed({ timeoutMs: 30_000 });
  assert.equal(close.code, 4100, `close code ${close.code} ${JSON.stringify(close.reason)}`);
  const error = slow.messages.find((m) => m.event === 'pusher:error');
  assertPusherError(error, 4100, /capacity/);
  const got = slow.messages.filter((m) => m.event === 'flood').length;
  assert.ok(got < seq, `the slow client got ${got} of ${seq}: it was cut off`);

  t.diagnostic(`${seq} events of ${EVENT_BYTES} bytes; the slow client got ${got} before 4100`);
  t.diagnostic(`RSS ${rssBefore} bytes before, ${rssPeak} at most during the flood`);
  assert.ok(
    rssPeak - rssBefore < RSS_GROWTH_BOUND,
    `RSS grew from ${rssBefore} to ${rssPeak} bytes during a flood of ${seq} events of ${EVENT_BYTES} bytes`,
  );
  await stillServes(env);
});
