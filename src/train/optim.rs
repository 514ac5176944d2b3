//! AdamW with two parameter groups, and gradient clipping by the global norm.
//!
//! open_clip (`src/open_clip_train/main.py`) exempts from weight decay every parameter for which
//! `p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n`: norms, biases,
//! the logit scale, and 1-D embeddings such as the ViT class token. burn's `AdamW` decays every
//! parameter it is given, so [`build_adamw`] builds a [`ModuleOptimizer`] whose fallback group
//! decays and whose second group (the exempt ids) does not. Both groups run
//! [`FusedAdamW`] (burn's AdamW, fused into one pass per parameter on the CPU backend).
//!
//! burn's own clipping (`burn-optim/src/grad_clipping/base.rs`) clips each parameter on its own;
//! [`clip_grad_norm`] is PyTorch's `torch.nn.utils.clip_grad_norm_` (`torch/nn/utils/clip_grad.py`):
//!
//! ```text
//! total = sqrt(sum_p ||g_p||^2),  c = min(1, max_norm / (total + 1e-6)),  g_p <- c * g_p
//! ```

use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::fused_adamw::FusedAdamW;
use rayon::prelude::*;
use siam_kernels::{sum_of_squares, CHUNK};

/// AdamW hyper-parameters (PyTorch's names and defaults, except the weight decay).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct AdamWSettings {
    /// AdamW first-moment decay beta_1.
    #[arg(long = "beta1", default_value_t = 0.9)]
    pub beta_1: f32,
    /// AdamW second-moment decay beta_2.
    #[arg(long = "beta2", default_value_t = 0.999)]
    pub beta_2: f32,
    /// AdamW epsilon, added to sqrt(v_hat) (PyTorch's default 1e-8; burn's is 1e-5).
    #[arg(long = "adam-eps", default_value_t = 1e-8)]
    pub epsilon: f32,
    /// AdamW decoupled weight decay (never applied to norms, biases and the logit scale).
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f32,
}

impl Default for AdamWSettings {
    fn default() -> Self {
        super::config::clap_defaults()
    }
}

/// Whether open_clip's rule exempts the parameter at `path` (dot-separated module path) with
/// rank `rank` from weight decay.
pub fn exempt_from_decay(path: &str, rank: usize) -> bool {
    if rank < 2 {
        return true;
    }
    let last = path.rsplit('.').next().unwrap_or(path);
    path.split('.').any(|part| {
        let p = part.to_ascii_lowercase();
        p.contains("norm") || p == "ln" || p.starts_with("ln_") || p.starts_with("bn")
    }) || last.contains("bias")
        || last == "beta"
        || last == "gamma"
        || path.contains("logit_scale")
}

/// The trainable parameters of a module, split by whether they decay.
#[derive(Debug, Default, Clone)]
pub struct ParamSplit {
    /// Parameters that take weight decay (weights of rank >= 2).
    pub decay: Vec<ParamId>,
    /// Parameters exempt from decay (norms, biases, logit scale, 1-D embeddings).
    pub no_decay: Vec<ParamId>,
    /// Dot paths of the exempt parameters, for the log.
    pub no_decay_paths: Vec<String>,
    /// Number of scalar values in trainable parameters.
    pub trainable_values: usize,
    /// Number of scalar values in frozen parameters.
    pub frozen_values: usize,
}

#[derive(Default)]
struct SplitVisitor {
    path: Vec<String>,
    split: ParamSplit,
}

impl ModuleVisitor for SplitVisitor {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let n = param.lazy_shape().num_elements();
        if !param.val().is_require_grad() {
            self.split.frozen_values += n;
            return;
        }
        self.split.trainable_values += n;
        let path = self.path.join(".");
        if exempt_from_decay(&path, D) {
            self.split.no_decay.push(param.id);
            self.split.no_decay_paths.push(path);
        } else {
            self.split.decay.push(param.id);
        }
    }
}

/// Splits the parameters of `module` that require gradients into decay / no-decay groups.
pub fn split_params<M: Module>(module: &M) -> ParamSplit {
    let mut v = SplitVisitor::default();
    module.visit(&mut v);
    v.split
}

/// AdamW over `module`'s parameters: `settings.weight_decay` for the decaying ones, none for the
/// ids in `split.no_decay`. Build it after the module's final parameter ids are known (after a
/// checkpoint was loaded), since groups match by id.
pub fn build_adamw(settings: &AdamWSettings, split: &ParamSplit) -> ModuleOptimizer {
    let fused = |weight_decay| {
        FusedAdamW::new(
            settings.beta_1,
            settings.beta_2,
            settings.epsilon,
            weight_decay,
        )
    };
    let decaying = ModuleOptimizer::from(fused(settings.weight_decay));
    if split.no_decay.is_empty() {
        return decaying;
    }
    decaying.with_group(
        ParamGroup::from_ids(split.no_decay.clone()),
        fused(0.0),
        None,
    )
}

