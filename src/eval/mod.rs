//! Retrieval and classification metrics.
