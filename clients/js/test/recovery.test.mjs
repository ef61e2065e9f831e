// withRecovery on real pusher-js 8.6.0 against a scripted Pusher server
// (fake-herald.mjs): what pusher-js sends on the wire with the module in
// place, and what the app sees.
//
// A reconnect here is pusher-js's own: the server cuts the TCP connection,
// pusher-js notices the close and connects again about a second later,
// re-subscribing to every channel it had.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { withRecovery } from '../index.js';
import { KEY, recordAll, setup, waitFor } from './fake-herald.mjs';

/** A log of channel events, shortened to `event` or `event n` for messages with a payload number. */
function summary(log) {
  return log.map(([event, data]) => (typeof data?.n === 'number' ? `${event} ${data.n}` : event));
}

const subscribeFrame = (data) => ({ event: 'pusher:subscribe', data });

test('the first subscribe carries no since; the ack and later messages set the position', async (t) => {
  const { server, connect } = await setup(t);
  const pusher = withRecovery(connect());
  const chat = pusher.subscribe('chat-1');
  const plain = pusher.subscribe('plain');
  const log = recordAll(chat);
  const plainLog = recordAll(plain);

  const conn = await server.connection(1);
  assert.deepEqual(await conn.waitForSubscribes(2), [
    subscribeFrame({ auth: '', channel: 'chat-1' }),
    subscribeFrame({ auth: '', channel: 'plain' }),
  ]);
  assert.equal(pusher.recovery.position('chat-1'), undefined);

  conn.ack('chat-1', { position: { offset: 0, epoch: 'e1' } });
  conn.ack('plain');
  await waitFor(() => chat.subscribed && plain.subscribed, 'both acks');
  assert.deepEqual(pusher.recovery.position('chat-1'), { offset: 0, epoch: 'e1' });
  assert.equal(pusher.recovery.position('plain'), undefined);

  conn.publish('chat-1', 'msg', { n: 1 }, { offset: 1, epoch: 'e1' });
  conn.publish('chat-1', 'msg', { n: 2 }, { offset: 2, epoch: 'e1' });
  // A duplicate of an older offset does not move the position back.
  conn.publish('chat-1', 'msg', { n: 1 }, { offset: 1, epoch: 'e1' });
  // pusher-js drops frames of channels it has not subscribed to; so does the module.
  conn.publish('elsewhere', 'msg', { n: 9 }, { offset: 9, epoch: 'e1' });
  conn.publish('plain', 'msg', { n: 3 });
  await waitFor(() => plainLog.length === 2, 'the message on plain');

  assert.deepEqual(summary(log), ['pusher:subscription_succeeded', 'msg 1', 'msg 2', 'msg 1']);
  // The payload reaches the app intact.
  assert.deepEqual(log[1][1], { n: 1 });
  assert.deepEqual(pusher.recovery.position('chat-1'), { offset: 2, epoch: 'e1' });
  assert.equal(pusher.recovery.position('elsewhere'), undefined);
  assert.equal(pusher.recovery.position('plain'), undefined);

  const all = pusher.recovery.positions();
  assert.deepEqual(all, { 'chat-1': { offset: 2, epoch: 'e1' } });
  // A copy: changing it changes nothing.
  all['chat-1'].offset = 100;
  pusher.recovery.position('chat-1').offset = 100;
  assert.deepEqual(pusher.recovery.position('chat-1'), { offset: 2, epoch: 'e1' });
});

