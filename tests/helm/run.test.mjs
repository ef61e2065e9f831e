// Render and run: the chart's edge Deployment and dispatcher StatefulSet (and, apart,
// its dev-mode Deployment), rendered by
// `helm template`, started as local processes exactly as their pod specs say (args,
// env with the pod name from the downward API, envFrom the chart's Secret, the
// ConfigMap's herald.toml as a file), against a real redis-server and tansu.
//   - every probe of the manifests answers on the port it names;
//   - the `helm test` pod's command (`herald smoke ...`) passes against them;
//   - SIGTERM ends each within its terminationGracePeriodSeconds, /readyz turns 503
//     first, and connected clients are closed with 4200 spread over the drain;
//   - with TLS (tests/helm/values/tls.yaml, as a dev pod): wss:// and https:// from the
//     mounted Secrets, client certificates as the values ask, the `helm test` command
//     over TLS (failing at its HTTP API step without its client certificate), probes
//     still plain, and a Secret renewed the way the kubelet updates a volume served
//     without a restart while an open connection stays; and a dispatcher of the same
//     values (in cluster mode), which mounts none of the listeners' Secrets, running;
//   - with secretFiles: an edge and a dispatcher on a TLS-only redis-server as an ACL
//     user, the password file and the CA from the mounted Secret, the `helm test`
//     command passing without them, and an edge started after the Secret changed to a
//     wrong password refused at start-up with the reason and no password shown.
// What cannot be the same as in a pod is rewritten, and only that: each pod's volume
// mounts (directories of its own: the ConfigMap's files, Secret volumes laid out as the
// kubelet lays them out, holding certificates made by tests/helm/make-certs.sh) in its
// args and herald.toml, the Services' host names (127.0.0.1) and the listeners' ports
// (port 0, chosen by the process and read from --ready-file, so parallel runs never
// collide). A path a pod does not mount stays as it is, missing here as there.
//
// Run by scripts/helm-test.sh (HELM, HERALD_K8S_PYTHON, HERALD_BIN come from it).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile as execFileCb, spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readdir, readFile, readlink, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { Agent } from 'node:https';
import { createRequire } from 'node:module';
import { connect as tlsConnect } from 'node:tls';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { recordErrors, startOnPorts, subscribe, waitFor, waitForState } from '../compat/harness.mjs';

const execFile = promisify(execFileCb);
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const compatRequire = createRequire(join(repoRoot, 'tests/compat/package.json'));
const PusherClient = compatRequire('pusher-js');
const PusherServer = compatRequire('pusher');

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

/** `helm template` with `args` (namespace NAMESPACE). */
const NAMESPACE = 'herald';
async function render(name, args) {
  const { stdout } = await execFile(HELM, ['template', name, join(repoRoot, 'helm/herald'), '--namespace', NAMESPACE, ...args], {
    maxBuffer: 16 << 20,
  });
  const docs = await yamlToJson(stdout);
  const find = (kind, pred = () => true) => {
    const found = docs.filter((d) => d.kind === kind && pred(d));
    assert.equal(found.length, 1, `${name}: one ${kind} rendered, got ${found.length}`);
    return found[0];
  };
  return {
    name,
    docs,
    find,
    configMap: find('ConfigMap'),
    secret: find('Secret'),
    smokePod: find('Pod', (d) => d.metadata.annotations?.['helm.sh/hook'] === 'test'),
    services: docs.filter((d) => d.kind === 'Service'),
  };
}

