//! What `herald dev` prints when it serves the demo app.

use std::net::SocketAddr;

/// How to connect to the demo app, with pusher-js, a Pusher server SDK or gRPC.
/// `tls` and `grpc_tls`: the listeners serve TLS.
pub(crate) fn print_demo(
    addr: SocketAddr,
    grpc: SocketAddr,
    app: &herald_core::App,
    tls: bool,
    grpc_tls: bool,
) {
    let host = addr.ip();
    let port = addr.port();
    let transport = if tls { "wss" } else { "ws" };
    let plaintext = if grpc_tls { "" } else { "-plaintext " };
    println!(
        r#"
Herald dev: no apps configured, serving a demo app (for local development only).

  app id:  {id}
  key:     {key}
  secret:  {secret}
  client events: enabled

pusher-js:

  const pusher = new Pusher("{key}", {{
    wsHost: "{host}", wsPort: {port}, wssPort: {port}, forceTLS: {tls},
    enabledTransports: ["{transport}"], cluster: "mt1",
  }});
  pusher.subscribe("my-channel").bind("my-event", (data) => console.log(data));

Publish with any Pusher server SDK (host {host}, port {port}, useTLS {tls}), e.g. Node:

  new Pusher({{ appId: "{id}", key: "{key}", secret: "{secret}",
               host: "{host}", port: "{port}", useTLS: {tls} }})
    .trigger("my-channel", "my-event", {{ hello: "world" }});

or over gRPC (herald.v1.Publisher on {grpc}, token {token}):

  grpcurl {plaintext}-H 'authorization: Bearer {token}' \
    -d '{{"app_id":"{id}","event":{{"name":"my-event","data":"{{}}","channels":["my-channel"]}}}}' \
    {grpc} herald.v1.Publisher/Publish
"#,
        token = app.api_tokens.first().map(String::as_str).unwrap_or(""),
        id = app.id,
        key = app.key,
        secret = app.secret,
    );
}
