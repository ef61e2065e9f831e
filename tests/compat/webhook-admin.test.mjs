// The webhook administration API (herald.v1.WebhookAdmin) driven by a grpcio
// client generated at test time from proto/herald/v1/webhooks.proto
// (grpc_webhooks.py), with deliveries checked by the official `standardwebhooks`
// verifier: endpoints, secret rotation, attempts, SSRF refusals, dead letters and
// their replay. Publications come from the official pusher server SDK.
//
// The dispatcher caches an app's endpoint list for `dispatcher.endpoint_refresh_ms`
// (1 s by default), so an endpoint created or rotated a moment ago may miss the
// publications of that moment: tests publish until a delivery shows the change.
//
// Needs scripts/install-python-deps.sh; PYTHON overrides the interpreter.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createServer } from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { Webhook } from 'standardwebhooks';

import { APP, heraldConfig, useHerald, waitFor } from './harness.mjs';

const PYTHON = process.env.PYTHON ?? 'python3';
const CLIENT = join(dirname(fileURLToPath(import.meta.url)), 'grpc_webhooks.py');
// Bounds a whole client process (interpreter start, stub generation, the call).
const PROCESS_TIMEOUT_MS = 30_000;
const RETRY_DELAYS_MS = [200, 400];
const RETRY_JITTER = 0.2;

/**
 * A receiver recording each request (headers, raw body, arrival time, the status it
 * got) and answering `status` (200 unless a test sets it) after `delayMs`.
 */
