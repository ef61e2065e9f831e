// The operator assets of issue 14 (helm/herald/files/: the Grafana dashboard and the
// Prometheus alert rules) against the metrics Herald really exports:
//   - the dashboard is JSON with the expected shape (datasource variable, rows, panels
//     on a 24-column grid without overlaps, each metric's panels in its row);
//   - the rule file is a Prometheus rule-group file (PyYAML parses it, in
//     scripts/helm-test.sh's Python) whose rules all have summary, description, severity,
//     dispatcher lag and slow fan-out among them;
//   - every `herald_*` series name used in their expressions appears in the /metrics of
//     a running `herald dev` (edge and in-process dispatcher), scraped here after traffic
//     that records each metric at least once: clients connect, subscribe, send a client
//     event and close; a publish through the HTTP API delivered to subscribers (the
//     delivery latency histogram); a subscriber that stops reading (4100, slow consumer);
//     webhooks to local receivers, one answering 500 then 200 (attempts, a retry held in
//     the retry queue, the latency histogram), one always 500 (a dead letter); publishes
//     of an app limited to 1 webhook/s (waits for the app's rate limit); the dispatcher's
//     lag gauge, set at every commit;
//   - the metrics table of deploy/observability/README.md lists exactly the metrics
//     Herald declares.
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
import { createRequire } from 'node:module';
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
const DOCS = join(repoRoot, 'deploy/observability/README.md');
const PYTHON = process.env.HERALD_K8S_PYTHON ?? 'python3';
const TRAFFIC_TIMEOUT_MS = 30_000;
const PusherServer = createRequire(join(repoRoot, 'tests/compat/package.json'))('pusher');

// An app whose webhooks may go at 1/s (burst 1): a few publishes at once make the
// dispatcher wait for the app's limit.
const LIMITED_APP = Object.freeze({ id: 'limited-app', key: 'limited-key', secret: 'limited-secret' });
const LIMITED_PUBLISHES = 4;

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
const limited = await receiver(() => 200);

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

[[apps]]
id = "${LIMITED_APP.id}"
key = "${LIMITED_APP.key}"
secret = "${LIMITED_APP.secret}"
limits = {webhooks_per_second = 1, webhooks_burst = 1}

[[webhooks]]
app_id = "${LIMITED_APP.id}"
id = "limited"
url = "${limited.url}"
secret = "whsec_${randomBytes(32).toString('base64')}"
event_types = ["channel.event"]
`;

const env = new CompatEnv({ config });
before(() => env.start());
after(async () => {
  await env.stop();
  flaky.close();
  broken.close();
  limited.close();
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

  // Layout: a 24-column grid, rows full width, no two panels on the same cells.
  const cells = new Map();
  for (const panel of dashboard.panels) {
    const { x, y, w, h } = panel.gridPos;
    assert.ok(Number.isInteger(x) && Number.isInteger(y) && w > 0 && h > 0 && x + w <= 24, `panel ${panel.title}: gridPos ${JSON.stringify(panel.gridPos)}`);
    if (panel.type === 'row') assert.deepEqual([x, w, h], [0, 24, 1], `row ${panel.title}: not a full-width row`);
    for (let row = y; row < y + h; row++) {
      for (let col = x; col < x + w; col++) {
        const other = cells.get(`${row},${col}`);
        assert.equal(other, undefined, `panels "${other}" and "${panel.title}" overlap`);
        cells.set(`${row},${col}`, panel.title);
      }
    }
  }
  // Each panel is in the row above it (the nearest row with a smaller y).
  const rowPanels = dashboard.panels.filter((p) => p.type === 'row').sort((a, b) => a.gridPos.y - b.gridPos.y);
  const rowOf = (panel) => rowPanels.filter((r) => r.gridPos.y < panel.gridPos.y).at(-1)?.title;
  const rowsUsing = (metric) =>
    new Set(dashboard.panels.filter((p) => (p.targets ?? []).some((t) => metricNames(t.expr).has(metric))).map(rowOf));
  const expectedRow = {
    herald_delivery_latency_seconds_bucket: 'Edges',
    herald_connections: 'Edges',
    herald_backbone_down: 'Backbone',
    herald_dispatcher_lag_seconds: 'Webhooks',
    herald_webhook_waiting: 'Webhooks',
    herald_webhook_throttled_total: 'Webhooks',
    herald_webhook_throttle_wait_seconds_bucket: 'Webhooks',
    herald_webhook_latency_seconds_bucket: 'Webhooks',
  };
  for (const [metric, row] of Object.entries(expectedRow)) {
    assert.deepEqual([...rowsUsing(metric)], [row], `panels on ${metric} are not (only) in the ${row} row`);
  }
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
    'HeraldWebhookFailureRate', 'HeraldWebhookDeadLetters', 'HeraldDispatcherLag', 'HeraldSlowFanOut']) {
    assert.ok(names.has(alert), `no ${alert} rule`);
  }
  const rule = (alert) => rules.groups.flatMap((g) => g.rules).find((r) => r.alert === alert);
  assert.ok(metricNames(rule('HeraldDispatcherLag').expr).has('herald_dispatcher_lag_seconds'), 'HeraldDispatcherLag: not on herald_dispatcher_lag_seconds');
  assert.ok(metricNames(rule('HeraldSlowFanOut').expr).has('herald_delivery_latency_seconds_bucket'), 'HeraldSlowFanOut: not on the delivery latency buckets');
  // Every alert is in the header's list of thresholds, and no note of a pending metric is left.
  const text = await readFile(RULES, 'utf8');
  for (const alert of names) assert.match(text, new RegExp(`^#   ${alert} `, 'm'), `${alert} is not in the file's list of thresholds`);
  assert.doesNotMatch(text, /pending metric/);
});

