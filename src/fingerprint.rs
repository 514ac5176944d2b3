//! Model fingerprints: a SHA-256 over the files a model was loaded from (and the architecture
//! given with a bare checkpoint), so an index or feature cache built with one model is never
//! silently used with another.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Files of a model folder that determine its outputs.
const MODEL_FILES: &[&str] = &[
    "siam.json",
    "config.json",
    "open_clip_config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
];

/// Hex SHA-256 (first 32 hex digits) over the model's files and `arch`.
pub fn model_fingerprint(path: &Path, arch: Option<&str>) -> std::io::Result<String> {
    let path = &crate::hub::resolve_model(path).map_err(std::io::Error::other)?;
    let mut h = Sha256::new();
    h.update(arch.unwrap_or("").as_bytes());
    h.update([0u8]);
    let files: Vec<PathBuf> = if path.is_dir() {
        MODEL_FILES
            .iter()
            .map(|f| path.join(f))
            .filter(|p| p.is_file())
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    for f in files {
        h.update(
            f.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .as_bytes(),
        );
        h.update([0u8]);
        let mut file = std::fs::File::open(&f)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    let digest = h.finalize();
    Ok(digest.iter().take(16).map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differs_by_content_and_arch() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("w.safetensors");
        std::fs::write(&p, b"abc").unwrap();
        let a = model_fingerprint(&p, Some("RN50")).unwrap();
        assert_eq!(a, model_fingerprint(&p, Some("RN50")).unwrap());
        assert_ne!(a, model_fingerprint(&p, Some("ViT-B-32")).unwrap());
        std::fs::write(&p, b"abd").unwrap();
        assert_ne!(a, model_fingerprint(&p, Some("RN50")).unwrap());
    }
}
