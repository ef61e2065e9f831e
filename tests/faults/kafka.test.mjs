// The event log under faults: a `herald edge` recording to Kafka with durable
// publishes (a publish is acknowledged only once its events are in the log), a
// separate `herald dispatcher`, tansu (sqlite storage: the log survives a broker
// restart, as a real Kafka's does), redis-server, and a Standard Webhooks endpoint.
// Publishes go through the Pusher HTTP API (the official `pusher` SDK); each carries
// a unique id, and every acknowledged one must come out of the dispatcher as a
// webhook (at least once) whose signature the official `standardwebhooks` library
// verifies. Publishes the API refused (503 while the log is away) may be missing:
// they were never acknowledged.
//
// Addresses inside this file's namespace:
//   127.0.0.1:6379  redis-server          127.0.0.1:9092  tansu (advertised)
//   127.0.0.1:6001  the edge (HTTP API)   127.0.0.1:9091  the edge's /readyz
//   127.0.0.1:9191  the dispatcher's /readyz
//   127.0.0.4:8080  the webhook endpoint (its own address: cutting it cuts only
//                   the dispatcher's path to it)
// The dispatcher's path to Kafka is cut with `cut({ from: dispatcher, port })`: a
// Kafka client connects to the broker's advertised address, so only the process
// tells its connections apart from the edge's.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import {
  APP,
  Webhook,
  cut,
  eventually,
  heal,
  metricValue,
  rules,
  sdk,
  startHerald,
  startReceiver,
  startRedis,
  startTansu,
} from './lib.mjs';

const SECRET = `whsec_${randomBytes(32).toString('base64')}`;
const verifier = new Webhook(SECRET);
const RECEIVER = { addr: '127.0.0.4', port: 8080 };
const KAFKA_PORT = 9092;
// The dispatcher's consumers leave the group after this much silence; the Kafka
// partition below lasts longer, so the group really loses them and they rejoin.
const SESSION_TIMEOUT_MS = 6_000;
// How long the broker stays down. Shorter than the producer's message timeout
// (30 s by default): a longer outage times records out, after which librdkafka bumps
// its idempotent producer's epoch, and tansu 0.6's sqlite engine panics on the next
// produce of that producer (lite.rs idempotent_message_check, "more or less than one
// row") and serves no request again; a real Kafka accepts the bump.
const BROKER_DOWN_MS = 3_000;
// Every phase below waits for a condition; this bounds how long (generous: two
// cores shared with other builds).
const RECOVERY_TIMEOUT_MS = 120_000;

let redis;
let tansu;
let edge;
let dispatcher;
let receiver;
let pusher;

const config = `
[redis]
url = "redis://127.0.0.1:6379/"

[kafka]
brokers = "127.0.0.1:${KAFKA_PORT}"

[kafka.properties]
"session.timeout.ms" = "${SESSION_TIMEOUT_MS}"
"heartbeat.interval.ms" = "1000"

[events]
durable_publish = true
partitions = 2
debounce_ms = 500

[dispatcher]
partitions = 2
# Short tiers, but together longer than any outage below: a delivery that fails
# during it waits in a retry tier, and is never dead-lettered.
retry_schedule = ["500ms", "1s", "2s", "4s", "8s", "8s", "8s", "8s", "8s", "8s"]
retry_jitter = 0.1
connect_timeout_ms = 1000
request_timeout_ms = 3000
allow_addresses = ["127.0.0.0/8"]

[[webhooks]]
app_id = "${APP.id}"
id = "faults"
url = "http://${RECEIVER.addr}:${RECEIVER.port}/hooks"
secret = "${SECRET}"
event_types = ["channel.event"]
`;

before(async () => {
  redis = await startRedis({ port: 6379, bind: ['127.0.0.1'] });
  tansu = await startTansu({ port: KAFKA_PORT, storage: 'sqlite' });
  receiver = await startReceiver({ ...RECEIVER, respond: verify });
  edge = await startHerald('edge', { port: 6001, metricsPort: 9091, grpcPort: 50051, toml: config });
  dispatcher = await startHerald('dispatcher', { metricsPort: 9191, toml: config });
  pusher = sdk(edge);
  // Until the dispatcher's consumers have joined their group, deliveries wait: the
  // tests start once a first publication has come out as a webhook.
  const started = Date.now();
  const id = `warm-up-${randomBytes(4).toString('hex')}`;
  assert.equal(await publish('faults-warm-up', id), 'acked');
  await eventually(() => deliveredIds().has(id), {
    timeoutMs: RECOVERY_TIMEOUT_MS,
    what: 'the dispatcher to deliver its first webhook',
  });
  console.log(`the first webhook came ${Date.now() - started} ms after the dispatcher was ready`);
});