struct NormVisitor<'a> {
    grads: &'a mut GradientsParams,
    sum_sq: Option<Tensor<1>>,
    /// Sum of squares of the gradients read on the host (flex, f32).
    host_sum_sq: f64,
}

impl ModuleVisitor for NormVisitor<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(g) = self.grads.remove::<D>(param.id) else {
            return;
        };
        if g.device().without_autodiff() == Device::flex() && g.dtype() == DType::F32 {
            // A host buffer handed over without a copy: one vectorised pass, no temporary.
            let device = g.device();
            let data = g.into_data();
            self.host_sum_sq += sum_of_squares(data.as_slice::<f32>().expect("f32 gradient"));
            self.grads
                .register(param.id, Tensor::<D>::from_data(data, &device));
            return;
        }
        let s = g.clone().square().sum();
        self.grads.register(param.id, g);
        self.sum_sq = Some(match self.sum_sq.take() {
            Some(acc) => acc + s,
            None => s,
        });
    }
}

struct ScaleVisitor<'a> {
    grads: &'a mut GradientsParams,
    coef: f64,
}

impl ModuleVisitor for ScaleVisitor<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(g) = self.grads.remove::<D>(param.id) else {
            return;
        };
        if g.device().without_autodiff() == Device::flex() && g.dtype() == DType::F32 {
            // In place on the host buffer, both cores sharing a large tensor.
            let device = g.device();
            let mut data = g.into_data();
            let coef = self.coef as f32;
            let x = data.as_mut_slice::<f32>().expect("f32 gradient");
            x.par_chunks_mut(CHUNK)
                .for_each(|c| c.iter_mut().for_each(|v| *v *= coef));
            self.grads
                .register(param.id, Tensor::<D>::from_data(data, &device));
            return;
        }
        self.grads.register(param.id, g.mul_scalar(self.coef));
    }
}

/// The global L2 norm of all gradients of `module`'s parameters held in `grads`.
pub fn grad_norm<M: Module>(grads: &mut GradientsParams, module: &M) -> f64 {
    let mut v = NormVisitor {
        grads,
        sum_sq: None,
        host_sum_sq: 0.0,
    };
    module.visit(&mut v);
    let device_sum = v.sum_sq.map_or(0.0, |s| s.into_scalar_f64());
    (device_sum + v.host_sum_sq).sqrt()
}

/// Scales every gradient of `module` in `grads` by the same factor.
pub fn scale_grads<M: Module>(grads: &mut GradientsParams, module: &M, coef: f64) {
    let mut v = ScaleVisitor { grads, coef };
    module.visit(&mut v);
}

/// `torch.nn.utils.clip_grad_norm_`: scales all gradients so their global norm is at most
/// `max_norm`, and returns the norm before clipping.
pub fn clip_grad_norm<M: Module>(grads: &mut GradientsParams, module: &M, max_norm: f64) -> f64 {
    let total = grad_norm(&mut *grads, module);
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        scale_grads(grads, module, coef);
    }
    total
}

/// Reads a one-element tensor as f64 whatever its float dtype.
trait ScalarF64 {
    fn into_scalar_f64(self) -> f64;
}

