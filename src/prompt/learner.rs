//! CoOp's prompt learner (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV
//! 2022; code `KaiyangZhou/CoOp`, `trainers/coop.py` `PromptLearner`):
//!
//! ```text
//! prompt_c = [SOS] [V]_1 ... [V]_N [CLASS_c] . [EOS]      (class token at the end)
//! prompt_c = [SOS] [V]_1..[V]_{N/2} [CLASS_c] [V]_{N/2+1}..[V]_N . [EOS]   (middle)
//! prompt_c = [SOS] [CLASS_c] [V]_1 ... [V]_N . [EOS]      (front)
//! ```
//!
//! The `[V]` are learnable context vectors of the text tower's width, one set shared by every
//! class (unified) or one per class (class-specific, `csc`); every other position holds the
//! frozen token embedding of the tokenized prompt `"X X ... X <class>."` (or `"<init phrase>
//! <class>."`). The text tower then runs on these embedded prompts
//! ([`crate::clip::text::TextTransformer::forward_embedded`]) and pools at each prompt's real
//! end-of-text position.

use std::str::FromStr;

use burn::module::{Module, Param};
use burn::nn::Embedding;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use siam_data::tokenizer::ClipTokenizer;

use super::{PromptError, Result};

/// Where the class name goes relative to the context vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassPosition {
    /// After the context (CoOp's default).
    End,
    /// Between the two halves of the context.
    Middle,
    /// Before the context.
    Front,
}

impl FromStr for ClassPosition {
    type Err = PromptError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "end" => Ok(Self::End),
            "middle" => Ok(Self::Middle),
            "front" => Ok(Self::Front),
            _ => Err(PromptError::Option(format!(
                "--prompt-position {s:?}: expected end, middle or front"
            ))),
        }
    }
}

/// `--prompt coop:N[:csc]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptSpec {
    /// Number of context vectors N.
    pub n_ctx: usize,
    /// One context per class instead of one shared by all.
    pub class_specific: bool,
}

impl FromStr for PromptSpec {
    type Err = PromptError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            PromptError::Option(format!(
                "--prompt {s:?}: expected coop:N or coop:N:csc (N context vectors, e.g. coop:16)"
            ))
        };
        let mut parts = s.trim().split(':');
        if parts.next() != Some("coop") {
            return Err(bad());
        }
        let n_ctx: usize = parts.next().and_then(|n| n.parse().ok()).ok_or_else(bad)?;
        let class_specific = match parts.next() {
            None => false,
            Some("csc") => true,
            Some(_) => return Err(bad()),
        };
        if parts.next().is_some() || n_ctx == 0 {
            return Err(bad());
        }
        Ok(Self {
            n_ctx,
            class_specific,
        })
    }
}

/// What prompt learning trains (`--prompt-train`): the context vectors only (CoOp's default),
/// or also the text tower's positional embedding ("backward updates only the prompts' ctx,
/// and optionally the text tower's positional embedding").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptTrain {
    /// The context vectors; the towers stay as they are.
    #[default]
    Context,
    /// The context vectors and a learned copy of the positional embedding, saved with the
    /// prompts and used in place of the tower's own whenever the prompts are embedded.
    Positional,
}

impl FromStr for PromptTrain {
    type Err = PromptError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ctx" | "context" => Ok(Self::Context),
            "positional" | "ctx+positional" => Ok(Self::Positional),
            _ => Err(PromptError::Option(format!(
                "--prompt-train {s:?}: expected ctx (the context vectors) or positional (also the text tower's positional embedding)"
            ))),
        }
    }
}

/// The learnable part: the context vectors `[1 or C, N, width]` and, with
/// [`PromptTrain::Positional`], a copy of the text tower's positional embedding.
#[derive(Module, Debug)]
pub struct PromptLearner {
    /// Context vectors; the first dimension is 1 (unified) or the class count (csc).
    pub ctx: Param<Tensor<3>>,
    /// A learned positional embedding `[context_length, width]` used instead of the text
    /// tower's (initialised from it); `None`: the tower's own, frozen.
    pub positional: Option<Param<Tensor<2>>>,
}

impl PromptLearner {
    /// Context vectors drawn from N(0, 0.02^2), as CoOp's `nn.init.normal_(ctx_vectors, std=0.02)`.
    pub fn random(groups: usize, n_ctx: usize, width: usize, device: &Device) -> Self {
        let t = Tensor::<3>::random(
            [groups, n_ctx, width],
            Distribution::Normal(0.0, 0.02),
            device,
        );
        Self {
            ctx: Param::from_tensor(t),
            positional: None,
        }
    }

