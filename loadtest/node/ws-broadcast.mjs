#!/usr/bin/env node
// A plain Node.js broadcast server on the `ws` package, speaking just enough
// of the Pusher protocol (v7 WebSocket + HTTP publish API) for Herald's load
// tool to drive it. It is a benchmark baseline: no auth, no presence, no
// client events, one process.
//
//   node loadtest/node/ws-broadcast.mjs --port 6001 [--host 127.0.0.1]
//
// `--port 0` picks a free port; the ready line shows the real one.

import http from 'node:http';
import { parseArgs } from 'node:util';
import { WebSocketServer, WebSocket } from 'ws';

const MAX_BODY_BYTES = 1024 * 1024;
const ACTIVITY_TIMEOUT_SECONDS = 120;

const usage = 'usage: node ws-broadcast.mjs --port PORT [--host HOST]';

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      port: { type: 'string' },
      host: { type: 'string', default: '127.0.0.1' },
    },
  }));
} catch (err) {
  console.error(`ws-broadcast: ${err.message}\n${usage}`);
  process.exit(2);
}
const port = Number(args.port);
if (args.port === undefined || !Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`ws-broadcast: --port must be an integer in 0..65535\n${usage}`);
  process.exit(2);
}

/** channel name -> sockets subscribed to it */
const channels = new Map();
/** socket id -> socket, for the publish API's `socket_id` exclusion */
const socketsById = new Map();
/** socket -> { id, channels: Set<string> } */
const state = new WeakMap();
let nextSocketId = 1;

function subscribe(ws, channel) {
  let members = channels.get(channel);
  if (!members) {
    members = new Set();
    channels.set(channel, members);
  }
  members.add(ws);
  state.get(ws).channels.add(channel);
}

function unsubscribe(ws, channel) {
  const members = channels.get(channel);
  if (members) {
    members.delete(ws);
    if (members.size === 0) channels.delete(channel);
  }
  state.get(ws).channels.delete(channel);
}

function broadcast(channel, event, data, exceptSocketId) {
  const members = channels.get(channel);
  if (!members) return;
  const except = exceptSocketId === undefined ? undefined : socketsById.get(exceptSocketId);
  const message = JSON.stringify({ event, channel, data });
  for (const ws of members) {
    if (ws !== except && ws.readyState === WebSocket.OPEN) ws.send(message);
  }
}

// ---- WebSocket side ---------------------------------------------------------

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });

wss.on('connection', (ws) => {
  const id = `1.${nextSocketId++}`;
  state.set(ws, { id, channels: new Set() });
  socketsById.set(id, ws);

  ws.on('error', () => {}); // a broken peer just closes; never crash the server
  ws.on('message', (raw, isBinary) => {
    if (!isBinary) handleClientMessage(ws, raw.toString());
  });
  ws.on('close', () => {
    for (const channel of [...state.get(ws).channels]) unsubscribe(ws, channel);
    socketsById.delete(id);
  });

  ws.send(
    JSON.stringify({
      event: 'pusher:connection_established',
      data: JSON.stringify({ socket_id: id, activity_timeout: ACTIVITY_TIMEOUT_SECONDS }),
    }),
  );
});

function handleClientMessage(ws, text) {
  let message;
  try {
    message = JSON.parse(text);
  } catch {
    return;
  }
  if (message === null || typeof message !== 'object') return;

  let data = message.data;
  if (typeof data === 'string') {
    try {
      data = JSON.parse(data);
    } catch {
      data = undefined;
    }
  }
  const channel = data !== null && typeof data === 'object' ? data.channel : undefined;

  switch (message.event) {
    case 'pusher:subscribe':
      if (typeof channel !== 'string' || channel === '') return;
      subscribe(ws, channel);
      ws.send(
        JSON.stringify({ event: 'pusher_internal:subscription_succeeded', channel, data: '{}' }),
      );
      break;
    case 'pusher:unsubscribe':
      if (typeof channel === 'string') unsubscribe(ws, channel);
      break;
    case 'pusher:ping':
      ws.send('{"event":"pusher:pong","data":"{}"}');
      break;
    default:
      break;
  }
}

// ---- HTTP side --------------------------------------------------------------

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    if (Number(req.headers['content-length']) > MAX_BODY_BYTES) {
      reject(new HttpError(413, 'request body too large'));
      return;
    }
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        req.removeAllListeners('data');
        reject(new HttpError(413, 'request body too large'));
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function parseJsonObject(text) {
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    throw new HttpError(400, 'invalid JSON');
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new HttpError(400, 'body must be a JSON object');
  }
  return body;
}

/** Validates one event (from /events or a /batch_events item) into broadcast arguments. */
function toEvent(item) {
  if (item === null || typeof item !== 'object') throw new HttpError(400, 'event must be an object');
  const { name, data, socket_id: socketId } = item;
  const targets = item.channels ?? (item.channel === undefined ? undefined : [item.channel]);
  if (typeof name !== 'string' || name === '') throw new HttpError(400, 'missing event name');
  if (!Array.isArray(targets) || targets.length === 0 || !targets.every((c) => typeof c === 'string')) {
    throw new HttpError(400, 'missing channel or channels');
  }
  if (socketId !== undefined && typeof socketId !== 'string') {
    throw new HttpError(400, 'socket_id must be a string');
  }
  return { name, channels: targets, data: typeof data === 'string' ? data : JSON.stringify(data ?? ''), socketId };
}

function publish({ name, channels: targets, data, socketId }) {
  for (const channel of targets) broadcast(channel, name, data, socketId);
}

function sendJson(res, status, body) {
  const payload = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(payload),
  });
  res.end(payload);
}

const routes = {
  events(body) {
    publish(toEvent(body));
    return {};
  },
  batch_events(body) {
    if (!Array.isArray(body.batch)) throw new HttpError(400, 'missing batch');
    const events = body.batch.map(toEvent); // validate all before publishing any
    events.forEach(publish);
    return { batch: events.map(() => ({})) };
  },
};

const server = http.createServer(async (req, res) => {
  const path = req.url.split('?', 1)[0];
  const match = /^\/apps\/[^/]+\/(events|batch_events)$/.exec(path);
  if (req.method !== 'POST' || !match) {
    sendJson(res, 404, { error: 'not found' });
    return;
  }
  try {
    const body = parseJsonObject(await readBody(req));
    sendJson(res, 200, routes[match[1]](body));
  } catch (err) {
    // Node discards whatever is left of a rejected body and keeps the connection.
    if (err instanceof HttpError) sendJson(res, err.status, { error: err.message });
    else if (!res.headersSent) sendJson(res, 500, { error: 'internal error' });
  }
});

server.on('upgrade', (req, socket, head) => {
  socket.on('error', () => socket.destroy());
  if (!req.url.startsWith('/app/')) {
    socket.destroy();
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
});

server.on('clientError', (err, socket) => {
  if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n');
  else socket.destroy();
});

function shutdown() {
  for (const ws of wss.clients) ws.terminate();
  wss.close();
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.once('SIGTERM', shutdown);
process.once('SIGINT', shutdown);

server.listen(port, args.host, () => {
  const { address, port: actualPort } = server.address();
  const host = address.includes(':') ? `[${address}]` : address;
  console.log(`ws-broadcast listening on ${host}:${actualPort} pid ${process.pid}`);
});