impl ScalarF64 for Tensor<1> {
    fn into_scalar_f64(self) -> f64 {
        let data = self.into_data().convert::<f64>();
        data.as_slice::<f64>().map(|s| s[0]).unwrap_or(f64::NAN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
    use burn::tensor::{Device, TensorData};

    #[derive(Module, Debug)]
    struct Tiny {
        proj: Linear,
        ln_final: LayerNorm,
        logit_scale: Param<Tensor<1>>,
    }

    fn tiny(device: &Device) -> Tiny {
        Tiny {
            proj: LinearConfig::new(3, 2).init(device),
            ln_final: LayerNormConfig::new(2).init(device),
            logit_scale: Param::from_tensor(Tensor::from_data(TensorData::from([2.0f32]), device)),
        }
    }

    #[test]
    fn open_clip_decay_rule() {
        assert!(!exempt_from_decay(
            "visual.transformer.resblocks.0.mlp.c_fc.weight",
            2
        ));
        assert!(exempt_from_decay(
            "visual.transformer.resblocks.0.mlp.c_fc.bias",
            1
        ));
        assert!(exempt_from_decay("visual.ln_pre.gamma", 1));
        assert!(exempt_from_decay("visual.class_embedding", 1));
        assert!(exempt_from_decay("logit_scale", 1));
        assert!(!exempt_from_decay("text.positional_embedding", 2));
    }

    #[test]
    fn splits_weights_from_norms_biases_and_scale() {
        let device = Device::flex().autodiff();
        let m = tiny(&device);
        let s = split_params(&m);
        assert_eq!(s.decay, vec![m.proj.weight.id]);
        assert_eq!(s.no_decay.len(), 4, "{:?}", s.no_decay_paths);
        assert_eq!(s.trainable_values, 6 + 2 + 2 + 2 + 1);
        let frozen = split_params(&m.clone().no_grad());
        assert!(frozen.decay.is_empty() && frozen.no_decay.is_empty());
        assert_eq!(frozen.frozen_values, 13);
    }

    #[test]
    fn global_norm_clipping_matches_hand_computation() {
        let device = Device::flex().autodiff();
        let m = tiny(&device);
        // loss = sum(W) + 2 * logit_scale: grad W = ones (6 values), grad scale = 2.
        let loss = m.proj.weight.val().sum() + m.logit_scale.val().sum().mul_scalar(2.0);
        let mut grads = GradientsParams::from_grads(loss.backward(), &m);
        let total = clip_grad_norm(&mut grads, &m, 1.0);
        assert!((total - 10f64.sqrt()).abs() < 1e-6, "{total}");
        let after = grad_norm(&mut grads, &m);
        assert!((after - 1.0).abs() < 1e-5, "{after}");
        let g = grads.get::<1>(m.logit_scale.id).unwrap().into_data();
        let expect = 2.0 / (10f64.sqrt() + 1e-6);
        assert!((g.as_slice::<f32>().unwrap()[0] as f64 - expect).abs() < 1e-6);
        // Under the limit nothing changes.
        let before = grad_norm(&mut grads, &m);
        clip_grad_norm(&mut grads, &m, 5.0);
        assert!((grad_norm(&mut grads, &m) - before).abs() < 1e-7);
    }

    /// A gradient large enough for the parallel passes (300 x 300 = 5.5 chunks): its norm by
    /// hand, and clipping scales every element, in every chunk, by the same factor.
    #[test]
    fn parallel_norm_and_clipping_by_hand() {
        let device = Device::flex().autodiff();
        let lin = LinearConfig::new(300, 300).with_bias(false).init(&device);
        let n = 300 * 300;
        assert!(n > 5 * CHUNK);
        // loss = sum(W * c) with c_i = 1 + (i mod 2): grad = c, |grad|^2 = n/2 * (1 + 4).
        let c: Vec<f32> = (0..n).map(|i| 1.0 + (i % 2) as f32).collect();
        let c = Tensor::<2>::from_data(TensorData::new(c, [300, 300]), &device);
        let loss = (lin.weight.val() * c).sum();
        let mut grads = GradientsParams::from_grads(loss.backward(), &lin);
        let expect = (2.5 * n as f64).sqrt();
        let total = clip_grad_norm(&mut grads, &lin, 1.0);
        assert!(
            (total - expect).abs() < 1e-9 * expect,
            "{total} vs {expect}"
        );
        assert!((grad_norm(&mut grads, &lin) - 1.0).abs() < 1e-5);
        let coef = (1.0 / (expect + 1e-6)) as f32;
        let g = grads.get::<2>(lin.weight.id).unwrap().into_data();
        let g = g.as_slice::<f32>().unwrap();
        assert!(g
            .iter()
            .enumerate()
            .all(|(i, &v)| v == (1.0 + (i % 2) as f32) * coef));
    }

    #[test]
    fn no_decay_group_is_not_decayed() {
        let device = Device::flex().autodiff();
        let m = tiny(&device);
        let split = split_params(&m);
        let settings = AdamWSettings {
            weight_decay: 0.5,
            ..Default::default()
        };
        let mut opt = build_adamw(&settings, &split);
        let w0 = m.proj.weight.val().into_data();
        let s0 = m.logit_scale.val().into_data();
        // Zero gradients: Adam's update is 0, so only decay moves a parameter.
        let loss =
            m.proj.weight.val().sum().mul_scalar(0.0) + m.logit_scale.val().sum().mul_scalar(0.0);
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        let m = opt.step(0.1, m, grads);
        let w1 = m.proj.weight.val().into_data();
        let s1 = m.logit_scale.val().into_data();
        let w0 = w0.as_slice::<f32>().unwrap();
        let w1 = w1.as_slice::<f32>().unwrap();
        for (a, b) in w0.iter().zip(w1) {
            assert!((a * 0.95 - b).abs() < 1e-6, "{a} {b}");
        }
        assert_eq!(s0.as_slice::<f32>().unwrap(), s1.as_slice::<f32>().unwrap());
    }
}
