//! commitd as a library: the pieces the `commitd` binary and the end-to-end
//! tests share (starting etcd and containerd, building local images).

pub mod cli;
pub mod cluster;
