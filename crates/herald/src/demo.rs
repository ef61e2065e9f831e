//! What `herald dev` prints when it serves the demo app.

use std::net::SocketAddr;

/// How to connect to the demo app, with pusher-js, a Pusher server SDK or gRPC.
pub(crate) fn print_demo(addr: SocketAddr, grpc: SocketAddr, app: &herald_core::App) {
    let host = addr.ip();
    let port = addr.port();
    println!(
        r#"
Herald dev: no apps configured, serving a demo app (for local development only).

  app id:  {id}
  key:     {key}
  secret:  {secret}
  client events: enabled

pusher-js:

  const pusher = new Pusher("{key}", {{
    wsHost: "{host}", wsPort: {port}, forceTLS: false,
    enabledTransports: ["ws"], cluster: "mt1",
  }});
  pusher.subscribe("my-channel").bind("my-event", (data) => console.log(data));

Publish with any Pusher server SDK (host {host}, port {port}, useTLS false), e.g. Node:

  new Pusher({{ appId: "{id}", key: "{key}", secret: "{secret}",
               host: "{host}", port: "{port}", useTLS: false }})
    .trigger("my-channel", "my-event", {{ hello: "world" }});

or over gRPC (herald.v1.Publisher on {grpc}, token {token}):

  grpcurl -plaintext -H 'authorization: Bearer {token}' \
    -d '{{"app_id":"{id}","event":{{"name":"my-event","data":"{{}}","channels":["my-channel"]}}}}' \
    {grpc} herald.v1.Publisher/Publish
"#,
        token = app.api_tokens.first().map(String::as_str).unwrap_or(""),
        id = app.id,
        key = app.key,
        secret = app.secret,
    );
}
