// TLS on Herald's own listeners, with clients nobody here wrote: pusher-js over
// wss:// (trusting a CA made at test time through NODE_EXTRA_CA_CERTS), the Pusher
// Node SDK over https://, grpcio over TLS with a client certificate, and a
// certificate renewed under a connected pusher-js client.
//
// The CA and certificates are made with the openssl command-line tool when the
// suite starts, in a temp dir removed at the end.
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import crypto from 'node:crypto';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import tls from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import Pusher from 'pusher';

import { APP, heraldConfig, startHerald, waitFor } from './harness.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const PYTHON = process.env.PYTHON ?? 'python3';
const PROCESS_TIMEOUT_MS = 30_000;

const dir = mkdtempSync(join(tmpdir(), 'herald-compat-tls-'));
const path = (name) => join(dir, name);

function openssl(...args) {
  execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A CA (`ca.pem`) and its key, made once. */
function makeCa() {
  openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', path('ca.key'), '-out', path('ca.pem'), '-days', '2', '-subj', '/CN=Herald compat test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
}

/** `<name>.pem` and `<name>.key`, signed by the CA, for 127.0.0.1 and localhost. */
function issue(name) {
  writeFileSync(path(`${name}.ext`), 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n');
  openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', path(`${name}.key`), '-out', path(`${name}.csr`), '-subj', `/CN=${name}`);
  openssl('x509', '-req', '-in', path(`${name}.csr`), '-CA', path('ca.pem'), '-CAkey', path('ca.key'),
    '-CAcreateserial', '-days', '2', '-out', path(`${name}.pem`), '-extfile', path(`${name}.ext`));
  return { cert: path(`${name}.pem`), key: path(`${name}.key`) };
}

makeCa();
const server = issue('server');
const backend = issue('backend');
const renewed = issue('renewed');
// The files Herald reads, replaced by the rotation test.
const live = { cert: path('live.pem'), key: path('live.key') };
writeFileSync(live.cert, readFileSync(server.cert));
writeFileSync(live.key, readFileSync(server.key));
const ca = readFileSync(path('ca.pem'));

// WebSocket clients without a certificate, the HTTP API only with one; gRPC only
// with one.
const config = (ports) => `${heraldConfig(ports)}
[server.tls]
cert_file = "${live.cert}"
key_file = "${live.key}"
client_ca_file = "${path('ca.pem')}"
client_auth = "api"
reload_interval = "1s"

[grpc.tls]
cert_file = "${live.cert}"
key_file = "${live.key}"
client_ca_file = "${path('ca.pem')}"
`;

let herald;
before(async () => {
  herald = await startHerald({ config });
});
after(async () => {
  await herald?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** The Pusher Node SDK over https://, presenting `identity` (a client certificate) if given. */
function sdk({ trust = true, identity } = {}) {
  const agent = new https.Agent({
    ...(trust ? { ca } : {}),
    ...(identity ? { cert: readFileSync(identity.cert), key: readFileSync(identity.key) } : {}),
  });
  return new Pusher({
    appId: APP.id, key: APP.key, secret: APP.secret,
    host: '127.0.0.1', port: String(herald.port), useTLS: true, agent,
  });
}

/** A pusher-js client in a child process that trusts the CA through NODE_EXTRA_CA_CERTS. */
function pusherJs(channel, event) {
  const child = spawn(process.execPath, [join(HERE, 'tls-client.mjs'), String(herald.port), APP.key, channel, event], {
    env: { ...process.env, NODE_EXTRA_CA_CERTS: path('ca.pem') },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const lines = [];
  createInterface({ input: child.stdout }).on('line', (line) => lines.push(JSON.parse(line)));
  return {
    lines,
    async until(predicate, what) {
      return waitFor(() => {
        const failure = lines.find((l) => l.error);
        if (failure) throw new Error(`pusher-js: ${failure.error}`);
        return lines.find(predicate);
      }, { what, timeoutMs: 15_000 });
    },
    async close() {
      child.stdin.end();
      if (child.exitCode === null) await once(child, 'exit');
    },
  };
}

/** The certificate a fresh TLS handshake with Herald's WebSocket port presents. */
async function presented() {
  const socket = tls.connect({ host: '127.0.0.1', port: herald.port, ca });
  await once(socket, 'secureConnect');
  const { fingerprint256 } = socket.getPeerCertificate();
  socket.destroy();
  return fingerprint256;
}

function fingerprint(file) {
  return new crypto.X509Certificate(readFileSync(file)).fingerprint256;
}

function grpc(args) {
  return new Promise((resolve, reject) => {
    execFile(PYTHON, [join(HERE, 'grpc_publish.py'), '--target', `127.0.0.1:${herald.grpcPort}`,
      '--token', APP.apiToken, '--app-id', APP.id, '--timeout', '5', ...args],
    { timeout: PROCESS_TIMEOUT_MS }, (error, stdout, stderr) => {
      if (error && typeof error.code !== 'number') reject(new Error(`grpc_publish.py: ${error.message}\n${stderr}`));
      else resolve({ status: error ? error.code : 0, result: stdout.trim() && JSON.parse(stdout) });
    });
  });
}

describe('TLS listeners', () => {
  test('pusher-js over wss:// receives what the Pusher SDK publishes over https:// with a client certificate', async () => {
    const client = pusherJs('tls-news', 'headline');
    try {
      await client.until((l) => l.subscribed, 'pusher-js to subscribe over wss://');
      const response = await sdk({ identity: backend }).trigger('tls-news', 'headline', { text: 'over TLS' });
      assert.equal(response.status, 200);
      const got = await client.until((l) => l.event, 'the event over wss://');
      assert.deepEqual(got.event, { text: 'over TLS' });
    } finally {
      await client.close();
    }
  });

  test('the HTTP API refuses a client without a certificate; an SDK that does not trust the CA refuses Herald', async () => {
    await assert.rejects(sdk().trigger('tls-news', 'headline', {}), (err) => {
      assert.equal(err.status, 401, String(err));
      assert.match(err.body, /client certificate/);
      return true;
    });
    await assert.rejects(sdk({ trust: false, identity: backend }).trigger('tls-news', 'headline', {}), (err) => {
      assert.equal(err.error?.code, 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', String(err.error));
      return true;
    });
  });

  test('grpcio publishes over TLS with a client certificate and is refused without one', async () => {
    const ok = await grpc(['--ca-file', path('ca.pem'), '--cert-file', backend.cert, '--key-file', backend.key,
      'publish', '--channel', 'tls-news', '--event', 'headline', '--data', '{}']);
    assert.equal(ok.status, 0, JSON.stringify(ok.result));
    const refused = await grpc(['--ca-file', path('ca.pem'), '--expect-code', 'UNAVAILABLE',
      'publish', '--channel', 'tls-news', '--event', 'headline', '--data', '{}']);
    assert.equal(refused.status, 0, JSON.stringify(refused.result));
    const plaintext = await grpc(['--expect-code', 'UNAVAILABLE',
      'publish', '--channel', 'tls-news', '--event', 'headline', '--data', '{}']);
    assert.equal(plaintext.status, 0, JSON.stringify(plaintext.result));
  });

  test('a renewed certificate is presented to new handshakes while a connected pusher-js keeps receiving', async () => {
    const client = pusherJs('tls-rotation', 'tick');
    try {
      await client.until((l) => l.subscribed, 'pusher-js to subscribe over wss://');
      assert.equal(await presented(), fingerprint(server.cert));
      // As a Secret update lands: both files replaced by renames.
      writeFileSync(path('next.key'), readFileSync(renewed.key));
      writeFileSync(path('next.pem'), readFileSync(renewed.cert));
      renameSync(path('next.key'), live.key);
      renameSync(path('next.pem'), live.cert);
      await waitFor(async () => (await presented()) === fingerprint(renewed.cert), {
        what: 'Herald to present the renewed certificate',
      });
      await sdk({ identity: backend }).trigger('tls-rotation', 'tick', { n: 1 });
      const got = await client.until((l) => l.event, 'the event on the connection made before the renewal');
      assert.deepEqual(got.event, { n: 1 });
      assert.equal(client.lines.filter((l) => l.state === 'connected').length, 1, 'never reconnected');
    } finally {
      await client.close();
    }
  });
});
