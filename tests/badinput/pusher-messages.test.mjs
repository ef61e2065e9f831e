// Bad Pusher protocol messages on an established raw WebSocket connection. A
// bad message is answered (`pusher:error`, or `pusher:subscription_error` with
// an HTTP-like status) and the connection stays open: each test ends with a
// round trip on it, then the suite's fresh-client check.
import { afterEach, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';

import {
  APP,
  PusherServer,
  WsClient,
  assertPusherError,
  configWith,
  stillServes,
  useHerald,
} from './lib.mjs';

const MAX_CHANNELS = 3;
const USER_INFO_LIMIT = 1024;
const CLIENT_EVENTS_PER_SECOND = 10;
const MAX_EVENT_DATA = 10 * 1024;

const env = useHerald({
  config: configWith({
    appLimits: [
      `max_channels_per_connection = ${MAX_CHANNELS}`,
      `max_presence_user_info_bytes = ${USER_INFO_LIMIT}`,
      `client_events_per_second = ${CLIENT_EVENTS_PER_SECOND}`,
      `max_event_data_bytes = ${MAX_EVENT_DATA}`,
    ].join('\n'),
  }),
});

afterEach(() => stillServes(env));

let signer;
let impostor;
before(() => {
  signer = new PusherServer({ appId: APP.id, key: APP.key, secret: APP.secret });
  impostor = new PusherServer({ appId: APP.id, key: APP.key, secret: `not-${APP.secret}` });
});

const connect = () => WsClient.established(env.herald.port);

/** Sends `raw` (a string: one text frame) and returns the answers up to a round trip; the connection stays open. */
async function answersToText(client, raw) {
  return client.answersTo(() => client.sendText(raw));
}

/** Expects exactly one `pusher:error` with `code` in answer to `raw`. */
async function assertErrorFor(client, raw, code, message) {
  const answers = await answersToText(client, raw);
  assert.equal(answers.length, 1, `one answer to ${raw}: ${JSON.stringify(answers)}`);
  assertPusherError(answers[0], code, message);
}

/** Asserts a `pusher:subscription_error` for `channel` with `type` and `status`. */
function assertSubscriptionError(answer, channel, type, status) {
  assert.equal(answer.event, 'pusher:subscription_error', JSON.stringify(answer));
  assert.equal(answer.channel, channel);
  assert.equal(answer.data.type, type, JSON.stringify(answer));
  assert.equal(answer.data.status, status, JSON.stringify(answer));
  assert.equal(typeof answer.data.error, 'string');
}

test('a message that is not JSON is answered with pusher:error', async () => {
  const client = await connect();
  for (const raw of ['hello', '{', '{"event":"pusher:ping",', '', '\u0000']) {
    await assertErrorFor(client, raw, null, /invalid message/);
  }
  client.destroy();
});

test('JSON that is not an object is answered with pusher:error', async () => {
  const client = await connect();
  for (const raw of ['[1,2]', '"pusher:ping"', '42', 'null', 'true', '[]']) {
    await assertErrorFor(client, raw, null, /invalid message/);
  }
  client.destroy();
});

test('a message without a string event is answered with pusher:error', async () => {
  const client = await connect();
  for (const raw of ['{}', '{"data":{}}', '{"event":5}', '{"event":null}', '{"event":{"a":1}}']) {
    await assertErrorFor(client, raw, null, /invalid message/);
  }
  client.destroy();
});

test('an unknown event is answered with pusher:error', async () => {
  const client = await connect();
  for (const event of ['pusher:unknown', 'pusher_internal:subscription_succeeded', 'hello', 'x'.repeat(10_000)]) {
    await assertErrorFor(client, JSON.stringify({ event, data: {} }), null, /unsupported event/);
  }
  client.destroy();
});

test('pusher:subscribe with bad data is answered with pusher:error', async () => {
  const client = await connect();
  for (const data of [undefined, 5, null, 'not json', '{"chan":1}', { chan: 'x' }, { channel: 5 }, [1]]) {
    const raw = JSON.stringify(data === undefined ? { event: 'pusher:subscribe' } : { event: 'pusher:subscribe', data });
    await assertErrorFor(client, raw, null, /invalid pusher:subscribe/);
  }
  for (const data of [undefined, 7, { nope: 1 }]) {
    const raw = JSON.stringify(data === undefined ? { event: 'pusher:unsubscribe' } : { event: 'pusher:unsubscribe', data });
    await assertErrorFor(client, raw, null, /invalid pusher:unsubscribe/);
  }
  client.destroy();
});

test('invalid channel names are answered with subscription_error 400', async () => {
  const client = await connect();
  for (const channel of ['x'.repeat(165), 'has space', 'dollar$', 'ünïcode', '', 'slash/es', 'private-' + 'x'.repeat(160)]) {
    assertSubscriptionError(await client.subscribe(channel), channel, 'InvalidChannel', 400);
  }
  const longest = 'x'.repeat(164);
  assert.equal((await client.subscribe(longest)).event, 'pusher_internal:subscription_succeeded');
  client.destroy();
});

test('private channels without or with a wrong auth are answered with subscription_error 401', async () => {
  const client = await connect();
  const other = await connect();
  const channel = 'private-bad-auth';
  const cases = [
    {},
    { auth: '' },
    { auth: 'garbage' },
    { auth: `${APP.key}:${'0'.repeat(64)}` },
    { auth: impostor.authorizeChannel(client.socketId, channel).auth },
    { auth: signer.authorizeChannel(other.socketId, channel).auth },
    { auth: signer.authorizeChannel(client.socketId, 'private-another').auth },
    { auth: signer.authorizeChannel(client.socketId, channel).auth.replace(APP.key, 'other-key') },
  ];
  for (const extra of cases) {
    assertSubscriptionError(await client.subscribe(channel, extra), channel, 'AuthError', 401);
  }
  const encrypted = 'private-encrypted-bad-auth';
  assertSubscriptionError(await client.subscribe(encrypted), encrypted, 'AuthError', 401);
  // The right auth works on the same connection.
  const ok = await client.subscribe(channel, signer.authorizeChannel(client.socketId, channel));
  assert.equal(ok.event, 'pusher_internal:subscription_succeeded');
  client.destroy();
  other.destroy();
});

test('presence channels without channel_data or with a wrong auth are answered with subscription_error 401', async () => {
  const client = await connect();
  const channel = 'presence-bad-auth';
  const signed = signer.authorizeChannel(client.socketId, channel, { user_id: 'u1', user_info: {} });
  assertSubscriptionError(await client.subscribe(channel, { auth: signed.auth }), channel, 'AuthError', 401);
  assertSubscriptionError(await client.subscribe(channel), channel, 'AuthError', 401);
  const forged = { auth: signed.auth, channel_data: JSON.stringify({ user_id: 'admin' }) };
  assertSubscriptionError(await client.subscribe(channel, forged), channel, 'AuthError', 401);
  const wrong = impostor.authorizeChannel(client.socketId, channel, { user_id: 'u1' });
  assertSubscriptionError(await client.subscribe(channel, wrong), channel, 'AuthError', 401);
  client.destroy();
});

test('presence channel_data that is not valid presence data is answered with subscription_error 400', async () => {
  const client = await connect();
  const channel = 'presence-bad-data';
  for (const channelData of ['not json', '[]', '{}', '{"user_id":""}', '{"user_id":{"a":1}}', '{"user_id":null}', '{"user_id":true}']) {
    const auth = `${APP.key}:${createSignature(client.socketId, channel, channelData)}`;
    const answer = await client.subscribe(channel, { auth, channel_data: channelData });
    assertSubscriptionError(answer, channel, 'AuthError', 400);
  }
  client.destroy();
});

test('presence user_info over the limit is answered with subscription_error 400', async () => {
  const client = await connect();
  const channel = 'presence-big-info';
  const userInfo = { bio: 'b'.repeat(USER_INFO_LIMIT) };
  const signed = signer.authorizeChannel(client.socketId, channel, { user_id: 'big', user_info: userInfo });
  const answer = await client.subscribe(channel, signed);
  assertSubscriptionError(answer, channel, 'AuthError', 400);
  assert.match(answer.data.error, /user_info/);
  client.destroy();
});

test(`a subscription beyond ${MAX_CHANNELS} channels is answered with subscription_error 429`, async () => {
  const client = await connect();
  for (let i = 0; i < MAX_CHANNELS; i++) {
    assert.equal((await client.subscribe(`many-${i}`)).event, 'pusher_internal:subscription_succeeded');
  }
  assertSubscriptionError(await client.subscribe('many-over'), 'many-over', 'LimitReached', 429);
  // Leaving one makes room again.
  await client.sendJson({ event: 'pusher:unsubscribe', data: { channel: 'many-0' } });
  assert.equal((await client.subscribe('many-again')).event, 'pusher_internal:subscription_succeeded');
  client.destroy();
});

test('a #server-to-user channel of another user is answered with subscription_error 403', async () => {
  const client = await connect();
  const channel = '#server-to-user-someone';
  assertSubscriptionError(await client.subscribe(channel), channel, 'AuthError', 403);
  client.destroy();
});

/** A raw client subscribed to `channel` (private or presence), with the right auth. */
async function subscribed(channel, userId) {
  const client = await connect();
  const presence = channel.startsWith('presence-') ? { user_id: userId, user_info: {} } : undefined;
  const answer = await client.subscribe(channel, signer.authorizeChannel(client.socketId, channel, presence));
  assert.equal(answer.event, 'pusher_internal:subscription_succeeded', JSON.stringify(answer));
  return client;
}

test('client events where they are not allowed are answered with pusher:error', async () => {
  const client = await connect();
  assert.equal((await client.subscribe('public-client')).event, 'pusher_internal:subscription_succeeded');
  const event = (channel, extra = {}) => JSON.stringify({ event: 'client-x', channel, data: {}, ...extra });
  await assertErrorFor(client, event('public-client'), null, /private and presence/);
  await assertErrorFor(client, event('private-not-subscribed'), null, /not subscribed/);
  await assertErrorFor(client, event('bad channel'), null, /valid channel/);
  await assertErrorFor(client, JSON.stringify({ event: 'client-x', data: {} }), null, /valid channel/);
  client.destroy();
});

test('a client event that is too large or badly named is answered with pusher:error and not delivered', async () => {
  const channel = 'private-client-limits';
  const sender = await subscribed(channel);
  const receiver = await subscribed(channel);
  const big = JSON.stringify({ event: 'client-big', channel, data: { pad: 'x'.repeat(MAX_EVENT_DATA) } });
  await assertErrorFor(sender, big, null, /event data is \d+ bytes/);
  const longName = JSON.stringify({ event: `client-${'n'.repeat(200)}`, channel, data: {} });
  await assertErrorFor(sender, longName, null, /event name longer/);
  await receiver.roundTrip();
  assert.deepEqual(
    receiver.messages.filter((m) => m.event.startsWith('client-')),
    [],
    'nothing reached the other subscriber',
  );
  sender.destroy();
  receiver.destroy();
});

test('client events over the rate limit are answered with pusher:error 4301 and dropped', async () => {
  const channel = 'presence-client-rate';
  const sender = await subscribed(channel, 'sender');
  const receiver = await subscribed(channel, 'receiver');
  // Three seconds' worth at once: some are over the limit even if handling them
  // takes a while on a loaded machine (the bucket refills as time passes).
  const count = CLIENT_EVENTS_PER_SECOND * 3;
  const frames = Array.from({ length: count }, (_, i) => JSON.stringify({ event: 'client-burst', channel, data: { i } }));
  const answers = await sender.answersTo(() => Promise.all(frames.map((f) => sender.sendText(f))));
  const errors = answers.filter((m) => m.event === 'pusher:error');
  assert.ok(errors.length >= 1, `some of ${count} events sent at once are over the limit`);
  for (const error of errors) assertPusherError(error, 4301, /per second/);
  await receiver.roundTrip();
  const delivered = receiver.messages.filter((m) => m.event === 'client-burst');
  assert.equal(delivered.length + errors.length, count, 'every event is either delivered or refused');
  assert.ok(delivered.length >= CLIENT_EVENTS_PER_SECOND, `the first ${CLIENT_EVENTS_PER_SECOND} are delivered`);
  assert.equal(delivered[0].user_id, 'sender');
  sender.destroy();
  receiver.destroy();
});

test('a bad pusher:signin is answered with pusher:error', async () => {
  const client = await connect();
  const userData = JSON.stringify({ id: 'signin-user' });
  const signin = (data) => JSON.stringify({ event: 'pusher:signin', data });
  await assertErrorFor(client, signin(undefined), null, /invalid pusher:signin/);
  await assertErrorFor(client, signin({ user_data: userData }), null, /invalid pusher:signin/);
  await assertErrorFor(client, signin({ auth: 'x' }), null, /invalid pusher:signin/);
  await assertErrorFor(client, signin({ auth: `${APP.key}:${'0'.repeat(64)}`, user_data: userData }), 4009, /signature/);
  const forged = impostor.authenticateUser(client.socketId, { id: 'signin-user' });
  await assertErrorFor(client, signin(forged), 4009, /signature/);
  for (const data of ['[]', '"text"', '{}', '{"id":""}', '{"id":5}']) {
    const auth = `${APP.key}:${createUserSignature(client.socketId, data)}`;
    await assertErrorFor(client, signin({ auth, user_data: data }), 4009, /user_data/);
  }
  // A good sign-in still works on the same connection.
  const good = signer.authenticateUser(client.socketId, { id: 'signin-user' });
  const answers = await answersToText(client, signin(good));
  assert.deepEqual(answers.map((m) => m.event), ['pusher:signin_success']);
  client.destroy();
});

// Signatures over arbitrary strings, where the SDK would not produce them (it
// serializes its own objects): HMAC-SHA256 as Pusher defines it.
function createSignature(socketId, channel, channelData) {
  return createHmac('sha256', APP.secret).update(`${socketId}:${channel}:${channelData}`).digest('hex');
}
function createUserSignature(socketId, userData) {
  return createHmac('sha256', APP.secret).update(`${socketId}::user::${userData}`).digest('hex');
}