const cluster = await render('run', [
  '-f', join(repoRoot, 'tests/helm/run-values.yaml'),
  '--set', `config.redis.url=redis://127.0.0.1:${redisPort}/`,
  '--set', `config.kafka.brokers=127.0.0.1:${tansuPort}`,
]);
const dev = await render('dev', ['-f', join(repoRoot, 'tests/helm/values/dev.yaml'), '--set', 'drain.shutdownGraceSeconds=3']);
// The TLS case of check.py, as one dev pod (no Redis or Kafka needed for what it shows),
// reading the files again every second. The test certificates name localhost, which
// the helm test command must then verify (the URLs it dials are 127.0.0.1 here).
const tlsDev = await render('tls', [
  '-f', join(repoRoot, 'tests/helm/values/tls.yaml'),
  '--set', 'mode=dev', '--set', 'tls.reloadInterval=1s', '--set', 'drain.shutdownGraceSeconds=3',
  '--set', 'smokeTest.tls.serverName=localhost',
]);
// And in cluster mode, for its dispatcher.
const tlsCluster = await render('tls-cluster', [
  '-f', join(repoRoot, 'tests/helm/run-values.yaml'),
  '-f', join(repoRoot, 'tests/helm/values/tls.yaml'),
  '--set', `config.redis.url=redis://127.0.0.1:${redisPort}/`,
  '--set', `config.kafka.brokers=127.0.0.1:${tansuPort}`,
]);

// ---------------------------------------------------------------------------
// TLS Secrets, mounted as the kubelet mounts a Secret volume.
// ---------------------------------------------------------------------------

/** A CA and a certificate it signed, as a kubernetes.io/tls Secret's keys (a renewal with `caDir`). */
async function makeCerts(dir, caDir) {
  await execFile(join(repoRoot, 'tests/helm/make-certs.sh'), caDir ? [dir, caDir] : [dir]);
  return dir;
}

/**
 * Writes a Secret volume's items into `dir` the way the kubelet's atomic writer does:
 * the files in a new hidden directory, `..data` switched to it by one rename, each
 * item a symlink through `..data`, then the previous directory removed. A renewal is
 * the same again, so a reader of dir/tls.crt sees the old files or the new ones, never
 * half of each; a subPath mount (bound to the old files) would see none of it.
 */
let volumeWrites = 0;
async function writeSecretVolume(dir, items, from) {
  await mkdir(dir, { recursive: true });
  const previous = await readlink(join(dir, '..data')).catch(() => null);
  const version = `..${Date.now()}_${++volumeWrites}`;
  await mkdir(join(dir, version));
  for (const { key, path } of items) await copyFile(join(from, key), join(dir, version, path));
  await symlink(version, join(dir, '..data_tmp'));
  await rename(join(dir, '..data_tmp'), join(dir, '..data'));
  for (const { path } of items) {
    await symlink(join('..data', path), join(dir, path)).catch((err) => {
      if (err.code !== 'EEXIST') throw err;
    });
  }
  if (previous) await rm(join(dir, previous), { recursive: true });
}

/**
 * The files `container` of `podSpec` sees, as directories of `podName`'s own: the
 * ConfigMap's files for its volume, each Secret volume written as the kubelet writes it
 * from `secrets[its Secret's name]` (a directory holding the Secret's keys as files),
 * else from `certs` (make-certs.sh output, a kubernetes.io/tls Secret), and herald.toml
 * naming those directories where it names the container's mount paths. What the container does not mount stays as it
 * is (/etc/herald-tls/... in a pod without that Secret: missing here as there).
 * Resolves with `localPath(arg)`, the argument with the mount paths rewritten,
 * `secretVolumes` (how many), and `renew(certs)`, which updates every Secret volume
 * in place as the kubelet does.
 */
