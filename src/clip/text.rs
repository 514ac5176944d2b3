//! The CLIP text tower (Radford et al. 2021, sec. 2.4), laid out as open_clip's
//! `TextTransformer` (`token_embedding`, `positional_embedding`, `transformer.resblocks.N`,
//! `ln_final`, `text_projection`):
//!
//! `embed(t) = ln_final(h_L[eot]) @ text_projection`, `h_0 = tok(t) + pos`, blocks under a
//! causal mask. `eot` is the end-of-text position, `length - 1`, taken from the real token
//! count rather than by argmax over the ids, so padding never matters.
//!
//! Because the mask is causal, positions after `eot` cannot change `h_L[eot]`: each batch is
//! encoded only up to its longest sequence (`ids` is `[B, max length]`), which makes short
//! label texts far cheaper than the padded 77 tokens. The parity tests check this against the
//! Python reference run at the full padded length.

use super::config::TextConfig;
use super::fused;
use super::layers::{layer_norm, normal_param, MatmulDtype, Transformer, TransformerSpec};
use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, LayerNorm};
use burn::tensor::{Device, Int, Tensor, TensorData};

/// The text transformer.
#[derive(Module, Debug)]
pub struct TextTransformer {
    /// Token table `[vocab, width]`.
    pub token_embedding: Embedding,
    /// Learned positions `[context_length, width]`.
    pub positional_embedding: Param<Tensor<2>>,
    /// Residual attention blocks (causal).
    pub transformer: Transformer,
    /// Final norm, applied to the pooled token.
    pub ln_final: LayerNorm,
    /// Projection `[width, embed_dim]`, applied as `x @ text_projection`.
    pub text_projection: Param<Tensor<2>>,
    /// Precision of `text_projection` (the blocks carry their own).
    #[module(skip)]
    pub matmul_dtype: MatmulDtype,
    /// Epsilon of the tower's own LayerNorms (burn's `LayerNorm` keeps its own private).
    #[module(skip)]
    pub eps: f64,
}

