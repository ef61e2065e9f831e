// Render and run: the chart's edge Deployment and dispatcher StatefulSet (and, apart,
// its dev-mode Deployment), rendered by
// `helm template`, started as local processes exactly as their pod specs say (args,
// env with the pod name from the downward API, envFrom the chart's Secret, the
// ConfigMap's herald.toml as a file), against a real redis-server and tansu.
//   - every probe of the manifests answers on the port it names;
//   - the `helm test` pod's command (`herald smoke ...`) passes against them;
//   - SIGTERM ends each within its terminationGracePeriodSeconds, /readyz turns 503
//     first, and connected clients are closed with 4200 spread over the drain.
// What cannot be the same as in a pod is rewritten, and only that: /etc/herald (a temp
// dir here), the Services' host names (127.0.0.1) and the listeners' ports (port 0,
// chosen by the process and read from --ready-file, so parallel runs never collide).
//
// Run by scripts/helm-test.sh (HELM, HERALD_K8S_PYTHON, HERALD_BIN come from it).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile as execFileCb, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { recordErrors, startOnPorts, subscribe, waitFor, waitForState } from '../compat/harness.mjs';

const execFile = promisify(execFileCb);
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const PusherClient = createRequire(join(repoRoot, 'tests/compat/package.json'))('pusher-js');

const need = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this through scripts/helm-test.sh`);
  return value;
};
const HELM = need('HELM');
const PYTHON = need('HERALD_K8S_PYTHON');
const HERALD_BIN = process.env.HERALD_BIN ?? join(repoRoot, 'target/debug/herald');
const CLIENTS = 12;
// Every test is bounded; each wait inside has its own, shorter deadline.
const TEST_TIMEOUT_MS = 120_000;

const work = await mkdtemp(join(tmpdir(), 'herald-helm-run-'));
const cleanups = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
  await rm(work, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------
// The backbone: redis-server and tansu on ports they are checked to hold.
// ---------------------------------------------------------------------------

async function startService(name, command, args, options = {}) {
  const service = await startOnPorts({ name, command, args: ([port]) => args(port), options });
  cleanups.push(() => {
    service.proc.kill('SIGKILL');
    return service.stop();
  });
  return service.ports[0];
}

const redisPort = await startService('redis-server', process.env.REDIS_SERVER ?? 'redis-server', (port) => [
  '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
]);
const tansuPort = await startService('tansu', process.env.TANSU ?? 'tansu', (port) => [
  'broker', '--listener-url', `tcp://127.0.0.1:${port}`, '--advertised-listener-url', `tcp://127.0.0.1:${port}`,
  '--storage-engine', `sqlite://${join(work, 'tansu.db')}`,
], { cwd: '/' });

// ---------------------------------------------------------------------------
// The chart, rendered: a release is its manifests and /etc/herald as a directory.
// ---------------------------------------------------------------------------

async function yamlToJson(text) {
  const proc = spawn(PYTHON, ['-c', 'import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))']);
  const out = new Promise((res, reject) => {
    let buf = '';
    let err = '';
    proc.stdout.on('data', (c) => (buf += c));
    proc.stderr.on('data', (c) => (err += c));
    proc.on('error', reject);
    proc.on('close', (code) => (code === 0 ? res(buf) : reject(new Error(`YAML to JSON failed (${code}): ${err}`))));
  });
  proc.stdin.end(text);
  return JSON.parse(await out);
}

/** `helm template` with `args`; the ConfigMap's files written to a dir of their own. */
async function render(name, args) {
  const { stdout } = await execFile(HELM, ['template', name, join(repoRoot, 'helm/herald'), '--namespace', 'herald', ...args], {
    maxBuffer: 16 << 20,
  });
  const docs = await yamlToJson(stdout);
  const find = (kind, pred = () => true) => {
    const found = docs.filter((d) => d.kind === kind && pred(d));
    assert.equal(found.length, 1, `${name}: one ${kind} rendered, got ${found.length}`);
    return found[0];
  };
  const configMap = find('ConfigMap');
  // /etc/herald -> a temp dir: the ConfigMap's files, as the volume mount gives them.
  const etc = join(work, `${name}-etc-herald`);
  await mkdir(etc);
  for (const [file, text] of Object.entries(configMap.data)) await writeFile(join(etc, file), text);
  return {
    name,
    docs,
    find,
    configMap,
    secret: find('Secret'),
    smokePod: find('Pod', (d) => d.metadata.annotations?.['helm.sh/hook'] === 'test'),
    services: docs.filter((d) => d.kind === 'Service'),
    localPath: (arg) => arg.replaceAll('/etc/herald', etc),
  };
}

