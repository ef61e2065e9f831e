// The harness never depends on luck with ports: Herald binds port 0 and reports
// what it bound (its ready file); servers that cannot bind port 0 are checked to
// listen on their ports themselves, and started again elsewhere when a port was
// taken between the guess and their bind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';

import { candidatePorts, listensOn, startHerald, startOnPorts } from './harness.mjs';

const REDIS_SERVER = process.env.REDIS_SERVER ?? 'redis-server';

test('herald started with port 0 everywhere reports three distinct ports it listens on', async () => {
  const herald = await startHerald();
  try {
    const ports = [herald.port, herald.grpcPort, herald.metricsPort];
    assert.ok(ports.every((port) => Number.isInteger(port) && port > 0), `ports ${ports}`);
    assert.equal(new Set(ports).size, 3, `ports ${ports}`);
    const res = await fetch(`http://127.0.0.1:${herald.port}/nothing-here`);
    await res.arrayBuffer();
    assert.equal(res.status, 404, 'the WebSocket + HTTP API listener answers');
  } finally {
    await herald.stop();
  }
});

test('a server whose candidate port was taken meanwhile is started again on another', async () => {
  // Something else holds the first candidate, as when another process bound it
  // between the guess and redis-server's bind.
  const blocker = createServer();
  await new Promise((resolve) => blocker.listen(0, '127.0.0.1', resolve));
  const taken = blocker.address().port;
  const handedOut = [];
  const candidates = async (n) => {
    const ports = handedOut.length === 0 ? [taken] : await candidatePorts(n);
    handedOut.push(ports[0]);
    return ports;
  };
  let redis;
  try {
    redis = await startOnPorts({
      name: 'redis-server',
      command: REDIS_SERVER,
      args: ([port]) => ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
      candidates,
    });
    assert.deepEqual(handedOut[0], taken);
    assert.equal(handedOut.length, 2, 'one more attempt');
    assert.notEqual(redis.ports[0], taken);
    assert.ok(await listensOn(redis.proc.pid, redis.ports[0]));
    assert.equal(await listensOn(redis.proc.pid, taken), false, 'the blocker is not taken for redis');
    assert.ok(await listensOn(process.pid, taken), 'the blocker is ours');
  } finally {
    await redis?.stop();
    blocker.close();
  }
});
