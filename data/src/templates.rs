//! Prompt templates turning a label into texts, as in zero-shot CLIP.
//!
//! Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
//! Supervision", §3.1.4: the label "cat" is read as "a photo of a cat.", and classifiers built
//! from several templates are ensembled by averaging the text embeddings of every template
//! (then re-normalising). This module only produces the texts; the averaging of embeddings is
//! done by whoever embeds them (`siam`'s evaluator and trainer), over
//! [`crate::dataset::Dataset::label_texts`].

use std::path::Path;

/// The single template CLIP's paper uses as its baseline.
pub const PHOTO: &[&str] = &["a photo of a {}."];

/// The 7 templates chosen in OpenAI's `notebooks/Prompt_Engineering_for_ImageNet.ipynb`
/// (the ensemble that works nearly as well as all 80; also Tip-Adapter's `imagenet_templates`).
pub const CLIP_IMAGENET_7: &[&str] = &[
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
];

/// The 18 CIFAR-10/100 templates of OpenAI's CLIP `data/prompts.md` (also
/// LAION CLIP_benchmark `datasets/cifar10.py`).
pub const CLIP_CIFAR: &[&str] = &[
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a {}.",
    "a high contrast photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a photo of the {}.",
    "a blurry photo of the {}.",
    "a black and white photo of the {}.",
    "a low contrast photo of the {}.",
    "a high contrast photo of the {}.",
    "a bad photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
];

/// Errors from reading templates.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template file could not be read.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's error.
        cause: std::io::Error,
    },
    /// A template lacks the `{}` placeholder.
    #[error("{origin}:{line}: template {template:?} has no {{}} placeholder for the label")]
    NoPlaceholder {
        /// The file or `"argument"`.
        origin: String,
        /// 1-based line.
        line: usize,
        /// The template.
        template: String,
    },
    /// No template at all.
    #[error("{0}: no template given")]
    Empty(String),
}

/// A list of prompt templates, each with one `{}` where the label goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Templates {
    templates: Vec<String>,
}

impl Default for Templates {
    /// [`PHOTO`]: "a photo of a {}.".
    fn default() -> Self {
        Self::from_static(PHOTO)
    }
}

impl Templates {
    /// Templates from constant strings such as [`CLIP_IMAGENET_7`].
    ///
    /// # Panics
    /// If a template lacks `{}` or the list is empty (constants are a programmer's choice).
    pub fn from_static(list: &[&str]) -> Self {
        Self::new(list.iter().map(|s| s.to_string()).collect(), "constant")
            .expect("valid constant templates")
    }

    /// Templates from strings; `origin` names them in errors.
    ///
    /// # Errors
    /// [`TemplateError::NoPlaceholder`] if one lacks `{}`; [`TemplateError::Empty`] for none.
    pub fn new(templates: Vec<String>, origin: &str) -> Result<Self, TemplateError> {
        if templates.is_empty() {
            return Err(TemplateError::Empty(origin.to_string()));
        }
        for (i, t) in templates.iter().enumerate() {
            if !t.contains("{}") {
                return Err(TemplateError::NoPlaceholder {
                    origin: origin.to_string(),
                    line: i + 1,
                    template: t.clone(),
                });
            }
        }
        Ok(Self { templates })
    }

    /// Named sets: `photo`, `imagenet7`, `cifar`; anything else is read as a file with one
    /// template per line (blank lines and lines starting with `#` ignored).
    ///
    /// # Errors
    /// [`TemplateError`] if the file cannot be read or a line lacks `{}`.
    pub fn from_name_or_file(spec: &str) -> Result<Self, TemplateError> {
        match spec {
            "photo" => Ok(Self::from_static(PHOTO)),
            "imagenet7" => Ok(Self::from_static(CLIP_IMAGENET_7)),
            "cifar" => Ok(Self::from_static(CLIP_CIFAR)),
            path => Self::from_file(Path::new(path)),
        }
    }

    /// One template per line; blank lines and `#` comments are skipped.
    ///
    /// # Errors
    /// [`TemplateError`] if the file cannot be read or a line lacks `{}`.
    pub fn from_file(path: &Path) -> Result<Self, TemplateError> {
        let text = std::fs::read_to_string(path).map_err(|cause| TemplateError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        let origin = path.display().to_string();
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            if !t.contains("{}") {
                return Err(TemplateError::NoPlaceholder {
                    origin,
                    line: i + 1,
                    template: t.to_string(),
                });
            }
            out.push(t.to_string());
        }
        Self::new(out, &origin)
    }

    /// The templates.
    pub fn as_slice(&self) -> &[String] {
        &self.templates
    }

    /// Number of templates.
    pub fn len(&self) -> usize {
        self.templates.len()
    }

    /// Always false (construction refuses an empty list).
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// The texts of `label`: every template with its first `{}` replaced by the label.
    pub fn apply(&self, label: &str) -> Vec<String> {
        self.templates
            .iter()
            .map(|t| t.replacen("{}", label, 1))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_every_template() {
        let t = Templates::from_static(&["a photo of a {}.", "art of the {}."]);
        assert_eq!(
            t.apply("red circle"),
            vec!["a photo of a red circle.", "art of the red circle."]
        );
        assert_eq!(Templates::from_static(CLIP_CIFAR).len(), 18);
    }

    #[test]
    fn refuses_template_without_placeholder() {
        let e = Templates::new(vec!["a photo".into()], "argument").unwrap_err();
        assert!(e.to_string().contains("a photo"));
        assert!(matches!(
            Templates::new(vec![], "x"),
            Err(TemplateError::Empty(_))
        ));
    }

    #[test]
    fn reads_file_skipping_comments() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.txt");
        std::fs::write(&p, "# mine\n\na sketch of a {}.\nitap of a {}.\n").unwrap();
        let t = Templates::from_name_or_file(p.to_str().unwrap()).unwrap();
        assert_eq!(
            t.as_slice(),
            &["a sketch of a {}.".to_string(), "itap of a {}.".to_string()]
        );
        std::fs::write(&p, "ok {}\nbroken\n").unwrap();
        let e = Templates::from_file(&p).unwrap_err();
        assert!(e.to_string().contains(":2:"), "{e}");
    }
}