async function podFiles(release, podName, podSpec, container, certs, secrets = {}) {
  const volumes = new Map(podSpec.volumes.map((v) => [v.name, v]));
  const mounts = []; // { mountPath, dir }
  const written = []; // { dir, items }
  let config = null;
  for (const mount of container.volumeMounts ?? []) {
    const volume = volumes.get(mount.name);
    assert.ok(volume, `${podName}: volume ${mount.name} is declared`);
    assert.equal(mount.subPath, undefined, `${podName}: ${mount.name} is mounted as a directory`);
    const dir = join(work, `${podName}-volume-${mount.name}`);
    if (volume.configMap) {
      assert.equal(volume.configMap.name, release.configMap.metadata.name, `${podName}: the release's ConfigMap`);
      await mkdir(dir, { recursive: true });
      config = dir;
    } else if (volume.secret) {
      const from = secrets[volume.secret.secretName] ?? certs;
      assert.ok(from, `${podName} mounts Secret ${volume.secret.secretName}: its keys needed`);
      // Without items the kubelet writes every key of the Secret.
      const items = volume.secret.items ?? (await readdir(from)).map((key) => ({ key, path: key }));
      await writeSecretVolume(dir, items, from);
      written.push({ dir, items });
    } else {
      continue; // emptyDir (/tmp)
    }
    mounts.push({ mountPath: mount.mountPath, dir });
  }
  // Every role loads herald.toml from the ConfigMap; the helm test pod (herald smoke)
  // mounts none and loads none.
  assert.ok(config || !container.args.includes('--config'), `${podName}: --config, but the ConfigMap is not mounted`);
  for (let [file, text] of config ? Object.entries(release.configMap.data) : []) {
    for (const { mountPath, dir } of mounts) text = text.replaceAll(`"${mountPath}/`, `"${dir}/`);
    await writeFile(join(config, file), text);
  }
  const localPath = (arg) => {
    for (const { mountPath, dir } of mounts) {
      if (arg === mountPath || arg.startsWith(`${mountPath}/`)) return dir + arg.slice(mountPath.length);
    }
    return arg;
  };
  return {
    localPath,
    secretVolumes: written.length,
    renew: (renewed) => Promise.all(written.map(({ dir, items }) => writeSecretVolume(dir, items, renewed))),
  };
}

/** The SHA-256 fingerprint of a PEM certificate file, as Node reports a peer's. */
const fingerprint = async (file) => new X509Certificate(await readFile(file)).fingerprint256;

/**
 * A TLS connection to 127.0.0.1:`port` trusting `certs`' CA (with its certificate as
 * the client's when `clientCert`). Resolves once the handshake is done with the
 * socket and the certificate the server presented.
 */
async function tlsOpen(port, certs, { alpn, clientCert = false } = {}) {
  const [ca, cert, key] = await Promise.all(['ca.crt', 'tls.crt', 'tls.key'].map((f) => readFile(join(certs, f))));
  const socket = tlsConnect({ host: '127.0.0.1', port, ca, ALPNProtocols: alpn, ...(clientCert ? { cert, key } : {}) });
  cleanups.push(async () => socket.destroy());
  await new Promise((res, reject) => {
    socket.once('secureConnect', res);
    socket.once('error', reject);
  });
  return { socket, presented: socket.getPeerCertificate().fingerprint256 };
}

/** The fingerprint of the certificate a new handshake with 127.0.0.1:`port` gets. */
async function presentedBy(port, certs) {
  const { socket, presented } = await tlsOpen(port, certs, { clientCert: true });
  socket.destroy();
  return presented;
}

/**
 * Waits until `socket` has received bytes satisfying `done(buffer)`, or fails when it
 * ends first. `timeoutMs` only bounds a hung test (nothing is measured by it): as
 * generous as the other waits here, since this machine may be busy.
 */