    /// Context vectors from given values `[groups, n_ctx, width]`.
    pub fn from_values(
        values: Vec<f32>,
        groups: usize,
        n_ctx: usize,
        width: usize,
        device: &Device,
    ) -> Self {
        let t = Tensor::<3>::from_data(TensorData::new(values, [groups, n_ctx, width]), device);
        Self {
            ctx: Param::from_tensor(t),
            positional: None,
        }
    }

    /// Context vectors initialised from the word embeddings of a phrase (CoOp's `ctx_init`):
    /// the phrase's token embeddings, copied to every class when `groups > 1`.
    pub fn from_phrase(
        tokenizer: &ClipTokenizer,
        token_embedding: &Embedding,
        phrase: &str,
        groups: usize,
        context_length: usize,
        device: &Device,
    ) -> Result<Self> {
        let ids = phrase_ids(tokenizer, phrase, context_length)?;
        let n = ids.len();
        let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
        let t = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), device);
        let e = token_embedding.forward(t).detach();
        let e = if groups > 1 {
            e.repeat_dim(0, groups)
        } else {
            e
        };
        Ok(Self {
            ctx: Param::from_tensor(e),
            positional: None,
        })
    }

    /// The same context with a learnable positional embedding starting from `table`
    /// (`[context_length, width]`, the text tower's own).
    pub fn with_positional(mut self, table: Tensor<2>) -> Self {
        self.positional = Some(Param::from_tensor(table.detach()));
        self
    }

    /// What this learner trains.
    pub fn trains(&self) -> PromptTrain {
        match self.positional {
            Some(_) => PromptTrain::Positional,
            None => PromptTrain::Context,
        }
    }

    /// `(groups, n_ctx, width)`.
    pub fn dims(&self) -> [usize; 3] {
        self.ctx.val().dims()
    }
}

/// The token ids of a phrase between the start and end tokens.
pub fn phrase_ids(
    tokenizer: &ClipTokenizer,
    phrase: &str,
    context_length: usize,
) -> Result<Vec<u32>> {
    let ids = tokenizer.encode(phrase, context_length)?;
    if ids.len() < 3 {
        return Err(PromptError::Option(format!(
            "--prompt-init {phrase:?} has no tokens"
        )));
    }
    Ok(ids[1..ids.len() - 1].to_vec())
}

/// The tokenized class prompts into which the context is spliced.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassPrompts {
    /// `[classes, len]` token ids of `"<prefix> <class>."`, row-major, 0-padded.
    pub ids: Vec<i64>,
    /// Row length (the longest prompt).
    pub len: usize,
    /// Real length of each prompt (end token at `lengths[c] - 1`).
    pub lengths: Vec<usize>,
    /// Tokens of each class name.
    pub name_lens: Vec<usize>,
    /// Context vectors per prompt.
    pub n_ctx: usize,
    /// Class-token position.
    pub position: ClassPosition,
}

impl ClassPrompts {
    /// Tokenizes `"<prefix> <class>."` for every class, as CoOp does (`prefix` is N `X`s or
    /// the init phrase, which must have `n_ctx` tokens).
    pub fn new(
        tokenizer: &ClipTokenizer,
        classnames: &[String],
        prefix: &str,
        n_ctx: usize,
        position: ClassPosition,
        context_length: usize,
    ) -> Result<Self> {
        if classnames.is_empty() {
            return Err(PromptError::Option(
                "no class names to learn prompts for".into(),
            ));
        }
        let got = phrase_ids(tokenizer, prefix, context_length)?.len();
        if got != n_ctx {
            return Err(PromptError::Option(format!(
                "prompt prefix {prefix:?} has {got} tokens, expected {n_ctx}"
            )));
        }
        let mut rows = Vec::with_capacity(classnames.len());
        let mut name_lens = Vec::with_capacity(classnames.len());
        for name in classnames {
            let name = name.replace('_', " ");
            let prompt = format!("{prefix} {name}.");
            let ids = tokenizer.encode(&prompt, 1 << 20)?;
            if ids.len() > context_length {
                return Err(PromptError::Option(format!(
                    "prompt {prompt:?} has {} tokens, more than the context length {context_length}",
                    ids.len()
                )));
            }
            name_lens.push(phrase_ids(tokenizer, &name, context_length)?.len());
            rows.push(ids);
        }
        let len = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = vec![0i64; rows.len() * len];
        for (r, row) in rows.iter().enumerate() {
            for (j, &t) in row.iter().enumerate() {
                ids[r * len + j] = i64::from(t);
            }
        }
        Ok(Self {
            lengths: rows.iter().map(Vec::len).collect(),
            ids,
            len,
            name_lens,
            n_ctx,
            position,
        })
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.lengths.len()
    }