impl TextTransformer {
    /// Random init as open_clip `TextTransformer.init_parameters`: tokens N(0, 0.02),
    /// positions N(0, 0.01), projection N(0, width^-1/2), blocks as [`Transformer::new`].
    pub fn new(cfg: &TextConfig, embed_dim: usize, eps: f64, device: &Device) -> Self {
        Self {
            token_embedding: EmbeddingConfig::new(cfg.vocab_size, cfg.width)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device),
            positional_embedding: normal_param([cfg.context_length, cfg.width], 0.01, device),
            transformer: Transformer::new(
                TransformerSpec {
                    width: cfg.width,
                    layers: cfg.layers,
                    heads: cfg.heads,
                    mlp_width: cfg.mlp_width,
                    activation: cfg.activation,
                    eps,
                },
                device,
            ),
            ln_final: layer_norm(cfg.width, eps, device),
            text_projection: normal_param(
                [cfg.width, embed_dim],
                (cfg.width as f64).powf(-0.5),
                device,
            ),
            matmul_dtype: MatmulDtype::F32,
            eps,
        }
    }

    /// Sets the precision of every block and the projection.
    pub fn set_matmul_dtype(&mut self, dtype: MatmulDtype) {
        self.matmul_dtype = dtype;
        self.transformer.set_matmul_dtype(dtype);
    }

    /// Number of residual blocks.
    pub fn num_blocks(&self) -> usize {
        self.transformer.len()
    }

    /// The context length (rows of the position table).
    pub fn context_length(&self) -> usize {
        self.positional_embedding.shape().dims::<2>()[0]
    }

    /// Token + position embedding, then the first `n_blocks` causal blocks:
    /// ids `[B, L]` to hidden states `[B, L, width]`.
    ///
    /// # Panics
    /// If `L` exceeds the context length.
    pub fn forward_prefix(&self, ids: Tensor<2, Int>, n_blocks: usize) -> Tensor<3> {
        let [_, l] = ids.dims();
        let ctx = self.context_length();
        assert!(l <= ctx, "{l} tokens exceed the context length {ctx}");
        let pos = self.positional_embedding.val().narrow(0, 0, l);
        let x = self.token_embedding.forward(ids) + pos.unsqueeze::<3>();
        self.transformer.forward_range(x, 0, n_blocks, true)
    }

    /// The remaining blocks from `from_block`, then pooling at `lengths[i] - 1`, `ln_final`
    /// and the projection: hidden `[B, L, width]` to `[B, embed_dim]`.
    ///
    /// # Panics
    /// If `lengths` does not hold one value in `1..=L` per row.
    pub fn forward_suffix(
        &self,
        hidden: Tensor<3>,
        from_block: usize,
        lengths: &[usize],
    ) -> Tensor<2> {
        let x = self
            .transformer
            .forward_range(hidden, from_block, self.num_blocks(), true);
        let [b, l, w] = x.dims();
        assert_eq!(lengths.len(), b, "one length per text");
        let rows: Vec<i64> = lengths
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                assert!(
                    n >= 1 && n <= l,
                    "length {n} of text {i} is outside 1..={l}"
                );
                (i * l + n - 1) as i64
            })
            .collect();
        let device = x.device();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(rows, [b]), &device);
        // LayerNorm is per token: normalising only the pooled rows equals open_clip's order.
        let pooled = x.reshape([b * l, w]).select(0, idx);
        self.matmul_dtype.matmul(
            fused::layer_norm(&self.ln_final, pooled, self.eps),
            self.text_projection.val(),
        )
    }

    /// Embedded prompts `[B, L, width]` (token embeddings, possibly with learned context vectors
    /// spliced in) to unnormalised embeddings `[B, embed_dim]`: positions added, the causal
    /// blocks, pooling at `lengths[i] - 1` (the real end-of-text position), `ln_final`, the
    /// projection. This is CoOp's `TextEncoder.forward` (Zhou et al. 2022, `trainers/coop.py`);
    /// on `token_embedding(ids)` it equals [`Self::forward`].
    ///
    /// # Panics
    /// If `L` exceeds the context length or `lengths` does not hold one value in `1..=L` per row.
    pub fn forward_embedded(&self, prompts: Tensor<3>, lengths: &[usize]) -> Tensor<2> {
        self.forward_embedded_at(prompts, lengths, self.positional_embedding.val())
    }

    /// [`Self::forward_embedded`] with a given position table `[context_length, width]` in
    /// place of the tower's own (CoOp with a learned positional embedding).
    ///
    /// # Panics
    /// If `L` exceeds the table's rows.
    pub fn forward_embedded_at(
        &self,
        prompts: Tensor<3>,
        lengths: &[usize],
        positions: Tensor<2>,
    ) -> Tensor<2> {
        let [_, l, _] = prompts.dims();
        let [ctx, _] = positions.dims();
        assert!(l <= ctx, "{l} tokens exceed the context length {ctx}");
        let pos = positions.narrow(0, 0, l);
        self.forward_suffix(prompts + pos.unsqueeze::<3>(), 0, lengths)
    }

    /// ids `[B, L]` (L = the longest length in the batch) and each text's token count
    /// (start and end tokens included) to unnormalised embeddings `[B, embed_dim]`.
    pub fn forward(&self, ids: Tensor<2, Int>, lengths: &[usize]) -> Tensor<2> {
        let hidden = self.forward_prefix(ids, 0);
        self.forward_suffix(hidden, 0, lengths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::config::ClipConfig;
    use burn::tensor::Tolerance;

    /// The forward from embeddings is the forward from ids when nothing is spliced in.
    #[test]
    fn forward_embedded_equals_forward_on_token_embeddings() {
        let d = Device::flex();
        let c = ClipConfig::tiny();
        let t = TextTransformer::new(&c.text, c.embed_dim, 1e-5, &d);
        let ids = [49406i64, 320, 1125, 49407, 49406, 7, 49407, 0];
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids.to_vec(), [2, 4]), &d);
        let a = t.forward(ids.clone(), &[4, 3]);
        let b = t.forward_embedded(t.token_embedding.forward(ids), &[4, 3]);
        a.into_data()
            .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(1e-6));
    }

    /// Under the causal mask, tokens after the end cannot reach the pooled position: the
    /// same texts padded to 12 or trimmed to their longest length embed identically.
    #[test]
    fn padding_after_eot_changes_nothing() {
        let d = Device::flex();
        let c = ClipConfig::tiny();
        let t = TextTransformer::new(&c.text, c.embed_dim, 1e-5, &d);
        let a = [49406i64, 320, 1125, 49407];
        let b = [49406i64, 7, 49407, 0];
        let trimmed: Vec<i64> = a.iter().chain(b.iter()).copied().collect();
        let mut padded = vec![0i64; 24];
        padded[..4].copy_from_slice(&a);
        padded[12..16].copy_from_slice(&b);
        for p in padded.iter_mut().skip(16) {
            *p = 123; // garbage after the end token
        }
        let e1 = t.forward(
            Tensor::from_data(TensorData::new(trimmed, [2, 4]), &d),
            &[4, 3],
        );
        let e2 = t.forward(
            Tensor::from_data(TensorData::new(padded, [2, 12]), &d),
            &[4, 3],
        );
        e1.into_data()
            .assert_approx_eq::<f32>(&e2.into_data(), Tolerance::absolute(1e-5));
    }
}
