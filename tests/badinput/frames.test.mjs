// Client frames that break RFC 6455, written by hand on an established
// connection: each must end the connection with the close code the RFC names
// (1002 protocol error, 1007 invalid data, 1009 too big), and the valid ones
// around them must keep working.
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  OP,
  WsClient,
  assertPusherError,
  closeCodeLabels,
  closePayload,
  configWith,
  encodeFrame,
  stillServes,
  useHerald,
  waitFor,
} from './lib.mjs';

const MAX_MESSAGE_BYTES = 4096;

const env = useHerald({
  config: configWith({ tables: { connection: `max_message_bytes = ${MAX_MESSAGE_BYTES}` } }),
});

afterEach(() => stillServes(env));

const connect = () => WsClient.established(env.herald.port);
const ping = Buffer.from(JSON.stringify({ event: 'pusher:ping', data: {} }));
const notUtf8 = Buffer.from([0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80, 0x65, 0x64]);

/** Sends `bytes` on a fresh connection and expects the server to close it with `code`. */
async function assertClosedWith(bytes, code, why) {
  const client = await connect();
  await client.send(bytes);
  const close = await client.closed();
  assert.equal(close.code, code, `${why}: expected close ${code}, got ${close.code} ${JSON.stringify(close.reason)}`);
  return client;
}

test('an unmasked client frame closes with 1002', async () => {
  await assertClosedWith(encodeFrame({ opcode: OP.text, payload: ping, mask: false }), 1002, 'unmasked');
});

test('reserved opcodes close with 1002', async () => {
  for (const opcode of [0x3, 0x4, 0x7, 0xb, 0xf]) {
    await assertClosedWith(encodeFrame({ opcode, payload: 'x' }), 1002, `opcode ${opcode}`);
  }
});

test('reserved bits (RSV1-3) close with 1002', async () => {
  for (const rsv of [1, 2, 4, 7]) {
    await assertClosedWith(encodeFrame({ opcode: OP.text, payload: ping, rsv }), 1002, `rsv ${rsv}`);
    await assertClosedWith(encodeFrame({ opcode: OP.ping, payload: 'p', rsv }), 1002, `ping with rsv ${rsv}`);
  }
});

test('a control frame over 125 bytes closes with 1002', async () => {
  for (const opcode of [OP.ping, OP.pong, OP.close]) {
    const payload = opcode === OP.close ? closePayload(1000, 'r'.repeat(124)) : Buffer.alloc(126, 0x61);
    await assertClosedWith(encodeFrame({ opcode, payload }), 1002, `opcode ${opcode} with ${payload.length} bytes`);
  }
});

test('a fragmented control frame closes with 1002', async () => {
  for (const opcode of [OP.ping, OP.pong, OP.close]) {
    const payload = opcode === OP.close ? closePayload(1000) : Buffer.from('p');
    await assertClosedWith(encodeFrame({ opcode, payload, fin: false }), 1002, `fragmented opcode ${opcode}`);
  }
});

test('a continuation frame without a message to continue closes with 1002', async () => {
  await assertClosedWith(encodeFrame({ opcode: OP.continuation, payload: ping }), 1002, 'final continuation');
  await assertClosedWith(encodeFrame({ opcode: OP.continuation, payload: ping, fin: false }), 1002, 'continuation');
});

// Issue 11, defect 4: the second message was processed and the fragment dropped.
test('a new text frame while a fragmented message is open closes with 1002', async () => {
  const bytes = Buffer.concat([
    encodeFrame({ opcode: OP.text, payload: ping.subarray(0, 10), fin: false }),
    encodeFrame({ opcode: OP.text, payload: ping }),
  ]);
  const client = await assertClosedWith(bytes, 1002, 'text inside a fragmented message');
  assert.equal(client.messages.filter((m) => m.event === 'pusher:pong').length, 0, 'the interloper is not processed');
  await assertClosedWith(
    Buffer.concat([
      encodeFrame({ opcode: OP.binary, payload: 'ab', fin: false }),
      encodeFrame({ opcode: OP.text, payload: ping, fin: false }),
    ]),
    1002,
    'a text start inside a fragmented binary message',
  );
});

// Issue 11, defect 4: these were answered with 1000. Codes a client may not
// send (RFC 6455 7.4): below 1000, 1004-1006 and 1015 (reserved or for local
// use only), 1016-2999 (reserved for the protocol), 5000 and over.
for (const code of [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]) {
  test(`a close frame with code ${code} closes with 1002`, async () => {
    await assertClosedWith(encodeFrame({ opcode: OP.close, payload: closePayload(code) }), 1002, `close code ${code}`);
  });
}

test('a close frame with a 1-byte payload closes with 1002', async () => {
  await assertClosedWith(encodeFrame({ opcode: OP.close, payload: Buffer.from([0x03]) }), 1002, '1-byte close');
});

test('a close frame whose reason is not UTF-8 closes with 1007', async () => {
  const payload = closePayload(1000, notUtf8);
  await assertClosedWith(encodeFrame({ opcode: OP.close, payload }), 1007, 'close reason not UTF-8');
});

test('a valid close code is echoed, an empty close answered with 1000', async () => {
  for (const code of [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999]) {
    const payload = closePayload(code, 'bye ✓');
    await assertClosedWith(encodeFrame({ opcode: OP.close, payload }), code, `valid close ${code}`);
  }
  await assertClosedWith(encodeFrame({ opcode: OP.close }), 1000, 'empty close');
});

