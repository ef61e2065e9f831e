// Connections that stop in the middle of a frame (issue 11, defect 5): each
// may hold up to max_message_bytes of unfinished input, and together they are
// bounded by `[connection] max_pending_input_bytes`: a connection whose input
// would take the node past it is closed with 1013 (try again later), the
// others are unaffected and finish their messages, and the room is given back
// when connections close.
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';

import { OP, WsClient, configWith, encodeFrame, stillServes, useHerald, waitFor } from './lib.mjs';

const MAX_MESSAGE_BYTES = 4096;
const PENDING_INPUT_BYTES = 16 * 1024;
// Each connection stops 3,000 bytes into a 4,000-byte message: about five fit.
const PARTIAL_BYTES = 3000;
const CONNECTIONS = 12;

const env = useHerald({
  config: configWith({
    tables: {
      connection: `max_message_bytes = ${MAX_MESSAGE_BYTES}\nmax_pending_input_bytes = ${PENDING_INPUT_BYTES}`,
    },
  }),
});

afterEach(() => stillServes(env));

/** A pusher:ping padded to `length` bytes of JSON. */
function paddedPing(length) {
  const empty = JSON.stringify({ event: 'pusher:ping', data: { pad: '' } });
  return Buffer.from(empty.replace('"pad":""', `"pad":"${'x'.repeat(length - empty.length)}"`));
}

/**
 * Opens `CONNECTIONS` connections that each send the first `PARTIAL_BYTES` of
 * a message and stop; resolves with `{ client, rest }` for each (`rest`: the
 * bytes that would finish its message).
 */
async function stalledMidFrame() {
  const stalled = [];
  for (let i = 0; i < CONNECTIONS; i++) {
    const client = await WsClient.established(env.herald.port);
    const frame = encodeFrame({ opcode: OP.text, payload: paddedPing(4000) });
    const cut = frame.length - (4000 - PARTIAL_BYTES);
    await client.send(frame.subarray(0, cut));
    stalled.push({ client, rest: frame.subarray(cut) });
  }
  return stalled;
}

/**
 * One round: `CONNECTIONS` connections stop mid-frame; exactly as many as the
 * budget holds are kept, the others are closed with 1013; the kept ones then
 * finish their messages (giving their share back) and are answered.
 */
async function round() {
  const stalled = await stalledMidFrame();
  try {
    // Each holds its frame header (8 bytes) and PARTIAL_BYTES of payload.
    const fits = Math.floor(PENDING_INPUT_BYTES / (PARTIAL_BYTES + 8));
    const closed = await waitFor(
      () => {
        const ended = stalled.filter(({ client }) => client.update().some((f) => f.opcode === OP.close));
        return ended.length >= CONNECTIONS - fits && ended;
      },
      { what: `${CONNECTIONS - fits} of ${CONNECTIONS} connections to be closed`, timeoutMs: 10_000 },
    );
    for (const { client } of closed) {
      const close = await client.closed();
      assert.equal(close.code, 1013, `close ${close.code} ${JSON.stringify(close.reason)}`);
    }
    const kept = stalled.filter((s) => !closed.includes(s));
    for (const { client, rest } of kept) {
      await client.send(rest);
      await client.nextMessage((m) => m.event === 'pusher:pong', { what: 'the pong to the finished message' });
    }
    assert.equal(kept.length, fits, `${kept.length} of ${CONNECTIONS} kept`);
  } finally {
    for (const { client } of stalled) client.destroy();
  }
}

test('unfinished frames past max_pending_input_bytes close their connections with 1013; the rest carry on', round);

// Every share was given back (finished messages, closed connections): the same again.
test('the budget is given back: a second round keeps as many', round);
