// @herald/pusher-recovery: lossless reconnects for unmodified pusher-js 8
// (and Laravel Echo 2, which wraps it) against a Herald server that keeps
// channel history.
//
// Herald stamps every message of a history-enabled channel with a position
// (`offset`, strictly increasing per channel, and `epoch`, which changes when
// the server lost its history). A client that re-subscribes with the last
// position it saw (`since` in `pusher:subscribe`) is sent what it missed
// before `pusher_internal:subscription_succeeded`, whose data then says
// whether that worked (`recovered`). This module is the client half: it
// remembers positions and adds `since` to the subscribes pusher-js sends
// after a reconnect, without changing how apps subscribe and bind.
//
// Where it hooks into pusher-js, and why there:
//
// - Positions are read from the raw frames of the transport pusher-js is
//   using, not from `pusher.connection`'s 'message' event: pusher-js's
//   decoder keeps only `event`, `channel`, `data` and `user_id` of a frame, so
//   the top-level `offset`/`epoch` never reach that event. The listener is
//   bound to each connection's transport when it connects, after pusher-js's
//   own, so the app's handlers have run for a frame before its position is
//   taken: a position never gets ahead of what the app was given.
// - `since` is added by wrapping the instance's `send_event`, which is what
//   pusher-js channels call for `pusher:subscribe` (after authorization, for
//   private and presence channels), so the position is the one at the moment
//   the subscribe actually leaves.
// - Positions are forgotten when the app unsubscribes: `pusher.unsubscribe`
//   is wrapped as well, because unsubscribing while disconnected removes the
//   channel without any `pusher:unsubscribe` frame.

const INSTALLED = Symbol.for('@herald/pusher-recovery');

const SUBSCRIPTION_SUCCEEDED = 'pusher_internal:subscription_succeeded';

/**
 * Makes `pusher` (a pusher-js 8 instance) recover missed messages on
 * reconnect, and returns it. Call it before subscribing: positions are taken
 * from subscription acknowledgements too. Calling it again on the same
 * instance returns the instance unchanged (the later options are ignored).
 */
