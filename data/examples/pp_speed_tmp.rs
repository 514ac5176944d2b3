use std::time::Instant;
use siam_data::preprocess::Preprocessor;
fn main() {
    let pre = Preprocessor::clip(224);
    for f in std::env::args().skip(1) {
        let p = std::path::Path::new(&f);
        let bytes = std::fs::read(p).unwrap();
        let n = 20;
        let _ = pre.load(p).unwrap();
        let t = Instant::now();
        for _ in 0..n { std::hint::black_box(pre.decode_bytes(&bytes, "x").unwrap()); }
        let dec = t.elapsed().as_secs_f64() / n as f64 * 1e3;
        let img = pre.decode_bytes(&bytes, "x").unwrap();
        let t = Instant::now();
        for _ in 0..n { std::hint::black_box(pre.resize_crop(&img)); }
        let rc = t.elapsed().as_secs_f64() / n as f64 * 1e3;
        let c = pre.resize_crop(&img);
        let mut out = vec![0f32; pre.output_len()];
        let t = Instant::now();
        for _ in 0..n { pre.normalize_into(&c, &mut out); std::hint::black_box(&out); }
        let nm = t.elapsed().as_secs_f64() / n as f64 * 1e3;
        let t = Instant::now();
        for _ in 0..n { std::hint::black_box(pre.load(p).unwrap()); }
        let all = t.elapsed().as_secs_f64() / n as f64 * 1e3;
        println!("{f}: decode {dec:.2} ms, resize_crop {rc:.2} ms, normalize {nm:.3} ms, load total {all:.2} ms");
    }
}
