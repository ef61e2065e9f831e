// The webhook administration API (herald.v1.WebhookAdmin) driven by a grpcio
// client generated at test time from proto/herald/v1/webhooks.proto
// (grpc_webhooks.py), with deliveries checked by the official `standardwebhooks`
// verifier: endpoints, secret rotation, attempts, SSRF refusals, dead letters and
// their replay.
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

/** A receiver answering `status()` (200 by default) and recording what it got. */
async function startReceiver() {
  const receiver = { received: [], status: 200 };
  const server = createServer((request, response) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => {
      receiver.received.push({ headers: request.headers, rawBody: Buffer.concat(chunks).toString('utf8') });
      response.writeHead(receiver.status).end(receiver.status === 200 ? 'thanks' : 'broken');
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  receiver.url = `http://127.0.0.1:${server.address().port}/hook`;
  receiver.close = () => server.close();
  return receiver;
}

const env = useHerald({
  config: (ports) => `${heraldConfig(ports)}
[dispatcher]
retry_schedule = ["200ms", "400ms"]
`,
});

/** One WebhookAdmin call; resolves with { ok, body } (body: response or error). */
function admin(method, request) {
  const target = `127.0.0.1:${env.herald.grpcPort}`;
  const args = [CLIENT, '--target', target, '--token', APP.apiToken, method, JSON.stringify(request)];
  return new Promise((resolve, reject) => {
    execFile(PYTHON, args, { timeout: 30_000 }, (error, stdout, stderr) => {
      try {
        resolve({ ok: !error, body: JSON.parse(stdout) });
      } catch {
        reject(new Error(`grpc_webhooks.py ${method} failed: ${error?.message}\n${stderr}`));
      }
    });
  });
}

async function adminOk(method, request) {
  const { ok, body } = await admin(method, request);
  assert.ok(ok, `${method}: ${JSON.stringify(body)}`);
  return body;
}

/** Publishes on `channel` through the official server SDK. */
async function publish(channel, data) {
  await env.sdk().trigger(channel, 'admin-test', data);
}

function publicationsOn(receiver, channel) {
  return receiver.received.filter(({ rawBody }) => {
    const body = JSON.parse(rawBody);
    return body.type === 'channel.event' && body.data.channel === channel;
  });
}

test('an endpoint created through the API receives deliveries its generated secret verifies; rotation signs with both', async () => {
  const receiver = await startReceiver();
  try {
    const endpoint = await adminOk('CreateEndpoint', {
      app_id: APP.id,
      url: receiver.url,
      event_types: ['channel.event'],
      channel_patterns: ['admin-*'],
    });
    assert.match(endpoint.secret, /^whsec_/);
    assert.equal(endpoint.enabled, true);
    const listed = await adminOk('ListEndpoints', { app_id: APP.id });
    assert.ok(listed.endpoints.some((e) => e.id === endpoint.id));

    await publish('admin-orders', { n: 1 });
    const [first] = await waitFor(() => {
      const found = publicationsOn(receiver, 'admin-orders');
      return found.length === 1 && found;
    }, { what: 'the first delivery' });
    const payload = new Webhook(endpoint.secret).verify(first.rawBody, first.headers);
    assert.deepEqual(JSON.parse(payload.data.data), { n: 1 });

    const rotated = await adminOk('RotateSecret', { app_id: APP.id, id: endpoint.id });
    assert.notEqual(rotated.secret, endpoint.secret);
    assert.ok(Number(rotated.previous_secret_expires_ms) > Date.now() + 23 * 3600 * 1000);
    // The endpoint list is cached by the dispatcher for up to a second.
    await waitFor(async () => {
      await publish('admin-orders', { n: 2 });
      return publicationsOn(receiver, 'admin-orders').some(({ headers }) => headers['webhook-signature'].includes(' '));
    }, { what: 'a delivery signed with both secrets', timeoutMs: 10_000, intervalMs: 300 });
    const signedTwice = publicationsOn(receiver, 'admin-orders').find(({ headers }) => headers['webhook-signature'].includes(' '));
    new Webhook(rotated.secret).verify(signedTwice.rawBody, signedTwice.headers);
    new Webhook(endpoint.secret).verify(signedTwice.rawBody, signedTwice.headers);

    const { attempts } = await adminOk('ListAttempts', { app_id: APP.id, endpoint_id: endpoint.id });
    assert.ok(attempts.length >= 2, JSON.stringify(attempts));
    assert.equal(attempts[0].status, 200);
    assert.equal(attempts[0].attempt, 1);
    assert.equal(attempts[0].response_excerpt, 'thanks');

    await adminOk('DeleteEndpoint', { app_id: APP.id, id: endpoint.id });
    const gone = await admin('GetEndpoint', { app_id: APP.id, id: endpoint.id });
    assert.equal(gone.body.code, 'NOT_FOUND');
  } finally {
    receiver.close();
  }
});

test('endpoints resolving to private or metadata addresses are refused', async () => {
  for (const [url, range] of [
    ['http://10.0.0.1/hook', 'private'],
    ['http://169.254.169.254/latest/meta-data', 'metadata'],
    ['http://[fd00::1]/hook', 'unique-local'],
  ]) {
    const { ok, body } = await admin('CreateEndpoint', { app_id: APP.id, url });
    assert.equal(ok, false, url);
    assert.equal(body.code, 'INVALID_ARGUMENT', url);
    assert.match(body.message, new RegExp(range, 'i'), body.message);
    assert.match(body.message, /allow_addresses/, body.message);
  }
  const bad = await admin('CreateEndpoint', { app_id: APP.id, url: 'ftp://example.com/' });
  assert.equal(bad.body.code, 'INVALID_ARGUMENT');
  assert.match(bad.body.message, /^url:/);
});

test('an exhausted delivery is a dead letter, and replaying it delivers it with the same id', async () => {
  const receiver = await startReceiver();
  receiver.status = 500;
  try {
    const endpoint = await adminOk('CreateEndpoint', {
      app_id: APP.id,
      url: receiver.url,
      event_types: ['channel.event'],
      channel_patterns: ['dead-*'],
    });
    await waitFor(async () => {
      await publish('dead-letters', { n: 1 });
      return publicationsOn(receiver, 'dead-letters').length > 0;
    }, { what: 'the first attempt', timeoutMs: 10_000, intervalMs: 500 });
    const firstId = publicationsOn(receiver, 'dead-letters')[0].headers['webhook-id'];
    // Three attempts (now, +200 ms, +400 ms), then the dead letter.
    const [dead] = await waitFor(async () => {
      const { dead_letters } = await adminOk('ListDeadLetters', { app_id: APP.id });
      const found = dead_letters.filter((d) => d.webhook_id === firstId);
      return found.length === 1 && found;
    }, { what: 'the dead letter', timeoutMs: 10_000, intervalMs: 200 });
    assert.equal(dead.attempts, 3);
    assert.equal(dead.endpoint_id, endpoint.id);
    assert.equal(dead.last_error, 'HTTP 500');
    assert.deepEqual(dead.event_types, ['channel.event']);
    assert.equal(publicationsOn(receiver, 'dead-letters').filter((r) => r.headers['webhook-id'] === firstId).length, 3);

    receiver.status = 200;
    const replayed = await adminOk('ReplayDeadLetters', { app_id: APP.id, webhook_id: firstId });
    assert.equal(replayed.replayed, 1);
    await waitFor(() => publicationsOn(receiver, 'dead-letters').filter((r) => r.headers['webhook-id'] === firstId).length === 4, {
      what: 'the replayed delivery',
    });
    const again = await admin('ReplayDeadLetters', { app_id: APP.id, webhook_id: firstId });
    assert.equal(again.body.code, 'NOT_FOUND', 'a replayed dead letter is no longer one');
  } finally {
    receiver.close();
  }
});
