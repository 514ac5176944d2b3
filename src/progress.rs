//! [`Progress`]: how long library jobs (embedding a dataset, building graphs) report how far
//! they are, without the library drawing anything itself; the binary draws progress bars.

/// Receives the progress of a job made of stages (for example "images", "captions",
/// "image graph").
pub trait Progress: Sync {
    /// A stage of `len` items starts.
    fn start(&self, stage: &str, len: usize);
    /// `done` items of the current stage are finished (absolute count).
    fn set(&self, done: usize);
    /// `n` more items of the current stage are finished.
    fn inc(&self, n: usize);
    /// The current stage is finished.
    fn finish(&self);
}

/// Reports nothing (tests, and callers that show their own summary).
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _stage: &str, _len: usize) {}
    fn set(&self, _done: usize) {}
    fn inc(&self, _n: usize) {}
    fn finish(&self) {}
}
