import type Pusher from 'pusher-js';

/** Where a client is in a channel's history on a Herald server. */
export interface Position {
  /** Strictly increasing per channel within an epoch; 0 when nothing was published yet. */
  offset: number;
  /** Changes when the server lost the channel's history; offsets of different epochs do not compare. */
  epoch: string;
}

/** Data of `herald:recovered` (on the channel) and the second argument of `onRecovered`. */
export interface RecoveredInfo {
  channel: string;
  /** The position the re-subscribe resumed from. */
  since: Position;
  /** The channel's latest position when the server answered. */
  position: Position | undefined;
  /** How many missed messages were replayed (already delivered to the app's handlers). */
  replayed: number;
}

/** Data of `herald:unrecoverable` (on the channel) and the second argument of `onUnrecoverable`. */
export interface UnrecoverableInfo {
  channel: string;
  /** The position the re-subscribe asked to resume from. */
  since: Position;
  /** Where the channel is now; undefined for a channel the server keeps no history for. */
  position: Position | undefined;
}

export interface RecoveryOptions {
  /** Positions to start from, e.g. saved before a page reload (from `recovery.positions()`). */
  positions?: Record<string, Position>;
  /** Called after `herald:recovered` was emitted on the channel. */
  onRecovered?: (channel: string, info: RecoveredInfo) => void;
  /** Called after `herald:unrecoverable` was emitted on the channel: messages were lost, reload state. */
  onUnrecoverable?: (channel: string, info: UnrecoverableInfo) => void;
}

/** A read-only view of the positions the module keeps. */
export interface Recovery {
  /** A copy of the channel's last position, or undefined when none is known. */
  position(channel: string): Position | undefined;
  /** A copy of every known position, by channel name. */
  positions(): Record<string, Position>;
}

export type RecoveringPusher<P extends Pusher = Pusher> = P & { readonly recovery: Recovery };

/**
 * Makes a pusher-js 8 instance recover missed messages on reconnect and
 * returns the same instance. Call it before subscribing; calling it again on
 * the same instance changes nothing (later options are ignored).
 */
export function withRecovery<P extends Pusher>(pusher: P, options?: RecoveryOptions): RecoveringPusher<P>;

export default withRecovery;
