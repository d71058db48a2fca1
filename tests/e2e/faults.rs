//! An HTTP proxy on loopback in front of the S3 test server that fails a share of the
//! requests the ways object storage fails them: a connection reset after the request was
//! forwarded (it took effect, the answer is cut short or never comes), a 500 after it was
//! forwarded (it took effect, the client is told it failed), and a 503 "slow down" before
//! it is forwarded. Which request fails is drawn from a seeded generator, so a failing
//! run can be replayed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The share of requests failed each way, out of all requests.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    pub reset_after_forwarding: f64,
    pub error_after_forwarding: f64,
    pub busy_before_forwarding: f64,
    pub seed: u64,
}

impl Faults {
    /// `share` of the requests failed, split evenly between the three ways.
    pub fn evenly(share: f64, seed: u64) -> Faults {
        Faults {
            reset_after_forwarding: share / 3.0,
            error_after_forwarding: share / 3.0,
            busy_before_forwarding: share / 3.0,
            seed,
        }
    }
}

/// How many requests the proxy saw, and how many it failed each way.
#[derive(Debug, Default)]
pub struct Counts {
    pub requests: AtomicUsize,
    pub resets: AtomicUsize,
    pub errors: AtomicUsize,
    pub busy: AtomicUsize,
}

/// What the proxy does with one request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Pass,
    Reset,
    Error,
    Busy,
}

/// A running proxy; it serves until the test process ends.
pub struct FaultProxy {
    pub endpoint: String,
    pub counts: Arc<Counts>,
}

impl FaultProxy {
    /// A proxy in front of `upstream` (`http://127.0.0.1:PORT`), on a thread of its own.
    pub fn start(upstream: &str, faults: Faults) -> FaultProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let upstream: SocketAddr = upstream.trim_start_matches("http://").parse().unwrap();
        let counts = Arc::new(Counts::default());
        let shared = Arc::new(Shared {
            upstream,
            faults,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(faults.seed)),
            counts: counts.clone(),
        });
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(serve(listener, shared));
        });
        FaultProxy { endpoint, counts }
    }

    /// (requests, resets, 500s, 503s) so far.
    pub fn seen(&self) -> (usize, usize, usize, usize) {
        let c = &self.counts;
        (
            c.requests.load(Ordering::SeqCst),
            c.resets.load(Ordering::SeqCst),
            c.errors.load(Ordering::SeqCst),
            c.busy.load(Ordering::SeqCst),
        )
    }
}

struct Shared {
    upstream: SocketAddr,
    faults: Faults,
    rng: Mutex<ChaCha8Rng>,
    counts: Arc<Counts>,
}

impl Shared {
    fn fate(&self) -> Fate {
        self.counts.requests.fetch_add(1, Ordering::SeqCst);
        let roll: f64 = self.rng.lock().unwrap().random();
        let f = &self.faults;
        let (reset, error) = (f.reset_after_forwarding, f.error_after_forwarding);
        let (fate, count) = if roll < reset {
            (Fate::Reset, &self.counts.resets)
        } else if roll < reset + error {
            (Fate::Error, &self.counts.errors)
        } else if roll < reset + error + f.busy_before_forwarding {
            (Fate::Busy, &self.counts.busy)
        } else {
            return Fate::Pass;
        };
        count.fetch_add(1, Ordering::SeqCst);
        fate
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

async fn serve(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { handle(request, &shared).await }
            });
            // A request failed by dropping its connection ends the connection with an
            // error, as it should.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Answers one request as its fate says. An `Err` makes the server drop the connection
/// without answering.
async fn handle(
    request: Request<Incoming>,
    shared: &Shared,
) -> Result<Response<Body>, std::io::Error> {
    let fate = shared.fate();
    if fate == Fate::Busy {
        return Ok(s3_error(StatusCode::SERVICE_UNAVAILABLE, "SlowDown"));
    }
    let (status, headers, body) = forward(request, shared.upstream).await?;
    match fate {
        Fate::Error => Ok(s3_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError")),
        Fate::Reset if body.is_empty() => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset after forwarding",
        )),
        Fate::Reset => {
            // The headers and half the body, then the connection drops. The pause lets
            // the server send what it has before the error ends the connection.
            let half = futures::stream::iter([Ok(Frame::data(body.slice(..body.len() / 2)))]);
            let cut = futures::stream::once(async {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "cut",
                ))
            });
            let frames = half.chain(cut);
            let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            Ok(response)
        }
        Fate::Pass | Fate::Busy => {
            let mut response = Response::new(full(body));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            Ok(response)
        }
    }
}

/// Sends `request` to `upstream` on a connection of its own; the answer, read whole, with
/// its framing headers kept as they were (a HEAD's length included).
async fn forward(
    request: Request<Incoming>,
    upstream: SocketAddr,
) -> Result<(StatusCode, hyper::HeaderMap, Bytes), std::io::Error> {
    let failed = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_err(|e| failed(&e))?.to_bytes();
    let stream = tokio::net::TcpStream::connect(upstream).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed(&e))?;
    tokio::spawn(connection);
    let mut outgoing = Request::from_parts(parts, Full::new(body));
    outgoing
        .headers_mut()
        .remove(hyper::header::TRANSFER_ENCODING);
    let answer = sender
        .send_request(outgoing)
        .await
        .map_err(|e| failed(&e))?;
    let (parts, body) = answer.into_parts();
    let body = body.collect().await.map_err(|e| failed(&e))?.to_bytes();
    let mut headers = parts.headers;
    if headers.remove(hyper::header::TRANSFER_ENCODING).is_some() {
        headers.insert(hyper::header::CONTENT_LENGTH, body.len().into());
    }
    Ok((parts.status, headers, body))
}

fn full(bytes: Bytes) -> Body {
    BodyExt::boxed(Full::new(bytes).map_err(|never: Infallible| match never {}))
}

/// An error as S3 words it.
fn s3_error(status: StatusCode, code: &str) -> Response<Body> {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
    );
    let mut response = Response::new(full(Bytes::from(xml)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "application/xml".parse().unwrap(),
    );
    response
}