test('the metrics table of deploy/observability/README.md lists every metric Herald declares, and no other', async () => {
  const declared = await declaredNames();
  const text = await readFile(DOCS, 'utf8');
  const documented = new Set([...text.matchAll(/^\| `(herald_[a-z_]+)` \|/gm)].map((m) => m[1]));
  assert.deepEqual([...declared].filter((n) => !documented.has(n)), [], 'declared but not in the table');
  assert.deepEqual([...documented].filter((n) => !declared.has(n)), [], 'in the table but not declared');
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

  // Publishes of the limited app (1 webhook/s, burst 1): all but the first delivery
  // wait for the app's limit (herald_webhook_throttled_total{limit="app"} and the wait
  // histogram). The flood below may hit the demo app's own limit too, but that depends
  // on how many publishes it takes; this does not.
  const limitedSdk = new PusherServer({
    appId: LIMITED_APP.id,
    key: LIMITED_APP.key,
    secret: LIMITED_APP.secret,
    host: '127.0.0.1',
    port: String(env.herald.port),
    useTLS: false,
  });
  for (let i = 0; i < LIMITED_PUBLISHES; i++) await limitedSdk.trigger('limited', 'tick', { i });

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
  // receivers; flaky answers 500 once (a retry, waiting in the retry queue) then 200,
  // broken always 500 (after its one retry, a dead letter); the limited app's
  // deliveries wait for its limit. The dispatcher sets its lag at every commit.
  const want = [
    'herald_webhook_attempts_total',
    'herald_webhook_retries_total',
    'herald_webhook_dead_letters_total',
    'herald_webhook_latency_seconds_count',
    'herald_client_events_total',
    'herald_connections_closed_total',
    'herald_delivery_latency_seconds_bucket',
    'herald_webhook_waiting',
    'herald_dispatcher_lag_seconds',
    'herald_webhook_throttled_total',
    'herald_webhook_throttle_wait_seconds_bucket',
  ];
  // With the labels the dashboard groups by.
  const wantSeries = [/^herald_webhook_waiting\{[^}]*queue="retry"/m, /^herald_webhook_throttled_total\{[^}]*limit="app"/m];
  let names;
  let text;
  await waitFor(
    async () => {
      text = await scrape();
      names = scrapedNames(text);
      return want.every((name) => names.has(name)) && wantSeries.every((series) => series.test(text));
    },
    { timeoutMs: TRAFFIC_TIMEOUT_MS, intervalMs: 50, what: `all of ${want.join(', ')} in /metrics` },
  ).catch((err) => {
    const series = wantSeries.filter((s) => !s.test(text ?? ''));
    err.message += `\nmissing: ${[...want.filter((n) => !names?.has(n)), ...series].join(', ')}; flaky got ${flaky.requests}, broken ${broken.requests}, limited ${limited.requests}`;
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
  // The latency panels aggregate the histograms' buckets across pods.
  for (const histogram of ['herald_webhook_latency_seconds', 'herald_delivery_latency_seconds', 'herald_webhook_throttle_wait_seconds']) {
    assert.match(text, new RegExp(`^${histogram}_bucket\\{[^}]*le="\\+Inf"`, 'm'), `${histogram} has no buckets`);
  }
  // The delivery latency has the fan-out buckets (from 0.5 ms), not the webhooks' (from 5 ms).
  assert.match(text, /^herald_delivery_latency_seconds_bucket\{[^}]*le="0\.0005"/m, 'herald_delivery_latency_seconds lacks its 0.5 ms bucket');
  // The exemptions stay honest: none is listed that herald dev does record.
  for (const name of Object.keys(NOT_IN_DEV)) assert.ok(!names.has(name), `${name} is recorded by herald dev: remove it from NOT_IN_DEV`);
});