async function startReceiver() {
  const receiver = { received: [], status: 200, delayMs: 0 };
  const server = createServer((request, response) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => {
      const delivery = {
        headers: request.headers,
        rawBody: Buffer.concat(chunks).toString('utf8'),
        at: Date.now(),
        status: receiver.status,
      };
      receiver.received.push(delivery);
      setTimeout(() => response.writeHead(delivery.status).end(delivery.status === 200 ? 'thanks' : 'broken'), receiver.delayMs);
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  receiver.url = `http://127.0.0.1:${server.address().port}/hook`;
  receiver.close = () => {
    server.closeAllConnections();
    server.close();
  };
  return receiver;
}

// `herald dev` allows loopback targets (these receivers) and nothing else private.
const env = useHerald({
  config: (ports) => `${heraldConfig(ports)}
[dispatcher]
retry_schedule = [${RETRY_DELAYS_MS.map((ms) => `"${ms}ms"`).join(', ')}]
retry_jitter = ${RETRY_JITTER}
`,
});

/**
 * One WebhookAdmin call through grpc_webhooks.py; resolves with `{ ok, body }`,
 * body being the response or the error status `{ code, message }`.
 */
function admin(method, request) {
  const target = `127.0.0.1:${env.herald.grpcPort}`;
  const args = [CLIENT, '--target', target, '--token', APP.apiToken, method, JSON.stringify(request)];
  return new Promise((resolve, reject) => {
    execFile(PYTHON, args, { timeout: PROCESS_TIMEOUT_MS }, (error, stdout, stderr) => {
      if (error && typeof error.code !== 'number') {
        const why = error.killed ? `still running after ${PROCESS_TIMEOUT_MS} ms` : error.message;
        reject(new Error(`grpc_webhooks.py ${method}: ${why}\nstderr: ${stderr}`));
        return;
      }
      try {
        resolve({ ok: !error, body: JSON.parse(stdout) });
      } catch {
        reject(new Error(`grpc_webhooks.py ${method} printed no JSON (exit ${error?.code ?? 0})\nstdout: ${stdout}\nstderr: ${stderr}`));
      }
    });
  });
}

async function adminOk(method, request) {
  const { ok, body } = await admin(method, request);
  assert.ok(ok, `${method}: ${JSON.stringify(body)}`);
  return body;
}

/** Resolves with the `{ code, message }` of the error status `method` must fail with. */
async function adminError(method, request, code) {
  const { ok, body } = await admin(method, request);
  assert.equal(ok, false, `${method} ${JSON.stringify(request)} succeeded: ${JSON.stringify(body)}`);
  assert.equal(body.code, code, `${method} ${JSON.stringify(request)}: ${JSON.stringify(body)}`);
  return body;
}

let published = 0;

/** Publishes `{ n }` (n counting up) as 'admin-test' on `channel` with the official server SDK. */
async function publish(channel) {
  published += 1;
  await env.sdk().trigger(channel, 'admin-test', { n: published });
  return published;
}

/** The requests `receiver` got for publications on `channel`. */
function publicationsOn(receiver, channel) {
  return receiver.received.filter(({ rawBody }) => {
    const body = JSON.parse(rawBody);
    return body.type === 'channel.event' && body.data.channel === channel;
  });
}

/**
 * Publishes on `channel` every 300 ms until a request for one of these
 * publications satisfies `accept`, and resolves with that request.
 */
async function publishUntil(receiver, channel, accept, what) {
  const mine = new Set();
  return waitFor(
    async () => {
      mine.add(await publish(channel));
      return publicationsOn(receiver, channel).find(
        (delivery) => mine.has(JSON.parse(JSON.parse(delivery.rawBody).data.data).n) && accept(delivery),
      );
    },
    { what, timeoutMs: 10_000, intervalMs: 300 },
  );
}

/** The `v1,` signatures of a Standard Webhooks delivery. */
function signatures({ headers }) {
  return headers['webhook-signature'].split(' ');
}

// ---------------------------------------------------------------------------
// An endpoint's life: create, deliver, rotate, attempts, delete
// ---------------------------------------------------------------------------

const life = { receiver: null, endpoint: null, firstDelivery: null };

test('CreateEndpoint generates a whsec_ secret that verifies the deliveries', async (t) => {
  life.receiver = await startReceiver();
  // Long enough to show up in the attempt's latency.
  life.receiver.delayMs = 150;
  const created = Date.now();
  const endpoint = await adminOk('CreateEndpoint', {
    app_id: APP.id,
    url: life.receiver.url,
    event_types: ['channel.event'],
    channel_patterns: ['admin-*'],
  });
  life.endpoint = endpoint;
  assert.match(endpoint.id, /\S/);
  assert.equal(endpoint.url, life.receiver.url);
  assert.match(endpoint.secret, /^whsec_[A-Za-z0-9+/]+=*$/);
  assert.ok(Buffer.from(endpoint.secret.slice('whsec_'.length), 'base64').length >= 24, endpoint.secret);
  assert.equal(endpoint.enabled, true);
  assert.equal(endpoint.format, 'WEBHOOK_FORMAT_STANDARD_WEBHOOKS');
  assert.equal(endpoint.previous_secret_expires_ms, 0);
  assert.ok(endpoint.created_ms >= created - 1_000 && endpoint.created_ms <= Date.now() + 1_000);
  assert.deepEqual(await adminOk('GetEndpoint', { app_id: APP.id, id: endpoint.id }), endpoint);
  const { endpoints } = await adminOk('ListEndpoints', { app_id: APP.id });
  assert.deepEqual(
    endpoints.filter((e) => e.id === endpoint.id),
    [endpoint],
  );

  const publishedBefore = published;
  const delivery = await publishUntil(life.receiver, 'admin-orders', () => true, 'a delivery to the new endpoint');
  const n = JSON.parse(JSON.parse(delivery.rawBody).data.data).n;
  t.diagnostic(`publications after CreateEndpoint returned that it missed: ${n - publishedBefore - 1}`);
  life.firstDelivery = delivery;
  assert.equal(signatures(delivery).length, 1);
  const payload = new Webhook(endpoint.secret).verify(delivery.rawBody, delivery.headers);
  assert.equal(payload.type, 'channel.event');
  assert.equal(payload.data.app_id, APP.id);
  assert.equal(payload.data.event, 'admin-test');
  // Another endpoint's secret does not verify it.
  const other = `whsec_${Buffer.from('not the secret of this endpoint!').toString('base64')}`;
  assert.throws(() => new Webhook(other).verify(delivery.rawBody, delivery.headers), /signature/i);
});

test('after RotateSecret deliveries carry two signatures: the new secret and the old one both verify', async (t) => {
  const { endpoint, receiver } = life;
  assert.ok(endpoint, 'needs the endpoint of the previous test');
  const rotatedAt = Date.now();
  const rotated = await adminOk('RotateSecret', { app_id: APP.id, id: endpoint.id });
  assert.equal(rotated.id, endpoint.id);
  assert.match(rotated.secret, /^whsec_/);
  assert.notEqual(rotated.secret, endpoint.secret);
  const day = 24 * 3600 * 1000;
  assert.ok(
    rotated.previous_secret_expires_ms >= rotatedAt + day - 1_000 && rotated.previous_secret_expires_ms <= Date.now() + day,
    `previous_secret_expires_ms ${rotated.previous_secret_expires_ms}`,
  );
  const before = receiver.received.length;

  const delivery = await publishUntil(
    receiver,
    'admin-orders',
    (d) => signatures(d).length === 2,
    'a delivery signed with both secrets',
  );
  const signedOnce = receiver.received.slice(before).filter((d) => signatures(d).length === 1).length;
  t.diagnostic(`deliveries signed with the old secret only after RotateSecret returned: ${signedOnce}`);
  for (const signature of signatures(delivery)) assert.match(signature, /^v1,[A-Za-z0-9+/]+=*$/);
  const byNew = new Webhook(rotated.secret).verify(delivery.rawBody, delivery.headers);
  const byOld = new Webhook(endpoint.secret).verify(delivery.rawBody, delivery.headers);
  assert.deepEqual(byNew, byOld);
  assert.equal(byNew.data.event, 'admin-test');
  // Each signature is one secret's: dropping either leaves the other verifying.
  const [first, second] = signatures(delivery);
  const only = (signature) => ({ ...delivery.headers, 'webhook-signature': signature });
  const verifies = (secret, signature) => {
    try {
      new Webhook(secret).verify(delivery.rawBody, only(signature));
      return true;
    } catch {
      return false;
    }
  };
  assert.deepEqual(
    [rotated.secret, endpoint.secret].map((secret) => [first, second].filter((sig) => verifies(secret, sig)).length),
    [1, 1],
    'each secret verifies exactly one of the two signatures',
  );
});

test('ListAttempts shows the 2xx attempt with its status, latency and response', async () => {
  const { endpoint, receiver, firstDelivery } = life;
  assert.ok(firstDelivery, 'needs the delivery of the first test');
  const webhookId = firstDelivery.headers['webhook-id'];
  // Attempts are recorded in the background, just after the response.
  const { attempts } = await waitFor(
    async () => {
      const listed = await adminOk('ListAttempts', { app_id: APP.id, endpoint_id: endpoint.id, webhook_id: webhookId });
      return listed.attempts.length > 0 && listed;
    },
    { what: `the attempt of ${webhookId}` },
  );
  assert.equal(attempts.length, 1, JSON.stringify(attempts));
  const [attempt] = attempts;
  assert.equal(attempt.webhook_id, webhookId);
  assert.equal(attempt.endpoint_id, endpoint.id);
  assert.equal(attempt.attempt, 1);
  assert.equal(attempt.status, 200);
  assert.equal(attempt.error, '');
  assert.equal(attempt.response_excerpt, 'thanks');
  // The receiver took 150 ms to answer; a loopback request adds little.
  assert.ok(attempt.latency_ms >= 140 && attempt.latency_ms < 5_000, `latency_ms ${attempt.latency_ms}`);
  assert.ok(Math.abs(attempt.time_ms - firstDelivery.at) < 5_000, `time_ms ${attempt.time_ms} vs ${firstDelivery.at}`);

  const all = await waitFor(
    async () => {
      const listed = await adminOk('ListAttempts', { app_id: APP.id, endpoint_id: endpoint.id });
      return listed.attempts.length === receiver.received.length && listed.attempts;
    },
    { what: `one attempt per request the receiver got (${receiver.received.length})` },
  );
  assert.ok(all.every((a) => a.status === 200));
  const times = all.map((a) => a.time_ms);
  assert.deepEqual(times, [...times].sort((a, b) => b - a), 'newest first');
  life.receiver.delayMs = 0;
});

test('DeleteEndpoint removes it', async () => {
  const { endpoint, receiver } = life;
  assert.ok(endpoint, 'needs the endpoint of the first test');
  try {
    assert.deepEqual(await adminOk('DeleteEndpoint', { app_id: APP.id, id: endpoint.id }), {});
    await adminError('GetEndpoint', { app_id: APP.id, id: endpoint.id }, 'NOT_FOUND');
    const { endpoints } = await adminOk('ListEndpoints', { app_id: APP.id });
    assert.equal(endpoints.filter((e) => e.id === endpoint.id).length, 0);
    await adminError('DeleteEndpoint', { app_id: APP.id, id: endpoint.id }, 'NOT_FOUND');
  } finally {
    receiver.close();
  }
});

// ---------------------------------------------------------------------------
// SSRF protection
// ---------------------------------------------------------------------------

test('endpoints resolving to private, link-local or metadata addresses are INVALID_ARGUMENT naming the range', async () => {
  for (const [url, address, range, cidr] of [
    ['http://10.0.0.1/', '10.0.0.1', 'private', '10.0.0.0/8'],
    ['http://169.254.169.254/', '169.254.169.254', 'cloud metadata', '169.254.169.254/32'],
    ['http://169.254.1.1/hook', '169.254.1.1', 'link-local', '169.254.0.0/16'],
    ['http://192.168.1.10:8080/hook', '192.168.1.10', 'private', '192.168.0.0/16'],
    ['http://[fd00::1]/hook', 'fd00::1', 'unique-local', 'fc00::/7'],
  ]) {
    const { message } = await adminError('CreateEndpoint', { app_id: APP.id, url }, 'INVALID_ARGUMENT');
    for (const part of [address, range, cidr, 'allow_addresses']) {
      assert.ok(message.includes(part), `the refusal of ${url} should name ${part}: ${message}`);
    }
  }
  const bad = await adminError('CreateEndpoint', { app_id: APP.id, url: 'ftp://example.com/' }, 'INVALID_ARGUMENT');
  assert.match(bad.message, /^url:/);
  const { endpoints } = await adminOk('ListEndpoints', { app_id: APP.id });
  assert.deepEqual(
    endpoints.filter((e) => !e.url.startsWith('http://127.0.0.1:')),
    [],
    'nothing was created',
  );
});

test('UpdateEndpoint to a private address is refused too, and the endpoint keeps its URL', async () => {
  const receiver = await startReceiver();
  try {
    const endpoint = await adminOk('CreateEndpoint', { app_id: APP.id, url: receiver.url, channel_patterns: ['nowhere-*'] });
    const { message } = await adminError(
      'UpdateEndpoint',
      { app_id: APP.id, id: endpoint.id, url: 'http://10.1.2.3/hook' },
      'INVALID_ARGUMENT',
    );
    assert.ok(message.includes('10.1.2.3') && message.includes('10.0.0.0/8'), message);
    assert.equal((await adminOk('GetEndpoint', { app_id: APP.id, id: endpoint.id })).url, receiver.url);
    await adminOk('DeleteEndpoint', { app_id: APP.id, id: endpoint.id });
  } finally {
    receiver.close();
  }
});

// ---------------------------------------------------------------------------
// Dead letters
// ---------------------------------------------------------------------------

test('an exhausted delivery is a dead letter, and replaying it delivers it with the same webhook-id', async (t) => {
  const receiver = await startReceiver();
  receiver.status = 500;
  try {
    const endpoint = await adminOk('CreateEndpoint', {
      app_id: APP.id,
      url: receiver.url,
      event_types: ['channel.event'],
      channel_patterns: ['dead-*'],
    });
    const verifier = new Webhook(endpoint.secret);
    const first = await publishUntil(receiver, 'dead-letters', () => true, 'the first attempt');
    const webhookId = first.headers['webhook-id'];
    const attemptsOf = () => receiver.received.filter((r) => r.headers['webhook-id'] === webhookId);

    // Three attempts (now, +200 ms, +400 ms, each ±20%), then the dead letter.
    const dead = await waitFor(
      async () => {
        const { dead_letters } = await adminOk('ListDeadLetters', { app_id: APP.id });
        return dead_letters.find((d) => d.webhook_id === webhookId);
      },
      { what: 'the dead letter', timeoutMs: 10_000, intervalMs: 100 },
    );
    assert.equal(dead.endpoint_id, endpoint.id);
    assert.equal(dead.attempts, 3);
    assert.equal(dead.last_error, 'HTTP 500');
    assert.deepEqual(dead.event_types, ['channel.event']);
    const attempts = attemptsOf();
    assert.equal(attempts.length, 3, 'three attempts, no more');
    assert.ok(dead.failed_ms >= attempts[2].at - 1_000 && dead.failed_ms <= Date.now(), `failed_ms ${dead.failed_ms}`);
    const gaps = attempts.slice(1).map(({ at }, i) => at - attempts[i].at);
    t.diagnostic(`gaps between attempts: ${gaps.join(', ')} ms`);
    for (const [i, delay] of RETRY_DELAYS_MS.entries()) {
      const [min, max] = [delay * (1 - RETRY_JITTER) - 5, delay * (1 + RETRY_JITTER) + 400];
      assert.ok(gaps[i] >= min && gaps[i] <= max, `retry ${i + 1} came ${gaps[i]} ms after attempt ${i + 1} (expected ${min}..${max})`);
    }
    // Every attempt is the same webhook, signed afresh.
    assert.equal(new Set(attempts.map(({ rawBody }) => rawBody)).size, 1);
    for (const attempt of attempts) verifier.verify(attempt.rawBody, attempt.headers);
    const { attempts: recorded } = await waitFor(
      async () => {
        const listed = await adminOk('ListAttempts', { app_id: APP.id, endpoint_id: endpoint.id, webhook_id: webhookId });
        return listed.attempts.length === 3 && listed;
      },
      { what: 'three recorded attempts' },
    );
    assert.deepEqual(
      recorded.map(({ attempt, status, error }) => ({ attempt, status, error })),
      [3, 2, 1].map((attempt) => ({ attempt, status: 500, error: 'HTTP 500' })),
    );

    receiver.status = 200;
    assert.deepEqual(await adminOk('ReplayDeadLetters', { app_id: APP.id, webhook_id: webhookId }), { replayed: 1 });
    await waitFor(() => attemptsOf().length === 4, { what: 'the replayed delivery' });
    const replayed = attemptsOf()[3];
    assert.equal(replayed.status, 200);
    assert.equal(replayed.rawBody, first.rawBody, 'the same webhook');
    assert.deepEqual(verifier.verify(replayed.rawBody, replayed.headers), verifier.verify(first.rawBody, first.headers));

    const { dead_letters } = await adminOk('ListDeadLetters', { app_id: APP.id });
    assert.equal(dead_letters.filter((d) => d.webhook_id === webhookId).length, 0, 'no longer a dead letter');
    const again = await adminError('ReplayDeadLetters', { app_id: APP.id, webhook_id: webhookId }, 'NOT_FOUND');
    assert.match(again.message, new RegExp(webhookId));
  } finally {
    receiver.close();
  }
});
