//! Container logs, served read-only over HTTP as the kubelet serves them,
//! so that `commitd logs` can read a pod's log from whichever node runs it.
//!
//! containerd writes each container instance's output to
//! `<agent dir>/pods/<namespace>_<pod>_<uid>/<container>/<restartCount>.log`
//! in the CRI log format. The node agent listens on its read-only port
//! (the kubelet's 10255 by default, on the node's InternalIP) and records
//! the port in its Node's `status.daemonEndpoints.kubeletEndpoint.Port`:
//!
//! | request | answer |
//! |---|---|
//! | `GET /containerLogs/{namespace}/{pod}/{container}` | 200 and the log as plain text, chunked; query `follow`, `previous`, `tailLines`, `timestamps` as the kubelet's |
//! | the same, for a pod not on this node or a container not in the pod | 404 with the reason |
//! | the same, for a container that has not started, or `previous` without an earlier instance | 400 with kubectl's message |
//! | `GET /healthz` | 200 `ok` |
//! | any other method | 405 |
//!
//! One concern per module: [`format`](mod@format) decodes the file format,
//! [`select`] picks the instance's file, [`request`] reads and writes the
//! request's path and query, `stream` sends a file (and follows it),
//! [`server`] answers HTTP, and [`client`] is what `commitd logs` uses.

pub mod client;
pub mod format;
pub mod request;
pub mod select;
pub mod server;

mod body;
mod stream;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use client::{fetch, LogReply, LogStream};
pub use request::{ContainerRef, LogOptions};
pub use server::{LogServer, LogSource, PodLookup};

/// The kubelet's read-only port, the agent's default.
pub const DEFAULT_READ_ONLY_PORT: u16 = 10255;

/// What can go wrong serving or fetching logs.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// The read-only port could not be bound (taken, or not an address of
    /// this machine).
    #[error("binding {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why the bind failed.
        #[source]
        source: std::io::Error,
    },
    /// A log directory or file could not be read.
    #[error("reading {}", path.display())]
    Read {
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The agent's port could not be reached.
    #[error("connecting to {addr}")]
    Connect {
        /// The agent's address.
        addr: SocketAddr,
        /// Why connecting failed.
        #[source]
        source: std::io::Error,
    },
    /// The agent took too long to answer.
    #[error("{addr} did not answer within {after:?}")]
    Timeout {
        /// The agent's address.
        addr: SocketAddr,
        /// How long was waited.
        after: Duration,
    },
    /// The request could not be made (a name that is no URL path).
    #[error("building the request to {addr}")]
    Request {
        /// The agent's address.
        addr: SocketAddr,
        /// Why the request is invalid.
        #[source]
        source: hyper::http::Error,
    },
    /// The HTTP exchange failed, or the log was cut short.
    #[error("HTTP exchange with {addr}")]
    Http {
        /// The agent's address.
        addr: SocketAddr,
        /// What went wrong.
        #[source]
        source: hyper::Error,
    },
}
