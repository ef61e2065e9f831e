//! Dispatch: a client's Pusher message to the handler of its event. The handlers live
//! with their feature (`subscribe`, `signin`, `client_event`); what the messages hold
//! is parsed in [`crate::message`].

use herald_core::protocol;

use super::Session;
use crate::message::{Incoming, SigninData, SubscribeData, UnsubscribeData, parse_data};

impl Session {
    pub(super) async fn on_data_message(&mut self, text: &str) {
        let message: Incoming<'_> = match serde_json::from_str(text) {
            Ok(message) => message,
            Err(e) => return self.error(None, &format!("invalid message: {e}")),
        };
        match &*message.event {
            "pusher:ping" => self.send(protocol::pong()),
            "pusher:pong" => {}
            "pusher:subscribe" => match parse_data::<SubscribeData>(message.data) {
                Ok(data) => self.subscribe(data).await,
                Err(e) => self.error(None, &format!("invalid pusher:subscribe: {e}")),
            },
            "pusher:unsubscribe" => match parse_data::<UnsubscribeData>(message.data) {
                Ok(data) => self.unsubscribe(&data.channel).await,
                Err(e) => self.error(None, &format!("invalid pusher:unsubscribe: {e}")),
            },
            "pusher:signin" => match parse_data::<SigninData>(message.data) {
                Ok(data) => self.signin(data).await,
                Err(e) => self.error(None, &format!("invalid pusher:signin: {e}")),
            },
            event if event.starts_with("client-") => {
                let event = event.to_string();
                self.client_event(event, message.channel, message.data).await;
            }
            other => {
                let other = other.chars().take(64).collect::<String>();
                self.error(None, &format!("unsupported event {other:?}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    #[test]
    fn data_may_be_an_object_or_a_string_holding_one() {
        let object = RawValue::from_string(r#"{"channel":"a"}"#.into()).unwrap();
        let string = RawValue::from_string(r#""{\"channel\":\"b\"}""#.into()).unwrap();
        assert_eq!(parse_data::<UnsubscribeData>(Some(&object)).unwrap().channel, "a");
        assert_eq!(parse_data::<UnsubscribeData>(Some(&string)).unwrap().channel, "b");
        assert!(parse_data::<UnsubscribeData>(None).is_err());
    }
}
