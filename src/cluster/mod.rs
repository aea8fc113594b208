//! Child processes an all-in-one cluster (and the test harness) runs:
//! etcd, containerd and a local image registry, each with private paths.

pub mod containerd;
pub mod etcd;
pub mod image;
pub mod registry;
