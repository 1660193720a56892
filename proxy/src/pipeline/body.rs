//! Body types of the pipeline: the boxed body that flows both ways, a request
//! body that enforces the size limit while streaming, and a response body that
//! counts bytes and runs a completion hook (access log, metrics) when hyper is
//! done with it. Nothing here buffers a body.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

/// Boxed error of every body in the pipeline.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type that flows through the pipeline, both ways.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body into a [`ProxyBody`].
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    UnsyncBoxBody::new(body.map_err(Into::into))
}

/// A complete body from bytes.
pub fn full(data: impl Into<Bytes>) -> ProxyBody {
    boxed(http_body_util::Full::new(data.into()).map_err(|never| match never {}))
}

/// An empty body.
pub fn empty() -> ProxyBody {
    boxed(http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}))
}

/// The request body was larger than the route allows.
#[derive(Debug, thiserror::Error)]
#[error("request body over the limit of {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// The client sent no request body bytes for the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("client sent no request body bytes for {0:?}")]
pub struct BodyReadTimeout(pub std::time::Duration);

/// What a [`LimitedBody`] tells the pipeline, in one allocation: the bytes
/// that went through (the access log's `bytes_in`), and why it failed, so
/// the resulting upstream failure becomes a 413 (`exceeded`) or a 408
/// (`timed_out`).
#[derive(Debug, Default)]
pub struct BodyState {
    pub bytes_in: AtomicU64,
    pub exceeded: AtomicBool,
    pub timed_out: AtomicBool,
}

/// A request body that fails once more than `limit` bytes went through, and
/// counts bytes into its [`BodyState`]. With an idle timeout
/// ([`LimitedBody::idle_timeout`]) it also fails when the client sends
/// nothing for that long while it is waited on (nginx's
/// `client_body_timeout`; time the upstream takes to read does not count).
pub struct LimitedBody {
    inner: ProxyBody,
    limit: u64,
    seen: u64,
    state: Arc<BodyState>,
    idle: Option<std::time::Duration>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl LimitedBody {
    pub fn new(inner: ProxyBody, limit: u64, state: Arc<BodyState>) -> Self {
        Self {
            inner,
            limit,
            seen: 0,
            state,
            idle: None,
            timer: None,
        }
    }

    /// Fails the body after `timeout` without a frame (`timed_out`).
    pub fn idle_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.idle = Some(timeout);
        self
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_ready() {
            this.timer = None;
        } else if let Some(limit) = this.idle {
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
            if timer.as_mut().poll(cx).is_ready() {
                this.state.timed_out.store(true, Ordering::Relaxed);
                metrics::counter!("aegis_client_body_timeouts_total").increment(1);
                return Poll::Ready(Some(Err(Box::new(BodyReadTimeout(limit)))));
            }
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = u64::try_from(data.len()).unwrap_or(u64::MAX);
                    this.seen = this.seen.saturating_add(n);
                    this.state.bytes_in.fetch_add(n, Ordering::Relaxed);
                    if this.seen > this.limit {
                        this.state.exceeded.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: this.limit,
                        }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that counts bytes and calls its completion hook once, when
/// the body ends, fails, or is dropped (client gone), with the number of body
/// bytes sent and whether the body ended cleanly. The hook is held inline
/// (not boxed on its own): the body's one box holds both.
pub struct CountingBody<F: FnOnce(u64, bool)> {
    inner: ProxyBody,
    bytes: u64,
    ok: bool,
    on_done: Option<F>,
}

impl<F: FnOnce(u64, bool)> CountingBody<F> {
    pub fn new(inner: ProxyBody, on_done: F) -> Self {
        Self {
            inner,
            bytes: 0,
            ok: false,
            on_done: Some(on_done),
        }
    }

    fn finish(&mut self) {
        if let Some(f) = self.on_done.take() {
            f(self.bytes, self.ok);
        }
    }
}

// The hook is never pinned: it is taken out and called by value.
impl<F: FnOnce(u64, bool)> Unpin for CountingBody<F> {}

impl<F: FnOnce(u64, bool)> Body for CountingBody<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = u64::try_from(data.len()).unwrap_or(u64::MAX);
                    this.bytes = this.bytes.saturating_add(n);
                }
            }
            Poll::Ready(None) => {
                this.ok = true;
                this.finish();
            }
            Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<F: FnOnce(u64, bool)> Drop for CountingBody<F> {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.ok = true;
        }
        self.finish();
    }
}