const cluster = await render('run', [
  '-f', join(repoRoot, 'tests/helm/run-values.yaml'),
  '--set', `config.redis.url=redis://127.0.0.1:${redisPort}/`,
  '--set', `config.kafka.brokers=127.0.0.1:${tansuPort}`,
]);
const dev = await render('dev', ['-f', join(repoRoot, 'tests/helm/values/dev.yaml'), '--set', 'drain.shutdownGraceSeconds=3']);

/** What the kubelet gives the container: env (downward API too) and envFrom. */
function containerEnv(release, container, podName) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HERALD_')));
  for (const from of container.envFrom ?? []) {
    assert.equal(from.secretRef?.name, release.secret.metadata.name, 'envFrom names the chart Secret');
    Object.assign(env, release.secret.stringData);
  }
  for (const e of container.env ?? []) {
    if ('value' in e) env[e.name] = e.value;
    else if (e.valueFrom?.fieldRef?.fieldPath === 'metadata.name') env[e.name] = podName;
    else throw new Error(`env ${e.name}: unsupported source ${JSON.stringify(e.valueFrom)}`);
  }
  return env;
}

/**
 * Starts one pod of `workload` as a process: its container's command line, with the
 * listeners on port 0 and a ready file. Resolves with the process handle and, per
 * container port name, the local port it got.
 */
