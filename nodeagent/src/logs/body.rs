//! The one body type of the log server and its client: a short message
//! sent whole (with its length), or a log streamed as it is read
//! (chunked), cut short by an error if the file cannot be read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::sync::mpsc;

use super::stream::Chunk;

/// A response (or request) body.
#[derive(Debug)]
pub(crate) enum LogBody {
    /// Sent at once; `None` once it has been.
    Whole(Option<Bytes>),
    /// Sent as the log is read.
    Streamed(mpsc::Receiver<Chunk>),
}

impl LogBody {
    /// An empty body, for requests.
    pub(crate) fn empty() -> LogBody {
        LogBody::Whole(None)
    }

    /// A message sent whole.
    pub(crate) fn text(message: impl Into<String>) -> LogBody {
        LogBody::Whole(Some(Bytes::from(message.into())))
    }
}

impl Body for LogBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            LogBody::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            LogBody::Streamed(rx) => rx
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| c.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, LogBody::Whole(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            LogBody::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            LogBody::Streamed(_) => SizeHint::default(),
        }
    }
}