test('a text message that is not UTF-8 closes with 1007', async () => {
  await assertClosedWith(encodeFrame({ opcode: OP.text, payload: notUtf8 }), 1007, 'single frame');
  // Valid UTF-8 in each fragment would not matter: the message as a whole is checked.
  const bytes = Buffer.concat([
    encodeFrame({ opcode: OP.text, payload: Buffer.from([0x7b, 0xce]), fin: false }),
    encodeFrame({ opcode: OP.continuation, payload: Buffer.from([0x41, 0x7d]) }),
  ]);
  await assertClosedWith(bytes, 1007, 'fragmented');
});

test('a message over max_message_bytes closes with 1009', async () => {
  // Refused from the frame header: the payload is never sent.
  const header = encodeFrame({ opcode: OP.text, length: MAX_MESSAGE_BYTES + 1 });
  await assertClosedWith(header, 1009, 'one frame declaring more than the limit');
  const huge = encodeFrame({ opcode: OP.text, length: 2 ** 32 });
  await assertClosedWith(huge, 1009, 'one frame declaring 4 GiB');
  // Fragments each under the limit, together over it.
  const half = Buffer.alloc(MAX_MESSAGE_BYTES / 2 + 1, 0x20);
  const bytes = Buffer.concat([
    encodeFrame({ opcode: OP.text, payload: half, fin: false }),
    encodeFrame({ opcode: OP.continuation, payload: half }),
  ]);
  await assertClosedWith(bytes, 1009, 'fragments over the limit together');
});

test('a message of exactly max_message_bytes is accepted', async () => {
  const client = await connect();
  const message = JSON.stringify({ event: 'pusher:ping', data: { pad: '' } });
  const padded = message.replace('"pad":""', `"pad":"${'x'.repeat(MAX_MESSAGE_BYTES - message.length)}"`);
  assert.equal(Buffer.byteLength(padded), MAX_MESSAGE_BYTES);
  await client.sendText(padded);
  await client.nextMessage((m) => m.event === 'pusher:pong', { what: 'the pong to a message of the limit' });
  client.destroy();
});

test('a binary message is answered with pusher:error and the connection stays open', async () => {
  const client = await connect();
  const answers = await client.answersTo(() => client.sendFrame({ opcode: OP.binary, payload: ping }));
  assert.equal(answers.length, 1, JSON.stringify(answers));
  assertPusherError(answers[0], null, /binary/);
  client.destroy();
});

test('a ping is answered with a pong carrying its payload', async () => {
  const client = await connect();
  for (const payload of [Buffer.from('hello, ping'), Buffer.alloc(0), Buffer.alloc(125, 0xfe)]) {
    const seen = client.update().length;
    await client.sendFrame({ opcode: OP.ping, payload });
    const pong = await client.nextFrame((f, i) => i >= seen && f.opcode === OP.pong, { what: 'a pong' });
    assert.deepEqual(pong.payload, payload);
  }
  client.destroy();
});

test('an unsolicited pong and a fragmented message with a ping inside are fine', async () => {
  const client = await connect();
  await client.sendFrame({ opcode: OP.pong, payload: 'unsolicited' });
  const seen = client.update().length;
  await client.send(
    Buffer.concat([
      encodeFrame({ opcode: OP.text, payload: ping.subarray(0, 5), fin: false }),
      encodeFrame({ opcode: OP.ping, payload: 'in between' }),
      encodeFrame({ opcode: OP.continuation, payload: ping.subarray(5, 12), fin: false }),
      encodeFrame({ opcode: OP.continuation, payload: ping.subarray(12) }),
    ]),
  );
  const pong = await client.nextFrame((f, i) => i >= seen && f.opcode === OP.pong, { what: 'the control pong' });
  assert.equal(pong.payload.toString(), 'in between');
  await client.nextMessage((m) => m.event === 'pusher:pong', { what: 'the pusher:pong to the reassembled message' });
  client.destroy();
});

test('a frame sent one byte at a time is assembled', async () => {
  const client = await connect();
  const bytes = encodeFrame({ opcode: OP.text, payload: ping });
  for (const byte of bytes) await client.send(Buffer.from([byte]));
  await client.nextMessage((m) => m.event === 'pusher:pong', { what: 'the pong to a trickled frame' });
  client.destroy();
});

// Issue 11, defect 5: the close code a client sends was the `code` label of
// herald_connections_closed_total, so clients chose how many series there are.
// 250 distinct client codes later, the label must still take a few values.
test('close codes chosen by clients do not become metric series', async () => {
  const codes = [
    ...Array.from({ length: 100 }, (_, i) => 3000 + i),
    ...Array.from({ length: 90 }, (_, i) => 4010 + i),
    ...Array.from({ length: 60 }, (_, i) => 4400 + i),
  ];
  for (let at = 0; at < codes.length; at += 25) {
    await Promise.all(
      codes.slice(at, at + 25).map(async (code) => {
        const client = await connect();
        await client.sendFrame({ opcode: OP.close, payload: closePayload(code) });
        assert.equal((await client.closed()).code, code, 'a valid close code is echoed');
      }),
    );
  }
  // Counted once each connection has finished closing; the last one closed above.
  const labels = await waitFor(
    async () => {
      const values = await closeCodeLabels(env);
      return values.size > 0 && values;
    },
    { what: 'herald_connections_closed_total samples' },
  );
  assert.ok(labels.size <= 32, `${labels.size} values of the code label: ${[...labels].slice(0, 40).join(', ')}`);
});