async function startPod(release, workload, podName) {
  const podSpec = workload.spec.template.spec;
  const [container] = podSpec.containers;
  assert.equal(container.command, undefined, 'the image entrypoint (herald) runs the args');
  const readyFile = join(work, `${podName}.ready.json`);
  const args = [
    ...container.args.map(release.localPath),
    '--host', '127.0.0.1', '--port', '0', '--grpc-port', '0', '--metrics-port', '0', '--ready-file', readyFile,
  ];
  const proc = spawn(HERALD_BIN, args, { env: containerEnv(release, container, podName), stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  for (const s of [proc.stdout, proc.stderr]) s.on('data', (c) => (output = (output + c).slice(-8000)));
  let exit = null;
  const exited = new Promise((res) => proc.on('close', (code, signal) => res((exit = { code, signal, at: Date.now() }))));
  cleanups.push(async () => {
    if (exit === null) proc.kill('SIGKILL');
    await exited;
  });
  const bound = await waitFor(
    async () => {
      if (exit !== null) throw new Error(`${podName} exited: ${JSON.stringify(exit)}\n${output}`);
      return JSON.parse(await readFile(readyFile, 'utf8'));
    },
    { timeoutMs: 30_000, intervalMs: 25, what: `${podName} to write its ready file` },
  ).catch((err) => {
    err.message += `\n--- ${podName} output ---\n${output}`;
    throw err;
  });
  const portOf = (address) => (address ? Number(address.split(':').pop()) : undefined);
  // Container port name -> what the process bound for it.
  const ports = { http: portOf(bound.ws ?? bound.http), grpc: portOf(bound.grpc), metrics: portOf(bound.metrics) };
  return { podName, workload, container, podSpec, proc, exited, ports, output: () => output, exit: () => exit };
}

/** GETs a probe of the manifest on the local port of the container port it names. */
async function probe(pod, which) {
  const p = pod.container[which];
  assert.ok(p?.httpGet, `${pod.podName}: ${which} is an httpGet probe`);
  const declared = pod.container.ports.find((cp) => cp.name === p.httpGet.port || cp.containerPort === p.httpGet.port);
  assert.ok(declared, `${pod.podName}: ${which} port ${p.httpGet.port} is a container port`);
  const port = pod.ports[declared.name];
  assert.ok(port, `${pod.podName}: the process listens for container port ${declared.name}`);
  const res = await fetch(`http://127.0.0.1:${port}${p.httpGet.path}`, { signal: AbortSignal.timeout(2_000) });
  await res.arrayBuffer();
  return res.status;
}

async function probesAnswer(pod) {
  for (const which of ['startupProbe', 'livenessProbe', 'readinessProbe']) {
    await waitFor(async () => (await probe(pod, which)) === 200, {
      timeoutMs: 30_000,
      intervalMs: 50,
      what: `${pod.podName} ${which} (${pod.container[which].httpGet.path}) to answer 200`,
    });
  }
}

/** SIGTERM; resolves with { exit, ms, notReadyAfterMs } and checks the grace period. */
async function terminate(pod) {
  const graceMs = pod.podSpec.terminationGracePeriodSeconds * 1000;
  const started = Date.now();
  pod.proc.kill('SIGTERM');
  // /readyz turns 503 while Herald drains (until its listeners close).
  let notReadyAfterMs = null;
  // Until /readyz answers 503 or the process is gone; bounded by the grace period.
  const watchReady = waitFor(
    async () => {
      if (pod.exit() !== null) return true;
      if ((await probe(pod, 'readinessProbe').catch(() => null)) !== 503) return false;
      notReadyAfterMs = Date.now() - started;
      return true;
    },
    { timeoutMs: graceMs, intervalMs: 20, what: `${pod.podName} /readyz to answer 503 after SIGTERM` },
  );
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${pod.podName} still running ${graceMs} ms after SIGTERM (terminationGracePeriodSeconds)`)), graceMs);
  });
  const exit = await Promise.race([pod.exited, deadline]).finally(() => clearTimeout(timer));
  await watchReady;
  return { exit, ms: exit.at - started, notReadyAfterMs };
}

// ---------------------------------------------------------------------------

/** Runs the `helm test` pod's command against `edge`, the release's Services mapped to it. */
async function smoke(release, edge) {
  const [container] = release.smokePod.spec.containers;
  // Service name:port -> where its target port is served here.
  const local = new Map();
  for (const svc of release.services) {
    for (const port of svc.spec.ports) {
      const target = typeof port.targetPort === 'string' ? port.targetPort : null;
      if (target && edge.ports[target]) local.set(`${svc.metadata.name}:${port.port}`, `127.0.0.1:${edge.ports[target]}`);
    }
  }
  const args = container.args.map((arg) => {
    const m = /^(ws|http):\/\/([^/:]+:\d+)$/.exec(arg);
    if (!m) return release.localPath(arg);
    const where = local.get(m[2]);
    assert.ok(where, `helm test pod names ${m[2]}, which is no Service port of the release`);
    return `${m[1]}://${where}`;
  });
  const env = containerEnv(release, container, release.smokePod.metadata.name);
  const result = await execFile(HERALD_BIN, args, { env, timeout: 60_000 }).catch((err) => err);
  assert.equal(result.code ?? 0, 0, `herald ${args.join(' ')} failed (exit ${result.code}):\n${result.stdout}${result.stderr}`);
}

/**
 * Connects CLIENTS pusher-js clients to `edge`, SIGTERMs it and checks the drain: exit 0
 * within terminationGracePeriodSeconds, /readyz 503 meanwhile, every client closed with
 * 4200, the closes spread over the drain and within shutdown_grace.
 */