    /// The embedded prompts `[classes, len, width]` with `ctx` (`[1 or classes, N, width]`)
    /// spliced in at the class-token position (CoOp `PromptLearner.forward`). The token
    /// embeddings are constants; gradients flow into `ctx` only.
    pub fn embed(&self, ctx: Tensor<3>, token_embedding: &Embedding) -> Tensor<3> {
        let device = ctx.device();
        let [groups, n, w] = ctx.dims();
        let c = self.classes();
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(self.ids.clone(), [c, self.len]), &device);
        let emb = token_embedding.forward(ids).detach();
        let ctx = if groups == 1 && c > 1 {
            ctx.expand([c, n, w])
        } else {
            ctx
        };
        let prefix = emb.clone().narrow(1, 0, 1);
        let rest = self.len - 1 - n;
        let suffix = emb.narrow(1, 1 + n, rest);
        if self.position == ClassPosition::End {
            return Tensor::cat(vec![prefix, ctx, suffix], 1);
        }
        let half = n / 2;
        let rows = (0..c)
            .map(|i| {
                let name_len = self.name_lens[i];
                let prefix_i = prefix.clone().narrow(0, i, 1);
                let ctx_i = ctx.clone().narrow(0, i, 1);
                let class_i = suffix.clone().narrow(0, i, 1).narrow(1, 0, name_len);
                let suffix_i = suffix
                    .clone()
                    .narrow(0, i, 1)
                    .narrow(1, name_len, rest - name_len);
                match self.position {
                    ClassPosition::Middle => Tensor::cat(
                        vec![
                            prefix_i,
                            ctx_i.clone().narrow(1, 0, half),
                            class_i,
                            ctx_i.narrow(1, half, n - half),
                            suffix_i,
                        ],
                        1,
                    ),
                    _ => Tensor::cat(vec![prefix_i, class_i, ctx_i, suffix_i], 1),
                }
            })
            .collect();
        Tensor::cat(rows, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs_and_positions() {
        assert_eq!(
            "coop:16".parse::<PromptSpec>().unwrap(),
            PromptSpec {
                n_ctx: 16,
                class_specific: false
            }
        );
        assert!("coop:4:csc".parse::<PromptSpec>().unwrap().class_specific);
        for bad in ["coop", "coop:0", "coop:4:x", "cocoop:4", "coop:4:csc:1"] {
            assert!(bad.parse::<PromptSpec>().is_err(), "{bad}");
        }
        assert_eq!(
            "Middle".parse::<ClassPosition>().unwrap(),
            ClassPosition::Middle
        );
        assert!("left".parse::<ClassPosition>().is_err());
    }

    #[test]
    fn splices_context_at_each_position() {
        let d = Device::flex();
        let tok = ClipTokenizer::builtin().unwrap();
        let emb = burn::nn::EmbeddingConfig::new(49408, 3).init(&d);
        let names = vec!["cat".to_string(), "red circle".to_string()];
        let ctx = Tensor::<3>::full([1, 2, 3], 7.0, &d);
        for pos in [
            ClassPosition::End,
            ClassPosition::Middle,
            ClassPosition::Front,
        ] {
            let p = ClassPrompts::new(&tok, &names, "X X", 2, pos, 77).unwrap();
            assert_eq!(p.name_lens, vec![1, 2]);
            let x = p.embed(ctx.clone(), &emb);
            assert_eq!(x.dims(), [2, p.len, 3]);
            let v = x.into_data().try_to_vec::<f32>().unwrap();
            // Rows of class 1 ("red circle", 2 tokens) that hold the context value 7.
            let sevens: Vec<usize> = (0..p.len).filter(|&j| v[(p.len + j) * 3] == 7.0).collect();
            let want = match pos {
                ClassPosition::End => vec![1, 2],
                ClassPosition::Middle => vec![1, 4],
                ClassPosition::Front => vec![3, 4],
            };
            assert_eq!(sevens, want, "{pos:?}");
        }
    }
}
