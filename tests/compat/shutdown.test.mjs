// Graceful shutdown: on SIGTERM Herald tells connected clients to reconnect
// (close code 4200-4299, so pusher-js retries at once, against another edge in
// a cluster) and exits 0 within its grace period.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { SHUTDOWN_GRACE_SECS, nextEvent, recordErrors, subscribe, useHerald } from './harness.mjs';

const env = useHerald();

// Time Herald may take beyond the grace period to close its listeners and exit.
const EXIT_SLACK_MS = 3_000;

test('SIGTERM closes client connections with a 42xx code and exits 0 within the grace period', async (t) => {
  const clients = [await env.connectedClient(), await env.connectedClient()];
  for (const client of clients) await subscribe(client, 'shutdown-watch');
  const errors = clients.map(recordErrors);
  const dropped = clients.map((client) =>
    nextEvent(client.connection, 'state_change', {
      timeoutMs: SHUTDOWN_GRACE_SECS * 1000 + EXIT_SLACK_MS,
      filter: ({ previous }) => previous === 'connected',
    }),
  );

  const started = Date.now();
  const exit = await env.herald.stop(SHUTDOWN_GRACE_SECS * 1000 + EXIT_SLACK_MS);
  const exitedAfter = Date.now() - started;
  await Promise.all(dropped);
  t.diagnostic(`exit ${JSON.stringify(exit)} after ${exitedAfter} ms; client errors ${JSON.stringify(errors)}`);

  assert.deepEqual(exit, { code: 0, signal: null });
  // pusher-js reports a close code as a connection error before it changes
  // state; it reports none for a clean 1000/1001 close.
  for (const [i, clientErrors] of errors.entries()) {
    const code = clientErrors.find((e) => e.code !== undefined)?.code;
    assert.ok(
      code >= 4200 && code <= 4299,
      `client ${i} closed with ${code ?? 'no error code (1000/1001?)'}, expected 4200-4299 (reconnect now)`,
    );
  }
});
