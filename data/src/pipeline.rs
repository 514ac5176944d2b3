//! The loader: parallel decode and CLIP preprocessing into batches, through a bounded prefetch
//! queue, so decoding overlaps the model's compute.
//!
//! Given a [`Dataset`], a [`Preprocessor`], the batches of record indices a sampler chose
//! ([`crate::sampler`]), optional augmentation and a seed, [`Loader`] starts `threads` worker
//! threads. Worker `w` builds batches `w, w + threads, w + 2 * threads, …` and sends each into
//! its own bounded channel (`ceil(prefetch / threads)` batches deep); the consumer reads the
//! channels round-robin, so batches arrive in sampler order and each batch's pixels depend only
//! on (seed, batch number, position in batch), never on thread timing. At most `threads`
//! batches are being built and `prefetch` (rounded up to a multiple of `threads`) wait ready.
//!
//! A bad image (unreadable, corrupt, truncated, not an image) is handled by [`OnBadImage`]:
//! `Skip` leaves it out of its batch (the batch is then shorter; its name and the reason are in
//! [`Batch::skipped`] and in the loader's [`BadImageSummary`]), `Fail` ends the iteration with
//! [`PipelineError::BadImage`].

use crate::augment::Augment;
use crate::cache::PixelCache;
use crate::dataset::{splitmix64, Dataset, ImageSource, OnBadImage};
use crate::preprocess::{resize_bicubic, shortest_side_size, ImageError, Preprocessor};
use image::RgbImage;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Errors ending a loader's iteration.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// An image could not be read or decoded and the policy is [`OnBadImage::Fail`].
    #[error("record {record}: {cause}")]
    BadImage {
        /// Index of the record in the loader's dataset.
        record: usize,
        /// Why it could not be read; names the file. (Not a `source`: the message already
        /// holds it, and a chain would print it twice.)
        cause: ImageError,
    },
    /// A worker thread stopped without sending its batch (it panicked).
    #[error("a loader thread stopped unexpectedly before batch {0}")]
    WorkerDied(usize),
}

/// Loader settings. `Default`: 2 threads, 4 batches of prefetch, no augmentation, seed 0,
/// [`OnBadImage::Skip`], no cache.
#[derive(Debug, Clone)]
pub struct LoaderOptions {
    /// Worker threads decoding in parallel.
    pub threads: usize,
    /// Ready batches allowed to wait for the consumer.
    pub prefetch: usize,
    /// Training augmentation; `None` for evaluation (CLIP resize + center crop).
    pub augment: Option<Augment>,
    /// Seed of the augmentation draws.
    pub seed: u64,
    /// What to do with an unreadable image.
    pub on_bad_image: OnBadImage,
    /// Decode-once cache shared across epochs (see [`crate::cache`]).
    pub cache: Option<Arc<PixelCache>>,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        Self {
            threads: 2,
            prefetch: 4,
            augment: None,
            seed: 0,
            on_bad_image: OnBadImage::Skip,
            cache: None,
        }
    }
}

/// One batch of preprocessed images.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Position of this batch in the list the loader was given.
    pub number: usize,
    /// Record indices of the images in `pixels`, in order (bad images left out).
    pub indices: Vec<usize>,
    /// `indices.len() x 3 x S x S` normalised floats (CHW per image).
    pub pixels: Vec<f32>,
    /// (name, reason) of each image skipped from this batch.
    pub skipped: Vec<(String, String)>,
}

impl Batch {
    /// Images in the batch.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether every image of the batch was skipped.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// Count and first names of skipped images, for the run summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BadImageSummary {
    /// Images skipped.
    pub count: usize,
    /// (name, reason) of the first [`BadImageSummary::SHOWN`].
    pub first: Vec<(String, String)>,
}

impl BadImageSummary {
    /// How many skipped images are named.
    pub const SHOWN: usize = 5;

    /// Counts one skipped image.
    pub fn add(&mut self, name: &str, reason: &str) {
        self.count += 1;
        if self.first.len() < Self::SHOWN {
            self.first.push((name.to_string(), reason.to_string()));
        }
    }

    /// Counts the skipped images of a batch.
    pub fn add_batch(&mut self, b: &Batch) {
        for (n, r) in &b.skipped {
            self.add(n, r);
        }
    }
}

