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

/// A request body that fails once more than `limit` bytes went through, and
/// counts bytes into `counter`. `exceeded` lets the pipeline turn the
/// resulting upstream failure into a 413. With an idle timeout
/// ([`LimitedBody::idle_timeout`]) it also fails when the client sends
/// nothing for that long while it is waited on (nginx's
/// `client_body_timeout`; time the upstream takes to read does not count),
/// and sets `timed_out` (a 408).
pub struct LimitedBody {
    inner: ProxyBody,
    limit: u64,
    seen: u64,
    counter: Arc<AtomicU64>,
    exceeded: Arc<AtomicBool>,
    idle: Option<(std::time::Duration, Arc<AtomicBool>)>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl LimitedBody {
    pub fn new(
        inner: ProxyBody,
        limit: u64,
        counter: Arc<AtomicU64>,
        exceeded: Arc<AtomicBool>,
    ) -> Self {
        Self {
            inner,
            limit,
            seen: 0,
            counter,
            exceeded,
            idle: None,
            timer: None,
        }
    }

    /// Fails the body after `timeout` without a frame, setting `timed_out`.
    pub fn idle_timeout(
        mut self,
        timeout: std::time::Duration,
        timed_out: Arc<AtomicBool>,
    ) -> Self {
        self.idle = Some((timeout, timed_out));
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
        } else if let Some((limit, flag)) = &this.idle {
            let limit = *limit;
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
            if timer.as_mut().poll(cx).is_ready() {
                flag.store(true, Ordering::Relaxed);
                metrics::counter!("aegis_client_body_timeouts_total").increment(1);
                return Poll::Ready(Some(Err(Box::new(BodyReadTimeout(limit)))));
            }
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = u64::try_from(data.len()).unwrap_or(u64::MAX);
                    this.seen = this.seen.saturating_add(n);
                    this.counter.fetch_add(n, Ordering::Relaxed);
                    if this.seen > this.limit {
                        this.exceeded.store(true, Ordering::Relaxed);
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

/// Called once when a response body is finished or dropped, with the number
/// of body bytes sent and whether the body ended cleanly.
pub type Completion = Box<dyn FnOnce(u64, bool) + Send>;

/// A response body that counts bytes and calls its completion hook once, when
/// the body ends, fails, or is dropped (client gone).
pub struct CountingBody {
    inner: ProxyBody,
    bytes: u64,
    ok: bool,
    on_done: Option<Completion>,
}

impl CountingBody {
    pub fn new(inner: ProxyBody, on_done: Completion) -> Self {
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

impl Body for CountingBody {
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

impl Drop for CountingBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.ok = true;
        }
        self.finish();
    }
}