test('after a dropped connection the re-subscribe carries since; replay, herald:recovered, then live', async (t) => {
  const { server, connect } = await setup(t);
  const recovered = [];
  const pusher = withRecovery(connect(), { onRecovered: (...args) => recovered.push(args) });
  const chat = pusher.subscribe('chat-1');
  const plain = pusher.subscribe('plain');
  const log = recordAll(chat);
  const events = [];
  chat.bind('herald:recovered', (info) => events.push(info));

  const first = await server.connection(1);
  await first.waitForSubscribes(2);
  first.ack('chat-1', { position: { offset: 0, epoch: 'e1' } });
  first.ack('plain');
  first.publish('chat-1', 'msg', { n: 1 }, { offset: 1, epoch: 'e1' });
  first.publish('chat-1', 'msg', { n: 2 }, { offset: 2, epoch: 'e1' });
  await waitFor(() => log.length === 3, 'two messages');

  first.drop();
  const second = await server.connection(2);
  // `since` on the channel with a position only; nothing else changes.
  assert.deepEqual(await second.waitForSubscribes(2), [
    subscribeFrame({ auth: '', channel: 'chat-1', since: { offset: 2, epoch: 'e1', socket_id: '1.100' } }),
    subscribeFrame({ auth: '', channel: 'plain' }),
  ]);

  second.publish('chat-1', 'msg', { n: 3 }, { offset: 3, epoch: 'e1' });
  second.publish('chat-1', 'msg', { n: 4 }, { offset: 4, epoch: 'e1' });
  second.ack('chat-1', { recovered: true, position: { offset: 4, epoch: 'e1' } });
  second.ack('plain');
  second.publish('chat-1', 'msg', { n: 5 }, { offset: 5, epoch: 'e1' });
  await waitFor(() => log.length === 8, `the live message after the replay (log: ${summary(log)})`);

  assert.deepEqual(summary(log), [
    'pusher:subscription_succeeded',
    'msg 1',
    'msg 2',
    'msg 3',
    'msg 4',
    'pusher:subscription_succeeded',
    'herald:recovered',
    'msg 5',
  ]);
  const info = { channel: 'chat-1', since: { offset: 2, epoch: 'e1' }, position: { offset: 4, epoch: 'e1' }, replayed: 2 };
  assert.deepEqual(events, [info]);
  assert.deepEqual(recovered, [['chat-1', info]]);
  assert.deepEqual(pusher.recovery.position('chat-1'), { offset: 5, epoch: 'e1' });
});

test('an unrecoverable position emits herald:unrecoverable and resumes from the server position', async (t) => {
  const { server, connect } = await setup(t);
  const unrecoverable = [];
  const recovered = [];
  const pusher = withRecovery(connect(), {
    onUnrecoverable: (...args) => unrecoverable.push(args),
    onRecovered: (...args) => recovered.push(args),
  });
  const chat = pusher.subscribe('chat-1');
  const events = [];
  chat.bind('herald:unrecoverable', (info) => events.push(['herald:unrecoverable', info]));
  chat.bind('herald:recovered', (info) => events.push(['herald:recovered', info]));

  const first = await server.connection(1);
  await first.waitForSubscribes(1);
  first.ack('chat-1', { position: { offset: 7, epoch: 'e1' } });
  await waitFor(() => chat.subscribed, 'the first ack');
  first.drop();

  const second = await server.connection(2);
  assert.deepEqual(await second.waitForSubscribes(1), [
    subscribeFrame({ auth: '', channel: 'chat-1', since: { offset: 7, epoch: 'e1', socket_id: '1.100' } }),
  ]);
  // The server lost its history (new epoch): no replay, its position instead.
  second.ack('chat-1', { recovered: false, position: { offset: 3, epoch: 'e2' } });
  await waitFor(() => events.length === 1, 'herald:unrecoverable');
  const info = { channel: 'chat-1', since: { offset: 7, epoch: 'e1' }, position: { offset: 3, epoch: 'e2' } };
  assert.deepEqual(events, [['herald:unrecoverable', info]]);
  assert.deepEqual(unrecoverable, [['chat-1', info]]);
  assert.deepEqual(recovered, []);
  assert.deepEqual(pusher.recovery.position('chat-1'), { offset: 3, epoch: 'e2' });

  // The next reconnect resumes from there.
  second.drop();
  const third = await server.connection(3);
  assert.deepEqual(await third.waitForSubscribes(1), [
    subscribeFrame({ auth: '', channel: 'chat-1', since: { offset: 3, epoch: 'e2', socket_id: '2.101' } }),
  ]);
  third.ack('chat-1', { recovered: true, position: { offset: 3, epoch: 'e2' } });
  await waitFor(() => events.length === 2, 'herald:recovered');
  assert.deepEqual(events[1], [
    'herald:recovered',
    { channel: 'chat-1', since: { offset: 3, epoch: 'e2' }, position: { offset: 3, epoch: 'e2' }, replayed: 0 },
  ]);
  assert.equal(unrecoverable.length, 1);
  assert.equal(recovered.length, 1);
});

