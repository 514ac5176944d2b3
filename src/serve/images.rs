//! [`ImageStore`]: where the thumbnail of each indexed image comes from. Thumbnails are looked
//! up by index id only, so a client can never make the server read a path of its choosing.
//!
//! The source of image `id`, in order:
//! 1. `--data`: the dataset the index was built from; the record whose image name equals the
//!    index's id (files, webdataset members, CIFAR records, in-memory images alike);
//! 2. an index that `siam train` built over its synthetic demo set (ids `synthetic/...`): the
//!    demo set regenerated from the seed and size recorded in the model's `siam.json`;
//! 3. otherwise the id as a file path (relative ids against the current folder).

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;
use parking_lot::Mutex;
use siam_data::dataset::{Dataset, ImageSource, OpenOptions};
use siam_data::preprocess::Preprocessor;

use super::{Result, ServeError};

/// Longest side of a thumbnail, in pixels.
pub const THUMBNAIL_SIDE: u32 = 256;

/// Thumbnails kept in memory; the cache is emptied when it reaches this many.
const CACHE_ENTRIES: usize = 4096;

/// Thumbnail sources of the indexed images, by index id, with a cache of encoded thumbnails.
#[derive(Debug)]
pub struct ImageStore {
    names: Vec<String>,
    sources: Vec<Option<ImageSource>>,
    cache: Mutex<HashMap<usize, Arc<[u8]>>>,
}

impl ImageStore {
    /// Finds a source for every image id (see the module docs). `model` is the model folder
    /// the index was built with (read for the synthetic demo set's seed).
    pub fn open(ids: &[String], data: Option<&Path>, model: &Path) -> Result<Self> {
        let by_name: Option<HashMap<String, ImageSource>> = match data {
            Some(path) => Some(sources_by_name(Dataset::open(
                path,
                &OpenOptions::default(),
            )?)),
            None if ids.iter().any(|i| i.starts_with("synthetic/")) => {
                demo_set(model).map(sources_by_name)
            }
            None => None,
        };
        let sources = ids
            .iter()
            .map(|id| match &by_name {
                Some(map) => map.get(id).cloned(),
                None => {
                    let p = PathBuf::from(id);
                    p.is_file().then_some(ImageSource::File(p))
                }
            })
            .collect();
        Ok(Self {
            names: ids.to_vec(),
            sources,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Number of images with a source.
    pub fn available(&self) -> usize {
        self.sources.iter().filter(|s| s.is_some()).count()
    }

    /// The JPEG thumbnail of image `id`: decoded as CLIP decodes it (EXIF orientation, RGB,
    /// the 100-megapixel limit), scaled to fit [`THUMBNAIL_SIDE`] (never enlarged).
    pub fn thumbnail(&self, id: usize) -> Result<Vec<u8>> {
        if let Some(t) = self.cache.lock().get(&id) {
            return Ok(t.to_vec());
        }
        let source = self
            .sources
            .get(id)
            .ok_or(ServeError::NoSuchImage {
                id,
                len: self.sources.len(),
            })?
            .as_ref()
            .ok_or_else(|| {
                self.no_thumbnail(
                    id,
                    "not found as a file; give the dataset with --data".into(),
                )
            })?;
        let img = decode(source)?;
        let jpeg = encode_thumbnail(&img).map_err(|why| self.no_thumbnail(id, why))?;
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(id, Arc::from(jpeg.as_slice()));
        Ok(jpeg)
    }

    fn no_thumbnail(&self, id: usize, why: String) -> ServeError {
        ServeError::NoThumbnail {
            id,
            name: self.names[id].clone(),
            why,
        }
    }
}

fn sources_by_name(ds: Dataset) -> HashMap<String, ImageSource> {
    ds.records
        .into_iter()
        .map(|r| (r.image.name(), r.image))
        .collect()
}

/// The synthetic demo set a `siam train` run without `--data` trained on, regenerated from the
/// `demo_per_class` and `seed` its model card records; `None` if the model is not such a run.
fn demo_set(model: &Path) -> Option<Dataset> {
    let card = crate::model::folder::read_card(model).ok()?;
    let t = &card.training;
    if !t.get("data")?.is_null() {
        return None;
    }
    let per_class = usize::try_from(t.get("demo_per_class")?.as_u64()?).ok()?;
    let seed = t.get("seed")?.as_u64()?;
    let size = u32::try_from(card.image_size).ok()?;
    (per_class > 0 && size > 0).then(|| siam_data::synthetic::demo(per_class, size, seed))
}

fn decode(source: &ImageSource) -> Result<RgbImage> {
    // Only the decoder's checks are wanted (orientation, RGB, pixel limit); the size is unused.
    let pre = Preprocessor::clip(THUMBNAIL_SIDE);
    Ok(match source {
        ImageSource::File(p) => pre.decode_path(p)?,
        ImageSource::FileRange {
            path,
            offset,
            len,
            name,
        } => {
            let bytes = read_range(path, *offset, *len).map_err(|e| {
                siam_data::preprocess::ImageError::Io {
                    file: name.clone(),
                    reason: e.to_string(),
                }
            })?;
            pre.decode_bytes(&bytes, name)?
        }
        ImageSource::Bytes(bytes, name) => pre.decode_bytes(bytes, name)?,
        ImageSource::Rgb(img, _) => (**img).clone(),
    })
}

fn read_range(path: &Path, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

fn encode_thumbnail(img: &RgbImage) -> std::result::Result<Vec<u8>, String> {
    let (w, h) = img.dimensions();
    let scale = (f64::from(THUMBNAIL_SIDE) / f64::from(w.max(h))).min(1.0);
    let (tw, th) = (
        ((f64::from(w) * scale).round() as u32).max(1),
        ((f64::from(h) * scale).round() as u32).max(1),
    );
    let small = if (tw, th) == (w, h) {
        img.clone()
    } else {
        image::imageops::thumbnail(img, tw, th)
    };
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(Cursor::new(&mut out), 88)
        .encode_image(&small)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_fit_the_side_and_keep_the_aspect() {
        let img = RgbImage::from_pixel(1000, 500, image::Rgb([200, 10, 10]));
        let jpeg = encode_thumbnail(&img).unwrap();
        let back = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((back.width(), back.height()), (256, 128));
        let small = RgbImage::from_pixel(40, 30, image::Rgb([0, 0, 0]));
        let back = image::load_from_memory(&encode_thumbnail(&small).unwrap()).unwrap();
        assert_eq!((back.width(), back.height()), (40, 30));
    }

    #[test]
    fn ids_are_the_only_way_in() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.png");
        RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
            .save(&f)
            .unwrap();
        let ids = vec![
            f.display().to_string(),
            dir.path().join("gone.png").display().to_string(),
        ];
        let store = ImageStore::open(&ids, None, dir.path()).unwrap();
        assert_eq!(store.available(), 1);
        assert!(store.thumbnail(0).is_ok());
        assert!(matches!(
            store.thumbnail(1),
            Err(ServeError::NoThumbnail { id: 1, .. })
        ));
        assert!(matches!(
            store.thumbnail(2),
            Err(ServeError::NoSuchImage { id: 2, len: 2 })
        ));
    }
}
