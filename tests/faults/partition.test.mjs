// The fault tests' own tools, checked against real processes: an address cut
// hangs exactly that path (no error, no answer) while the same server answers
// through another address, a process cut hangs only that process's requests, and
// healing restores both.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { cut, eventually, heal, redisCommand, sigcont, sigstop, startProcess, startRedis } from './lib.mjs';

const PORT = 16379;
const redis = await startRedis({ port: PORT, bind: ['127.0.0.1', '127.0.0.2'] });

/** 'PONG', or 'hung' when no answer came within `ms`, or the error. */
async function ping(addr, ms = 500) {
  try {
    return await redisCommand(addr, PORT, ['PING'], { timeoutMs: ms });
  } catch (err) {
    return /no reply/.test(err.message) ? 'hung' : err.message;
  }
}

test('an address cut hangs that path only, and heals', async () => {
  assert.equal(await ping('127.0.0.2'), 'PONG');
  const path = await cut({ addr: '127.0.0.2', port: PORT });
  assert.equal(await ping('127.0.0.2'), 'hung');
  assert.equal(await ping('127.0.0.1'), 'PONG');
  await path.heal();
  await eventually(async () => (await ping('127.0.0.2')) === 'PONG', { what: 'the healed path to answer' });
});

test('a process cut hangs what that process sends, and nobody else\'s', async () => {
  // A process of its own that pings redis every 50 ms and prints each answer.
  const script = `
    const net = require('node:net');
    setInterval(() => {
      const socket = net.connect(${PORT}, '127.0.0.1', () => socket.write('PING\\r\\n'));
      socket.setTimeout(300, () => { console.log('hung'); socket.destroy(); });
      socket.on('data', () => { console.log('pong'); socket.destroy(); });
      socket.on('error', (e) => console.log(e.code));
    }, 50);`;
  const pinger = await startProcess('pinger', process.execPath, ['-e', script], {
    ready: (service) => service.output().includes('pong'),
  });
  const path = await cut({ from: pinger, port: PORT });
  const from = pinger.output().length;
  await eventually(() => pinger.output().slice(from).includes('hung'), { what: 'the cut process to hang' });
  assert.equal(await ping('127.0.0.1'), 'PONG', 'another process still gets through');
  await path.heal();
  const healed = pinger.output().length;
  await eventually(() => pinger.output().slice(healed).includes('pong'), { what: 'the healed process to get through' });
  await pinger.kill();
});

test('heal() removes every cut', async () => {
  await cut({ addr: '127.0.0.1', port: PORT });
  await cut({ addr: '127.0.0.2', port: PORT });
  assert.equal(await ping('127.0.0.1'), 'hung');
  assert.equal(await ping('127.0.0.2'), 'hung');
  await heal();
  assert.equal(await ping('127.0.0.1'), 'PONG');
  assert.equal(await ping('127.0.0.2'), 'PONG');
});

test('a stopped server hangs every path until it continues', async () => {
  sigstop(redis);
  try {
    assert.equal(await ping('127.0.0.1'), 'hung');
  } finally {
    sigcont(redis);
  }
  await eventually(async () => (await ping('127.0.0.1')) === 'PONG', { what: 'redis to answer again' });
});

test('restarted empty, redis has lost its data; restarted with persistence, it has not', async () => {
  await redis.command(['SET', 'k', 'v']);
  await redis.restart({ empty: true });
  assert.equal(await redis.command(['GET', 'k']), null);
  const durable = await startRedis({ port: PORT + 1, appendonly: true });
  await durable.command(['SET', 'k', 'v']);
  await durable.restart();
  assert.equal(await durable.command(['GET', 'k']), 'v');
});
