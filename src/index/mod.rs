//! HNSW index over the joint embedding space.
