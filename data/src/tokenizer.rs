//! CLIP's byte-level BPE text tokenizer, through the `tokenizers` crate.
//!
//! The built-in tokenizer is `data/assets/clip_tokenizer.json`, built offline by
//! `scripts/make_tokenizer.py` from OpenAI's MIT-licensed `bpe_simple_vocab_16e6.txt.gz`
//! (49,408 tokens: 256 byte characters, the same with `</w>`, 48,894 merges, then
//! `<|startoftext|>` = 49406 and `<|endoftext|>` = 49407). It behaves like Hugging Face's
//! `CLIPTokenizerFast` (NFC, whitespace collapse, lowercase). OpenAI's and open_clip's Python
//! tokenizers additionally run `ftfy.fix_text` and `html.unescape`, so they differ on a few
//! inputs (full-width letters, HTML entities, mojibake); the parity fixtures list them.
//!
//! Sequences are `[49406, tokens..., 49407]`, truncated to the context length (77 for CLIP,
//! the text model's `max_position_embeddings`) keeping the end token last, as open_clip's
//! `tokenize` and HF's `truncation=True` do. Batches are padded with 0 like open_clip (HF pads
//! with 49407); the end token's position is `lengths[i] - 1`, never an argmax over ids.

use std::path::Path;

use tokenizers::Tokenizer;

/// Id of `<|startoftext|>`, prepended to every sequence.
pub const START_OF_TEXT: u32 = 49406;
/// Id of `<|endoftext|>`, appended to every sequence (CLIP pools the text feature here).
pub const END_OF_TEXT: u32 = 49407;
/// Id written into padding positions of a [`TokenBatch`] (open_clip's convention).
pub const PAD_ID: u32 = 0;
/// Number of entries in CLIP's vocabulary.
pub const CLIP_VOCAB_SIZE: usize = 49408;
/// CLIP's text context length (`context_length` in open_clip's model configs,
/// `max_position_embeddings` in HF's `CLIPTextConfig`).
pub const CLIP_CONTEXT_LENGTH: usize = 77;

/// The tokenizer.json embedded in the binary (see the module documentation).
const BUILTIN_JSON: &[u8] = include_bytes!("../assets/clip_tokenizer.json");
const BUILTIN_NAME: &str = "built-in data/assets/clip_tokenizer.json";

/// Known encoding used to check that a tokenizer file is CLIP's (`"a photo of a cat"`).
const PROBE_TEXT: &str = "a photo of a cat";
const PROBE_IDS: [u32; 7] = [START_OF_TEXT, 320, 1125, 539, 320, 2368, END_OF_TEXT];

/// Why a tokenizer could not be loaded or a text could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The tokenizer file could not be read.
    #[error("{file}: cannot read tokenizer file: {reason}")]
    Read {
        /// Path of the file.
        file: String,
        /// The operating system's message.
        reason: String,
    },
    /// The file is not a tokenizer.json the `tokenizers` crate understands.
    #[error("{file}: not a valid tokenizer.json: {reason}")]
    Invalid {
        /// Path of the file.
        file: String,
        /// The parser's message.
        reason: String,
    },
    /// The file is a valid tokenizer, but not CLIP's (wrong special tokens, vocabulary or BPE).
    #[error("{file}: not CLIP's tokenizer: {reason}")]
    NotClip {
        /// Path of the file.
        file: String,
        /// Which check failed.
        reason: String,
    },
    /// The context length cannot hold the start and end tokens.
    #[error("context length {0} is too small: it must hold at least the start and end tokens (2)")]
    ContextTooShort(usize),
    /// The `tokenizers` crate failed on a text.
    #[error("cannot tokenize text {text:?}: {reason}")]
    Encode {
        /// The first characters of the text.
        text: String,
        /// The library's message.
        reason: String,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, TokenizerError>;

/// Token ids of several texts, padded to a common length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBatch {
    /// `rows x len` ids, row-major, padded with [`PAD_ID`] (0).
    pub ids: Vec<u32>,
    /// Number of texts.
    pub rows: usize,
    /// Row length: the longest sequence in the batch, or the requested fixed padding.
    pub len: usize,
    /// Real length of each row, start and end tokens included: the end token is at
    /// `lengths[i] - 1`.
    pub lengths: Vec<usize>,
}

