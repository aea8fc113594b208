//! The node agent: kubelet and kube-proxy of one node.

pub mod cri;