after(() => heal());

/**
 * Publishes one event carrying `id` through the Pusher HTTP API: 'acked' when the
 * edge answered 200, else the status (or error) it got.
 */
async function publish(channel, id) {
  try {
    const res = await pusher.trigger(channel, 'fault-event', { id });
    return res.status === 200 ? 'acked' : `status ${res.status}`;
  } catch (err) {
    return err.status ? `status ${err.status}` : `error ${err.error?.message ?? err.message}`;
  }
}

/**
 * The receiver's answer to a delivery: each is verified by the official Standard
 * Webhooks library as it arrives (signature, and a timestamp within its 5 minutes),
 * and one that fails is answered 400 and counted by `deliveredIds` as a failure.
 */
function verify(delivery) {
  try {
    delivery.event = verifier.verify(delivery.rawBody, delivery.headers);
    return 200;
  } catch (err) {
    delivery.refused = err.message;
    return 400;
  }
}

/**
 * The ids of every publication delivered so far (each delivery verified, see
 * `verify`), mapped to when the first delivery of each arrived.
 */
function deliveredIds() {
  const ids = new Map();
  for (const { event, refused, rawBody, at } of receiver.received) {
    if (refused) throw new Error(`a delivery failed verification (${refused}): ${rawBody}`);
    if (event.type !== 'channel.event') continue;
    const { id } = JSON.parse(event.data.data);
    if (!ids.has(id) || ids.get(id) > at) ids.set(id, at);
  }
  return ids;
}

/** `ids` not delivered yet. */
function missing(ids) {
  const delivered = deliveredIds();
  return ids.filter((id) => !delivered.has(id));
}

async function dispatcherMetric(name, labels) {
  return metricValue(await dispatcher.metrics(), name, labels);
}

/**
 * Waits until every id of `acked` has been delivered; resolves with when the last
 * of them first arrived. A timeout names the ids still missing.
 */
async function allDelivered(acked, what) {
  let left = acked;
  try {
    await eventually(() => (left = missing(acked)).length === 0, { timeoutMs: RECOVERY_TIMEOUT_MS, what });
  } catch (err) {
    err.message = `${left.length} of ${acked.length} acknowledged publications never arrived: ${left.join(', ')}\nnft rules: ${await rules()}\n${err.message}`;
    throw err;
  }
  const delivered = deliveredIds();
  return Math.max(...acked.map((id) => delivered.get(id)));
}

/** Publishes `count` events on `channel` one after another; every one must be acknowledged. */
async function publishAcked(channel, prefix, count) {
  const ids = [];
  for (let i = 0; i < count; i++) {
    const id = `${prefix}-${i}`;
    const outcome = await publish(channel, id);
    assert.equal(outcome, 'acked', `publish ${id} while the edge reaches Kafka`);
    ids.push(id);
  }
  return ids;
}

/** Lets a scenario's condition last at least until `deadline` (a duration of the fault, not a wait for a result). */
async function holdUntil(deadline) {
  const left = deadline - Date.now();
  if (left > 0) await new Promise((r) => setTimeout(r, left));
}

