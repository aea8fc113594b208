//! The node agent: kubelet and kube-proxy of one node.

pub mod agent;
pub mod cri;
pub mod dns;
pub mod drain;
pub mod local_path;
pub mod logs;
pub mod node;
pub mod pod;
pub mod probe;
pub mod proxy;
pub mod status;

pub use agent::{run, NodeAgentConfig};