impl TokenBatch {
    /// The ids of row `i`, padding included.
    ///
    /// # Panics
    /// If `i >= rows`.
    pub fn row(&self, i: usize) -> &[u32] {
        &self.ids[i * self.len..(i + 1) * self.len]
    }

    /// Position of the end-of-text token in each row (`lengths[i] - 1`), where CLIP's text
    /// tower takes its pooled feature.
    pub fn end_positions(&self) -> Vec<usize> {
        self.lengths.iter().map(|&l| l - 1).collect()
    }
}

/// CLIP's BPE tokenizer. Cheap to share across threads (`Send + Sync`).
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .finish()
    }
}

impl ClipTokenizer {
    /// The tokenizer embedded in the crate (`data/assets/clip_tokenizer.json`).
    pub fn builtin() -> Result<Self> {
        let inner = Tokenizer::from_bytes(BUILTIN_JSON).map_err(|e| TokenizerError::Invalid {
            file: BUILTIN_NAME.to_string(),
            reason: one_line(&e.to_string()),
        })?;
        Self::validated(inner, BUILTIN_NAME)
    }

    /// Loads a tokenizer.json (e.g. the one shipped with an HF CLIP checkpoint) and checks it is
    /// CLIP's: `<|startoftext|>` = 49406, `<|endoftext|>` = 49407, 49,408 tokens, and
    /// `"a photo of a cat"` encodes to `[49406, 320, 1125, 539, 320, 2368, 49407]`.
    /// Truncation and padding stored in the file are ignored; [`encode`](Self::encode) applies its own.
    pub fn from_file(path: &Path) -> Result<Self> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| TokenizerError::Read {
            file: file.clone(),
            reason: one_line(&e.to_string()),
        })?;
        // tokenizers 0.22.2 panics (an `expect` in `decoders/mod.rs`) on some malformed files.
        let inner = crate::quiet::catch_quietly(|| Tokenizer::from_bytes(&bytes))
            .map_err(|panic| TokenizerError::Invalid {
                file: file.clone(),
                reason: one_line(&panic.0),
            })?
            .map_err(|e| TokenizerError::Invalid {
                file: file.clone(),
                reason: one_line(&e.to_string()),
            })?;
        crate::quiet::catch_quietly(|| Self::validated(inner, &file)).unwrap_or_else(|panic| {
            Err(TokenizerError::Invalid {
                file: file.clone(),
                reason: one_line(&panic.0),
            })
        })
    }

    fn validated(mut inner: Tokenizer, file: &str) -> Result<Self> {
        let not_clip = |reason: String| TokenizerError::NotClip {
            file: file.to_string(),
            reason,
        };
        for (token, id) in [
            ("<|startoftext|>", START_OF_TEXT),
            ("<|endoftext|>", END_OF_TEXT),
        ] {
            match inner.token_to_id(token) {
                Some(found) if found == id => {}
                Some(found) => {
                    return Err(not_clip(format!("{token} has id {found}, CLIP's is {id}")))
                }
                None => return Err(not_clip(format!("no {token} token (CLIP's is id {id})"))),
            }
        }
        let vocab = inner.get_vocab_size(true);
        if vocab != CLIP_VOCAB_SIZE {
            return Err(not_clip(format!(
                "{vocab} tokens, CLIP has {CLIP_VOCAB_SIZE}"
            )));
        }
        inner
            .with_truncation(None)
            .map_err(|e| not_clip(one_line(&e.to_string())))?;
        inner.with_padding(None);
        let probe = inner.encode(PROBE_TEXT, true).map_err(|e| {
            not_clip(format!(
                "cannot encode {PROBE_TEXT:?}: {}",
                one_line(&e.to_string())
            ))
        })?;
        if probe.get_ids() != PROBE_IDS {
            return Err(not_clip(format!(
                "{PROBE_TEXT:?} encodes to {:?}, CLIP's ids are {PROBE_IDS:?}",
                probe.get_ids()
            )));
        }
        Ok(Self { inner })
    }

    /// The tokenizer as `tokenizer.json` text (truncation and padding off), e.g. for an
    /// exported model folder.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| TokenizerError::Invalid {
                file: "<in memory>".to_string(),
                reason: one_line(&e.to_string()),
            })
    }

    /// Ids of `text`: `[49406, tokens..., 49407]`, unpadded. A sequence longer than
    /// `context_length` keeps its first `context_length - 1` ids and ends with 49407.
    pub fn encode(&self, text: &str, context_length: usize) -> Result<Vec<u32>> {
        check_context(context_length)?;
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| encode_error(text, &e))?;
        Ok(truncate(enc.get_ids(), context_length))
    }

    /// Encodes several texts (in parallel) and pads them with 0 to the longest one.
    pub fn encode_batch(&self, texts: &[&str], context_length: usize) -> Result<TokenBatch> {
        let seqs = self.encode_many(texts, context_length)?;
        let len = seqs.iter().map(Vec::len).max().unwrap_or(0);
        Ok(pad(seqs, len))
    }

    /// Encodes several texts and pads every row with 0 to `pad_to` ids (77 for a fixed-shape
    /// CLIP batch, which then equals open_clip's `tokenize`). Sequences are truncated to
    /// `min(context_length, pad_to)` ids.
    pub fn encode_batch_padded(
        &self,
        texts: &[&str],
        context_length: usize,
        pad_to: usize,
    ) -> Result<TokenBatch> {
        let seqs = self.encode_many(texts, context_length.min(pad_to))?;
        Ok(pad(seqs, pad_to))
    }

    fn encode_many(&self, texts: &[&str], context_length: usize) -> Result<Vec<Vec<u32>>> {
        check_context(context_length)?;
        let encodings = self.inner.encode_batch(texts.to_vec(), true).map_err(|e| {
            // The batch call does not say which text failed: find it for the message.
            let bad = texts
                .iter()
                .find(|t| self.inner.encode(**t, true).is_err())
                .copied();
            encode_error(bad.unwrap_or("<batch>"), &e)
        })?;
        Ok(encodings
            .iter()
            .map(|e| truncate(e.get_ids(), context_length))
            .collect())
    }
}