export function withRecovery(pusher, options = {}) {
  if (!pusher || typeof pusher.send_event !== 'function' || typeof pusher.connection?.bind !== 'function') {
    throw new TypeError('withRecovery expects a pusher-js instance');
  }
  if (pusher[INSTALLED]) return pusher;

  /** Last position per channel name: the one to resume from. */
  const positions = new Map();
  /**
   * The socket id of the connection each position was received on: sent with
   * `since`, so that what a backend excluded for that connection (Laravel's
   * `toOthers()`) is not replayed to the client that sent it.
   */
  const socketOf = new Map();
  /** Channels whose subscribe carried `since` and is not acknowledged yet. */
  const pending = new Map();

  for (const [name, position] of Object.entries(options.positions ?? {})) {
    if (isPosition(position)) positions.set(name, copyPosition(position));
  }

  const advance = (name, position) => {
    const known = positions.get(name);
    // A new epoch means the server's history was lost: its offsets started
    // again, so a lower offset there is still the newer position.
    if (!known || known.epoch !== position.epoch || position.offset > known.offset) {
      positions.set(name, copyPosition(position));
      socketOf.set(name, pusher.connection.socket_id);
    }
  };

  const forget = (name) => {
    positions.delete(name);
    socketOf.delete(name);
    pending.delete(name);
  };

  const onAck = (name, channel, data) => {
    const wait = pending.get(name);
    pending.delete(name);
    // The ack of a subscription the app cancelled while it was pending:
    // pusher-js has already unsubscribed (and removed the channel).
    if (!channel) return;
    const position = isPosition(data?.position) ? copyPosition(data.position) : undefined;
    if (!wait || typeof data?.recovered !== 'boolean') {
      if (position) advance(name, position);
      return;
    }
    if (data.recovered) {
      if (position) advance(name, position);
      const info = { channel: name, since: copyPosition(wait.since), position, replayed: wait.replayed };
      channel.emit('herald:recovered', info);
      options.onRecovered?.(name, info);
    } else {
      // The server's word replaces ours: resuming from the old position
      // would fail again on every reconnect. No position at all means the
      // channel keeps no history.
      if (position) {
        positions.set(name, position);
        socketOf.set(name, pusher.connection.socket_id);
      } else {
        positions.delete(name);
      }
      const info = { channel: name, since: copyPosition(wait.since), position: position && copyPosition(position) };
      channel.emit('herald:unrecoverable', info);
      options.onUnrecoverable?.(name, info);
    }
  };

  const onFrame = (transport, message) => {
    // Frames of a connection pusher-js has abandoned (it closes it and takes
    // a new one) may still come in; pusher-js drops them, so must we.
    if (pusher.connection.connection?.transport !== transport) return;
    const text = message?.data;
    if (typeof text !== 'string') return;
    // Most frames matter not: only these are parsed a second time. Inside
    // the string-encoded `data` a quote is escaped, so `"offset"` there
    // does not match.
    const isAck = text.includes(SUBSCRIPTION_SUCCEEDED);
    if (!isAck && !text.includes('"offset"')) return;
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (typeof frame?.channel !== 'string' || typeof frame.event !== 'string') return;
    const name = frame.channel;
    // pusher-js delivers a channel's frames iff the channel is in its table
    // (before the ack too: that is how replayed messages reach the app).
    const channel = pusher.channel(name);
    if (frame.event === SUBSCRIPTION_SUCCEEDED) {
      onAck(name, channel, parseData(frame.data));
    } else if (channel && !isProtocolEvent(frame.event) && isPosition(frame)) {
      advance(name, frame);
      const wait = pending.get(name);
      if (wait) wait.replayed += 1;
    }
  };

  let boundTransport = null;
  const bindTransport = () => {
    const transport = pusher.connection.connection?.transport;
    if (!transport || transport === boundTransport || typeof transport.bind !== 'function') return;
    boundTransport = transport;
    transport.bind('message', (message) => onFrame(transport, message));
  };
  // pusher-js bound its own 'connected' handler (the re-subscribes) first;
  // the acks to those cannot arrive before this one has run.
  pusher.connection.bind('connected', bindTransport);
  bindTransport();

  const withSince = (data) => {
    const position = positions.get(data.channel);
    if (!position || data.since !== undefined) {
      pending.delete(data.channel);
      return data;
    }
    pending.set(data.channel, { since: copyPosition(position), replayed: 0 });
    const socket = socketOf.get(data.channel);
    return { ...data, since: { ...copyPosition(position), ...(socket ? { socket_id: socket } : {}) } };
  };

  const sendEvent = pusher.send_event;
  pusher.send_event = function (name, data, channel) {
    if (name === 'pusher:subscribe' && typeof data?.channel === 'string') {
      data = withSince(data);
    } else if (name === 'pusher:unsubscribe' && typeof data?.channel === 'string') {
      forget(data.channel);
    }
    return sendEvent.call(pusher, name, data, channel);
  };

  const unsubscribe = pusher.unsubscribe;
  pusher.unsubscribe = function (name) {
    forget(name);
    return unsubscribe.call(pusher, name);
  };

  const recovery = Object.freeze({
    position(name) {
      const position = positions.get(name);
      return position && copyPosition(position);
    },
    positions() {
      const all = {};
      for (const [name, position] of positions) all[name] = copyPosition(position);
      return all;
    },
  });
  Object.defineProperty(pusher, 'recovery', { value: recovery, enumerable: false, writable: false, configurable: false });
  Object.defineProperty(pusher, INSTALLED, { value: true, enumerable: false, writable: false, configurable: false });
  return pusher;
}

/** Offsets are integers, 0 only in an ack of a channel where nothing was published yet. */
function isPosition(value) {
  return (
    value !== null &&
    typeof value === 'object' &&
    Number.isSafeInteger(value.offset) &&
    value.offset >= 0 &&
    typeof value.epoch === 'string'
  );
}

function isProtocolEvent(event) {
  return event.startsWith('pusher:') || event.startsWith('pusher_internal:');
}

function copyPosition({ offset, epoch }) {
  return { offset, epoch };
}

/** Pusher frames carry `data` as a JSON string; tolerate an object too, as pusher-js does. */
function parseData(data) {
  if (typeof data !== 'string') return data;
  try {
    return JSON.parse(data);
  } catch {
    return undefined;
  }
}

export default withRecovery;
