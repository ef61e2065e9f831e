// End-to-end test of ws-broadcast.mjs: starts the server on a free port and
// drives it the way Herald's load tool does (Pusher protocol 7 over
// WebSocket, publishing through the Pusher HTTP API).
//
//   node --test loadtest/node/

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';

const SERVER = fileURLToPath(new URL('./ws-broadcast.mjs', import.meta.url));
const WAIT_MS = 5000;

function withTimeout(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${WAIT_MS} ms waiting for ${what}`)), WAIT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Starts the server with --port 0 and resolves once its ready line names the port. */
async function startServer() {
  const child = spawn(process.execPath, [SERVER, '--port', '0', '--host', '127.0.0.1'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (chunk) => (stderr += chunk));
  const ready = new Promise((resolve, reject) => {
    let stdout = '';
    child.stdout.setEncoding('utf8').on('data', (chunk) => {
      stdout += chunk;
      const line = /^ws-broadcast listening on 127\.0\.0\.1:(\d+) pid (\d+)\n/.exec(stdout);
      if (line) {
        assert.equal(Number(line[2]), child.pid);
        resolve(Number(line[1]));
      }
    });
    child.once('exit', (code, signal) =>
      reject(new Error(`server exited early (code ${code}, signal ${signal}): ${stderr}`)),
    );
  });
  const port = await withTimeout(ready, 'the ready line');
  assert.ok(port > 0);
  return { child, port, stderr: () => stderr };
}

/** A Pusher client that queues every text frame it receives. */
class Client {
  constructor(url) {
    this.ws = new WebSocket(url, { perMessageDeflate: false });
    this.inbox = [];
    this.waiting = null;
    this.ws.on('message', (data, isBinary) => {
      assert.equal(isBinary, false, 'server must send text frames');
      this.inbox.push(data.toString());
      if (this.waiting) this.waiting();
    });
  }

  static async connect(port) {
    const client = new Client(`ws://127.0.0.1:${port}/app/demo-key?protocol=7&client=js&version=8.4.0`);
    await withTimeout(once(client.ws, 'open'), 'the WebSocket handshake');
    return client;
  }

  /** Resolves with the next received frame, raw. */
  async next() {
    while (this.inbox.length === 0) {
      await withTimeout(new Promise((resolve) => (this.waiting = resolve)), 'a message');
      this.waiting = null;
    }
    return this.inbox.shift();
  }

  send(event, data) {
    this.ws.send(JSON.stringify({ event, data }));
  }

  /**
   * Sends pusher:ping and returns every frame received before the pong. The
   * server answers in order, so this is everything it sent us before seeing
   * the ping: a barrier that proves absence without sleeping.
   */
  async drain() {
    this.send('pusher:ping', {});
    const received = [];
    for (;;) {
      const frame = await this.next();
      if (frame === PONG) return received;
      received.push(frame);
    }
  }

  async close() {
    if (this.ws.readyState === WebSocket.CLOSED) return;
    const closed = once(this.ws, 'close');
    this.ws.close();
    await withTimeout(closed, 'the WebSocket to close');
  }
}

const PONG = '{"event":"pusher:pong","data":"{}"}';

const eventFrame = (event, channel, data) => JSON.stringify({ event, channel, data });

