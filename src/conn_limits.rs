//! The HTTP server's connection limits: a cap on connections served at
//! once, a deadline on each request's header and on idle connections.
//!
//! `axum::serve` accepts every connection and waits on each forever, so a
//! client that opens sockets and sends half a header (or nothing) holds a
//! task, a file descriptor and buffers for as long as it likes; a few
//! thousand such clients exhaust the process's descriptors and the API
//! stops answering everyone. Here the listener takes a permit before it
//! accepts (connections beyond the cap wait in the kernel's listen
//! backlog), and each connection's reads carry a deadline decided by one
//! pure function, [`read_deadline`], from what the connection is doing:
//! reading a header, sitting idle between requests, or serving one.
//! A connection past its deadline fails its read with `TimedOut`, and
//! hyper closes it. A request in flight has no connection deadline: its
//! handler bounds it (`?wait=` at most 300 s; event streams write
//! keep-alives), except while it reads the request body, which must not
//! pause longer than `idle_timeout` either ([`IdleBody`]).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::response::Response;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tower::{Service, ServiceExt as _};

use crate::config::ServeSettings;

/// The limits a [`LimitedListener`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// A request's header must be complete this long after its first byte.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no byte moving is
    /// closed after this.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl From<&ServeSettings> for ConnLimits {
    fn from(s: &ServeSettings) -> Self {
        Self {
            header_read_timeout: s.header_read_timeout,
            idle_timeout: s.idle_timeout,
            max_connections: s.max_connections,
        }
    }
}

/// What a connection is doing, as far as its deadline is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnClock {
    /// Requests whose response is not finished (hyper serves one at a
    /// time on HTTP/1, so 0 or 1).
    pub in_flight: usize,
    /// When the first byte of the next request's header arrived, if one
    /// did and the header is not complete yet.
    pub head_since: Option<Instant>,
    /// When a byte last moved either way (or the connection opened).
    pub last_io: Instant,
}

/// Why a connection was closed by its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The request header did not arrive in `header_read_timeout`.
    Header,
    /// Nothing happened for `idle_timeout`.
    Idle,
}

/// When a connection doing what `clock` says must be closed, and why;
/// `None` while a request is in flight (its handler bounds it).
pub fn read_deadline(clock: &ConnClock, limits: &ConnLimits) -> Option<(Instant, Expiry)> {
    if clock.in_flight > 0 {
        return None;
    }
    Some(match clock.head_since {
        Some(since) => (since + limits.header_read_timeout, Expiry::Header),
        None => (clock.last_io + limits.idle_timeout, Expiry::Idle),
    })
}

/// Counts of what the limits did, for tests and operators.
#[derive(Debug, Default)]
pub struct ConnStats {
    open: AtomicUsize,
    accepted: AtomicU64,
    header_timeouts: AtomicU64,
    idle_timeouts: AtomicU64,
}

impl ConnStats {
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Connections accepted since start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections closed because their header was late.
    pub fn header_timeouts(&self) -> u64 {
        self.header_timeouts.load(Ordering::Relaxed)
    }

    /// Connections closed because they were idle.
    pub fn idle_timeouts(&self) -> u64 {
        self.idle_timeouts.load(Ordering::Relaxed)
    }
}

/// One connection's clock, shared by its I/O and its requests.
#[derive(Debug)]
struct ConnState {
    inner: Mutex<ConnInner>,
}

#[derive(Debug)]
struct ConnInner {
    clock: ConnClock,
    /// The last read that found nothing to read: woken when a request
    /// ends, so the connection's new deadline is armed. (hyper does not
    /// read again on its own after a response: it waits for the I/O to
    /// wake it, and the I/O has no reason to.)
    reader: Option<Waker>,
}

impl ConnState {
    fn new(clock: ConnClock) -> Self {
        Self {
            inner: Mutex::new(ConnInner {
                clock,
                reader: None,
            }),
        }
    }