function receive(socket, done, what, timeoutMs = 30_000) {
  return new Promise((res, reject) => {
    let buffer = Buffer.alloc(0);
    const cleanup = () => {
      clearTimeout(timer);
      socket.off('data', onData).off('error', onEnd).off('close', onEnd);
    };
    const onData = (chunk) => {
      buffer = Buffer.concat([buffer, chunk]);
      const value = done(buffer);
      if (value) {
        cleanup();
        res(value);
      }
    };
    const onEnd = (err) => {
      cleanup();
      reject(Object.assign(new Error(`connection ended before ${what}: ${err?.code ?? err?.message ?? 'closed'}`), { cause: err }));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`no ${what} within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.on('data', onData).on('error', onEnd).on('close', onEnd);
  });
}

/** The text messages of unmasked server WebSocket frames at the start of `buffer`. */
function textFrames(buffer) {
  const messages = [];
  let at = 0;
  while (buffer.length >= at + 2) {
    let len = buffer[at + 1] & 0x7f;
    let header = 2;
    if (len === 126) [len, header] = [buffer.readUInt16BE(at + 2), 4];
    if (len === 127) [len, header] = [Number(buffer.readBigUInt64BE(at + 2)), 10];
    if (buffer.length < at + header + len) break;
    if ((buffer[at] & 0x0f) === 0x1) messages.push(JSON.parse(buffer.subarray(at + header, at + header + len).toString()));
    at += header + len;
  }
  return messages;
}

/** One masked client text frame. */
function clientFrame(text) {
  const payload = Buffer.from(text);
  assert.ok(payload.length < 126, 'a short frame');
  const mask = Buffer.from([1, 2, 3, 4]);
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, payload.map((b, i) => b ^ mask[i % 4])]);
}

/**
 * A Pusher WebSocket connection over TLS (no client certificate), up to
 * pusher:connection_established. Resolves with `roundTrip()`: a pusher:ping answered
 * by pusher:pong on it.
 */
async function wssConnect(port, certs, appKey) {
  const { socket, presented } = await tlsOpen(port, certs, { alpn: ['http/1.1'] });
  const upgraded = receive(socket, (b) => b.includes('\r\n\r\n') && b, 'the upgrade response');
  socket.write(
    `GET /app/${appKey}?protocol=7&client=helm-test&version=1 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n` +
      'Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
  );
  const head = await upgraded;
  const end = head.indexOf('\r\n\r\n') + 4;
  assert.match(head.subarray(0, end).toString(), /^HTTP\/1\.1 101/, 'WebSocket upgrade over TLS');
  const first = textFrames(head.subarray(end));
  const established = first.length ? first[0] : (await receive(socket, (b) => textFrames(b)[0], 'pusher:connection_established'));
  assert.equal(established.event, 'pusher:connection_established');
  const roundTrip = async () => {
    const pong = receive(socket, (b) => textFrames(b).find((m) => m.event === 'pusher:pong'), 'pusher:pong');
    socket.write(clientFrame(JSON.stringify({ event: 'pusher:ping', data: {} })));
    return pong;
  };
  return { socket, presented, roundTrip };
}

/**
 * Opens HTTP/2 over TLS (ALPN h2) as a gRPC client would and resolves with 'settings'
 * when the server's first SETTINGS frame arrives, or with the error that ended the
 * connection first (a refused client certificate).
 */
async function h2Settings(port, certs, { clientCert }) {
  let opened;
  try {
    opened = await tlsOpen(port, certs, { alpn: ['h2'], clientCert });
  } catch (err) {
    return err.code ?? err.message;
  }
  assert.equal(opened.socket.alpnProtocol, 'h2', 'gRPC port negotiates h2');
  const settings = receive(opened.socket, (b) => b.length >= 9 && b[3] === 0x4 && 'settings', 'the server SETTINGS');
  opened.socket.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]));
  return settings.catch((err) => err.cause?.code ?? err.message);
}

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
 * Starts one pod of `workload` as a process: its container's command line, with its
 * volumes (podFiles; Secret volumes from `secrets` or `certs`), the listeners on port 0 and a ready
 * file. Resolves with the process handle, its files and, per container port name, the
 * local port it got.
 */
async function startPod(release, workload, podName, certs, secrets) {
  const podSpec = workload.spec.template.spec;
  const [container] = podSpec.containers;
  assert.equal(container.command, undefined, 'the image entrypoint (herald) runs the args');
  const files = await podFiles(release, podName, podSpec, container, certs, secrets);
  const readyFile = join(work, `${podName}.ready.json`);
  const args = [
    ...container.args.map(files.localPath),
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
  return { podName, workload, container, podSpec, files, proc, exited, ports, output: () => output, exit: () => exit };
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

/**
 * Runs the `helm test` pod's command against `edge`, the release's Services mapped to
 * it, with the pod's own volumes (Secret volumes from `certs`) and without the args
 * `drop` names (a flag and its value). Resolves with { code, stdout, stderr, args }.
 */
async function runSmoke(release, edge, { certs, drop = [] } = {}) {
  const pod = release.smokePod;
  const [container] = pod.spec.containers;
  // Service name:port (and <name>.<namespace>.svc:port) -> where its target port is served here.
  const local = new Map();
  for (const svc of release.services) {
    for (const port of svc.spec.ports) {
      const target = typeof port.targetPort === 'string' ? port.targetPort : null;
      if (!target || !edge.ports[target]) continue;
      for (const host of [svc.metadata.name, `${svc.metadata.name}.${NAMESPACE}.svc`]) {
        local.set(`${host}:${port.port}`, `127.0.0.1:${edge.ports[target]}`);
      }
    }
  }
  const files = await podFiles(release, pod.metadata.name, pod.spec, container, certs);
  assert.ok(!container.args.includes('--config'), 'the helm test pod loads no herald.toml');
  const kept = [];
  for (let i = 0; i < container.args.length; i++) {
    if (drop.includes(container.args[i])) i++;
    else kept.push(container.args[i]);
  }
  const args = kept.map((arg) => {
    const m = /^(wss?|https?):\/\/([^/]+)$/.exec(arg);
    if (!m) return files.localPath(arg);
    const where = local.get(m[2]);
    assert.ok(where, `helm test pod names ${m[2]}, which is no Service port of the release`);
    return `${m[1]}://${where}`;
  });
  const env = containerEnv(release, container, pod.metadata.name);
  const result = await execFile(HERALD_BIN, args, { env, timeout: 60_000 }).catch((err) => err);
  return { code: result.code ?? 0, stdout: result.stdout, stderr: result.stderr, args };
}

/** The `helm test` pod's command passes against `edge`. */
async function smoke(release, edge, options) {
  const r = await runSmoke(release, edge, options);
  assert.equal(r.code, 0, `herald ${r.args.join(' ')} failed (exit ${r.code}):\n${r.stdout}${r.stderr}`);
  return r;
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

test('tls: the dev pod serves wss:// and https:// from its mounted Secrets, passes the helm test command over TLS, probes stay plain, a renewal needs no restart', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const deployment = tlsDev.find('Deployment');
  const first = await makeCerts(join(work, 'certs-1'));
  const pod = await startPod(tlsDev, deployment, `${deployment.metadata.name}-pod`, first);
  assert.ok(pod.files.secretVolumes > 0, 'the dev pod mounts the listeners\' Secrets');
  await probesAnswer(pod); // plain HTTP on the metrics port

  // WebSocket clients need no client certificate (clientAuth "api").
  const apps = tlsDev.secret.stringData.HERALD_APPS;
  const [id, key, secret] = ['id', 'key', 'secret'].map((k) => new RegExp(`"${k}" = "([^"]+)"`).exec(apps)[1]);
  const client = await wssConnect(pod.ports.http, first, key);
  assert.equal(client.presented, await fingerprint(join(first, 'tls.crt')), 'the edge presents the Secret\'s tls.crt');
  await client.roundTrip();

  // The HTTP API does: refused without, a signed publish accepted with one.
  const [ca, cert, clientKey] = await Promise.all(['ca.crt', 'tls.crt', 'tls.key'].map((f) => readFile(join(first, f))));
  const api = (agent) =>
    new PusherServer({ appId: id, key, secret, host: '127.0.0.1', port: pod.ports.http, useTLS: true, agent });
  const refused = await api(new Agent({ ca })).trigger('tls-check', 'e', {}).then(() => null, (err) => err);
  assert.equal(refused?.status, 401, `HTTP API without a client certificate: ${refused?.message ?? 'accepted'}`);
  const accepted = await api(new Agent({ ca, cert, key: clientKey })).trigger('tls-check', 'e', {});
  assert.equal(accepted.status, 200, 'HTTP API with a client certificate');

  // gRPC requires one on every connection (clientAuth "required").
  const withoutCert = await h2Settings(pod.ports.grpc, first, { clientCert: false });
  t.diagnostic(`gRPC without a client certificate: ${withoutCert}`);
  assert.notEqual(withoutCert, 'settings', 'gRPC without a client certificate is refused');
  assert.equal(await h2Settings(pod.ports.grpc, first, { clientCert: true }), 'settings', 'gRPC with a client certificate');

  // The helm test command, with the test pod's own volumes only: it trusts the CA's
  // ca.crt, presents its client certificate (one CA signs everything here) and verifies
  // localhost (smokeTest.tls.serverName); the listeners' files its herald.toml names are
  // not there. Without the client certificate the HTTP API refuses its publish.
  await t.test('herald smoke over TLS', async (st) => {
    const passed = await smoke(tlsDev, pod, { certs: first });
    st.diagnostic(`herald ${passed.args.join(' ')}: ${passed.stdout.trim().replaceAll('\n', '; ')}`);
    for (const flag of ['--server-name', '--ca-file', '--cert-file', '--key-file']) assert.ok(passed.args.includes(flag), `helm test pod passes ${flag}`);
    assert.ok(passed.args.some((a) => a.startsWith('wss://')) && passed.args.some((a) => a.startsWith('https://')), 'wss:// and https://');
    assert.match(passed.stdout, /gRPC publish delivered/, 'the gRPC step ran (over TLS)');
    const without = await runSmoke(tlsDev, pod, { certs: first, drop: ['--cert-file', '--key-file'] });
    st.diagnostic(`without its client certificate: ${without.stderr.trim()}`);
    assert.equal(without.code, 1, `herald smoke without a client certificate: exit ${without.code}\n${without.stdout}${without.stderr}`);
    assert.match(without.stderr, /smoke: publish over the HTTP API failed: HTTP\/1\.1 401/, 'refused at the HTTP API step');
  });

  // cert-manager renews the Secret; the kubelet swaps the volume's files. New handshakes
  // get the new certificate within reload_interval, the open connection stays.
  const renewed = await makeCerts(join(work, 'certs-2'), first);
  const want = await fingerprint(join(renewed, 'tls.crt'));
  assert.notEqual(want, client.presented, 'the renewal is another certificate');
  await pod.files.renew(renewed);
  const renewedAfter = Date.now();
  for (const port of [pod.ports.http, pod.ports.grpc]) {
    await waitFor(async () => (await presentedBy(port, renewed)) === want, {
      timeoutMs: 15_000,
      intervalMs: 200,
      what: `port ${port} to present the renewed certificate`,
    });
  }
  t.diagnostic(`renewed certificate served ${Date.now() - renewedAfter} ms after the volume update`);
  await client.roundTrip();
  assert.equal(pod.exit(), null, 'no restart');

  const r = await terminate(pod);
  assert.equal(r.exit.code, 0, `${pod.podName} exit ${JSON.stringify(r.exit)}\n${pod.output()}`);
});

test('tls: a dispatcher runs without the listeners\' Secrets, which its herald.toml names', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const set = tlsCluster.find('StatefulSet');
  const toml = tlsCluster.configMap.data['herald.toml'];
  for (const file of ['edge/tls.key', 'grpc/tls.key']) assert.ok(toml.includes(`"/etc/herald-tls/${file}"`), `herald.toml names ${file}`);
  assert.ok(!existsSync('/etc/herald-tls'), '/etc/herald-tls exists on this machine');
  // No certificates given: podFiles refuses a pod that mounts a Secret.
  const pod = await startPod(tlsCluster, set, `${set.metadata.name}-0`);
  assert.equal(pod.files.secretVolumes, 0, 'the dispatcher mounts no Secret');
  await probesAnswer(pod);
  const r = await terminate(pod);
  t.diagnostic(`${pod.podName} exit ${JSON.stringify(r.exit)} after ${r.ms} ms`);
  assert.equal(r.exit.code, 0, `${pod.podName} exit ${JSON.stringify(r.exit)}\n${pod.output()}`);
});