test('a message of a new epoch replaces a higher offset of the old one', async (t) => {
  const { server, connect } = await setup(t);
  const pusher = withRecovery(connect());
  const chat = pusher.subscribe('chat-1');
  const log = recordAll(chat);

  const first = await server.connection(1);
  await first.waitForSubscribes(1);
  first.ack('chat-1', { position: { offset: 5, epoch: 'e1' } });
  first.publish('chat-1', 'msg', { n: 1 }, { offset: 1, epoch: 'e2' });
  await waitFor(() => log.length === 2, 'the message of epoch e2');
  assert.deepEqual(pusher.recovery.position('chat-1'), { offset: 1, epoch: 'e2' });

  first.drop();
  const second = await server.connection(2);
  assert.deepEqual(await second.waitForSubscribes(1), [
    subscribeFrame({ auth: '', channel: 'chat-1', since: { offset: 1, epoch: 'e2', socket_id: '1.100' } }),
  ]);
});

test('unsubscribing forgets the position: a later subscribe carries no since', async (t) => {
  const { server, connect } = await setup(t);
  const pusher = withRecovery(connect());
  const chat = pusher.subscribe('chat-1');

  const conn = await server.connection(1);
  await conn.waitForSubscribes(1);
  conn.ack('chat-1', { position: { offset: 3, epoch: 'e1' } });
  await waitFor(() => chat.subscribed, 'the ack');
  assert.deepEqual(pusher.recovery.position('chat-1'), { offset: 3, epoch: 'e1' });

  pusher.unsubscribe('chat-1');
  await waitFor(() => conn.frames.length === 2, 'pusher:unsubscribe');
  assert.deepEqual(conn.frames[1], { event: 'pusher:unsubscribe', data: { channel: 'chat-1' } });
  assert.equal(pusher.recovery.position('chat-1'), undefined);
  assert.deepEqual(pusher.recovery.positions(), {});

  // A message still in flight for the channel does not bring the position
  // back: pusher-js drops it, and so does the module. The message on `sync`,
  // sent after it, shows it has been handled.
  const sync = recordAll(pusher.subscribe('sync'));
  await conn.waitForSubscribes(2);
  conn.publish('chat-1', 'msg', { n: 4 }, { offset: 4, epoch: 'e1' });
  conn.publish('sync', 'msg', { n: 5 });
  await waitFor(() => sync.length === 1, 'the message on sync');
  assert.deepEqual(pusher.recovery.positions(), {});

  pusher.subscribe('chat-1');
  assert.deepEqual(await conn.waitForSubscribes(3), [
    subscribeFrame({ auth: '', channel: 'chat-1' }),
    subscribeFrame({ auth: '', channel: 'sync' }),
    subscribeFrame({ auth: '', channel: 'chat-1' }),
  ]);
});

