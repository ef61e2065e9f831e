// Shared plumbing for the fault tests: real services on fixed loopback addresses and
// ports, real partitions made with nftables, all inside the network namespace that
// scripts/faults.sh creates for each test file (and deletes afterwards).
//
//   scripts/faults.sh                        every tests/faults/*.test.mjs
//   scripts/faults.sh tests/faults/x.test.mjs  one file
//
// Importing this module refuses to run anywhere else: the rules below would
// otherwise land in the host's firewall and the fixed ports would collide.
//
// How a partition is made. Inside the namespace every 127.x.y.z address reaches
// `lo`, so a service can listen on several addresses (redis `--bind 127.0.0.1
// 127.0.0.2`, or 0.0.0.0) and each client process can be pointed at its own.
// `cut({ addr, port })` drops, in the namespace's output hook, every packet to
// addr:port and every packet from it: connections on that path hang (no RST, no
// FIN, exactly what a partition looks like), while the same server stays reachable
// through its other addresses. Kafka needs more: a client learns the broker's
// advertised address from the metadata and then connects there, whatever address
// it bootstrapped from. So every process started here runs with a group id of its
// own, and `cut({ from: proc, port })` drops what that process sends to the port
// (one direction: its requests never arrive, so no reply ever comes).
//
// Waiting is always for a condition with a deadline (`eventually`), never a fixed
// sleep. Services keep their output (the tail goes into failure messages; all of
// it into a log file in the file's work dir, kept with HERALD_FAULTS_KEEP_LOGS=1).
import { after } from 'node:test';
import { execFile as execFileCb, execFileSync, spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { APP, startAuthServer, waitFor } from '../compat/harness.mjs';

export { APP };

const execFile = promisify(execFileCb);
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

// The compatibility suite's npm packages (scripts/install-node-deps.sh installs them).
const compatRequire = createRequire(join(repoRoot, 'tests/compat/package.json'));
export const PusherServer = compatRequire('pusher');
export const PusherClient = compatRequire('pusher-js');
export const { Webhook } = compatRequire('standardwebhooks');

// ---------------------------------------------------------------------------
// The namespace guard
// ---------------------------------------------------------------------------

/** The network namespace this file runs in (scripts/faults.sh made it for this file). */
export const NETNS = process.env.HERALD_FAULTS_NETNS ?? '';
{
  const refuse = (why) => {
    throw new Error(`${why}: fault tests only run inside the network namespace scripts/faults.sh creates for them (scripts/faults.sh ${process.argv[1] ?? ''})`);
  };
  if (!/^herald-f-\d+-\d+$/.test(NETNS)) refuse('HERALD_FAULTS_NETNS is not set');
  let current = '';
  try {
    current = execFileSync('ip', ['netns', 'identify', String(process.pid)], { encoding: 'utf8' }).trim();
  } catch (err) {
    refuse(`cannot tell which network namespace this is (${err.message.trim()})`);
  }
  if (current !== NETNS) refuse(`this process is in network namespace '${current}', not '${NETNS}'`);
}

const HERALD_BIN = process.env.HERALD_BIN ?? join(repoRoot, 'target/debug/herald');
const REDIS_SERVER = process.env.REDIS_SERVER ?? 'redis-server';
const TANSU = process.env.TANSU ?? 'tansu';
const KEEP_LOGS = process.env.HERALD_FAULTS_KEEP_LOGS === '1';
const OUTPUT_TAIL_CHARS = 16_000;
const FAILURE_TAIL_CHARS = 3_000;
const START_TIMEOUT_MS = 30_000;

/** This file's work dir: configs, logs, storage. */
export const workDir = await mkdtemp(join(tmpdir(), 'herald-faults-'));

// ---------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------

/**
 * Polls `predicate` (sync or async) until it returns a truthy value, and returns
 * that value. After `timeoutMs` it throws, naming `what`, the predicate's last
 * error, and the tail of every service's output.
 */
export async function eventually(predicate, { timeoutMs = 30_000, what = 'condition', intervalMs = 50 } = {}) {
  try {
    return await waitFor(predicate, { timeoutMs, what, intervalMs });
  } catch (err) {
    err.message += servicesOutput();
    throw err;
  }
}

/** Resolves with `promise`'s value, or rejects if it takes longer than `ms`. */
export function withDeadline(promise, ms, what) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------
// Partitions (nftables, inside this namespace only)
// ---------------------------------------------------------------------------

const TABLE = 'herald_faults';
const CHAIN = 'out';
let chainReady = false;

async function nft(...args) {
  try {
    const { stdout } = await execFile('nft', args, { encoding: 'utf8' });
    return stdout;
  } catch (err) {
    throw new Error(`nft ${args.join(' ')} failed: ${err.stderr || err.message}`);
  }
}

async function ensureChain() {
  if (chainReady) return;
  await nft('add', 'table', 'inet', TABLE);
  await nft('add', 'chain', 'inet', TABLE, CHAIN, '{ type filter hook output priority 0 ; policy accept ; }');
  chainReady = true;
}

async function addRule(match) {
  const echoed = await nft('--echo', '--handle', 'add', 'rule', 'inet', TABLE, CHAIN, ...match, 'drop');
  const handle = /# handle (\d+)/.exec(echoed)?.[1];
  if (!handle) throw new Error(`nft did not report the handle of the rule '${match.join(' ')}': ${echoed}`);
  return handle;
}

/**
 * Cuts a path: from then on its packets are silently dropped (TCP connections on it
 * hang; new ones never get an answer). Resolves with `{ heal() }`, which removes
 * exactly the rules of this cut; `heal()` (below) removes all of them.
 *
 * - `{ addr, port }`: every packet to addr:port and every packet from addr:port,
 *   i.e. both directions of every connection to that listener through that
 *   address. Either may be left out (all ports of the address, all addresses of
 *   the port).
 * - `{ from, addr?, port? }`: what the process `from` (a handle from this module,
 *   or a group id) sends there; one direction, which is enough for a request and
 *   response protocol such as Kafka's or HTTP: no request arrives, no reply comes.
 *   For pushed data (Redis pub/sub) use an address cut.
 */
export async function cut({ addr, port, from } = {}) {
  if (addr === undefined && port === undefined && from === undefined) throw new Error('cut: nothing to cut');
  await ensureChain();
  const to = [...(addr ? ['ip', 'daddr', addr] : []), ...(port ? ['tcp', 'dport', String(port)] : [])];
  const back = [...(addr ? ['ip', 'saddr', addr] : []), ...(port ? ['tcp', 'sport', String(port)] : [])];
  const handles = [];
  if (from !== undefined) {
    const gid = typeof from === 'number' ? from : from.gid;
    if (!Number.isInteger(gid)) throw new Error('cut: `from` must be a process started by this module, or a group id');
    handles.push(await addRule(['meta', 'skgid', String(gid), ...to]));
  } else {
    handles.push(await addRule(to));
    handles.push(await addRule(back));
  }
  let healed = false;
  return {
    async heal() {
      if (healed) return;
      healed = true;
      for (const handle of handles) {
        await nft('delete', 'rule', 'inet', TABLE, CHAIN, 'handle', handle).catch((err) => {
          // heal() (all) may have flushed the chain already.
          if (!/No such file|does not exist/i.test(err.message)) throw err;
        });
      }
    },
  };
}

/** Removes every rule this file added: every path heals. */
export async function heal() {
  if (chainReady) await nft('flush', 'chain', 'inet', TABLE, CHAIN);
}

/** The rules in force, as nft lists them (for failure messages). */
export async function rules() {
  return chainReady ? nft('-a', 'list', 'chain', 'inet', TABLE, CHAIN) : '(none)';
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

const services = new Set();
// Run when the file ends, after its services are gone (receivers, clients).
const closers = [];
let nextGid = 47_000;

/** The tail of every service's output, for failure messages. */
export function servicesOutput() {
  let text = '';
  for (const service of services) {
    const tail = service.output().slice(-FAILURE_TAIL_CHARS);
    text += `\n--- ${service.name} (${service.running ? `pid ${service.pid}` : 'not running'}) ---\n${tail}`;
  }
  return text;
}

/** Sends SIGSTOP to a service (or any `{ pid }`): it freezes, its sockets stay open. */
export function sigstop(proc) {
  process.kill(proc.pid, 'SIGSTOP');
}

/** Sends SIGCONT: a stopped service resumes. */
export function sigcont(proc) {
  process.kill(proc.pid, 'SIGCONT');
}

/** Resolves true once something accepts a TCP connection on host:port, false if refused. */
export function accepts(host, port) {
  return new Promise((res) => {
    const socket = connect({ host, port }, () => {
      socket.destroy();
      res(true);
    });
    socket.setTimeout(1_000, () => {
      socket.destroy();
      res(false);
    });
    socket.on('error', () => res(false));
  });
}

/**
 * A process of a service: started by `start()` (which waits until `ready()`
 * holds), killed, stopped and started again on the same command line. Each
 * service has a group id of its own (see `cut({ from })`).
 */
class Service {
  constructor(name, command, args, { env = process.env, cwd = '/', ready }) {
    this.name = name;
    this.program = command;
    this.args = args;
    this.env = env;
    this.cwd = cwd;
    this.isReady = ready;
    this.gid = nextGid++;
    this.proc = null;
    this.tail = '';
    this.exited = null;
    this.exitStatus = null;
    this.logPath = join(workDir, `${name}.log`);
    this.log = null;
    services.add(this);
  }

  get pid() {
    return this.proc?.pid;
  }

  get running() {
    return this.proc !== null && this.exitStatus === null;
  }

  /** The service's output so far (its last 16,000 characters, over all its runs). */
  output() {
    return this.tail;
  }

  /** Starts the process and waits until it is ready (throws with its output if not). */
  async start(timeoutMs = START_TIMEOUT_MS) {
    if (this.running) throw new Error(`${this.name} is already running (pid ${this.pid})`);
    this.log ??= createWriteStream(this.logPath, { flags: 'a' });
    const proc = spawn(this.program, this.args, {
      cwd: this.cwd,
      env: this.env,
      gid: this.gid,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    this.exitStatus = null;
    const note = `=== ${new Date().toISOString()} start: ${this.program} ${this.args.join(' ')}\n`;
    this.tail = (this.tail + note).slice(-OUTPUT_TAIL_CHARS);
    this.log.write(note);
    for (const stream of [proc.stdout, proc.stderr]) {
      stream.on('data', (chunk) => {
        this.tail = (this.tail + chunk).slice(-OUTPUT_TAIL_CHARS);
        this.log.write(chunk);
      });
    }
    // 'close' rather than 'exit': it fires once the output is fully read.
    this.exited = new Promise((res) => {
      proc.on('error', (error) => res({ code: null, signal: null, error }));
      proc.on('close', (code, signal) => res({ code, signal }));
    }).then((status) => {
      if (this.proc === proc) this.exitStatus = status;
      return status;
    });
    try {
      // A process that dies during start-up ends the wait at once.
      const ready = await eventually(async () => (this.exitStatus !== null ? 'exited' : this.isReady(this)), {
        timeoutMs,
        what: `${this.name} to be ready`,
        intervalMs: 50,
      });
      if (ready === 'exited') {
        const { code, signal, error } = this.exitStatus;
        throw new Error(`${this.name} exited during start-up (code ${code}, signal ${signal}${error ? `, ${error.message}` : ''})`);
      }
    } catch (err) {
      await this.kill().catch(() => {});
      err.message += `\n--- ${this.name} output ---\n${this.tail.slice(-FAILURE_TAIL_CHARS)}`;
      throw err;
    }
    return this;
  }

  /** Sends `signal` (default SIGKILL: a crash) and resolves with the exit status once it is gone. */
  async kill(signal = 'SIGKILL', timeoutMs = 10_000) {
    if (!this.running) return this.exitStatus;
    this.proc.kill(signal);
    return withDeadline(this.exited, timeoutMs, `${this.name} to exit after ${signal}`);
  }

  /** SIGTERM (a graceful stop), then SIGKILL after `timeoutMs`. Resolves with the exit status. */
  async stop(timeoutMs = 10_000) {
    if (!this.running) return this.exitStatus;
    try {
      return await this.kill('SIGTERM', timeoutMs);
    } catch {
      return this.kill('SIGKILL');
    }
  }

  /** kill -9, then the same command again (same ports, same storage). */
  async restart() {
    await this.kill();
    return this.start();
  }

  async close() {
    await this.kill('SIGKILL').catch(() => {});
    services.delete(this);
    await new Promise((r) => (this.log ? this.log.end(r) : r()));
  }
}

/**
 * Starts any other program as a service (output kept, a group id of its own for
 * `cut({ from })`, killed when the file ends) and waits until `ready(service)`
 * holds (e.g. `(s) => s.output().includes('listening')`).
 */
export function startProcess(name, command, args, { ready = () => true, env, cwd } = {}) {
  return new Service(name, command, args, { ready, env, cwd }).start();
}

after(async () => {
  await heal().catch(() => {});
  for (const service of [...services].reverse()) await service.close();
  for (const close of closers.reverse()) await close().catch(() => {});
  if (KEEP_LOGS) console.error(`fault test work dir kept at ${workDir}`);
  else await rm(workDir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

function encodeCommand(args) {
  const parts = [`*${args.length}\r\n`];
  for (const arg of args) {
    const value = String(arg);
    parts.push(`$${Buffer.byteLength(value)}\r\n${value}\r\n`);
  }
  return parts.join('');
}

/** Parses one RESP reply at `offset`; returns `[value, next]`, or null when incomplete. */
function parseReply(buf, offset = 0) {
  const end = buf.indexOf('\r\n', offset);
  if (end < 0) return null;
  const type = String.fromCharCode(buf[offset]);
  const line = buf.toString('utf8', offset + 1, end);
  const next = end + 2;
  switch (type) {
    case '+':
      return [line, next];
    case '-':
      return [new RedisError(line), next];
    case ':':
      return [Number(line), next];
    case '$': {
      const len = Number(line);
      if (len < 0) return [null, next];
      if (buf.length < next + len + 2) return null;
      return [buf.toString('utf8', next, next + len), next + len + 2];
    }
    case '*': {
      const count = Number(line);
      if (count < 0) return [null, next];
      const items = [];
      let at = next;
      for (let i = 0; i < count; i++) {
        const item = parseReply(buf, at);
        if (!item) return null;
        items.push(item[0]);
        at = item[1];
      }
      return [items, at];
    }
    default:
      throw new Error(`unexpected RESP reply type '${type}'`);
  }
}

class RedisError extends Error {}

/**
 * Sends one command to the Redis at host:port on a new connection and resolves with
 * its reply (a Redis error reply rejects). Strings, numbers, arrays, null.
 */
export function redisCommand(host, port, args, { timeoutMs = 5_000 } = {}) {
  return new Promise((res, reject) => {
    let buf = Buffer.alloc(0);
    const socket = connect({ host, port }, () => socket.write(encodeCommand(args)));
    socket.setTimeout(timeoutMs, () => {
      socket.destroy();
      reject(new Error(`redis ${host}:${port} ${args[0]}: no reply within ${timeoutMs} ms`));
    });
    socket.on('error', reject);
    socket.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      let parsed;
      try {
        parsed = parseReply(buf);
      } catch (err) {
        socket.destroy();
        return reject(err);
      }
      if (!parsed) return;
      socket.destroy();
      if (parsed[0] instanceof RedisError) reject(parsed[0]);
      else res(parsed[0]);
    });
  });
}

/**
 * Starts redis-server on `port`, listening on each address of `bind` (give each
 * client process its own address to cut its path alone). `save` is redis's
 * `--save` ('' = no snapshots); `appendonly` turns the AOF on (fsync always).
 * The handle: `url(addr)`, `command(args, addr?)`, `kill()` (SIGKILL),
 * `start()`, `restart({ empty })` (same port; `empty: true` removes the data files
 * first, so it comes back empty even with persistence), `stop()`, `output()`,
 * `pid`, `gid`.
 */
export async function startRedis({ port, bind = ['127.0.0.1'], save = '', appendonly = false, name = `redis-${port}` } = {}) {
  if (!port) throw new Error('startRedis: a port is required');
  const dir = join(workDir, name);
  await mkdir(dir, { recursive: true });
  const args = [
    '--port', String(port),
    '--bind', ...bind,
    '--save', save,
    '--appendonly', appendonly ? 'yes' : 'no',
    '--appendfsync', 'always',
    '--dir', dir,
    '--dbfilename', 'dump.rdb',
    '--protected-mode', 'no',
  ];
  const service = new Service(name, REDIS_SERVER, args, {
    ready: async () => (await redisCommand(bind[0] === '0.0.0.0' ? '127.0.0.1' : bind[0], port, ['PING'])) === 'PONG',
  });
  const host = bind[0] === '0.0.0.0' ? '127.0.0.1' : bind[0];
  Object.assign(service, {
    port,
    bind,
    dir,
    url: (addr = host) => `redis://${addr}:${port}/`,
    command: (commandArgs, addr = host) => redisCommand(addr, port, commandArgs),
    async restart({ empty = false } = {}) {
      await service.kill();
      if (empty) {
        await rm(dir, { recursive: true, force: true });
        await mkdir(dir, { recursive: true });
      }
      return service.start();
    },
  });
  return service.start();
}

// ---------------------------------------------------------------------------
// tansu (a Kafka-protocol broker)
// ---------------------------------------------------------------------------

/**
 * Starts tansu on `bind`:`port`, advertising `advertise`:`port` (clients connect
 * there after their first metadata request, whatever address they bootstrapped
 * from). `storage`: 'memory' (lost when it stops) or 'sqlite' (a file in the work
 * dir: topics, records and committed offsets survive `restart()`, as with a real
 * Kafka). Herald creates its topics itself. The handle: `brokers` (for
 * `[kafka] brokers`), `kill()`, `start()`, `restart()`, `stop()`, `output()`, `pid`, `gid`.
 */
export async function startTansu({ port = 9092, bind = '0.0.0.0', advertise = '127.0.0.1', storage = 'memory', name = `tansu-${port}` } = {}) {
  const engine = {
    memory: 'memory://tansu/',
    // tansu opens the file relative to its working directory whatever the URL
    // says; it runs in / (below), so the absolute path means what it says.
    sqlite: `sqlite://${join(workDir, `${name}.db`)}`,
  }[storage];
  if (!engine) throw new Error(`startTansu: storage must be 'memory' or 'sqlite', not ${storage}`);
  const args = [
    'broker',
    '--listener-url', `tcp://${bind}:${port}`,
    '--advertised-listener-url', `tcp://${advertise}:${port}`,
    '--storage-engine', engine,
  ];
  const service = new Service(name, TANSU, args, { cwd: '/', ready: () => accepts(advertise, port) });
  Object.assign(service, { port, advertise, brokers: `${advertise}:${port}` });
  return service.start();
}

// ---------------------------------------------------------------------------
// Herald
// ---------------------------------------------------------------------------

/** Herald's environment: ours minus HERALD_* (Herald reads those as config overrides). */
function heraldEnv() {
  return Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('HERALD_')));
}

/** `[server]`, `[grpc]` and the test app, around `toml` (the caller's own sections). */
export function heraldToml({ host = '127.0.0.1', port, metricsPort, grpcPort, server = '', toml = '' }) {
  return `[server]
host = "${host}"
${port ? `port = ${port}\n` : ''}metrics_port = ${metricsPort}
shutdown_grace_secs = 2
${server}
${grpcPort ? `[grpc]\nport = ${grpcPort}\n` : ''}
${toml}

[[apps]]
id = "${APP.id}"
key = "${APP.key}"
secret = "${APP.secret}"
enable_client_events = true
api_tokens = ["${APP.apiToken}"]
`;
}

/**
 * Starts `herald <role>` ('edge', 'dispatcher' or 'dev') with a config file written
 * to the work dir: `heraldToml(options)` (fixed ports; `toml` holds the [redis],
 * [kafka], [events], [dispatcher], [[webhooks]] sections; `server` extra [server]
 * lines), or `options.config`, a whole config file of the caller's. Waits until
 * /readyz on `metricsPort` answers 200. A dispatcher needs only `metricsPort`.
 *
 * The handle: `port`, `metricsPort`, `grpcPort`, `host`, `url` (the HTTP API and
 * WebSocket base), `kill()` (kill -9), `start()` (again, same config),
 * `restart()`, `stop()` (SIGTERM), `ready()` (is /readyz 200 now?),
 * `metrics()` (the /metrics text), `output()`, `pid`, `gid`.
 */
export async function startHerald(role, options) {
  const { host = '127.0.0.1', port, metricsPort, grpcPort, name = `herald-${role}-${metricsPort}` } = options;
  if (!metricsPort) throw new Error('startHerald: metricsPort is required (readiness is /readyz there)');
  const configPath = join(workDir, `${name}.toml`);
  await writeFile(configPath, options.config ?? heraldToml(options));
  const reachable = host === '0.0.0.0' ? '127.0.0.1' : host;
  const readyz = async () => {
    const res = await fetch(`http://${reachable}:${metricsPort}/readyz`, { signal: AbortSignal.timeout(2_000) });
    await res.arrayBuffer();
    return res.status === 200;
  };
  const service = new Service(name, HERALD_BIN, [role, '--config', configPath], { env: heraldEnv(), ready: readyz });
  Object.assign(service, {
    role,
    host: reachable,
    port,
    metricsPort,
    grpcPort,
    configPath,
    url: port ? `http://${reachable}:${port}` : undefined,
    ready: () => readyz().catch(() => false),
    async metrics() {
      const res = await fetch(`http://${reachable}:${metricsPort}/metrics`, { signal: AbortSignal.timeout(5_000) });
      return res.text();
    },
  });
  return service.start();
}

/**
 * The sum of a Prometheus metric's samples in `text` whose labels include every
 * `labels` pair (0 when there are none).
 */
export function metricValue(text, name, labels = {}) {
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const present = Object.entries(labels).every(([k, v]) => (m[2] ?? '').includes(`${k}="${v}"`));
    if (present) sum += Number(m[3]);
  }
  return sum;
}

/** The official pusher server SDK pointed at an edge's HTTP API. */
export function sdk(edge) {
  return new PusherServer({
    appId: APP.id,
    key: APP.key,
    secret: APP.secret,
    host: edge.host,
    port: String(edge.port),
    useTLS: false,
    timeout: 60_000,
  });
}

// ---------------------------------------------------------------------------
// pusher-js clients
// ---------------------------------------------------------------------------

let auth = null;
const clients = new Set();
closers.push(async () => {
  for (const client of clients) client.disconnect();
  await auth?.close();
});

/**
 * A pusher-js client of `edge` (connecting at once). `userId` is sent to the auth
 * endpoint (the compatibility suite's, signed by the official SDK) for private and
 * presence channels. Disconnected when the file ends.
 */
export async function client(edge, { userId } = {}) {
  auth ??= await startAuthServer(APP);
  const params = userId === undefined ? {} : { user_id: userId };
  const pusher = new PusherClient(APP.key, {
    wsHost: edge.host,
    wsPort: edge.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    cluster: 'mt1',
    disableStats: true,
    channelAuthorization: { endpoint: auth.url('/pusher/auth'), transport: 'ajax', params },
    userAuthentication: { endpoint: auth.url('/pusher/user-auth'), transport: 'ajax', params },
  });
  clients.add(pusher);
  return pusher;
}

// ---------------------------------------------------------------------------
// Webhook receiver
// ---------------------------------------------------------------------------

/**
 * An HTTP endpoint on addr:port (its own address, so `cut(receiver)` cuts exactly
 * the dispatcher's path to it) recording every request as `{ headers, rawBody, at,
 * status }` in `received`; it answers `respond(delivery)` (200 unless changed).
 * `url` is its base URL. Closed when the file ends.
 */
export async function startReceiver({ addr = '127.0.0.1', port, respond = () => 200 } = {}) {
  if (!port) throw new Error('startReceiver: a port is required');
  const receiver = { addr, port, url: `http://${addr}:${port}`, received: [], respond };
  const server = createServer((request, response) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => {
      const delivery = { headers: request.headers, rawBody: Buffer.concat(chunks).toString('utf8'), at: Date.now() };
      delivery.status = receiver.respond(delivery);
      receiver.received.push(delivery);
      response.writeHead(delivery.status).end(delivery.status === 200 ? 'ok' : 'failed');
    });
  });
  await new Promise((res, reject) => {
    server.once('error', reject);
    server.listen(port, addr, res);
  });
  receiver.close = () =>
    new Promise((res) => {
      server.closeAllConnections();
      server.close(() => res());
    });
  closers.push(receiver.close);
  return receiver;
}
