// A pusher-js client over wss:// in a process of its own, so that Node trusts the
// test CA the way an app's deployment would: through NODE_EXTRA_CA_CERTS, which
// Node reads only at start-up. Used by tls.test.mjs.
//
//   NODE_EXTRA_CA_CERTS=ca.pem node tls-client.mjs PORT KEY CHANNEL EVENT
//
// Prints one JSON line per step: {"state": "connected"}, {"subscribed": CHANNEL},
// then {"event": DATA} for every EVENT received; any failure as {"error": ...}.
// Exits when its stdin closes.
import PusherClient from 'pusher-js';

const [port, key, channelName, eventName] = process.argv.slice(2);
const say = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);

const client = new PusherClient(key, {
  wsHost: '127.0.0.1',
  wsPort: Number(port),
  wssPort: Number(port),
  forceTLS: true,
  enabledTransports: ['ws'],
  cluster: 'mt1',
  disableStats: true,
});
client.connection.bind('state_change', ({ current }) => {
  if (current === 'connected') say({ state: 'connected', socketId: client.connection.socket_id });
  if (current === 'unavailable' || current === 'failed') say({ error: `connection ${current}` });
});
client.connection.bind('error', (err) => say({ error: String(err?.error?.data?.message ?? err?.type ?? err) }));
const channel = client.subscribe(channelName);
channel.bind('pusher:subscription_succeeded', () => say({ subscribed: channelName }));
channel.bind(eventName, (data) => say({ event: data }));

process.stdin.resume();
process.stdin.on('end', () => {
  client.disconnect();
  process.exit(0);
});