test('unsubscribing while disconnected forgets too (pusher-js sends no pusher:unsubscribe then)', async (t) => {
  const { server, connect } = await setup(t);
  const pusher = withRecovery(connect());
  const keep = pusher.subscribe('keep');
  const leave = pusher.subscribe('leave');

  const first = await server.connection(1);
  await first.waitForSubscribes(2);
  first.ack('keep', { position: { offset: 1, epoch: 'e1' } });
  first.ack('leave', { position: { offset: 2, epoch: 'e1' } });
  await waitFor(() => keep.subscribed && leave.subscribed, 'both acks');

  pusher.disconnect();
  await waitFor(() => pusher.connection.state === 'disconnected', 'the disconnected state');
  pusher.unsubscribe('leave');
  assert.deepEqual(pusher.recovery.positions(), { keep: { offset: 1, epoch: 'e1' } });
  pusher.connect();

  const second = await server.connection(2);
  assert.deepEqual(await second.waitForSubscribes(1), [
    subscribeFrame({ auth: '', channel: 'keep', since: { offset: 1, epoch: 'e1', socket_id: '1.100' } }),
  ]);
  pusher.subscribe('leave');
  assert.deepEqual(await second.waitForSubscribes(2), [
    subscribeFrame({ auth: '', channel: 'keep', since: { offset: 1, epoch: 'e1', socket_id: '1.100' } }),
    subscribeFrame({ auth: '', channel: 'leave' }),
  ]);
  assert.deepEqual(
    first.frames.filter((frame) => frame.event === 'pusher:unsubscribe'),
    [],
    'the unsubscribe happened while disconnected',
  );
});

test('options.positions seeds the first subscribe; a channel without history is then forgotten', async (t) => {
  const { server, connect } = await setup(t);
  const unrecoverable = [];
  const pusher = withRecovery(connect(), {
    positions: { news: { offset: 4, epoch: 'e9' }, junk: { offset: -1, epoch: 'e9' }, other: { offset: 1 } },
    onUnrecoverable: (...args) => unrecoverable.push(args),
  });
  assert.deepEqual(pusher.recovery.positions(), { news: { offset: 4, epoch: 'e9' } });
  const news = pusher.subscribe('news');
  const events = [];
  news.bind('herald:unrecoverable', (info) => events.push(info));

  const first = await server.connection(1);
  assert.deepEqual(await first.waitForSubscribes(1), [
    subscribeFrame({ auth: '', channel: 'news', since: { offset: 4, epoch: 'e9' } }),
  ]);
  // What Herald answers for a channel that keeps no history.
  first.ack('news', { recovered: false });
  await waitFor(() => events.length === 1, 'herald:unrecoverable');
  const info = { channel: 'news', since: { offset: 4, epoch: 'e9' }, position: undefined };
  assert.deepEqual(events, [info]);
  assert.deepEqual(unrecoverable, [['news', info]]);
  assert.equal(pusher.recovery.position('news'), undefined);

  first.drop();
  const second = await server.connection(2);
  assert.deepEqual(await second.waitForSubscribes(1), [subscribeFrame({ auth: '', channel: 'news' })]);
});

