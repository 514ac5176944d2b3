//! The sigmoid loss against open_clip's `SigLipLoss` (plain cases) and its label-aware variant
//! written on open_clip's `get_logits` (label cases), from `fixtures/make_siglip_fixtures.py`
//! (committed beside `fixtures/siglip_fixtures.json`): loss values and gradients with respect
//! to both embeddings, the log scale `t'` and the bias `b`, within 1e-5.

mod common;

use burn::tensor::Tensor;
use serde_json::Value;
use siam_losses::{Distance, LogitParams, Loss, Miner, SigmoidLoss};

fn fixtures() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/siglip_fixtures.json"
    );
    let text = std::fs::read_to_string(path).expect("fixture file (run make_siglip_fixtures.py)");
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    v["cases"].as_array().expect("cases").clone()
}

fn f(v: &Value) -> f32 {
    v.as_f64().expect("number") as f32
}

fn matrix(v: &Value) -> (Vec<f32>, usize, usize) {
    let rows = v.as_array().expect("rows");
    let d = rows[0].as_array().unwrap().len();
    let flat = rows
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(f))
        .collect();
    (flat, rows.len(), d)
}

fn labels(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn worst(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

#[test]
fn sigmoid_loss_agrees_with_open_clip() {
    let dev = common::dev();
    let cases = fixtures();
    assert!(cases.iter().filter(|c| c["kind"] == "plain").count() >= 2);
    assert!(cases.iter().filter(|c| c["kind"] == "labels").count() >= 2);
    let loss = Loss::Sigmoid(SigmoidLoss::new(Distance::Cosine));
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let (xi, n, d) = matrix(&case["images"]);
        let (xt, r, _) = matrix(&case["texts"]);
        let img = common::from_vec(&xi, n, d, &dev).require_grad();
        let txt = common::from_vec(&xt, r, d, &dev).require_grad();
        let t = Tensor::<1>::from_floats([f(&case["logit_scale"])], &dev).require_grad();
        let b = Tensor::<1>::from_floats([f(&case["logit_bias"])], &dev).require_grad();
        let params = LogitParams {
            scale: Some(t.clone()),
            bias: Some(b.clone()),
        };
        let out = loss
            .forward_with(
                img.clone(),
                &labels(&case["labels"]),
                txt.clone(),
                &labels(&case["ref_labels"]),
                &Miner::none(),
                params,
            )
            .unwrap();
        let mut check = |what: &str, got: Vec<f32>, want: Vec<f32>| {
            let w = worst(&got, &want);
            if w > 1e-5 {
                failures.push(format!("{name}: {what} differs by {w:.3e}"));
            }
        };
        check(
            "loss",
            vec![common::scalar(out.loss.clone())],
            vec![f(&case["loss"])],
        );
        let grads = out.loss.backward();
        let g2 = |x: &Tensor<2>| {
            x.grad(&grads)
                .unwrap()
                .into_data()
                .try_into_vec::<f32>()
                .unwrap()
        };
        let g1 = |x: &Tensor<1>| {
            x.grad(&grads)
                .unwrap()
                .into_data()
                .try_into_vec::<f32>()
                .unwrap()
        };
        check("grad images", g2(&img), matrix(&case["grad_images"]).0);
        check("grad texts", g2(&txt), matrix(&case["grad_texts"]).0);
        check("grad t'", g1(&t), vec![f(&case["grad_logit_scale"])]);
        check("grad b", g1(&b), vec![f(&case["grad_logit_bias"])]);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn fixed_parameters_are_the_siglip_initialisation() {
    // Without learnable parameters the loss uses t' = ln 10, b = -10: the same value as
    // passing those as tensors.
    let dev = common::dev();
    let loss: Loss = "sigmoid".parse().unwrap();
    let lab = [0, 1, 2, 0];
    let x = common::from_vec(&common::noise(16, 7), 4, 4, &dev);
    let y = common::from_vec(&common::noise(16, 8), 4, 4, &dev);
    let fixed = loss
        .forward(x.clone(), &lab, y.clone(), &lab, &Miner::none(), None)
        .unwrap();
    let params = LogitParams {
        scale: Some(Tensor::<1>::from_floats([10f32.ln()], &dev)),
        bias: Some(Tensor::<1>::from_floats([-10f32], &dev)),
    };
    let learned = loss
        .forward_with(x, &lab, y, &lab, &Miner::none(), params)
        .unwrap();
    let (a, b) = (common::scalar(fixed.loss), common::scalar(learned.loss));
    assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    assert!(a > 0.0);
}