    fn update(&self, f: impl FnOnce(&mut ConnClock)) -> ConnClock {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut inner.clock);
        inner.clock
    }

    /// The deadline now; `waker` is woken when a request ends.
    fn deadline(&self, limits: &ConnLimits, waker: &Waker) -> Option<(Instant, Expiry)> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        match &inner.reader {
            Some(reader) if reader.will_wake(waker) => {}
            _ => inner.reader = Some(waker.clone()),
        }
        read_deadline(&inner.clock, limits)
    }

    fn read(&self, now: Instant) {
        self.update(|c| {
            c.last_io = now;
            if c.in_flight == 0 && c.head_since.is_none() {
                c.head_since = Some(now);
            }
        });
    }

    fn wrote(&self, now: Instant) {
        self.update(|c| c.last_io = now);
    }
}

/// Ends a request's part in its connection's clock when dropped (with
/// the response body, once written or abandoned).
#[derive(Debug)]
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn start(conn: &Arc<ConnState>) -> Self {
        conn.update(|c| {
            c.in_flight += 1;
            c.head_since = None;
        });
        Self(Arc::clone(conn))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = Instant::now();
        let reader = {
            let mut inner = self.0.inner.lock().unwrap_or_else(PoisonError::into_inner);
            inner.clock.in_flight = inner.clock.in_flight.saturating_sub(1);
            inner.clock.last_io = now;
            inner.reader.take()
        };
        if let Some(reader) = reader {
            reader.wake();
        }
    }
}

/// A TCP listener that serves at most `max_connections` at once.
#[derive(Debug)]
pub struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    limits: ConnLimits,
    stats: Arc<ConnStats>,
}

impl LimitedListener {
    /// `inner` with `limits`.
    pub fn new(inner: TcpListener, limits: ConnLimits) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
            stats: Arc::new(ConnStats::default()),
        }
    }

    /// What the limits did so far.
    pub fn stats(&self) -> Arc<ConnStats> {
        Arc::clone(&self.stats)
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The permit comes first: at the cap nothing is accepted, and
        // clients wait in the backlog rather than hold a task here.
        let permit = match Arc::clone(&self.permits).acquire_owned().await {
            Ok(permit) => permit,
            // The semaphore is never closed.
            Err(_) => std::future::pending().await,
        };
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                    self.stats.open.fetch_add(1, Ordering::SeqCst);
                    let now = Instant::now();
                    let io = LimitedIo {
                        stream,
                        conn: Arc::new(ConnState::new(ConnClock {
                            in_flight: 0,
                            head_since: None,
                            last_io: now,
                        })),
                        limits: self.limits,
                        timer: Box::pin(tokio::time::sleep_until(now + self.limits.idle_timeout)),
                        armed: None,
                        stats: Arc::clone(&self.stats),
                        _permit: permit,
                    };
                    return (io, addr);
                }
                // What the peer did (reset before accept) is no reason
                // to stop; running out of descriptors passes with time.
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    tracing::error!(error = %e, "accept failed; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// An accepted connection: its reads fail with `TimedOut` past the
/// deadline [`read_deadline`] gives; its permit returns when it drops.
pub struct LimitedIo {
    stream: TcpStream,
    conn: Arc<ConnState>,
    limits: ConnLimits,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    stats: Arc<ConnStats>,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for LimitedIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitedIo")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl LimitedIo {
    fn poll_expiry(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((at, why)) = self.conn.deadline(&self.limits, cx.waker()) else {
            return Poll::Pending;
        };
        if self.armed != Some(at) {
            self.timer.as_mut().reset(at);
            self.armed = Some(at);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                let (counter, what) = match why {
                    Expiry::Header => (&self.stats.header_timeouts, "request header too slow"),
                    Expiry::Idle => (&self.stats.idle_timeouts, "connection idle"),
                };
                counter.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
            }
        }
    }
}

impl Drop for LimitedIo {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AsyncRead for LimitedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.conn.read(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_expiry(cx),
        }
    }
}