impl fmt::Display for BadImageSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 0 {
            return f.write_str("no image skipped");
        }
        write!(f, "skipped {} unreadable image(s): ", self.count)?;
        let names: Vec<String> = self.first.iter().map(|(_, r)| r.clone()).collect();
        f.write_str(&names.join("; "))?;
        if self.count > self.first.len() {
            write!(f, "; and {} more", self.count - self.first.len())?;
        }
        Ok(())
    }
}

/// Iterator over preprocessed batches, built by worker threads ahead of the consumer.
/// Dropping it stops the workers.
pub struct Loader {
    receivers: Vec<Receiver<Result<Batch, PipelineError>>>,
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    next: usize,
    total: usize,
    done: bool,
    summary: BadImageSummary,
}

impl fmt::Debug for Loader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loader")
            .field("next", &self.next)
            .field("total", &self.total)
            .field("summary", &self.summary)
            .finish()
    }
}

struct Work {
    dataset: Arc<Dataset>,
    pre: Preprocessor,
    batches: Arc<Vec<Vec<usize>>>,
    opts: LoaderOptions,
}

impl Loader {
    /// Starts loading `batches` (record indices into `dataset`).
    ///
    /// # Panics
    /// If a record index is out of range, or the cache was made for another image size
    /// (programmer errors).
    pub fn new(
        dataset: Arc<Dataset>,
        pre: Preprocessor,
        batches: Vec<Vec<usize>>,
        opts: LoaderOptions,
    ) -> Loader {
        assert!(
            batches.iter().flatten().all(|&i| i < dataset.len()),
            "Loader: record index out of range"
        );
        if let Some(c) = &opts.cache {
            assert_eq!(
                c.image_size(),
                pre.image_size,
                "Loader: the cache was made for another image size"
            );
        }
        let total = batches.len();
        let threads = opts.threads.max(1).min(total.max(1));
        let depth = opts.prefetch.max(1).div_ceil(threads);
        let stop = Arc::new(AtomicBool::new(false));
        let work = Arc::new(Work {
            dataset,
            pre,
            batches: Arc::new(batches),
            opts,
        });
        let mut receivers = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for w in 0..threads {
            let (tx, rx) = sync_channel(depth);
            receivers.push(rx);
            let work = Arc::clone(&work);
            let stop = Arc::clone(&stop);
            let h = std::thread::Builder::new()
                .name(format!("siam-loader-{w}"))
                .spawn(move || worker(&work, w, threads, &tx, &stop))
                .expect("spawning a loader thread");
            handles.push(h);
        }
        Loader {
            receivers,
            handles,
            stop,
            next: 0,
            total,
            done: false,
            summary: BadImageSummary::default(),
        }
    }