fn check_context(context_length: usize) -> Result<()> {
    if context_length < 2 {
        return Err(TokenizerError::ContextTooShort(context_length));
    }
    Ok(())
}

/// open_clip `tokenize`: `tokens[:context_length]` with the last one replaced by the end token.
fn truncate(ids: &[u32], context_length: usize) -> Vec<u32> {
    let mut out = ids[..ids.len().min(context_length)].to_vec();
    if ids.len() > context_length {
        out[context_length - 1] = END_OF_TEXT;
    }
    out
}

fn pad(seqs: Vec<Vec<u32>>, len: usize) -> TokenBatch {
    let rows = seqs.len();
    let mut ids = vec![PAD_ID; rows * len];
    let mut lengths = Vec::with_capacity(rows);
    for (row, seq) in ids.chunks_exact_mut(len.max(1)).zip(&seqs) {
        row[..seq.len()].copy_from_slice(seq);
        lengths.push(seq.len());
    }
    TokenBatch {
        ids,
        rows,
        len,
        lengths,
    }
}

fn encode_error(text: &str, e: &tokenizers::Error) -> TokenizerError {
    TokenizerError::Encode {
        text: text.chars().take(60).collect(),
        reason: one_line(&e.to_string()),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_end_token() {
        let ids: Vec<u32> = std::iter::once(START_OF_TEXT)
            .chain(1..=10)
            .chain([END_OF_TEXT])
            .collect();
        assert_eq!(truncate(&ids, 5), vec![START_OF_TEXT, 1, 2, 3, END_OF_TEXT]);
        assert_eq!(truncate(&ids, 12), ids);
        assert_eq!(truncate(&ids, 100), ids);
    }

    #[test]
    fn padding_uses_zero_and_records_lengths() {
        let b = pad(vec![vec![7, 8, 9], vec![5]], 4);
        assert_eq!(b.ids, vec![7, 8, 9, 0, 5, 0, 0, 0]);
        assert_eq!(b.lengths, vec![3, 1]);
        assert_eq!(b.end_positions(), vec![2, 0]);
        assert_eq!(b.row(1), &[5, 0, 0, 0]);
    }

    #[test]
    fn builtin_encodes_the_reference_sentence() {
        let tok = ClipTokenizer::builtin().unwrap();
        assert_eq!(
            tok.encode("a photo of a cat", 77).unwrap(),
            PROBE_IDS.to_vec()
        );
        assert_eq!(
            tok.encode("", 77).unwrap(),
            vec![START_OF_TEXT, END_OF_TEXT]
        );
        assert!(matches!(
            tok.encode("x", 1),
            Err(TokenizerError::ContextTooShort(1))
        ));
    }
}
