// Just enough of the Pusher protocol (v7) and of Herald's recovery contract
// for real pusher-js to talk to: the handshake, ping/pong, and whatever the
// test scripts. Nothing is answered on its own: a test sees every frame the
// client sent (`conn.frames`) and decides what comes back, so the frames the
// module makes pusher-js send can be asserted exactly.

import { WebSocketServer } from 'ws';

import Pusher from 'pusher-js';

export const KEY = 'test-key';
const DEFAULT_TIMEOUT_MS = 5_000;

/** Polls `predicate` until it returns a truthy value, which is returned; throws after the deadline. */
export async function waitFor(predicate, what, timeoutMs = DEFAULT_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = predicate();
    if (value) return value;
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** One client connection, as the server sees it. */
class Connection {
  /** Frames received from the client, JSON-decoded, pings left out. */
  frames = [];

  constructor(ws, socketId) {
    this.ws = ws;
    this.socketId = socketId;
    ws.on('message', (raw) => {
      const frame = JSON.parse(raw.toString());
      if (frame.event === 'pusher:ping') {
        this.send({ event: 'pusher:pong', data: '{}' });
        return;
      }
      this.frames.push(frame);
    });
    this.send({
      event: 'pusher:connection_established',
      data: JSON.stringify({ socket_id: socketId, activity_timeout: 120 }),
    });
  }

  /** The `pusher:subscribe` frames received so far. */
  subscribes() {
    return this.frames.filter((frame) => frame.event === 'pusher:subscribe');
  }

  /** Waits until the client has sent `count` subscribes on this connection; returns them. */
  async waitForSubscribes(count = 1) {
    await waitFor(() => this.subscribes().length >= count, `${count} pusher:subscribe on connection ${this.socketId}`);
    return this.subscribes();
  }

  send(frame) {
    this.ws.send(JSON.stringify(frame));
  }

  /** A channel message; `position` (`{ offset, epoch }`) is added at the top level, as Herald does. */
  publish(channel, event, payload, position = {}) {
    this.send({ event, channel, data: JSON.stringify(payload), ...position });
  }

  /** `pusher_internal:subscription_succeeded` with `data` (string-encoded, as on the wire). */
  ack(channel, data = {}) {
    this.send({ event: 'pusher_internal:subscription_succeeded', channel, data: JSON.stringify(data) });
  }

  /** Cuts the TCP connection without a close frame: to pusher-js, a network failure (1006). */
  drop() {
    this.ws.terminate();
  }
}

/** Starts the server on 127.0.0.1, port 0. */
export async function startFakeHerald() {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((resolve, reject) => {
    wss.once('listening', resolve);
    wss.once('error', reject);
  });
  const connections = [];
  wss.on('connection', (ws, req) => {
    // pusher-js connects to /app/<key>?protocol=7&...; anything else is a bug in the test.
    if (!req.url.startsWith(`/app/${KEY}?`)) {
      ws.close(4001, 'unknown app key');
      return;
    }
    connections.push(new Connection(ws, `${connections.length + 1}.${100 + connections.length}`));
  });
  return {
    port: wss.address().port,
    connections,
    /** Waits for the `n`th connection (1-based) and returns it. */
    async connection(n) {
      await waitFor(() => connections.length >= n, `connection #${n} (have ${connections.length})`);
      return connections[n - 1];
    },
    close() {
      for (const client of wss.clients) client.terminate();
      return new Promise((resolve) => wss.close(resolve));
    },
  };
}

/** pusher-js options that point it at the fake server, WebSocket only, nothing sent elsewhere. */
export function clientOptions(server, extra = {}) {
  return {
    wsHost: '127.0.0.1',
    wsPort: server.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    cluster: 'mt1',
    disableStats: true,
    ...extra,
  };
}

/** A fresh pusher-js client (it starts connecting at once). */
export function newPusher(server, extra) {
  return new Pusher(KEY, clientOptions(server, extra));
}

/**
 * A server and a client factory for one test; both are shut down after it.
 * `connect(extra)` returns a new pusher-js client.
 */
export async function setup(t) {
  const server = await startFakeHerald();
  const clients = [];
  t.after(async () => {
    for (const client of clients) client.disconnect();
    await server.close();
  });
  return {
    server,
    track(client) {
      clients.push(client);
      return client;
    },
    connect(extra) {
      const client = newPusher(server, extra);
      clients.push(client);
      return client;
    },
  };
}

/** Records every event on a pusher-js channel (bind_global) as `[event, data]`. */
export function recordAll(channel) {
  const seen = [];
  channel.bind_global((event, data) => seen.push([event, data]));
  return seen;
}
