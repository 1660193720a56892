//! The supervisor↔worker control channel: one Unix socket pair per worker,
//! carrying length-prefixed JSON messages (a 4-byte big-endian length, then
//! the message). Typed both ways, bounded in size, and never trusted: a
//! malformed frame ends the channel, which the supervisor treats as a dead
//! worker.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Frames larger than this end the channel (metrics text is the largest).
pub const MAX_FRAME: usize = 16 << 20;

/// Supervisor → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// Answered with `Pong` from inside the worker's runtime, so a hung event
    /// loop fails the probe.
    Ping { seq: u64 },
    /// Serve the promoted snapshot `id` kept in `dir` (a state-dir version
    /// directory): verify its content hash, compile it, apply its live
    /// settings, swap it in. `version` is the engine version it compiles to.
    /// Answered by `Loaded` or `LoadFailed` with the same `seq`, once the
    /// worker serves it (or will not).
    Load {
        seq: u64,
        dir: PathBuf,
        id: String,
        version: String,
    },
    /// Send the worker's Prometheus text.
    Metrics { seq: u64 },
    /// The feature module's kill switch.
    Features { enabled: bool },
    /// Accept also on the spare sockets of these slots (they have no healthy
    /// worker), and stop accepting on any other spare. The whole set each
    /// time; a worker ignores its own slot.
    Adopt { slots: Vec<usize> },
    /// Stop accepting, drain, exit.
    Stop,
}

/// Worker → supervisor.
// `Pong` carries the traffic totals inline (32 latency buckets): one message
// per probe, decoded and dispatched at once, never kept in bulk.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    /// Sent once the worker serves its listeners.
    Ready {
        pid: u32,
        version: String,
    },
    /// Answers `Ping`, with the worker's live traffic counters (what the
    /// progressive rollout compares between workers).
    Pong {
        seq: u64,
        version: String,
        #[serde(default)]
        traffic: crate::pipeline::traffic::TrafficTotals,
        /// Its per-route answers of the version it serves (the canary's
        /// per-route comparison); none without a metrics recorder.
        #[serde(default)]
        routes: Option<crate::rollout::routes::RouteCounts>,
        /// At the connection limit or out of descriptors
        /// ([`crate::server::overloaded`]).
        #[serde(default)]
        overloaded: bool,
    },
    Loaded {
        #[serde(default)]
        seq: u64,
        version: String,
    },
    LoadFailed {
        #[serde(default)]
        seq: u64,
        version: String,
        error: String,
    },
    MetricsText {
        seq: u64,
        text: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("control channel: {0}")]
    Io(#[from] std::io::Error),
    #[error("control channel: frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("control channel: bad message: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("control channel closed")]
    Closed,
}

pub async fn write_msg<W, M>(w: &mut W, msg: &M) -> Result<(), IpcError>
where
    W: AsyncWrite + Unpin,
    M: Serialize,
{
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(IpcError::TooLarge(body.len()));
    }
    let len = u32::try_from(body.len()).map_err(|_| IpcError::TooLarge(body.len()))?;
    let mut frame = Vec::with_capacity(body.len().saturating_add(4));
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

pub async fn read_msg<R, M>(r: &mut R) -> Result<M, IpcError>
where
    R: AsyncRead + Unpin,
    M: for<'de> Deserialize<'de>,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(IpcError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if len > MAX_FRAME {
        return Err(IpcError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_limits() {
        let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let msg = ToWorker::Load {
            seq: 7,
            dir: "/x".into(),
            id: "0123456789ab".into(),
            version: "abc".into(),
        };
        write_msg(&mut a, &msg).await.unwrap();
        let back: ToWorker = read_msg(&mut b).await.unwrap();
        assert_eq!(back, msg);
        // A length over the limit ends the channel instead of allocating.
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(
            read_msg::<_, ToWorker>(&mut b).await,
            Err(IpcError::TooLarge(_))
        ));
        drop(a);
        assert!(matches!(
            read_msg::<_, ToWorker>(&mut b).await,
            Err(IpcError::Closed)
        ));
    }
}