async function drain(t, release, edge) {
  const appKey = /"key" = "([^"]+)"/.exec(release.secret.stringData.HERALD_APPS)[1];
  const closes = [];
  const clients = [];
  for (let i = 0; i < CLIENTS; i++) {
    const client = new PusherClient(appKey, {
      wsHost: '127.0.0.1',
      wsPort: edge.ports.http,
      forceTLS: false,
      enabledTransports: ['ws'],
      cluster: 'mt1',
      disableStats: true,
    });
    cleanups.push(async () => client.disconnect());
    clients.push(client);
    const errors = recordErrors(client);
    client.connection.bind('error', () => {
      const code = errors.at(-1)?.code;
      if (code !== undefined) {
        closes.push({ i, code, at: Date.now() });
        client.disconnect(); // no reconnect to the draining edge
      }
    });
  }
  for (const client of clients) {
    await waitForState(client, 'connected', 10_000);
    await subscribe(client, 'drain-watch');
  }

  const shutdownGraceMs = Number(/"shutdown_grace" = "(\d+)s"/.exec(release.configMap.data['herald.toml'])[1]) * 1000;
  const sigterm = Date.now();
  const { exit, ms, notReadyAfterMs } = await terminate(edge);
  t.diagnostic(`${edge.podName} exit ${JSON.stringify(exit)} after ${ms} ms; /readyz 503 after ${notReadyAfterMs} ms`);
  assert.equal(exit.code, 0, `edge exit ${JSON.stringify(exit)}\n${edge.output()}`);
  assert.notEqual(notReadyAfterMs, null, '/readyz never answered 503 while draining');
  await waitFor(() => closes.length === CLIENTS, { timeoutMs: 5_000, what: `all ${CLIENTS} clients to be closed` });
  for (const c of closes) assert.equal(c.code, 4200, `client ${c.i} closed with ${c.code}, want 4200`);
  const offsets = closes.map((c) => c.at - sigterm).sort((a, b) => a - b);
  t.diagnostic(`close times after SIGTERM (ms): ${offsets.join(', ')}`);
  // Spread over ~80% of shutdown_grace, not all at once: the span covers a good part of it.
  assert.ok(offsets.at(-1) - offsets[0] >= shutdownGraceMs * 0.25,
    `closes span only ${offsets.at(-1) - offsets[0]} ms of a ${shutdownGraceMs} ms drain: a reconnect storm`);
  assert.ok(offsets.at(-1) <= shutdownGraceMs, `last close ${offsets.at(-1)} ms after SIGTERM, beyond shutdown_grace`);
}

const edges = [];
const dispatchers = [];

test('cluster: the rendered edge and dispatcher pods start and their probes answer', { timeout: TEST_TIMEOUT_MS }, async () => {
  const edgeDeployment = cluster.find('Deployment');
  const dispatcherSet = cluster.find('StatefulSet');
  const replicas = dispatcherSet.spec.replicas;
  assert.ok(replicas >= 2, 'at least two dispatchers, to show distinct group.instance.ids');
  // Two edges (the Deployment's pods share one config; Redis joins them).
  for (let i = 0; i < 2; i++) edges.push(await startPod(cluster, edgeDeployment, `${edgeDeployment.metadata.name}-pod${i}`));
  for (let i = 0; i < replicas; i++) dispatchers.push(await startPod(cluster, dispatcherSet, `${dispatcherSet.metadata.name}-${i}`));
  for (const pod of [...edges, ...dispatchers]) await probesAnswer(pod);
});

test('cluster: the helm test command (herald smoke) passes against the running pods', { timeout: TEST_TIMEOUT_MS }, async () => {
  assert.ok(edges.length > 0, 'edges running');
  await smoke(cluster, edges[0]);
});

test('cluster: SIGTERM ends each pod within terminationGracePeriodSeconds; clients get 4200 spread over the drain', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  assert.ok(edges.length > 0, 'edges running');
  await drain(t, cluster, edges[0]);
  for (const pod of [...edges.slice(1), ...dispatchers]) {
    const r = await terminate(pod);
    t.diagnostic(`${pod.podName} exit ${JSON.stringify(r.exit)} after ${r.ms} ms`);
    assert.equal(r.exit.code, 0, `${pod.podName} exit ${JSON.stringify(r.exit)}\n${pod.output()}`);
  }
});

test('dev mode: the single herald dev pod answers its probes, passes the helm test command and drains', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const deployment = dev.find('Deployment');
  assert.equal(deployment.spec.template.spec.containers[0].args[0], 'dev');
  const pod = await startPod(dev, deployment, `${deployment.metadata.name}-pod`);
  await probesAnswer(pod);
  // The smoke test runs in a subtest of its own so the drain is checked even before
  // `herald smoke` exists.
  await t.test('herald smoke', () => smoke(dev, pod));
  await drain(t, dev, pod);
});
