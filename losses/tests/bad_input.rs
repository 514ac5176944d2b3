//! Bad input is an error that says which, never a panic.

mod common;
use common::*;

use siam_losses::{
    ContrastiveLoss, Distance, Loss, LossError, Miner, MinerKind, PairwiseLoss, TripletLoss,
};

fn triplet() -> Loss {
    Loss::Triplet(TripletLoss::new(Distance::Euclidean, 0.2))
}

#[test]
fn mismatched_lengths_and_widths() {
    let dev = dev();
    let x = from_vec(&noise(12, 1), 4, 3, &dev);
    let y = from_vec(&noise(15, 2), 5, 3, &dev);
    let e = triplet()
        .forward(
            x.clone(),
            &[0, 1, 2],
            y.clone(),
            &[0; 5],
            &Miner::none(),
            None,
        )
        .unwrap_err();
    assert_eq!(
        e,
        LossError::LabelCount {
            side: "anchors",
            embeddings: 4,
            labels: 3
        }
    );
    let e = triplet()
        .forward(x.clone(), &[0; 4], y, &[0; 4], &Miner::none(), None)
        .unwrap_err();
    assert_eq!(
        e,
        LossError::LabelCount {
            side: "references",
            embeddings: 5,
            labels: 4
        }
    );
    let z = from_vec(&noise(10, 3), 5, 2, &dev);
    let e = triplet()
        .forward(x, &[0; 4], z, &[0; 5], &Miner::none(), None)
        .unwrap_err();
    assert_eq!(
        e,
        LossError::DimensionMismatch {
            anchors: 3,
            references: 2
        }
    );
    assert!(e.to_string().contains("3-d"));
}

#[test]
fn nan_and_infinite_embeddings_name_the_row() {
    let dev = dev();
    let mut a = noise(12, 1);
    a[7] = f32::NAN; // row 2 of 4 x 3
    let e = triplet()
        .forward_self(
            from_vec(&a, 4, 3, &dev),
            &[0, 0, 1, 1],
            &Miner::none(),
            None,
        )
        .unwrap_err();
    assert_eq!(
        e,
        LossError::NonFinite {
            side: "anchor",
            row: 2
        }
    );
    let mut r = noise(15, 2);
    r[13] = f32::INFINITY; // reference row 4 of 5 x 3
    for loss in [
        triplet(),
        Loss::Contrastive(ContrastiveLoss::new(Distance::Cosine)),
    ] {
        let e = loss
            .forward(
                from_vec(&noise(12, 1), 4, 3, &dev),
                &[0, 0, 1, 1],
                from_vec(&r, 5, 3, &dev),
                &[0, 1, 0, 1, 0],
                &Miner::none(),
                None,
            )
            .unwrap_err();
        assert_eq!(
            e,
            LossError::NonFinite {
                side: "reference",
                row: 4
            },
            "{}",
            loss.name()
        );
    }
}

#[test]
fn margins_of_the_wrong_sign_for_the_distance() {
    let dev = dev();
    let x = from_vec(&noise(12, 1), 4, 3, &dev);
    let l = [0, 0, 1, 1];
    let bad = [
        Loss::Triplet(TripletLoss::new(Distance::Cosine, -0.1)),
        // For a distance the negative margin must exceed the positive one...
        Loss::Pairwise(PairwiseLoss {
            pos_margin: 1.0,
            neg_margin: 0.5,
            ..PairwiseLoss::new(Distance::Euclidean)
        }),
        Loss::Pairwise(PairwiseLoss {
            pos_margin: -0.5,
            neg_margin: 0.5,
            ..PairwiseLoss::new(Distance::Euclidean)
        }),
        // ...and for a similarity the positive margin must exceed the negative one.
        Loss::Pairwise(PairwiseLoss {
            pos_margin: 0.0,
            neg_margin: 1.0,
            ..PairwiseLoss::new(Distance::Cosine)
        }),
    ];
    for loss in bad {
        let e = loss
            .forward_self(x.clone(), &l, &Miner::none(), None)
            .unwrap_err();
        assert!(matches!(e, LossError::BadMargin { .. }), "{e:?}");
    }
    let e = Loss::Contrastive(ContrastiveLoss {
        temperature: 0.0,
        ..ContrastiveLoss::new(Distance::Cosine)
    })
    .forward_self(x.clone(), &l, &Miner::none(), None)
    .unwrap_err();
    assert!(matches!(
        e,
        LossError::NonPositive {
            what: "temperature",
            ..
        }
    ));
    let e = Loss::Contrastive(ContrastiveLoss::new(Distance::Cosine))
        .forward_self(x, &l, &Miner::new(MinerKind::BatchHard), None)
        .unwrap_err();
    assert!(matches!(e, LossError::UnsupportedMiner { .. }));
}

#[test]
fn unknown_names_are_parse_errors() {
    assert!("hardest".parse::<Miner>().is_err());
    assert!("arcface".parse::<Loss>().is_err());
    assert!("manhattan".parse::<Distance>().is_err());
    assert_eq!("triplet".parse::<Loss>().unwrap().name(), "triplet");
    assert_eq!("hard@4".parse::<Miner>().unwrap().per_anchor_cap, Some(4));
}
