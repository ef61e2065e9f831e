// User authentication: pusher.signin(), server-to-user events (sendToUser) and
// terminating a user's connections.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { nextEvent, recordErrors, recordFrames, roundTrip, useHerald, userInfo, waitFor } from './harness.mjs';

const env = useHerald();

test('signin succeeds and pusher-js sees the user data the backend signed', async () => {
  const client = await env.signedInClient('erin');
  assert.deepEqual(client.user.user_data, { id: 'erin', ...userInfo('erin') });
});

test('a signin signed with the wrong secret is answered with pusher:error', async (t) => {
  const client = await env.connectedClient({ userId: 'mallory', userAuthPath: '/pusher/bad-user-auth' });
  const errors = recordErrors(client);
  client.signin();
  await waitFor(() => errors.length > 0, { what: 'a pusher:error after a forged signin' });
  t.diagnostic(`errors: ${JSON.stringify(errors)}; state ${client.connection.state}`);
  assert.equal(client.user.user_data, null);
});

test('sendToUser reaches every connection of that user and no one else', async () => {
  const carolOnLaptop = await env.signedInClient('carol');
  const carolOnPhone = await env.signedInClient('carol');
  const dave = await env.signedInClient('dave');
  // Raw frames: pusher-js would silently drop a frame for another user's channel.
  const daveFrames = recordFrames(dave, (frame) => frame.event === 'my-event');

  const arrivals = [carolOnLaptop, carolOnPhone].map((client) => nextEvent(client.user, 'my-event'));
  const res = await env.sdk().sendToUser('carol', 'my-event', { for: 'carol', n: 1 });
  assert.equal(res.status, 200);
  for (const [data] of await Promise.all(arrivals)) assert.deepEqual(data, { for: 'carol', n: 1 });

  await roundTrip(dave);
  assert.deepEqual(daveFrames, []);
});

test("terminateUserConnections closes that user's connections only", async (t) => {
  const victims = [await env.signedInClient('frank'), await env.signedInClient('frank')];
  const bystander = await env.signedInClient('grace');
  const victimErrors = victims.map(recordErrors);
  const dropped = victims.map((client) =>
    nextEvent(client.connection, 'state_change', { filter: ({ previous }) => previous === 'connected' }),
  );

  const res = await env.sdk().terminateUserConnections('frank');
  assert.equal(res.status, 200);
  await Promise.all(dropped);
  t.diagnostic(`close codes seen by pusher-js: ${JSON.stringify(victimErrors)}`);

  await roundTrip(bystander);
  assert.equal(bystander.connection.state, 'connected');
});
