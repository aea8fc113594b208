//! The client of a node agent's read-only port: asks for one container's
//! log and hands back the text as it arrives, or the agent's refusal with
//! its status and message. What `commitd logs` uses to read a pod's log
//! from whichever node runs it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use hyper::body::{Body, Bytes, Incoming};
use hyper::client::conn::http1;
use hyper::header::HOST;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tracing::debug;

use super::body::LogBody;
use super::request::{ContainerRef, LogOptions};
use super::LogsError;

/// How long connecting and getting the answer's headers may take; the
/// log itself may then take as long as it takes (a follow has no end).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// The most of a refusal's message that is read.
const MAX_MESSAGE: usize = 64 * 1024;

/// What the agent answered.
#[derive(Debug)]
pub enum LogReply {
    /// The log, arriving.
    Log(LogStream),
    /// No log: the status and the agent's message (such as `container
    /// "app" in pod "web" is waiting to start: ContainerCreating`).
    Refused {
        /// The HTTP status (400 for a container that cannot have a log
        /// yet, 404 for a pod or container the node does not know).
        status: StatusCode,
        /// The message, without a trailing newline.
        message: String,
    },
}

/// A log being received. Dropping it closes the connection, which ends a
/// follow on the agent's side.
#[derive(Debug)]
pub struct LogStream {
    body: Incoming,
    addr: SocketAddr,
    connection: JoinHandle<()>,
}

impl LogStream {
    /// The next piece of text; `None` at the end of the log.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, LogsError> {
        loop {
            let frame = std::future::poll_fn(|cx| Pin::new(&mut self.body).poll_frame(cx)).await;
            match frame {
                None => return Ok(None),
                Some(Err(source)) => {
                    return Err(LogsError::Http {
                        addr: self.addr,
                        source,
                    })
                }
                Some(Ok(frame)) => {
                    // Trailers carry no text.
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// The whole body as a message, up to [`MAX_MESSAGE`] bytes.
    async fn message(&mut self) -> Result<String, LogsError> {
        let mut bytes = Vec::new();
        while bytes.len() < MAX_MESSAGE {
            match self.next_chunk().await? {
                Some(chunk) => bytes.extend_from_slice(&chunk),
                None => break,
            }
        }
        bytes.truncate(MAX_MESSAGE);
        Ok(String::from_utf8_lossy(&bytes).trim_end().to_string())
    }
}

impl Drop for LogStream {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Asks the agent at `addr` for a container's log.
pub async fn fetch(
    addr: SocketAddr,
    target: &ContainerRef,
    options: &LogOptions,
) -> Result<LogReply, LogsError> {
    let query = options.to_query();
    let uri = if query.is_empty() {
        target.path()
    } else {
        format!("{}?{query}", target.path())
    };
    let request = Request::get(uri)
        .header(HOST, addr.to_string())
        .body(LogBody::empty())
        .map_err(|source| LogsError::Request { addr, source })?;
    let http_error = |source| LogsError::Http { addr, source };
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| LogsError::Connect { addr, source })?;
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_error)?;
        let connection = tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "log connection ended with an error");
            }
        });
        let answer = sender.send_request(request).await;
        match answer {
            Ok(response) => Ok((response, connection)),
            Err(e) => {
                connection.abort();
                Err(http_error(e))
            }
        }
    };
    let (response, connection) = tokio::time::timeout(ANSWER_TIMEOUT, exchange)
        .await
        .map_err(|_| LogsError::Timeout {
            addr,
            after: ANSWER_TIMEOUT,
        })??;
    let status = response.status();
    let mut stream = LogStream {
        body: response.into_body(),
        addr,
        connection,
    };
    if status == StatusCode::OK {
        return Ok(LogReply::Log(stream));
    }
    let message = tokio::time::timeout(ANSWER_TIMEOUT, stream.message())
        .await
        .map_err(|_| LogsError::Timeout {
            addr,
            after: ANSWER_TIMEOUT,
        })??;
    Ok(LogReply::Refused { status, message })
}