impl AsyncWrite for LimitedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            this.conn.wrote(Instant::now());
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written
            && n > 0
        {
            this.conn.wrote(Instant::now());
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Makes each connection's service: the router, with its requests
/// counted in the connection's clock.
#[derive(Debug, Clone)]
pub struct MakeTracked {
    app: Router,
}

impl<'a> Service<IncomingStream<'a, LimitedListener>> for MakeTracked {
    type Response = Tracked;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Tracked, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, incoming: IncomingStream<'a, LimitedListener>) -> Self::Future {
        let io = incoming.io();
        std::future::ready(Ok(Tracked {
            app: self.app.clone(),
            conn: Arc::clone(&io.conn),
            idle_timeout: io.limits.idle_timeout,
        }))
    }
}

/// The router for one connection: a request is in flight from its
/// header until its response body is done.
#[derive(Debug, Clone)]
pub struct Tracked {
    app: Router,
    conn: Arc<ConnState>,
    idle_timeout: Duration,
}

impl Service<Request> for Tracked {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let in_flight = InFlight::start(&self.conn);
        let idle = self.idle_timeout;
        let request = request.map(|body| Body::new(IdleBody::new(body, idle)));
        let app = self.app.clone();
        Box::pin(async move {
            let response = app.oneshot(request).await?;
            Ok(response.map(|body| {
                Body::new(Guarded {
                    body,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// A request body that fails if no part of it arrives for `idle` while
/// it is being read: a client that sends a header announcing a body and
/// then nothing must not hold its connection (and a handler) forever.
pub struct IdleBody {
    body: Body,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl IdleBody {
    /// `body`, read with at most `idle` between its parts.
    pub fn new(body: Body, idle: Duration) -> Self {
        Self {
            body,
            idle,
            timer: None,
        }
    }
}

/// The error a stalled request body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled: nothing arrived for {0:?}")]
pub struct BodyStalled(pub Duration);

impl http_body::Body for IdleBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                // The next part gets a fresh `idle`.
                this.timer = None;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyStalled(idle))))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A response body that holds its request's [`InFlight`].
struct Guarded {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Serves `app` on `listener` with its limits (`with_graceful_shutdown`
/// works as on `axum::serve`).
pub fn serve(
    listener: LimitedListener,
    app: Router,
) -> axum::serve::Serve<LimitedListener, MakeTracked, Tracked> {
    axum::serve(listener, MakeTracked { app })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConnLimits = ConnLimits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_connections: 4,
    };

    #[test]
    fn an_idle_connection_expires_idle_timeout_after_its_last_byte() {
        let t0 = Instant::now();
        let clock = ConnClock {
            in_flight: 0,
            head_since: None,
            last_io: t0,
        };
        assert_eq!(
            read_deadline(&clock, &LIMITS),
            Some((t0 + Duration::from_secs(60), Expiry::Idle))
        );
    }

    #[test]
    fn a_started_header_expires_from_its_first_byte_whatever_trickles_after() {
        let t0 = Instant::now();
        let clock = ConnClock {
            in_flight: 0,
            head_since: Some(t0),
            last_io: t0 + Duration::from_secs(9),
        };
        assert_eq!(
            read_deadline(&clock, &LIMITS),
            Some((t0 + Duration::from_secs(10), Expiry::Header))
        );
    }

    #[test]
    fn a_request_in_flight_has_no_deadline_here() {
        let t0 = Instant::now();
        let clock = ConnClock {
            in_flight: 1,
            head_since: None,
            last_io: t0,
        };
        assert_eq!(read_deadline(&clock, &LIMITS), None);
    }

    #[test]
    fn reads_start_the_header_clock_only_between_requests() {
        let t0 = Instant::now();
        let conn = Arc::new(ConnState::new(ConnClock {
            in_flight: 0,
            head_since: None,
            last_io: t0,
        }));
        let t1 = t0 + Duration::from_secs(1);
        conn.read(t1);
        conn.read(t1 + Duration::from_secs(1));
        assert_eq!(conn.update(|_| {}).head_since, Some(t1));
        let request = InFlight::start(&conn);
        assert_eq!(conn.update(|_| {}).head_since, None);
        // A body read while the request is served starts no header.
        conn.read(t1 + Duration::from_secs(2));
        assert_eq!(conn.update(|_| {}).head_since, None);
        drop(request);
        let after = conn.update(|_| {});
        assert_eq!((after.in_flight, after.head_since), (0, None));
    }
}