describe('ws-broadcast', () => {
  let server;
  let base;
  let alice;
  let bob;
  let aliceId;
  let bobId;

  async function post(path, body) {
    const res = await withTimeout(
      fetch(`${base}${path}?auth_key=demo-key&auth_timestamp=1&auth_version=1.0&auth_signature=x`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: typeof body === 'string' ? body : JSON.stringify(body),
      }),
      `POST ${path}`,
    );
    return { status: res.status, type: res.headers.get('content-type'), body: await res.text() };
  }

  before(async () => {
    server = await startServer();
    base = `http://127.0.0.1:${server.port}`;
  });

  after(async () => {
    await Promise.all([alice?.close(), bob?.close()]);
    if (server && server.child.exitCode === null && server.child.signalCode === null) {
      server.child.kill('SIGKILL');
    }
  });

  test('sends pusher:connection_established with a fresh socket id', async () => {
    alice = await Client.connect(server.port);
    bob = await Client.connect(server.port);
    const ids = [];
    for (const client of [alice, bob]) {
      const frame = await client.next();
      const id = /"socket_id\\":\\"(1\.\d+)\\"/.exec(frame)?.[1];
      assert.ok(id, `no socket id in ${frame}`);
      assert.equal(
        frame,
        `{"event":"pusher:connection_established","data":"{\\"socket_id\\":\\"${id}\\",\\"activity_timeout\\":120}"}`,
      );
      ids.push(id);
    }
    [aliceId, bobId] = ids;
    assert.notEqual(aliceId, bobId);
  });

  test('acknowledges subscriptions', async () => {
    alice.send('pusher:subscribe', { channel: 'c0' });
    alice.send('pusher:subscribe', { channel: 'c1', auth: 'ignored' });
    bob.send('pusher:subscribe', { channel: 'c0' });
    assert.deepEqual(await alice.drain(), [
      '{"event":"pusher_internal:subscription_succeeded","channel":"c0","data":"{}"}',
      '{"event":"pusher_internal:subscription_succeeded","channel":"c1","data":"{}"}',
    ]);
    assert.deepEqual(await bob.drain(), [
      '{"event":"pusher_internal:subscription_succeeded","channel":"c0","data":"{}"}',
    ]);
  });

  test('answers pusher:ping with pusher:pong', async () => {
    alice.ws.send('{"event":"pusher:ping","data":{}}');
    assert.equal(await alice.next(), PONG);
  });

  test('ignores invalid JSON and unknown events', async () => {
    alice.ws.send('not json');
    alice.ws.send('null');
    alice.send('client-whatever', { channel: 'c0' });
    alice.ws.send(Buffer.from('{"event":"pusher:ping","data":{}}'), { binary: true });
    assert.deepEqual(await alice.drain(), []);
    assert.deepEqual(await bob.drain(), []);
  });

  test('POST /apps/:id/events delivers to every subscriber of the channel', async () => {
    const data = JSON.stringify({ hello: 'world', n: 1 });
    const res = await post('/apps/demo/events', { name: 'greet', channel: 'c0', data });
    assert.deepEqual(res, { status: 200, type: 'application/json', body: '{}' });
    const expected = [eventFrame('greet', 'c0', data)];
    assert.equal(expected[0], '{"event":"greet","channel":"c0","data":"{\\"hello\\":\\"world\\",\\"n\\":1}"}');
    assert.deepEqual(await alice.drain(), expected);
    assert.deepEqual(await bob.drain(), expected);
  });

  test('POST /apps/:id/events with channels[] delivers per channel', async () => {
    const res = await post('/apps/demo/events', { name: 'multi', channels: ['c0', 'c1', 'nobody'], data: 'x' });
    assert.deepEqual(res, { status: 200, type: 'application/json', body: '{}' });
    assert.deepEqual(await alice.drain(), [eventFrame('multi', 'c0', 'x'), eventFrame('multi', 'c1', 'x')]);
    assert.deepEqual(await bob.drain(), [eventFrame('multi', 'c0', 'x')]);
  });

  test('POST /apps/:id/events skips the socket_id sender', async () => {
    const res = await post('/apps/demo/events', { name: 'echo', channel: 'c0', data: 'y', socket_id: aliceId });
    assert.equal(res.status, 200);
    assert.deepEqual(await alice.drain(), []);
    assert.deepEqual(await bob.drain(), [eventFrame('echo', 'c0', 'y')]);
  });

  test('POST /apps/:id/batch_events delivers each item in order', async () => {
    const res = await post('/apps/demo/batch_events', {
      batch: [
        { name: 'b1', channel: 'c1', data: '1' },
        { name: 'b2', channel: 'c0', data: '2', socket_id: bobId },
        { name: 'b3', channel: 'c0', data: '3' },
      ],
    });
    assert.deepEqual(res, { status: 200, type: 'application/json', body: '{"batch":[{},{},{}]}' });
    assert.deepEqual(await alice.drain(), [
      eventFrame('b1', 'c1', '1'),
      eventFrame('b2', 'c0', '2'),
      eventFrame('b3', 'c0', '3'),
    ]);
    assert.deepEqual(await bob.drain(), [eventFrame('b3', 'c0', '3')]);
  });

  test('pusher:unsubscribe stops delivery', async () => {
    bob.send('pusher:unsubscribe', { channel: 'c0' });
    assert.deepEqual(await bob.drain(), []); // the server has processed the unsubscribe
    const res = await post('/apps/demo/events', { name: 'after', channel: 'c0', data: 'z' });
    assert.equal(res.status, 200);
    assert.deepEqual(await alice.drain(), [eventFrame('after', 'c0', 'z')]);
    assert.deepEqual(await bob.drain(), []);
  });

  test('rejects bad requests', async () => {
    assert.equal((await post('/apps/demo/events', '{"name":')).status, 400);
    assert.equal((await post('/apps/demo/events', { channel: 'c0', data: 'x' })).status, 400);
    assert.equal((await post('/apps/demo/batch_events', { name: 'x' })).status, 400);
    assert.equal((await post('/apps/demo/channels', {})).status, 404);
    assert.equal((await post('/nope', {})).status, 404);
    const get = await withTimeout(fetch(`${base}/apps/demo/events`), 'GET');
    assert.equal(get.status, 404);
    await get.text();
    const big = JSON.stringify({ name: 'big', channel: 'c0', data: 'x'.repeat(1024 * 1024) });
    assert.equal((await post('/apps/demo/events', big)).status, 413);
    assert.deepEqual(await alice.drain(), []);
  });

  test('does not negotiate permessage-deflate', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${server.port}/app/demo-key?protocol=7`, { perMessageDeflate: true });
    await withTimeout(once(ws, 'open'), 'the WebSocket handshake');
    assert.equal(ws.extensions, '');
    const closed = once(ws, 'close');
    ws.close();
    await withTimeout(closed, 'the WebSocket to close');
  });

  test('refuses WebSocket upgrades outside /app/', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${server.port}/other/demo-key`);
    let opened = false;
    ws.on('open', () => (opened = true));
    const [error] = await withTimeout(once(ws, 'error'), 'the refused upgrade to fail');
    assert.match(error.message, /socket hang up/);
    assert.equal(opened, false);
  });

  test('forgets a closed socket', async () => {
    await alice.close();
    const res = await post('/apps/demo/events', { name: 'gone', channels: ['c0', 'c1'], data: 'w' });
    assert.equal(res.status, 200);
    assert.deepEqual(await bob.drain(), []);
  });

  test('exits cleanly on SIGTERM', async () => {
    const exited = once(server.child, 'exit');
    server.child.kill('SIGTERM');
    const [code, signal] = await withTimeout(exited, 'the server to exit');
    assert.equal(signal, null, server.stderr());
    assert.equal(code, 0, server.stderr());
    assert.equal(server.stderr(), '');
    if (bob.ws.readyState !== WebSocket.CLOSED) {
      await withTimeout(once(bob.ws, 'close'), 'the server to drop connected clients');
    }
  });
});
