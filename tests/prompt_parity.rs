//! CoOp prompt learning against the Python reference (`tests/fixtures/prompt/make_coop_fixtures.py`,
//! CoOp's `PromptLearner` + `TextEncoder` on the tiny open_clip model): for the same context
//! vectors, siam's logits and the gradient of the cross-entropy with respect to the context match
//! within 1e-4, for the class token at the end (unified context), in the middle (class-specific)
//! and at the front (initialised from "a photo of a"); with the positional embedding learned
//! too (`--prompt-train positional`), the gradient with respect to it matches within 1e-4 of its
//! largest entry.

use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use siam::model::encoder::{to_vec, Encoder};
use siam::prompt::learner::{ClassPosition, ClassPrompts, PromptLearner, PromptTrain};
use siam::prompt::train::cross_entropy;
use siam::prompt::{LearnedPrompts, PromptCard};

const TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A little-endian f32 `.npy` array of any rank: `(values, shape)`.
fn npy(path: &Path) -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}", path.display());
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    assert!(header.contains("'<f4'"), "{header}");
    let shape: Vec<usize> = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let values = bytes[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (values, shape)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check_case(name: &str, train: PromptTrain) {
    let dir = fixtures().join("prompt").join(name);
    let model_dir = fixtures().join("clip/open_clip_vit");
    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let device = siam::device::from_env().autodiff();
    let config = model_dir.join("open_clip_config.json");
    let enc = Encoder::load(
        &model_dir.join("model.safetensors"),
        Some(config.to_str().unwrap()),
        &device,
    )
    .unwrap();
    let classes: Vec<String> = case["classnames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let labels: Vec<usize> = case["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_u64().unwrap() as usize)
        .collect();
    let n_ctx = case["n_ctx"].as_u64().unwrap() as usize;
    let position: ClassPosition = case["position"].as_str().unwrap().parse().unwrap();
    let init = case["ctx_init"].as_str().unwrap();
    let prefix = if init.is_empty() {
        vec!["X"; n_ctx].join(" ")
    } else {
        init.to_string()
    };
    let prompts =
        ClassPrompts::new(&enc.tokenizer, &classes, &prefix, n_ctx, position, 77).unwrap();
    let (ctx, shape) = npy(&dir.join("ctx.npy"));
    let (groups, width) = match shape.as_slice() {
        [n, w] => {
            assert_eq!(*n, n_ctx);
            (1, *w)
        }
        [c, n, w] => {
            assert_eq!(*n, n_ctx);
            (*c, *w)
        }
        s => panic!("ctx shape {s:?}"),
    };
    let mut learner = PromptLearner::from_values(ctx, groups, n_ctx, width, &device);
    learner.ctx = Param::from_tensor(learner.ctx.val().require_grad());
    if !init.is_empty() {
        // siam's phrase init gives the same starting context as CoOp's ctx_init.
        let from_phrase = PromptLearner::from_phrase(
            &enc.tokenizer,
            &enc.model.clip.text.token_embedding,
            init,
            groups,
            77,
            &device,
        )
        .unwrap();
        let d = max_abs_diff(&to_vec(from_phrase.ctx.val()), &to_vec(learner.ctx.val()));
        assert!(d < 1e-6, "{name}: phrase init differs by {d}");
    }
    if train == PromptTrain::Positional {
        learner = learner.with_positional(enc.model.clip.text.positional_embedding.val());
    }
    let lp = LearnedPrompts {
        card: PromptCard {
            classes: classes.clone(),
            n_ctx,
            class_specific: groups > 1,
            position,
            prefix,
            init: None,
            train,
            training: serde_json::Value::Null,
        },
        learner,
    };
    let (pixels, pshape) = npy(&model_dir.join("pixel_values.npy"));
    let px = Tensor::<4>::from_data(
        TensorData::new(pixels, [pshape[0], pshape[1], pshape[2], pshape[3]]),
        &device,
    );
    let img = enc.encode_images(px);
    let txt = lp.class_tensor(&enc.model, &prompts);
    let logits = img.matmul(txt.transpose()) * enc.model.logit_scale().exp().unsqueeze::<2>();
    let (want_logits, _) = npy(&dir.join("logits.npy"));
    let d = max_abs_diff(&to_vec(logits.clone()), &want_logits);
    assert!(d < TOL, "{name}: logits differ by {d}");
    let loss = cross_entropy(logits, &labels, &vec![1.0; labels.len()]);
    let (want_loss, _) = npy(&dir.join("loss.npy"));
    let got_loss = to_vec(loss.clone().unsqueeze::<2>())[0];
    assert!(
        (got_loss - want_loss[0]).abs() < TOL,
        "{name}: loss {got_loss} vs {}",
        want_loss[0]
    );
    let mut grads = GradientsParams::from_grads(loss.backward(), &lp.learner);
    let g: Tensor<3> = grads.remove(lp.learner.ctx.id).expect("a gradient for ctx");
    let (want_grad, _) = npy(&dir.join("grad.npy"));
    let d = max_abs_diff(&to_vec(g), &want_grad);
    assert!(d < TOL, "{name}: d loss / d ctx differs by {d}");
    if let Some(p) = &lp.learner.positional {
        let g: Tensor<2> = grads
            .remove(p.id)
            .expect("a gradient for the positional embedding");
        let (want, shape) = npy(&dir.join("grad_pos.npy"));
        assert_eq!(
            g.dims().to_vec(),
            shape,
            "{name}: positional embedding shape"
        );
        let scale = max_abs(&want);
        assert!(
            scale > 1e-3,
            "{name}: the reference gradient is not trivial"
        );
        // Each entry sums every class prompt's contribution (up to 72 here, where f32 holds
        // 5 significant digits): within 1e-4 of the largest entry.
        let d = max_abs_diff(&to_vec(g), &want) / scale;
        assert!(
            d < TOL,
            "{name}: d loss / d positional embedding differs by {d} (relative)"
        );
    }
}

fn max_abs(x: &[f32]) -> f32 {
    x.iter().fold(0.0, |a, v| a.max(v.abs()))
}

#[test]
fn class_token_at_the_end_unified_context() {
    check_case("end_unified", PromptTrain::Context);
}

#[test]
fn class_token_in_the_middle_class_specific_context() {
    check_case("middle_csc", PromptTrain::Context);
}

#[test]
fn class_token_in_front_context_from_a_phrase() {
    check_case("front_init", PromptTrain::Context);
}

#[test]
fn positional_embedding_gradient_at_every_position() {
    for name in ["end_unified", "middle_csc", "front_init"] {
        check_case(name, PromptTrain::Positional);
    }
}

/// A learned positional embedding is saved with the prompts, read back, and used whenever the
/// prompts are embedded (the class embeddings change with it and survive the round trip).
#[test]
fn learned_positional_embedding_is_saved_and_used() {
    let model_dir = fixtures().join("clip/open_clip_vit");
    let device = siam::device::from_env();
    let config = model_dir.join("open_clip_config.json");
    let enc = Encoder::load(
        &model_dir.join("model.safetensors"),
        Some(config.to_str().unwrap()),
        &device,
    )
    .unwrap();
    let text = &enc.model.clip.text;
    let width = text.token_embedding.weight.dims()[1];
    let context = text.context_length();
    let classes = vec!["cat".to_string(), "red circle".to_string()];
    let prompts =
        ClassPrompts::new(&enc.tokenizer, &classes, "X X", 2, ClassPosition::End, 77).unwrap();
    let ctx: Vec<f32> = (0..2 * width)
        .map(|i| ((i % 7) as f32 - 3.0) * 0.01)
        .collect();
    let card = |train| PromptCard {
        classes: classes.clone(),
        n_ctx: 2,
        class_specific: false,
        position: ClassPosition::End,
        prefix: "X X".into(),
        init: None,
        train,
        training: serde_json::Value::Null,
    };
    let plain = LearnedPrompts {
        card: card(PromptTrain::Context),
        learner: PromptLearner::from_values(ctx.clone(), 1, 2, width, &device),
    };
    // The tower's table, moved as training would (a constant shift would change nothing: every
    // layer norm removes it).
    let shifted = text.positional_embedding.val().mul_scalar(3.0);
    let learned = LearnedPrompts {
        card: card(PromptTrain::Positional),
        learner: PromptLearner::from_values(ctx, 1, 2, width, &device).with_positional(shifted),
    };
    let a = to_vec(plain.class_tensor(&enc.model, &prompts));
    let b = to_vec(learned.class_tensor(&enc.model, &prompts));
    assert!(
        max_abs_diff(&a, &b) > 1e-3,
        "the positional embedding is not used"
    );
    let dir = tempfile::tempdir().unwrap();
    learned.save(dir.path()).unwrap();
    let back = LearnedPrompts::load(dir.path(), width, context, &device)
        .unwrap()
        .expect("prompts in the folder");
    assert_eq!(back.card.train, PromptTrain::Positional);
    let c = to_vec(back.class_tensor(&enc.model, &prompts));
    assert!(
        max_abs_diff(&b, &c) < 1e-6,
        "the saved positional embedding differs"
    );
}
