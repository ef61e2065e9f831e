// The operator assets of issue 14 (helm/herald/files/: the Grafana dashboard and the
// Prometheus alert rules) against the metrics Herald really exports:
//   - the dashboard is JSON with the expected shape (datasource variable, rows);
//   - the rule file is a Prometheus rule-group file (PyYAML parses it, in
//     scripts/helm-test.sh's Python) whose rules all have summary, description, severity;
//   - every `herald_*` series name used in their expressions appears in the /metrics of
//     a running `herald dev` (edge and in-process dispatcher), scraped here after traffic
//     that records each metric at least once: clients connect, subscribe, send a client
//     event and close; a publish through the HTTP API; a subscriber that stops reading
//     (4100, slow consumer); webhooks to local receivers, one answering 500 then 200
//     (attempts, a retry, the latency histogram), one always 500 (a dead letter).
// Names are compared exactly, suffixes included: a histogram rendered as a summary
// (no `_bucket`) would fail here.
//
// HERALD_BIN: the binary (see tests/compat/harness.mjs); HERALD_K8S_PYTHON: a Python
// with PyYAML (scripts/helm-test.sh sets it). Nothing is skipped: a missing tool fails.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile as execFileCb } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { connect } from 'node:net';
import { randomBytes } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { APP, CompatEnv, heraldConfig, subscribe, waitFor } from '../compat/harness.mjs';

const execFile = promisify(execFileCb);
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const DASHBOARD = join(repoRoot, 'helm/herald/files/herald-dashboard.json');
const RULES = join(repoRoot, 'helm/herald/files/herald-rules.yaml');
const PYTHON = process.env.HERALD_K8S_PYTHON ?? 'python3';
const TRAFFIC_TIMEOUT_MS = 30_000;

// Metrics `herald dev` cannot record, with the reason. Each is still checked to be a
// name Herald declares (crates/herald-telemetry/src/lib.rs, `Metric::name`), so a
// renamed metric fails here even though no scrape shows it.
const NOT_IN_DEV = {
  herald_backbone_down: 'set only by the Redis broker (crates/herald-redis) when a subscriber connection drops; herald dev runs the in-memory backbone',
  herald_backbone_reconnects_total: 'counted only by the Redis backbone (crates/herald-redis) on reconnection; herald dev has no Redis',
  herald_presence_reasserts_total: 'counted only by the Redis presence lease (crates/herald-redis/src/presence/lease.rs); herald dev has no Redis',
  herald_events_dropped_total: 'needs the event log to be unavailable or its queue full (lifecycle events only); the in-memory log of herald dev accepts every append',
};

/** `herald_*` names in a PromQL expression (label values and strings excluded). */
function metricNames(expr) {
  const withoutStrings = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""');
  return new Set(withoutStrings.match(/\bherald_[a-z_]+\b/g) ?? []);
}

/** Sample names (with suffixes) of a Prometheus text exposition. */
function scrapedNames(text) {
  return new Set(
    text
      .split('\n')
      .filter((line) => line && !line.startsWith('#'))
      .map((line) => line.match(/^[a-zA-Z_:][a-zA-Z0-9_:]*/)[0]),
  );
}

/** Names Herald declares: the `Metric::name()` literals of herald-telemetry. */
async function declaredNames() {
  const source = await readFile(join(repoRoot, 'crates/herald-telemetry/src/lib.rs'), 'utf8');
  return new Set([...source.matchAll(/=> "(herald_[a-z_]+)"/g)].map((m) => m[1]));
}

/** The rule file as JSON, parsed by PyYAML. */
async function loadRules() {
  const { stdout } = await execFile(PYTHON, [
    '-c',
    'import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))',
    RULES,
  ]);
  return JSON.parse(stdout);
}

/** A webhook receiver answering `respond(count)` to its count-th request (from 1). */
async function receiver(respond) {
  const r = { requests: 0 };
  r.server = createServer((request, response) => {
    request.resume();
    request.on('end', () => {
      r.requests += 1;
      response.writeHead(respond(r.requests)).end();
    });
  });
  await new Promise((res) => r.server.listen(0, '127.0.0.1', res));
  r.url = `http://127.0.0.1:${r.server.address().port}/hook`;
  r.close = () => {
    r.server.closeAllConnections();
    r.server.close();
  };
  return r;
}

/**
 * A raw WebSocket subscriber of `channel` that never reads after subscribing (its
 * socket paused), so the edge's outbound queue for it fills up. Resolves once the
 * subscription is confirmed.
 */
