//! `siam::model::init`: a seeded initialisation draws the same weights while another thread
//! initialises and loads models through siam at the same time, and the lock is re-entrant on
//! its own thread. (Its own test binary: any unlocked draw elsewhere in the process, such as a
//! bare `Tensor::random` in another test, would be a legitimate interleaving.)

use burn::tensor::Device;
use siam::clip::config::ClipConfig;
use siam::clip::model::Clip;
use siam::model::init::{lock_seeded, seeded, shell};

fn first_weights(m: &Clip) -> Vec<f32> {
    m.text
        .token_embedding
        .weight
        .val()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
}

#[test]
fn the_same_seed_gives_the_same_model_while_other_threads_initialise() {
    let d = Device::flex();
    let cfg = ClipConfig::tiny();
    let a = first_weights(&seeded(&d, 5, || Clip::new(&cfg, &d)));
    let noise = std::thread::spawn({
        let (d, cfg) = (d.clone(), cfg.clone());
        move || {
            for _ in 0..20 {
                shell(|| Clip::new(&cfg, &d));
            }
        }
    });
    let mut others = Vec::new();
    for _ in 0..5 {
        others.push(first_weights(&seeded(&d, 5, || Clip::new(&cfg, &d))));
    }
    noise.join().unwrap();
    let b = first_weights(&seeded(&d, 6, || Clip::new(&cfg, &d)));
    assert_ne!(a, b, "another seed drew the same weights");
    for o in others {
        assert_eq!(a, o);
    }
}

#[test]
fn the_lock_is_reentrant_on_its_thread() {
    let d = Device::flex();
    let _outer = lock_seeded(&d, 1);
    let m = shell(|| Clip::new(&ClipConfig::tiny(), &d));
    assert!(!first_weights(&m).is_empty());
}
