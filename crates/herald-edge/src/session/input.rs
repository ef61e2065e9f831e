//! What the client sent: bytes made into WebSocket messages by the
//! [`MessageAssembler`](crate::websocket::MessageAssembler) (fragments, control frames
//! and RFC 6455's rules all live there), counted against the node's input budget
//! while unfinished; control frames answered here, data messages handed to the
//! Pusher protocol.

use std::ops::ControlFlow;

use herald_hub::{Close, frame};

use super::Session;
use crate::websocket::{self, Message, Read};

impl Session {
    /// Handles every complete message and control frame in `input` and keeps the
    /// unfinished rest there. Breaks when the connection is closing.
    pub(super) async fn on_input(&mut self, input: &mut Vec<u8>) -> ControlFlow<()> {
        let max_message = self.node.config().connection.max_message_bytes;
        // What arrived counts against the node's budget before it is looked at: the
        // bytes moved into the assembler below come out of `input`, so the count
        // only falls while they are handled.
        if !self.hold_input(input.len() + self.assembler.buffered()) {
            // 1013 (try again later) rather than 1008 (policy violation): the client
            // broke no rule, its message is within the limit; the node is short of
            // room for now, and a client may well succeed on reconnecting.
            let reason = "try again later: the server holds too much unfinished input";
            self.outbox.close(Close::plain(1013, reason));
            self.hold_input(0);
            return ControlFlow::Break(());
        }
        let mut used = 0;
        let flow = loop {
            if self.outbox.is_closing() {
                break ControlFlow::Break(());
            }
            let message = match self.assembler.read(&mut input[used..], max_message) {
                Ok(Read { message: Some(message), used: taken }) => {
                    used += taken;
                    message
                }
                Ok(Read { message: None, used: taken }) => {
                    used += taken;
                    break ControlFlow::Continue(());
                }
                Err(violation) => {
                    self.close_violation(violation, max_message);
                    break ControlFlow::Break(());
                }
            };
            if self.on_message(message).await.is_break() {
                break ControlFlow::Break(());
            }
        };
        input.drain(..used);
        // A closing session reads no more: what it held is given back now.
        let held = if flow.is_break() { 0 } else { input.len() + self.assembler.buffered() };
        self.hold_input(held);
        flow
    }

    /// Counts `bytes` of unfinished input as this session's share of the node's
    /// budget; false (and nothing changes) when that would pass the budget.
    fn hold_input(&mut self, bytes: usize) -> bool {
        let held = self.node.input_budget().resize(self.held_input, bytes);
        if held {
            self.held_input = bytes;
        }
        held
    }

    /// One whole message: control frames are answered, text goes to the protocol.
    async fn on_message(&mut self, message: Message<'_>) -> ControlFlow<()> {
        match message {
            Message::Text(text) => self.on_data_message(&text).await,
            Message::Binary(_) => self.error(None, "binary frames are not supported: send JSON text frames"),
            Message::Ping(payload) => {
                self.outbox.push(frame::pong(payload));
            }
            Message::Pong(_) => {}
            Message::Close { code, .. } => {
                self.outbox.close(Close::plain(websocket::close_reply(code), ""));
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }
}