function stalledSubscriber(port, channel) {
  return new Promise((res, rej) => {
    const socket = connect(port, '127.0.0.1');
    const key = randomBytes(16).toString('base64');
    let buffered = '';
    let upgraded = false;
    socket.on('error', rej);
    socket.on('connect', () => {
      socket.write(
        `GET /app/${APP.key}?protocol=7&client=js&version=8.4.0 HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n` +
          `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      );
    });
    socket.on('data', (chunk) => {
      buffered += chunk.toString('latin1');
      if (!upgraded && buffered.includes('\r\n\r\n')) {
        upgraded = true;
        // A masked text frame (clients must mask), payload under 126 bytes.
        const payload = Buffer.from(JSON.stringify({ event: 'pusher:subscribe', data: { channel } }));
        const mask = randomBytes(4);
        const frame = Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, payload.map((b, i) => b ^ mask[i % 4])]);
        socket.write(frame);
      }
      if (buffered.includes('pusher_internal:subscription_succeeded')) {
        socket.pause();
        socket.removeAllListeners('data');
        socket.on('error', () => {});
        res(socket);
      }
    });
  });
}

const flaky = await receiver((n) => (n === 1 ? 500 : 200));
const broken = await receiver(() => 500);

const config = (ports) => `${heraldConfig(ports)}
[connection]
outbound_queue_bytes = 65536

[events]
debounce = "0s"

[dispatcher]
retry_schedule = ["100ms"]
retry_jitter = 0.0
allow_addresses = ["127.0.0.1"]

[[webhooks]]
app_id = "${APP.id}"
id = "flaky"
url = "${flaky.url}"
secret = "whsec_${randomBytes(32).toString('base64')}"

[[webhooks]]
app_id = "${APP.id}"
id = "broken"
url = "${broken.url}"
secret = "whsec_${randomBytes(32).toString('base64')}"
`;

const env = new CompatEnv({ config });
before(() => env.start());
after(async () => {
  await env.stop();
  flaky.close();
  broken.close();
});

async function scrape() {
  const res = await fetch(`http://127.0.0.1:${env.herald.metricsPort}/metrics`);
  assert.equal(res.status, 200);
  return res.text();
}

test('the dashboard is Grafana JSON on a datasource variable, with the edge, backbone and webhook rows', async () => {
  const dashboard = JSON.parse(await readFile(DASHBOARD, 'utf8'));
  const variables = dashboard.templating.list;
  assert.deepEqual(variables.map((v) => v.name), ['datasource', 'namespace', 'job', 'pod']);
  assert.equal(variables[0].type, 'datasource');
  assert.equal(variables[0].query, 'prometheus');
  const rows = dashboard.panels.filter((p) => p.type === 'row').map((p) => p.title);
  assert.deepEqual(rows, ['Edges', 'Backbone', 'Webhooks']);
  for (const panel of dashboard.panels.filter((p) => p.type !== 'row')) {
    assert.equal(panel.datasource.uid, '${datasource}', `panel ${panel.title}`);
    assert.ok(panel.targets.length > 0, `panel ${panel.title} has no query`);
    for (const target of panel.targets) assert.equal(target.datasource.uid, '${datasource}', `panel ${panel.title}`);
  }
  assert.equal(new Set(dashboard.panels.map((p) => p.id)).size, dashboard.panels.length, 'panel ids are not unique');
});

test('the rule file is a Prometheus rule-group file; every rule has a severity, a summary and a description', async () => {
  const rules = await loadRules();
  assert.deepEqual(Object.keys(rules), ['groups']);
  assert.ok(rules.groups.length > 0);
  const names = new Set();
  for (const group of rules.groups) {
    assert.equal(typeof group.name, 'string');
    assert.ok(group.rules.length > 0, `group ${group.name} is empty`);
    for (const rule of group.rules) {
      assert.match(rule.alert, /^Herald[A-Za-z]+$/);
      assert.ok(!names.has(rule.alert), `${rule.alert} twice`);
      names.add(rule.alert);
      const extra = Object.keys(rule).filter((k) => !['alert', 'expr', 'for', 'labels', 'annotations', 'keep_firing_for'].includes(k));
      assert.deepEqual(extra, [], `${rule.alert}: unknown keys`);
      assert.equal(typeof rule.expr, 'string', `${rule.alert}: expr`);
      if (rule.for !== undefined) assert.match(rule.for, /^([0-9]+(ms|s|m|h|d|w|y))+$/, `${rule.alert}: for`);
      assert.match(rule.labels?.severity ?? '', /^(critical|warning|info)$/, `${rule.alert}: severity`);
      assert.ok(rule.annotations?.summary, `${rule.alert}: summary`);
      assert.ok(rule.annotations?.description, `${rule.alert}: description`);
    }
  }
  for (const alert of ['HeraldTargetDown', 'HeraldTargetsAbsent', 'HeraldBackboneDown', 'HeraldPublishErrors',
    'HeraldWebhookFailureRate', 'HeraldWebhookDeadLetters']) {
    assert.ok(names.has(alert), `no ${alert} rule`);
  }
  // Dispatcher lag has no metric yet: the file must say so rather than invent one.
  assert.match(await readFile(RULES, 'utf8'), /pending metric .*\(issue 14 item 5/);
});

test('every metric the dashboard and the rules use is in the /metrics of a running herald dev', async () => {
  // Traffic: two pusher-js clients, one on a private channel sending a client event.
  const alice = await env.connectedClient({ userId: 'alice' });
  const bob = await env.connectedClient({ userId: 'bob' });
  const aliceChannel = await subscribe(alice, 'private-metrics');
  await subscribe(bob, 'private-metrics');
  aliceChannel.trigger('client-hello', { from: 'alice' });
  // A publish through the HTTP API, delivered to both.
  const received = new Promise((res) => bob.subscribe('private-metrics').bind('greeting', res));
  await env.sdk().trigger('private-metrics', 'greeting', { hello: 'world' });
  await received;
  // A client that closes (herald_connections_closed_total).
  env.disconnect(alice);

  // A subscriber that stops reading, and publishes until Herald drops it with 4100.
  const stalled = await stalledSubscriber(env.herald.port, 'flood');
  const payload = 'x'.repeat(9000);
  try {
    await waitFor(
      async () => {
        await env.sdk().triggerBatch(Array.from({ length: 10 }, () => ({ channel: 'flood', name: 'bulk', data: payload })));
        return /^herald_slow_consumers_total \d/m.test(await scrape());
      },
      { timeoutMs: TRAFFIC_TIMEOUT_MS, intervalMs: 0, what: 'a slow-consumer disconnect (herald_slow_consumers_total)' },
    );
  } finally {
    stalled.destroy();
  }

  // Webhooks: channel_occupied / member events for the channels above reach both
  // receivers; flaky answers 500 once (a retry) then 200, broken always 500 (after
  // its one retry, a dead letter).
  const want = [
    'herald_webhook_attempts_total',
    'herald_webhook_retries_total',
    'herald_webhook_dead_letters_total',
    'herald_webhook_latency_seconds_count',
    'herald_client_events_total',
    'herald_connections_closed_total',
  ];
  let names;
  let text;
  await waitFor(
    async () => {
      text = await scrape();
      names = scrapedNames(text);
      return want.every((name) => names.has(name));
    },
    { timeoutMs: TRAFFIC_TIMEOUT_MS, intervalMs: 50, what: `all of ${want.join(', ')} in /metrics` },
  ).catch((err) => {
    err.message += `\nmissing: ${want.filter((n) => !names?.has(n)).join(', ')}; flaky got ${flaky.requests}, broken ${broken.requests}`;
    throw err;
  });

  const dashboard = JSON.parse(await readFile(DASHBOARD, 'utf8'));
  const rules = await loadRules();
  const used = new Map();
  const note = (expr, where) => {
    for (const name of metricNames(expr)) used.set(name, [...(used.get(name) ?? []), where]);
  };
  for (const panel of dashboard.panels) for (const t of panel.targets ?? []) note(t.expr, `dashboard panel "${panel.title}"`);
  for (const v of dashboard.templating.list) if (v.query?.query) note(v.query.query, `dashboard variable ${v.name}`);
  for (const group of rules.groups) for (const rule of group.rules) note(rule.expr, `rule ${rule.alert}`);
  assert.ok(used.size >= 15, `only ${used.size} herald metrics used: ${[...used.keys()]}`);

  const declared = await declaredNames();
  const missing = [];
  for (const [name, where] of used) {
    if (names.has(name)) continue;
    if (name in NOT_IN_DEV) {
      if (!declared.has(name)) missing.push(`${name} (${where[0]}): listed as not recorded by herald dev, but Herald declares no such metric`);
      continue;
    }
    missing.push(`${name} (${[...new Set(where)].join('; ')})`);
  }
  assert.deepEqual(missing, [], `metrics used by the dashboard or the rules but absent from /metrics:\n  ${missing.join('\n  ')}`);
  // The latency panel aggregates the histogram's buckets across pods.
  assert.match(text, /^herald_webhook_latency_seconds_bucket\{[^}]*le="\+Inf"/m, 'the webhook latency has no buckets');
  // The exemptions stay honest: none is listed that herald dev does record.
  for (const name of Object.keys(NOT_IN_DEV)) assert.ok(!names.has(name), `${name} is recorded by herald dev: remove it from NOT_IN_DEV`);
});
