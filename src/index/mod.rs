//! HNSW index over the joint embedding space.

pub mod dot;