test('a dispatcher loses Kafka, then its endpoint, then both heal: nothing acknowledged is lost', async (t) => {
  const channel = 'faults-partition';
  const acked = [];
  acked.push(...(await publishAcked(channel, 'before', 20)));

  // The dispatcher loses Kafka; the edge still reaches it, so publishing goes on.
  const kafkaCutAt = Date.now();
  const kafka = await cut({ from: dispatcher, port: KAFKA_PORT });
  acked.push(...(await publishAcked(channel, 'kafka-cut', 20)));

  // The endpoint goes away too (the dispatcher's path to it).
  const endpoint = await cut(RECEIVER);
  acked.push(...(await publishAcked(channel, 'both-cut', 20)));

  // Past the session timeout the group has dropped the dispatcher's consumers.
  await holdUntil(kafkaCutAt + 2 * SESSION_TIMEOUT_MS);
  const attemptsBefore = await dispatcherMetric('herald_webhook_attempts_total');
  const kafkaHealedAt = Date.now();
  await kafka.heal();
  // The dispatcher is back on Kafka when it reads the backlog: it tries the
  // endpoint (and fails: it is still cut).
  await eventually(async () => (await dispatcherMetric('herald_webhook_attempts_total')) > attemptsBefore, {
    timeoutMs: RECOVERY_TIMEOUT_MS,
    what: 'the dispatcher to attempt deliveries again after Kafka healed',
  });
  const backOnKafkaMs = Date.now() - kafkaHealedAt;
  const stillMissing = missing(acked).length;

  const endpointHealedAt = Date.now();
  await endpoint.heal();
  const last = await allDelivered(acked, 'every acknowledged publication to be delivered after both paths healed');
  assert.equal(await dispatcherMetric('herald_webhook_dead_letters_total'), 0, 'nothing was dead-lettered');

  const report =
    `${acked.length} publications acknowledged, all delivered. The dispatcher attempted deliveries again ` +
    `${backOnKafkaMs} ms after Kafka healed (${stillMissing} still missing then); the last missing ` +
    `delivery arrived ${last - endpointHealedAt} ms after the endpoint healed ` +
    `(${last - kafkaHealedAt} ms after Kafka healed).`;
  t.diagnostic(report);
  console.log(`recovery (dispatcher partitions): ${report}`);
});

test('Kafka broker restarted under durable publishes: every acknowledged publish reaches its webhook', async (t) => {
  const channel = 'faults-broker-restart';
  const TOTAL = 200;
  const CONCURRENCY = 4;
  const KILL_AFTER = 60;
  const outcomes = new Map();
  let next = 0;
  let killed = null;
  let restartedAt = null;
  let firstAckAfterRestart = null;
  let restart = null;
  let lastAck = null;

  const worker = async () => {
    while (next < TOTAL) {
      const id = `restart-${next++}`;
      const outcome = await publish(channel, id);
      outcomes.set(id, outcome);
      if (outcome === 'acked') lastAck = Date.now();
      if (outcome === 'acked' && restartedAt !== null && firstAckAfterRestart === null) firstAckAfterRestart = Date.now();
      // Mid-way, once, while the other workers keep publishing: kill -9 the broker,
      // keep it down a while, start it again (same port, same storage).
      if (next >= KILL_AFTER && restart === null) {
        restart = (async () => {
          killed = Date.now();
          await tansu.kill();
          await holdUntil(killed + BROKER_DOWN_MS);
          await tansu.start();
          restartedAt = Date.now();
        })();
      }
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  await restart;

  const acked = [...outcomes].filter(([, outcome]) => outcome === 'acked').map(([id]) => id);
  const refused = [...outcomes].filter(([, outcome]) => outcome !== 'acked');
  const refusals = {};
  for (const [, outcome] of refused) refusals[outcome] = (refusals[outcome] ?? 0) + 1;
  // A publish that could not reach the log is answered as an error by the API, and
  // only 503 (the log is unavailable) is a right answer for that.
  for (const [id, outcome] of refused) assert.equal(outcome, 'status 503', `publish ${id}`);
  assert.ok(acked.length > 0, 'some publishes were acknowledged');

  const last = await allDelivered(acked, 'every acknowledged publication to be delivered after the broker restarted');
  const report =
    `${TOTAL} publishes, ${acked.length} acknowledged (all delivered), ${refused.length} refused ` +
    `${JSON.stringify(refusals)}; broker down ${restartedAt - killed} ms; first acknowledged publish ` +
    `${firstAckAfterRestart === null ? 'none' : `${firstAckAfterRestart - restartedAt} ms`} after the restart, ` +
    `last one ${lastAck - restartedAt} ms after it; the last missing delivery arrived ${last - restartedAt} ms ` +
    `after the restart (${last - lastAck} ms after the last acknowledged publish).`;
  t.diagnostic(report);
  console.log(`recovery (broker restart): ${report}`);
});
