// Shared plumbing for the Pusher compatibility suite.
//
// Every test file gets its own Herald process (fresh ports, fresh config), an
// auth endpoint built only from the official `pusher` server SDK, and
// `pusher-js` clients pointed at Herald. Nothing here speaks the Pusher
// protocol by hand: if a test passes, unmodified third-party code works
// against Herald.
//
// Run from the repository root, after `cargo build`:
//   scripts/install-node-deps.sh && scripts/install-python-deps.sh && node --test tests/compat/
// (the Python packages are for grpc.test.mjs and webhook-admin.test.mjs: grpcio, grpcurl).
// HERALD_BIN overrides the binary (default target/debug/herald);
// COMPAT_KEEP_LOGS=1 keeps each Herald's config and log in the temp dir.
//
// Waiting is always for a condition with a deadline, never a fixed sleep. To
// prove that something did NOT arrive, tests use `roundTrip(client)`: a
// `pusher:ping` answered by `pusher:pong` on the same connection shows that
// everything Herald queued for that connection before the ping has been
// delivered.

import { after, before } from 'node:test';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants, createWriteStream } from 'node:fs';
import { access, mkdtemp, readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { createServer as createHttpServer } from 'node:http';
import { connect, createServer as createTcpServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import PusherClient from 'pusher-js';
import PusherServer from 'pusher';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

const HERALD_BIN = process.env.HERALD_BIN ?? join(repoRoot, 'target/debug/herald');

// `apiToken`: the app's bearer token for the gRPC API.
export const APP = Object.freeze({
  id: 'compat-app',
  key: 'compat-key',
  secret: 'compat-secret',
  apiToken: 'compat-api-token-0123456789',
});
export const DISABLED_APP = Object.freeze({
  id: 'disabled-app',
  key: 'disabled-key',
  secret: 'disabled-secret',
  apiToken: 'disabled-api-token-0123456789',
});

export const SHUTDOWN_GRACE_SECS = 2;
const READY_TIMEOUT_MS = 20_000;
const OUTPUT_TAIL_CHARS = 16_000;
const DEFAULT_TIMEOUT_MS = 5_000;

// ---------------------------------------------------------------------------
// Generic waiting helpers
// ---------------------------------------------------------------------------

/** Resolves with `promise`'s value, or rejects if it takes longer than `ms`. */
function withDeadline(promise, ms, what) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/** Polls `predicate` (sync or async) until it returns a truthy value, which is returned. */
export async function waitFor(predicate, { timeoutMs = DEFAULT_TIMEOUT_MS, what = 'condition', intervalMs = 10 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  for (;;) {
    try {
      const value = await predicate();
      if (value) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const cause = lastError ? ` (last error: ${lastError.message})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${cause}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/**
 * Waits for the next `event` on a pusher-js emitter (channel, connection, user)
 * whose arguments satisfy `filter`; resolves with the callback's arguments array.
 */
export function nextEvent(emitter, event, { timeoutMs = DEFAULT_TIMEOUT_MS, filter = () => true, what } = {}) {
  let listener;
  const received = new Promise((res) => {
    listener = (...args) => {
      if (filter(...args)) res(args);
    };
    emitter.bind(event, listener);
  });
  return withDeadline(received, timeoutMs, what ?? `'${event}'`).finally(() => emitter.unbind(event, listener));
}

/**
 * Waits for whichever of several `[emitter, event]` sources fires first;
 * resolves with `{ source, args }`, `source` being its index in `sources`.
 */
export function firstEvent(sources, { timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
  const bindings = [];
  const first = new Promise((res) => {
    sources.forEach(([emitter, event], source) => {
      const listener = (...args) => res({ source, args });
      emitter.bind(event, listener);
      bindings.push(() => emitter.unbind(event, listener));
    });
  });
  const names = sources.map(([, event]) => `'${event}'`).join(' or ');
  return withDeadline(first, timeoutMs, names).finally(() => bindings.forEach((unbind) => unbind()));
}

/** Records every `event` on a pusher-js emitter as `{ data, metadata }`. */
export function record(emitter, event) {
  const seen = [];
  emitter.bind(event, (data, metadata) => seen.push({ data, metadata }));
  return seen;
}

/** Records raw protocol frames (after JSON decoding by pusher-js) received by a client. */
export function recordFrames(client, predicate = () => true) {
  const frames = [];
  client.connection.bind('message', (frame) => {
    if (predicate(frame)) frames.push(frame);
  });
  return frames;
}

// ---------------------------------------------------------------------------
// pusher-js helpers
// ---------------------------------------------------------------------------

/**
 * pusher-js reports Herald's error codes in two shapes: a `pusher:error` frame
 * or a close code on an established connection arrives as
 * `{ type: 'PusherError', data: { code, message } }`; a refusal during the
 * handshake arrives wrapped as `{ type: 'WebSocketError', error: <that> }`.
 */
function errorCode(err) {
  return err?.data?.code ?? err?.error?.data?.code;
}

/** Records every connection-level error of a client as `{ type, code, message }`. */
export function recordErrors(client) {
  const errors = [];
  client.connection.bind('error', (err) => {
    const inner = err?.data ?? err?.error?.data ?? {};
    errors.push({ type: err?.type, code: errorCode(err), message: inner.message });
  });
  return errors;
}

/** Waits until the client's connection is in `state` (or one of several states). */
export async function waitForState(client, state, timeoutMs = DEFAULT_TIMEOUT_MS) {
  const states = [state].flat();
  if (states.includes(client.connection.state)) return;
  await nextEvent(client.connection, 'state_change', {
    timeoutMs,
    filter: ({ current }) => states.includes(current),
    what: `connection state ${states.join(' or ')} (still ${client.connection.state})`,
  });
}

/** Subscribes and resolves with the channel once Herald confirmed the subscription. */
export async function subscribe(client, channelName, timeoutMs = DEFAULT_TIMEOUT_MS) {
  const channel = client.subscribe(channelName);
  if (channel.subscribed) return channel;
  let onError;
  const failed = new Promise((_, reject) => {
    onError = (status) => reject(new Error(`subscription to ${channelName} failed: ${JSON.stringify(status)}`));
    channel.bind('pusher:subscription_error', onError);
  });
  try {
    await Promise.race([nextEvent(channel, 'pusher:subscription_succeeded', { timeoutMs }), failed]);
  } finally {
    channel.unbind('pusher:subscription_error', onError);
  }
  return channel;
}

/**
 * Sends `pusher:ping` and waits for Herald's `pusher:pong`. When it resolves,
 * Herald has processed every frame the client sent before, and the client has
 * received every frame Herald queued for it before answering.
 */
export async function roundTrip(client, timeoutMs = DEFAULT_TIMEOUT_MS) {
  const pong = nextEvent(client.connection, 'message', {
    timeoutMs,
    filter: (frame) => frame.event === 'pusher:pong',
  });
  if (!client.send_event('pusher:ping', {})) {
    pong.catch(() => {});
    throw new Error('could not send pusher:ping: client is not connected');
  }
  await pong;
}

// ---------------------------------------------------------------------------
// Herald process
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Ports
//
// Nothing here guesses a free port and hopes: Herald binds port 0 and reports the
// ports it got (`--ready-file`). Servers that cannot (redis-server --port 0 disables
// TCP; tansu advertises the port it listens on) are started on candidate ports and
// checked to listen on them themselves, through /proc, so an answer from another
// process on that port never passes for theirs; one that could not bind exits, and
// is started again on other candidates (`startOnPorts`).
// ---------------------------------------------------------------------------

/** `n` distinct candidate ports: bound together on 127.0.0.1:0, released on return. */
export async function candidatePorts(n) {
  const servers = await Promise.all(
    Array.from({ length: n }, () =>
      new Promise((res, reject) => {
        const server = createTcpServer();
        server.unref();
        server.on('error', reject);
        server.listen(0, '127.0.0.1', () => res(server));
      }),
    ),
  );
  const ports = servers.map((server) => server.address().port);
  await Promise.all(servers.map((server) => new Promise((res) => server.close(res))));
  return ports;
}

/** Whether process `pid` itself holds a TCP socket listening on `port` (Linux /proc). */
export async function listensOn(pid, port) {
  const inodes = new Set();
  for (const table of ['tcp', 'tcp6']) {
    const text = await readFile(`/proc/${pid}/net/${table}`, 'utf8').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
      const fields = line.trim().split(/\s+/);
      if (fields.length < 10 || fields[3] !== '0A') continue;
      if (parseInt(fields[1].split(':').pop(), 16) === port) inodes.add(fields[9]);
    }
  }
  if (inodes.size === 0) return false;
  const fds = await readdir(`/proc/${pid}/fd`).catch(() => []);
  for (const fd of fds) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    const inode = /^socket:\[(\d+)\]$/.exec(target)?.[1];
    if (inode && inodes.has(inode)) return true;
  }
  return false;
}

const START_ATTEMPTS = 8;

/**
 * Starts `command args(ports)` on `count` candidate ports until the process itself
 * listens on all of them and `ready(ports)` resolves truthy; a process that exits
 * first (a port was taken in the meantime) is started again on new candidates, up
 * to 8 times. Resolves with `{ ports, proc, output(), stop() }`; `stop()` sends
 * SIGTERM (SIGKILL after 5 s) and resolves once the process is gone. `candidates`
 * replaces `candidatePorts` (for a test of the retry).
 */
export async function startOnPorts({
  name,
  command,
  args,
  count = 1,
  options = {},
  ready = async () => true,
  candidates = candidatePorts,
}) {
  const failures = [];
  for (let attempt = 0; attempt < START_ATTEMPTS; attempt++) {
    const ports = await candidates(count);
    const proc = spawn(command, args(ports), { stdio: ['ignore', 'pipe', 'pipe'], ...options });
    let output = '';
    for (const stream of [proc.stdout, proc.stderr]) stream.on('data', (chunk) => (output = (output + chunk).slice(-8_000)));
    let exitStatus = null;
    const exited = new Promise((res) => {
      proc.on('error', (error) => res({ code: null, signal: null, error }));
      proc.on('close', (code, signal) => res({ code, signal }));
    });
    exited.then((status) => (exitStatus = status));
    const stop = async () => {
      if (exitStatus === null) proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    };
    let started;
    try {
      started = await waitFor(
        async () => {
          if (exitStatus !== null) return 'exited';
          for (const port of ports) if (!(await listensOn(proc.pid, port))) return false;
          return (await ready(ports)) && 'ready';
        },
        { timeoutMs: 20_000, intervalMs: 20, what: `${name} to listen on ${ports.join(', ')}` },
      );
    } catch (err) {
      await stop();
      err.message += `\n--- ${name} output ---\n${output}`;
      throw err;
    }
    if (started === 'ready') return { ports, proc, output: () => output, stop };
    await exited;
    if (exitStatus.error) throw new Error(`cannot start ${name} (${command}): ${exitStatus.error.message}`);
    failures.push(`ports ${ports.join(', ')}: exit ${JSON.stringify(exitStatus)}\n${output}`);
  }
  throw new Error(`${name} exited before listening, ${START_ATTEMPTS} times:\n${failures.join('\n')}`);
}

// Every listener is given a port (0 from `startHerald`: the kernel picks free ones,
// distinct by construction), the gRPC one too: Herald serves gRPC whenever it runs,
// and the default port would collide between test files run in parallel.
// Exported so that a test file can start Herald with this config plus sections
// of its own (see `startHerald`).
export function heraldConfig({ port, metricsPort, grpcPort }) {
  return `[server]
host = "127.0.0.1"
port = ${port}
metrics_port = ${metricsPort}
shutdown_grace_secs = ${SHUTDOWN_GRACE_SECS}

[grpc]
port = ${grpcPort}

[[apps]]
id = "${APP.id}"
key = "${APP.key}"
secret = "${APP.secret}"
enable_client_events = true
api_tokens = ["${APP.apiToken}"]

[[apps]]
id = "${DISABLED_APP.id}"
key = "${DISABLED_APP.key}"
secret = "${DISABLED_APP.secret}"
enabled = false
api_tokens = ["${DISABLED_APP.apiToken}"]
`;
}

/**
 * The environment for Herald: ours minus every HERALD_* variable. Herald reads
 * those as config overrides (and rejects unknown ones), while the config file
 * written here must be the whole truth; HERALD_BIN, for one, is ours.
 */
function heraldEnv() {
  return Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('HERALD_')));
}

/**
 * Starts `herald <command>` (default `dev`) with every port 0, reads the ports it
 * bound from its ready file (`--ready-file`, written once every listener is bound)
 * and waits until /readyz answers 200. `config({ port, metricsPort, grpcPort })`
 * returns the config file's text (default `heraldConfig`); it is given zeros. Herald's output goes to a log
 * file in a temp dir, which is kept (and its path printed) when
 * COMPAT_KEEP_LOGS=1; a failed start-up reports its tail.
 *
 * `useHerald` does all of this for a test file with one Herald; a test file
 * that needs several (e.g. `herald edge` nodes of one cluster) calls this
 * itself and must `stop()` each one in its `after` hook.
 */
export async function startHerald({ command = 'dev', config = heraldConfig } = {}) {
  await access(HERALD_BIN, constants.X_OK).catch(() => {
    throw new Error(`no executable Herald at ${HERALD_BIN}: build it (cargo build) or set HERALD_BIN`);
  });
  const workDir = await mkdtemp(join(tmpdir(), 'herald-compat-'));
  const configPath = join(workDir, 'herald.toml');
  const logPath = join(workDir, 'herald.log');
  const readyPath = join(workDir, 'ready.json');
  await writeFile(configPath, config({ port: 0, metricsPort: 0, grpcPort: 0 }));

  const log = createWriteStream(logPath);
  let output = '';
  const proc = spawn(HERALD_BIN, [command, '--config', configPath, '--ready-file', readyPath], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: heraldEnv(),
  });
  for (const stream of [proc.stdout, proc.stderr]) {
    stream.on('data', (chunk) => {
      output = (output + chunk).slice(-OUTPUT_TAIL_CHARS);
      log.write(chunk);
    });
  }

  // 'close' rather than 'exit': it fires once Herald's output is fully read.
  const exited = new Promise((res) => {
    proc.on('error', (error) => res({ code: null, signal: null, error }));
    proc.on('close', (code, signal) => res({ code, signal }));
  });
  let exitStatus = null;
  exited.then((status) => (exitStatus = status));

  let stopping = null;
  const terminate = async (timeoutMs) => {
    if (exitStatus === null) proc.kill('SIGTERM');
    try {
      return await withDeadline(exited, timeoutMs, 'herald to exit after SIGTERM');
    } catch (err) {
      proc.kill('SIGKILL');
      throw err;
    } finally {
      await new Promise((r) => log.end(r));
      if (process.env.COMPAT_KEEP_LOGS === '1') {
        console.error(`herald log kept at ${logPath}`);
      } else {
        await rm(workDir, { recursive: true, force: true });
      }
    }
  };

  // Filled from the ready file: `port` (WebSocket + HTTP API) and `grpcPort` stay
  // undefined for `herald dispatcher`, which has neither.
  const herald = {
    port: undefined,
    grpcPort: undefined,
    metricsPort: undefined,
    /** The output Herald has written so far (its last 16,000 characters). */
    output: () => output,
    /**
     * Sends SIGKILL (a crash: no graceful shutdown) unless Herald already
     * exited, and resolves with its exit status once it is gone. `stop()` is
     * still needed afterwards to clean up its temp dir.
     */
    kill(timeoutMs = 10_000) {
      if (exitStatus === null) proc.kill('SIGKILL');
      return withDeadline(exited, timeoutMs, 'herald to exit after SIGKILL');
    },
    /**
     * Sends SIGTERM (unless Herald already exited) and resolves with its exit
     * status `{ code, signal }`; SIGKILLs and rejects after `timeoutMs`.
     * Idempotent: later calls return the first call's result.
     */
    stop(timeoutMs = (SHUTDOWN_GRACE_SECS + 10) * 1000) {
      stopping ??= terminate(timeoutMs);
      return stopping;
    },
  };

  try {
    // A Herald that dies during start-up ends the wait at once instead of
    // letting it run into the deadline.
    const ready = await waitFor(
      async () => {
        if (exitStatus !== null) return 'exited';
        if (herald.metricsPort === undefined) {
          // Written atomically (renamed into place): absent, or whole.
          const bound = JSON.parse(await readFile(readyPath, 'utf8'));
          if (bound.pid !== proc.pid) throw new Error(`ready file of pid ${bound.pid}, not ${proc.pid}`);
          const portOf = (address) => (address === undefined ? undefined : Number(address.split(':').pop()));
          Object.assign(herald, { port: portOf(bound.ws), grpcPort: portOf(bound.grpc), metricsPort: portOf(bound.metrics) });
        }
        const res = await fetch(`http://127.0.0.1:${herald.metricsPort}/readyz`);
        await res.arrayBuffer();
        return res.status === 200 && 'ready';
      },
      { timeoutMs: READY_TIMEOUT_MS, intervalMs: 50, what: `${HERALD_BIN} /readyz to return 200` },
    );
    if (ready === 'exited') {
      const { code, signal, error } = exitStatus;
      throw new Error(`herald exited during start-up (code ${code}, signal ${signal}${error ? `, ${error.message}` : ''})`);
    }
  } catch (err) {
    await herald.stop().catch(() => {});
    err.message += `\n--- herald output ---\n${output}`;
    throw err;
  }
  return herald;
}

// ---------------------------------------------------------------------------
// Auth endpoint (official `pusher` SDK only)
// ---------------------------------------------------------------------------

/** The presence `user_info` / user-auth data the auth server issues for a user id. */
export function userInfo(userId) {
  return { name: `User ${userId}` };
}

/**
 * Starts a node:http server playing the customer's backend:
 *  - POST /pusher/auth       channel authorization, signed with the app secret
 *  - POST /pusher/bad-auth   same, but signed with a wrong secret
 *  - POST /pusher/user-auth  user authentication for pusher.signin()
 *  - POST /pusher/bad-user-auth  same, but signed with a wrong secret
 * The requesting user is the `user_id` form parameter, which each pusher-js
 * client sends through its `params` option. Signatures come solely from the
 * SDK's authorizeChannel() and authenticateUser().
 */
export async function startAuthServer(app, encryptionMasterKeyBase64) {
  const signer = new PusherServer({ appId: app.id, key: app.key, secret: app.secret, encryptionMasterKeyBase64 });
  const impostor = new PusherServer({
    appId: app.id,
    key: app.key,
    secret: `not-${app.secret}`,
    encryptionMasterKeyBase64,
  });

  const authorizeChannel = (sdk, form) => {
    const socketId = form.get('socket_id');
    const channel = form.get('channel_name');
    if (!channel.startsWith('presence-')) return sdk.authorizeChannel(socketId, channel);
    const userId = form.get('user_id');
    if (!userId) throw new Error('presence channels need a user_id');
    return sdk.authorizeChannel(socketId, channel, { user_id: userId, user_info: userInfo(userId) });
  };

  const authenticateUser = (sdk, form) => {
    const userId = form.get('user_id');
    if (!userId) throw new Error('user authentication needs a user_id');
    // The users it watches, when the client asked for any (`watchlist=a,b`).
    const watchlist = form.get('watchlist');
    const extra = watchlist ? { watchlist: watchlist.split(',') } : {};
    return sdk.authenticateUser(form.get('socket_id'), { id: userId, ...userInfo(userId), ...extra });
  };

  const routes = {
    '/pusher/auth': (form) => authorizeChannel(signer, form),
    '/pusher/bad-auth': (form) => authorizeChannel(impostor, form),
    '/pusher/user-auth': (form) => authenticateUser(signer, form),
    '/pusher/bad-user-auth': (form) => authenticateUser(impostor, form),
  };

  const server = createHttpServer(async (req, res) => {
    const route = routes[req.url];
    if (req.method !== 'POST' || !route) {
      res.writeHead(404).end();
      return;
    }
    let body = '';
    for await (const chunk of req) body += chunk;
    try {
      const payload = JSON.stringify(route(new URLSearchParams(body)));
      res.writeHead(200, { 'content-type': 'application/json' }).end(payload);
    } catch (err) {
      res.writeHead(403, { 'content-type': 'application/json' }).end(JSON.stringify({ error: err.message }));
    }
  });
  await new Promise((res) => server.listen(0, '127.0.0.1', res));
  const { port } = server.address();

  return {
    port,
    url: (path) => `http://127.0.0.1:${port}${path}`,
    close: () =>
      new Promise((res) => {
        server.closeAllConnections();
        server.close(res);
      }),
  };
}

/** `config` (a config text from `heraldConfig`) with `line` (`key = value`) added to the compat app's table. */
export function withAppOption(config, line) {
  const anchor = `api_tokens = ["${APP.apiToken}"]\n`;
  if (config.split(anchor).length !== 2) throw new Error(`heraldConfig changed: no single line ${anchor.trim()}`);
  return config.replace(anchor, `${anchor}${line}\n`);
}

/**
 * `config` (a config text from `heraldConfig`) with history for the compat app's
 * channels matching `channels`. TOML attaches `[[apps.history]]` to the last
 * `[[apps]]` above it, so it goes right after the compat app's table (which ends
 * with its api_tokens line), not at the end, where the disabled app's table is.
 */
export function withHistory(config, { channels = 'history-*', size = 100, ttl = '5m' } = {}) {
  const anchor = `api_tokens = ["${APP.apiToken}"]\n`;
  if (config.split(anchor).length !== 2) throw new Error(`heraldConfig changed: no single line ${anchor.trim()}`);
  return config.replace(
    anchor,
    `${anchor}
[[apps.history]]
channels = "${channels}"
size = ${size}
ttl = "${ttl}"
`,
  );
}

// ---------------------------------------------------------------------------
// A proxy the test controls
// ---------------------------------------------------------------------------

/**
 * A TCP proxy on 127.0.0.1 in front of port `target` (`proxy.target` can be
 * changed: the next connections go there). `cut()` destroys both sides of
 * every connection it carries. After `hold()`, new connections are accepted
 * but left unanswered (their bytes wait in the socket) until `release()`
 * sends them on.
 */
export async function startProxy(target) {
  const carried = new Set();
  const waiting = new Set();
  let holding = false;

  const forward = (client) => {
    const upstream = connect({ host: '127.0.0.1', port: proxy.target });
    const pair = { client, upstream };
    carried.add(pair);
    const close = () => {
      client.destroy();
      upstream.destroy();
      carried.delete(pair);
    };
    for (const socket of [client, upstream]) socket.on('error', close).on('close', close);
    client.pipe(upstream);
    upstream.pipe(client);
  };

  const server = createTcpServer((client) => {
    if (!holding) {
      forward(client);
      return;
    }
    client.pause();
    waiting.add(client);
    client.on('error', () => client.destroy());
    client.on('close', () => waiting.delete(client));
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });

  const proxy = {
    port: server.address().port,
    target,
    /** Connections accepted and not yet sent on. */
    waiting: () => waiting.size,
    hold() {
      holding = true;
    },
    release() {
      holding = false;
      for (const client of waiting) forward(client);
      waiting.clear();
    },
    cut() {
      for (const { client, upstream } of carried) {
        client.destroy();
        upstream.destroy();
      }
      carried.clear();
    },
    close() {
      proxy.cut();
      for (const client of waiting) client.destroy();
      waiting.clear();
      return new Promise((resolve) => server.close(resolve));
    },
  };
  return proxy;
}

/**
 * Takes the client behind `proxy` away while `whileAway()` runs: cuts its
 * connection and holds the reconnection pusher-js starts; once pusher-js is
 * seen trying again (so it has noticed the loss), `whileAway` runs, then the
 * reconnection goes through.
 */
export async function outage(proxy, whileAway) {
  proxy.hold();
  proxy.cut();
  await waitFor(() => proxy.waiting() >= 1, { what: 'pusher-js to try to reconnect' });
  await whileAway();
  proxy.release();
}

// ---------------------------------------------------------------------------
// Per-file environment
// ---------------------------------------------------------------------------

/**
 * Registers `before`/`after` hooks that give the calling test file its own
 * Herald, auth server and encryption master key, and returns the environment.
 * `config(ports)`, if given, returns Herald's config file (default `heraldConfig`);
 * `command` is the role to run (default `dev`).
 * `setup(env)`, if given, runs once Herald is ready (a separate top-level
 * `before` would not be ordered after this one). Clients created through the
 * environment are disconnected in `after`, so node can exit.
 */
export function useHerald({ setup, config, command } = {}) {
  const env = new CompatEnv({ config, command });
  before(async () => {
    await env.start();
    await setup?.(env);
  });
  after(() => env.stop());
  return env;
}

export class CompatEnv {
  herald = null;
  auth = null;
  clients = new Set();
  sockets = new Set();
  masterKeyBase64 = randomBytes(32).toString('base64');

  /** `config`: the config file's text for given ports (default `heraldConfig`). */
  constructor({ config, command = 'dev' } = {}) {
    this.config = config;
    this.command = command;
  }

  async start() {
    this.herald = await startHerald({ command: this.command, ...(this.config ? { config: this.config } : {}) });
    this.auth = await startAuthServer(APP, this.masterKeyBase64);
  }

  async stop() {
    this.disconnectAll();
    await this.auth?.close();
    await this.herald?.stop();
  }

  /**
   * A pusher-js client configured the way a browser app would be. `userId`
   * is sent to the auth endpoints; `authPath` and `userAuthPath` pick the
   * channel authorization and user authentication endpoints. The client
   * starts connecting immediately.
   */
  client({ key = APP.key, userId, watchlist, authPath = '/pusher/auth', userAuthPath = '/pusher/user-auth' } = {}) {
    const params = userId === undefined ? {} : { user_id: userId };
    if (watchlist) params.watchlist = watchlist.join(',');
    const client = new PusherClient(key, {
      wsHost: '127.0.0.1',
      wsPort: this.herald.port,
      forceTLS: false,
      enabledTransports: ['ws'],
      cluster: 'mt1',
      disableStats: true,
      channelAuthorization: { endpoint: this.auth.url(authPath), transport: 'ajax', params },
      userAuthentication: { endpoint: this.auth.url(userAuthPath), transport: 'ajax', params },
    });
    this.clients.add(client);
    client.connection.bind('connected', () => this.sockets.add(client.connection.connection.transport.socket));
    return client;
  }

  /**
   * A pusher-js client like `client()`, connecting through 127.0.0.1:`port` (a
   * proxy in front of Herald) instead of to Herald itself.
   */
  clientVia(port) {
    const client = new PusherClient(APP.key, {
      wsHost: '127.0.0.1',
      wsPort: port,
      forceTLS: false,
      enabledTransports: ['ws'],
      cluster: 'mt1',
      disableStats: true,
      channelAuthorization: { endpoint: this.auth.url('/pusher/auth'), transport: 'ajax' },
    });
    this.clients.add(client);
    client.connection.bind('connected', () => this.sockets.add(client.connection.connection.transport.socket));
    return client;
  }

  /** A client that has reached the 'connected' state. */
  async connectedClient(options) {
    const client = this.client(options);
    await waitForState(client, 'connected');
    return client;
  }

  /**
   * A client signed in (pusher:signin) as `userId`. After
   * pusher:signin_success pusher-js subscribes to `#server-to-user-<id>`; the
   * user is ready for server-to-user events and termination once Herald
   * confirmed that subscription.
   */
  async signedInClient(userId) {
    const client = await this.connectedClient({ userId });
    const success = nextEvent(client.connection, 'message', {
      filter: (frame) => frame.event === 'pusher:signin_success',
    });
    client.signin();
    await success;
    await waitFor(() => client.user.serverToUserChannel?.subscribed, {
      what: `Herald to confirm the #server-to-user-${userId} subscription`,
    });
    return client;
  }

  /** Disconnects every client created through this environment. */
  disconnectAll() {
    for (const client of this.clients) client.disconnect();
    this.clients.clear();
    // When the server closes an established connection with a 40xx code,
    // pusher-js calls close() on the already closed faye-websocket socket,
    // which arms a 30 s close timer nothing ever clears. It is harmless, but
    // it would keep this test process alive for 30 s.
    for (const socket of this.sockets) clearTimeout(socket._closeTimer);
    this.sockets.clear();
  }

  /** Disconnects a client and forgets it. */
  disconnect(client) {
    client.disconnect();
    this.clients.delete(client);
  }

  /** The official server SDK pointed at Herald's HTTP API. */
  sdk({ secret = APP.secret } = {}) {
    return new PusherServer({
      appId: APP.id,
      key: APP.key,
      secret,
      host: '127.0.0.1',
      port: String(this.herald.port),
      useTLS: false,
      encryptionMasterKeyBase64: this.masterKeyBase64,
    });
  }

  /**
   * Publishes a uniquely tagged `compat-sentinel` event on `channelName` and
   * waits until each of `channels` (pusher-js channel objects of that name,
   * one per client) has received it. Herald keeps each channel ordered, so
   * after this anything published on the channel earlier has been delivered.
   */
  async sentinel(channelName, channels) {
    const tag = randomBytes(8).toString('hex');
    const arrivals = channels.map((channel) =>
      nextEvent(channel, 'compat-sentinel', { filter: (data) => data?.tag === tag }),
    );
    await Promise.all([this.sdk().trigger(channelName, 'compat-sentinel', { tag }), ...arrivals]);
  }
}
