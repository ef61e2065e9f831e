// Presence channels: member lists, member_added / member_removed, and users
// with several connections.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { nextEvent, recordFrames, roundTrip, subscribe, useHerald, userInfo } from './harness.mjs';

const env = useHerald();

function memberList(members) {
  const list = [];
  members.each((member) => list.push(member));
  return list.sort((a, b) => a.id.localeCompare(b.id));
}

/** Counts the presence frames Herald sends a client for one channel. */
function presenceFrames(client, channelName) {
  return recordFrames(
    client,
    (frame) =>
      frame.channel === channelName &&
      (frame.event === 'pusher_internal:member_added' || frame.event === 'pusher_internal:member_removed'),
  );
}

test('members list, member_added and member_removed between two users', async () => {
  const alice = await env.connectedClient({ userId: 'alice' });
  const bob = await env.connectedClient({ userId: 'bob' });

  const aliceChannel = await subscribe(alice, 'presence-room');
  assert.equal(aliceChannel.members.count, 1);
  assert.deepEqual(aliceChannel.members.me, { id: 'alice', info: userInfo('alice') });

  const bobJoined = nextEvent(aliceChannel, 'pusher:member_added');
  const bobChannel = await subscribe(bob, 'presence-room');
  const [added] = await bobJoined;
  assert.deepEqual(added, { id: 'bob', info: userInfo('bob') });

  // Bob's initial member list contains both users, with their user_info.
  assert.equal(bobChannel.members.count, 2);
  assert.deepEqual(bobChannel.members.me, { id: 'bob', info: userInfo('bob') });
  assert.deepEqual(memberList(bobChannel.members), [
    { id: 'alice', info: userInfo('alice') },
    { id: 'bob', info: userInfo('bob') },
  ]);
  assert.equal(aliceChannel.members.count, 2);

  const bobLeft = nextEvent(aliceChannel, 'pusher:member_removed');
  env.disconnect(bob);
  const [removed] = await bobLeft;
  assert.deepEqual(removed, { id: 'bob', info: userInfo('bob') });
  assert.equal(aliceChannel.members.count, 1);
});

test('a user with two connections is added once and removed only when the last leaves', async () => {
  const alice = await env.connectedClient({ userId: 'alice' });
  const aliceChannel = await subscribe(alice, 'presence-multi');
  const frames = presenceFrames(alice, 'presence-multi');

  const firstBob = await env.connectedClient({ userId: 'bob' });
  const secondBob = await env.connectedClient({ userId: 'bob' });

  const bobJoined = nextEvent(aliceChannel, 'pusher:member_added');
  await subscribe(firstBob, 'presence-multi');
  await bobJoined;
  const secondBobChannel = await subscribe(secondBob, 'presence-multi');
  assert.equal(secondBobChannel.members.count, 2, 'alice and bob, however many connections bob has');

  // Herald had everything it would tell alice about bob's second connection
  // before confirming that subscription; a ping round trip flushes it.
  await roundTrip(alice);
  assert.deepEqual(
    frames.map((f) => [f.event, f.data.user_id]),
    [['pusher_internal:member_added', 'bob']],
  );

  // Bob's first connection leaves (unsubscribe, confirmed by a round trip on
  // that connection): bob is still present through the second one.
  firstBob.unsubscribe('presence-multi');
  await roundTrip(firstBob);
  await roundTrip(alice);
  assert.deepEqual(
    frames.map((f) => [f.event, f.data.user_id]),
    [['pusher_internal:member_added', 'bob']],
    'member_removed sent while bob still had a connection in the channel',
  );
  assert.equal(aliceChannel.members.count, 2);

  // The last connection goes away by closing the socket.
  const bobLeft = nextEvent(aliceChannel, 'pusher:member_removed');
  env.disconnect(secondBob);
  const [removed] = await bobLeft;
  assert.equal(removed.id, 'bob');
  await roundTrip(alice);
  assert.deepEqual(
    frames.map((f) => [f.event, f.data.user_id]),
    [
      ['pusher_internal:member_added', 'bob'],
      ['pusher_internal:member_removed', 'bob'],
    ],
  );
  assert.equal(aliceChannel.members.count, 1);
});