test('a presence channel: position from an ack with presence data; the re-subscribe is authorized again', async (t) => {
  const { server, connect } = await setup(t);
  const pusher = withRecovery(
    connect({
      channelAuthorization: {
        customHandler: ({ socketId, channelName }, callback) =>
          // Asynchronous, like a real authorization request.
          setImmediate(() =>
            callback(null, { auth: `${KEY}:sig-${socketId}-${channelName}`, channel_data: '{"user_id":"u1"}' }),
          ),
      },
    }),
  );
  const room = pusher.subscribe('presence-room');
  const log = recordAll(room);

  const first = await server.connection(1);
  assert.deepEqual(await first.waitForSubscribes(1), [
    subscribeFrame({
      auth: `${KEY}:sig-${first.socketId}-presence-room`,
      channel_data: '{"user_id":"u1"}',
      channel: 'presence-room',
    }),
  ]);
  first.ack('presence-room', {
    presence: { count: 1, ids: ['u1'], hash: { u1: { name: 'One' } } },
    position: { offset: 2, epoch: 'e1' },
  });
  await waitFor(() => room.subscribed, 'the presence ack');
  assert.equal(room.members.count, 1);
  assert.deepEqual(pusher.recovery.position('presence-room'), { offset: 2, epoch: 'e1' });

  first.drop();
  const second = await server.connection(2);
  assert.deepEqual(await second.waitForSubscribes(1), [
    subscribeFrame({
      auth: `${KEY}:sig-${second.socketId}-presence-room`,
      channel_data: '{"user_id":"u1"}',
      channel: 'presence-room',
      since: { offset: 2, epoch: 'e1', socket_id: '1.100' },
    }),
  ]);
  second.publish('presence-room', 'msg', { n: 3 }, { offset: 3, epoch: 'e1' });
  second.ack('presence-room', {
    presence: { count: 1, ids: ['u1'], hash: { u1: { name: 'One' } } },
    recovered: true,
    position: { offset: 3, epoch: 'e1' },
  });
  await waitFor(() => log.length === 4, `the replay and the recovery (log: ${summary(log)})`);
  assert.deepEqual(summary(log), [
    'pusher:subscription_succeeded',
    'msg 3',
    'pusher:subscription_succeeded',
    'herald:recovered',
  ]);
  assert.deepEqual(log[3][1], {
    channel: 'presence-room',
    since: { offset: 2, epoch: 'e1' },
    position: { offset: 3, epoch: 'e1' },
    replayed: 1,
  });
  assert.equal(room.members.count, 1);
});

test('withRecovery twice on one instance wraps it once', async (t) => {
  const { server, connect } = await setup(t);
  const firstCalls = [];
  const secondCalls = [];
  const pusher = withRecovery(connect(), { onRecovered: (...args) => firstCalls.push(args) });
  const sendEvent = pusher.send_event;
  const unsubscribe = pusher.unsubscribe;
  const recovery = pusher.recovery;
  assert.equal(withRecovery(pusher, { onRecovered: (...args) => secondCalls.push(args) }), pusher);
  assert.equal(pusher.send_event, sendEvent);
  assert.equal(pusher.unsubscribe, unsubscribe);
  assert.equal(pusher.recovery, recovery);
  assert.throws(() => {
    pusher.recovery = null;
  }, TypeError);

  const chat = pusher.subscribe('chat-1');
  const log = recordAll(chat);
  const first = await server.connection(1);
  await first.waitForSubscribes(1);
  first.ack('chat-1', { position: { offset: 1, epoch: 'e1' } });
  await waitFor(() => chat.subscribed, 'the ack');
  first.drop();

  const second = await server.connection(2);
  assert.deepEqual(await second.waitForSubscribes(1), [
    subscribeFrame({ auth: '', channel: 'chat-1', since: { offset: 1, epoch: 'e1', socket_id: '1.100' } }),
  ]);
  second.publish('chat-1', 'msg', { n: 2 }, { offset: 2, epoch: 'e1' });
  second.ack('chat-1', { recovered: true, position: { offset: 2, epoch: 'e1' } });
  second.publish('chat-1', 'msg', { n: 3 }, { offset: 3, epoch: 'e1' });
  await waitFor(() => log.length === 5, `the live message (log: ${summary(log)})`);
  assert.deepEqual(summary(log), [
    'pusher:subscription_succeeded',
    'msg 2',
    'pusher:subscription_succeeded',
    'herald:recovered',
    'msg 3',
  ]);
  // One frame listener: a doubled one would have counted the replay twice.
  assert.deepEqual(firstCalls, [
    ['chat-1', { channel: 'chat-1', since: { offset: 1, epoch: 'e1' }, position: { offset: 2, epoch: 'e1' }, replayed: 1 }],
  ]);
  assert.deepEqual(secondCalls, []);
});

test('withRecovery rejects what is not a pusher-js instance', () => {
  assert.throws(() => withRecovery(undefined), TypeError);
  assert.throws(() => withRecovery({}), TypeError);
});
