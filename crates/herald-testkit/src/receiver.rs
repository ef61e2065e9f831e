//! A real HTTP webhook receiver for tests, on `127.0.0.1:0`: records every request
//! (headers and body) and answers as the test scripts it: a status, a `Retry-After`,
//! or no answer at all (a hung endpoint).

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub enum Answer {
    Status(u16),
    /// 429 or 503 with `Retry-After: <secs>`.
    RetryAfter(u16, u64),
    /// Never answers (until the client gives up).
    Hang,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    /// Scripted answers, used in order; then `default`.
    script: VecDeque<Answer>,
    default: Option<Answer>,
    delay: Duration,
    /// Requests arrived and not answered yet, and the most there ever were at once.
    in_flight: usize,
    max_in_flight: usize,
    /// While true, answers wait (requests are still recorded as they arrive).
    held: Option<tokio::sync::watch::Receiver<bool>>,
}

/// The receiver; stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    hold: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts one answering 204 to everything.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (hold, held) = tokio::sync::watch::channel(false);
        let state = Arc::new(Mutex::new(State { held: Some(held), ..State::default() }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(state.clone(), request));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Self { addr, state, hold, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers the next requests with `answers`, in order.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state.lock().unwrap().script.extend(answers);
    }

    /// Answers every request not scripted with `answer` (initially 204).
    pub fn answer_all(&self, answer: Answer) {
        self.state.lock().unwrap().default = Some(answer);
    }

    /// Waits this long before every answer (a slow endpoint).
    pub fn delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// Holds every answer until [`Receiver::release`]: requests still arrive and are
    /// recorded, so a test sees exactly how many a client has in flight at once.
    pub fn hold(&self) {
        self.hold.send_replace(true);
    }

    pub fn release(&self) {
        self.hold.send_replace(false);
    }

    /// The most requests that were ever in flight at once (arrived, not answered).
    pub fn max_in_flight(&self) -> usize {
        self.state.lock().unwrap().max_in_flight
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Waits until `n` requests arrived (panics after `within`).
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        herald_test_util::wait_until(within, || {
            let received = self.received();
            if received.len() >= n {
                Ok(received)
            } else {
                Err(format!("{n} webhooks, have {}", received.len()))
            }
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    state: Arc<Mutex<State>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let (answer, delay, held) = {
        let mut state = state.lock().unwrap();
        state.received.push(Received {
            at: Instant::now(),
            path: parts.uri.path().to_owned(),
            headers: parts.headers,
            body,
        });
        let answer =
            state.script.pop_front().or_else(|| state.default.clone()).unwrap_or(Answer::Status(204));
        state.in_flight += 1;
        state.max_in_flight = state.max_in_flight.max(state.in_flight);
        (answer, state.delay, state.held.clone())
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(mut held) = held {
        let _ = held.wait_for(|held| !held).await;
    }
    // Counted as answered from here: the answer is on its way.
    state.lock().unwrap().in_flight -= 1;
    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
    match answer {
        Answer::Status(status) => *response.status_mut() = StatusCode::from_u16(status).unwrap(),
        Answer::RetryAfter(status, secs) => {
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            response.headers_mut().insert("retry-after", secs.to_string().parse().unwrap());
        }
        Answer::Hang => std::future::pending::<()>().await,
    }
    Ok(response)
}
