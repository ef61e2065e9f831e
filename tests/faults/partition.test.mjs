// The fault tests' own tools, checked against real processes: an address cut
// hangs exactly that path (no error, no answer) while the same server answers
// through another address, a process cut hangs only that process's requests, and
// healing restores both.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { cut, eventually, heal, redisCommand, sigcont, sigstop, startRedis } from './lib.mjs';

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