    /// Batches in total.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether there is no batch at all.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Images skipped so far (of the batches already returned).
    pub fn summary(&self) -> &BadImageSummary {
        &self.summary
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, PipelineError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.next >= self.total {
            return None;
        }
        let rx = &self.receivers[self.next % self.receivers.len()];
        let item = match rx.recv() {
            Ok(r) => r,
            Err(_) => Err(PipelineError::WorkerDied(self.next)),
        };
        self.next += 1;
        match &item {
            Ok(b) => self.summary.add_batch(b),
            Err(_) => self.done = true,
        }
        Some(item)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receivers makes a worker blocked in `send` return.
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn worker(
    work: &Work,
    w: usize,
    threads: usize,
    tx: &SyncSender<Result<Batch, PipelineError>>,
    stop: &AtomicBool,
) {
    let mut b = w;
    while b < work.batches.len() && !stop.load(Ordering::Relaxed) {
        let result = build_batch(work, b);
        let failed = result.is_err();
        if tx.send(result).is_err() || failed {
            return;
        }
        b += threads;
    }
}

/// Seed of one image's augmentation: a function of (seed, batch number, slot) only.
fn image_seed(seed: u64, batch: usize, slot: usize) -> u64 {
    splitmix64(splitmix64(splitmix64(seed) ^ batch as u64) ^ slot as u64)
}

fn build_batch(work: &Work, number: usize) -> Result<Batch, PipelineError> {
    let records = &work.batches[number];
    let per = work.pre.output_len();
    let mut pixels = vec![0f32; per * records.len()];
    let mut indices = Vec::with_capacity(records.len());
    let mut skipped = Vec::new();
    let mut filled = 0usize;
    for (slot, &r) in records.iter().enumerate() {
        let out = &mut pixels[filled * per..(filled + 1) * per];
        let mut rng = StdRng::seed_from_u64(image_seed(work.opts.seed, number, slot));
        match fill(work, r, &mut rng, out) {
            Ok(()) => {
                indices.push(r);
                filled += 1;
            }
            Err(e) => match work.opts.on_bad_image {
                OnBadImage::Fail => {
                    return Err(PipelineError::BadImage {
                        record: r,
                        cause: e,
                    })
                }
                OnBadImage::Skip => {
                    skipped.push((work.dataset.records[r].image.name(), e.to_string()))
                }
            },
        }
    }
    pixels.truncate(filled * per);
    Ok(Batch {
        number,
        indices,
        pixels,
        skipped,
    })
}

/// Preprocesses record `r` into `out` (3 x S x S floats).
fn fill(work: &Work, r: usize, rng: &mut StdRng, out: &mut [f32]) -> Result<(), ImageError> {
    let pre = &work.pre;
    let s = pre.image_size;
    let src = &work.dataset.records[r].image;
    if let Some(cache) = &work.opts.cache {
        let resized = match cache.get(r) {
            Some(img) => img,
            None => {
                let img = decode(pre, src)?;
                let (w, h) = shortest_side_size(img.width(), img.height(), s);
                let resized = Arc::new(resize_bicubic(&img, w, h));
                cache.insert(r, Arc::clone(&resized));
                resized
            }
        };
        let square = match &work.opts.augment {
            Some(a) => a.apply(pre, &resized, rng),
            None => {
                let (w, h) = resized.dimensions();
                image::imageops::crop_imm(resized.as_ref(), (w - s) / 2, (h - s) / 2, s, s)
                    .to_image()
            }
        };
        pre.normalize_into(&square, out);
        return Ok(());
    }
    let img = decode(pre, src)?;
    match &work.opts.augment {
        Some(a) => pre.normalize_into(&a.apply(pre, &img, rng), out),
        None => pre.preprocess_into(&img, out),
    }
    Ok(())
}

/// Largest webdataset member the loader reads (bytes).
const MAX_MEMBER_BYTES: u64 = 1 << 30;

/// Decodes the pixels of one record (in-memory images are shared, not copied).
pub fn decode(pre: &Preprocessor, src: &ImageSource) -> Result<Arc<RgbImage>, ImageError> {
    match src {
        ImageSource::File(p) => pre.decode_path(p).map(Arc::new),
        ImageSource::Bytes(bytes, name) => pre.decode_bytes(bytes, name).map(Arc::new),
        ImageSource::Rgb(img, _) => Ok(Arc::clone(img)),
        ImageSource::FileRange {
            path,
            offset,
            len,
            name,
        } => {
            if *len > MAX_MEMBER_BYTES {
                return Err(ImageError::Corrupt {
                    file: name.clone(),
                    reason: format!("a tar member of {len} bytes"),
                });
            }
            let io = |e: std::io::Error| ImageError::Io {
                file: name.clone(),
                reason: e.to_string(),
            };
            let mut f = std::fs::File::open(path).map_err(io)?;
            f.seek(SeekFrom::Start(*offset)).map_err(io)?;
            let mut buf = vec![0u8; *len as usize];
            f.read_exact(&mut buf).map_err(io)?;
            pre.decode_bytes(&buf, name).map(Arc::new)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_the_first_few() {
        let mut s = BadImageSummary::default();
        assert_eq!(s.to_string(), "no image skipped");
        for i in 0..7 {
            s.add(&format!("f{i}.jpg"), &format!("f{i}.jpg: corrupt image"));
        }
        assert_eq!(s.count, 7);
        assert_eq!(s.first.len(), 5);
        let t = s.to_string();
        assert!(
            t.starts_with("skipped 7 unreadable image(s): f0.jpg: corrupt image;"),
            "{t}"
        );
        assert!(t.ends_with("and 2 more"), "{t}");
    }
}