test('secretFiles: edge and dispatcher pods reach a TLS Redis as an ACL user, its password and CA from a mounted Secret; the helm test command passes without them', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  // A Redis as a managed service or a private-CA one is: TLS only, no default user, an
  // ACL user with a password. The operator's Secret holds the password (as `echo`
  // writes it, with a line break) and the CA, mounted by secretFiles as the kubelet
  // lays a Secret volume out.
  const certs = await makeCerts(join(work, 'redis-certs'));
  const password = 'redis-acl-password-from-a-secret';
  const redisTlsPort = await startService('redis-server (TLS, ACL)', process.env.REDIS_SERVER ?? 'redis-server', (port) => [
    '--port', '0', '--tls-port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
    '--tls-cert-file', join(certs, 'tls.crt'), '--tls-key-file', join(certs, 'tls.key'),
    '--tls-ca-cert-file', join(certs, 'ca.crt'), '--tls-auth-clients', 'no',
    '--user', 'herald', 'on', `>${password}`, '~*', '&*', '+@all', '--user', 'default', 'off',
  ]);
  const secretDir = async (name, pass) => {
    const dir = join(work, name);
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'password'), `${pass}\n`);
    await copyFile(join(certs, 'ca.crt'), join(dir, 'ca.crt'));
    return dir;
  };
  const mountPath = '/etc/herald-secrets/redis';
  const release = await render('secret-files', [
    '-f', join(repoRoot, 'tests/helm/run-values.yaml'),
    '--set', `config.redis.url=rediss://127.0.0.1:${redisTlsPort}/`,
    '--set', `config.kafka.brokers=127.0.0.1:${tansuPort}`,
    '--set-json', `secretFiles=[{"secretName":"herald-redis","mountPath":"${mountPath}"}]`,
    '--set', 'config.redis.username=herald',
    '--set', `config.redis.password_file=${mountPath}/password`,
    '--set', `config.redis.ca_file=${mountPath}/ca.crt`,
  ]);
  const toml = release.configMap.data['herald.toml'];
  assert.ok(!toml.includes(password), 'the password is not in the ConfigMap');
  assert.ok(!existsSync(mountPath), `${mountPath} exists on this machine`);
  const secrets = { 'herald-redis': await secretDir('secret-herald-redis', password) };
  const deployment = release.find('Deployment');
  const set = release.find('StatefulSet');
  const edge = await startPod(release, deployment, `${deployment.metadata.name}-pod`, undefined, secrets);
  const dispatcher = await startPod(release, set, `${set.metadata.name}-0`, undefined, secrets);
  for (const pod of [edge, dispatcher]) {
    assert.equal(pod.files.secretVolumes, 1, `${pod.podName} mounts the Redis Secret`);
    await probesAnswer(pod);
  }
  // The test pod mounts neither the Secret nor herald.toml (podFiles gets no keys for
  // it: a Secret volume would fail the run), and passes through the edge's Redis.
  const passed = await smoke(release, edge);
  t.diagnostic(`herald ${passed.args.join(' ')}: ${passed.stdout.trim().replaceAll('\n', '; ')}`);

  // The Secret rotated to a password Redis does not know: a pod started from then on
  // reads the new file, and Redis refuses it at start-up with the reason, not the password.
  const rotated = 'a-password-redis-does-not-know';
  const podName = `${deployment.metadata.name}-rotated`;
  const [container] = deployment.spec.template.spec.containers;
  const files = await podFiles(release, podName, deployment.spec.template.spec, container, undefined, {
    'herald-redis': await secretDir('secret-herald-redis-rotated', rotated),
  });
  const args = [...container.args.map(files.localPath), '--host', '127.0.0.1', '--port', '0', '--grpc-port', '0', '--metrics-port', '0'];
  const refused = await execFile(HERALD_BIN, args, { env: containerEnv(release, container, podName), timeout: 30_000 })
    .then((r) => ({ code: 0, output: r.stdout + r.stderr }), (err) => ({ code: err.code, output: `${err.stdout}${err.stderr}` }));
  t.diagnostic(`exit ${refused.code}: ${refused.output.split('\n').find((line) => /authentication/i.test(line)) ?? refused.output}`);
  assert.ok(typeof refused.code === 'number' && refused.code !== 0, `an edge with a wrong Redis password: exit ${refused.code}`);
  assert.match(refused.output, /authentication failed/, 'refused with the reason');
  assert.ok(!refused.output.includes(rotated) && !refused.output.includes(password), 'no password in the output');

  for (const pod of [edge, dispatcher]) {
    const r = await terminate(pod);
    assert.equal(r.exit.code, 0, `${pod.podName} exit ${JSON.stringify(r.exit)}\n${pod.output()}`);
  }
});
