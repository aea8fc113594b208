//! Controllers that turn desired objects into derived ones.
