//! [`LossConfig`]: a loss parsed once from its name and parameters; the defaults of every
//! parameter are the losses' own ([`TripletLoss::DEFAULT_MARGIN`],
//! [`PairwiseLoss::SIMILARITY_MARGINS`], [`ContrastiveLoss::DEFAULT_TEMPERATURE`],
//! [`MultiSimilarityLoss::new`]) and are defined nowhere else.

use std::fmt;
use std::str::FromStr;

use crate::distance::Distance;
use crate::error::{LossError, Result};
use crate::miner::HardnessSchedule;

use super::{ContrastiveLoss, Loss, MultiSimilarityLoss, PairwiseLoss, SigmoidLoss, TripletLoss};

/// Which loss, by its command-line name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LossKind {
    /// `contrastive` (also `infonce`, `clip`): [`ContrastiveLoss`].
    Contrastive,
    /// `pairwise`: [`PairwiseLoss`].
    Pairwise,
    /// `triplet`: [`TripletLoss`].
    Triplet,
    /// `multi-similarity` (also `ms`): [`MultiSimilarityLoss`].
    MultiSimilarity,
    /// `sigmoid` (also `siglip`): [`SigmoidLoss`].
    Sigmoid,
}

impl LossKind {
    /// Every loss, in the order `--help` lists them.
    pub const ALL: [LossKind; 5] = [
        LossKind::Contrastive,
        LossKind::Pairwise,
        LossKind::Triplet,
        LossKind::MultiSimilarity,
        LossKind::Sigmoid,
    ];

    /// The command-line name.
    pub fn name(&self) -> &'static str {
        match self {
            LossKind::Contrastive => "contrastive",
            LossKind::Pairwise => "pairwise",
            LossKind::Triplet => "triplet",
            LossKind::MultiSimilarity => "multi-similarity",
            LossKind::Sigmoid => "sigmoid",
        }
    }

    /// The miner schedule used when none is given: batch-all (mean over active triplets) for
    /// the triplet loss, every pair for pairwise and contrastive, and multi-similarity mining
    /// for the multi-similarity loss (its paper's pairing).
    pub fn default_miner(&self) -> HardnessSchedule {
        let name = match self {
            LossKind::Triplet | LossKind::Pairwise => "all",
            LossKind::Contrastive | LossKind::Sigmoid => "none",
            LossKind::MultiSimilarity => "multi-similarity",
        };
        name.parse().expect("the default miners parse")
    }

    /// The parameters this loss takes (names as in [`LossConfig`]'s text form).
    pub fn parameters(&self) -> &'static [&'static str] {
        match self {
            LossKind::Contrastive => &["distance", "temperature"],
            LossKind::Pairwise => &["distance", "pos-margin", "neg-margin"],
            LossKind::Triplet => &["distance", "margin"],
            LossKind::MultiSimilarity => &["distance", "alpha", "beta", "base"],
            LossKind::Sigmoid => &["distance", "logit-scale", "logit-bias"],
        }
    }
}

impl Default for LossKind {
    /// The triplet loss: what `siam train` trains with when no loss is named.
    fn default() -> Self {
        LossKind::Triplet
    }
}

impl FromStr for LossKind {
    type Err = LossError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "contrastive" | "infonce" | "clip" => Ok(LossKind::Contrastive),
            "pairwise" => Ok(LossKind::Pairwise),
            "triplet" => Ok(LossKind::Triplet),
            "multi-similarity" | "ms" => Ok(LossKind::MultiSimilarity),
            "sigmoid" | "siglip" => Ok(LossKind::Sigmoid),
            _ => Err(LossError::Parse {
                what: "loss",
                input: s.into(),
                why: "expected contrastive | pairwise | triplet | multi-similarity | sigmoid"
                    .into(),
            }),
        }
    }
}

impl fmt::Display for LossKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A loss's configuration: which loss, on which distance, and the parameters that were set.
/// A parameter left `None` takes the loss's own default; a parameter the loss does not take
/// is an error in [`LossConfig::init`], not silently ignored.
///
/// Text form (`FromStr` / `Display`, so it can sit in a config file or on a command line):
/// the name, optionally followed by `:key=value,...`, e.g. `triplet`, `triplet:margin=0.3`,
/// `pairwise:pos-margin=0.8,neg-margin=0.3`, `contrastive:temperature=0.05,distance=dot`.
///
/// | loss | parameter | default |
/// |---|---|---|
/// | all | `distance` | cosine |
/// | `triplet` | `margin` | [`TripletLoss::DEFAULT_MARGIN`] = 0.2 |
/// | `pairwise` | `pos-margin`, `neg-margin` | 0.8, 0.3 for a similarity; 0, 1 for a distance |
/// | `contrastive` | `temperature` | [`ContrastiveLoss::DEFAULT_TEMPERATURE`] = 0.07 |
/// | `multi-similarity` | `alpha`, `beta`, `base` | 2, 50, 0.5 |
/// | `sigmoid` | `logit-scale` (`t'`), `logit-bias` (`b`) | ln 10, −10 (SigLIP's initialisation) |
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossConfig {
    /// Which loss.
    pub kind: LossKind,
    /// The distance (cosine by default).
    pub distance: Distance,
    /// Triplet margin `m`.
    pub margin: Option<f32>,
    /// Pairwise positive margin `m₊`.
    pub pos_margin: Option<f32>,
    /// Pairwise negative margin `m₋`.
    pub neg_margin: Option<f32>,
    /// Contrastive temperature τ (without a learnable logit scale; the initial scale with one).
    pub temperature: Option<f32>,
    /// Multi-similarity α.
    pub alpha: Option<f32>,
    /// Multi-similarity β.
    pub beta: Option<f32>,
    /// Multi-similarity base λ.
    pub base: Option<f32>,
    /// Sigmoid log logit scale `t'` (its initial value when learnable).
    pub logit_scale: Option<f32>,
    /// Sigmoid logit bias `b` (its initial value when learnable).
    pub logit_bias: Option<f32>,
}

impl LossConfig {
    /// `kind` on cosine similarity with every default.
    pub fn new(kind: LossKind) -> Self {
        Self {
            kind,
            distance: Distance::Cosine,
            margin: None,
            pos_margin: None,
            neg_margin: None,
            temperature: None,
            alpha: None,
            beta: None,
            base: None,
            logit_scale: None,
            logit_bias: None,
        }
    }

    /// The parameters that are set, as `(text name, value)`.
    fn set_parameters(&self) -> Vec<(&'static str, f32)> {
        [
            ("margin", self.margin),
            ("pos-margin", self.pos_margin),
            ("neg-margin", self.neg_margin),
            ("temperature", self.temperature),
            ("alpha", self.alpha),
            ("beta", self.beta),
            ("base", self.base),
            ("logit-scale", self.logit_scale),
            ("logit-bias", self.logit_bias),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }

    /// The loss with every default filled in and every value checked.
    pub fn init(&self) -> Result<Loss> {
        if let Some((name, _)) = self
            .set_parameters()
            .into_iter()
            .find(|(k, _)| !self.kind.parameters().contains(k))
        {
            return Err(LossError::UnknownParameter {
                loss: self.kind.name(),
                parameter: name,
                expected: self.kind.parameters().join(", "),
            });
        }
        let d = self.distance;
        let loss = match self.kind {
            LossKind::Contrastive => {
                let mut l = ContrastiveLoss::new(d);
                l.temperature = self.temperature.unwrap_or(l.temperature);
                Loss::Contrastive(l)
            }
            LossKind::Pairwise => {
                let mut l = PairwiseLoss::new(d);
                l.pos_margin = self.pos_margin.unwrap_or(l.pos_margin);
                l.neg_margin = self.neg_margin.unwrap_or(l.neg_margin);
                Loss::Pairwise(l)
            }
            LossKind::Triplet => Loss::Triplet(TripletLoss::new(
                d,
                self.margin.unwrap_or(TripletLoss::DEFAULT_MARGIN),
            )),
            LossKind::MultiSimilarity => {
                let mut l = MultiSimilarityLoss::new(d);
                l.alpha = self.alpha.unwrap_or(l.alpha);
                l.beta = self.beta.unwrap_or(l.beta);
                l.base = self.base.unwrap_or(l.base);
                Loss::MultiSimilarity(l)
            }
            LossKind::Sigmoid => {
                let mut l = SigmoidLoss::new(d);
                l.logit_scale = self.logit_scale.unwrap_or(l.logit_scale);
                l.logit_bias = self.logit_bias.unwrap_or(l.logit_bias);
                Loss::Sigmoid(l)
            }
        };
        loss.validate_parameters()?;
        Ok(loss)
    }

    /// The miner schedule this loss uses when none is given ([`LossKind::default_miner`]).
    pub fn default_miner(&self) -> HardnessSchedule {
        self.kind.default_miner()
    }

    fn set(&mut self, key: &str, value: &str, input: &str) -> Result<()> {
        let bad = |why: String| LossError::Parse {
            what: "loss",
            input: input.into(),
            why,
        };
        if key == "distance" {
            self.distance = value.parse()?;
            return Ok(());
        }
        let v: f32 = value
            .parse()
            .ok()
            .filter(|v: &f32| v.is_finite())
            .ok_or_else(|| {
                bad(format!(
                    "`{key}={value}`: the value must be a finite number"
                ))
            })?;
        let slot = match key {
            "margin" => &mut self.margin,
            "pos-margin" | "pos_margin" => &mut self.pos_margin,
            "neg-margin" | "neg_margin" => &mut self.neg_margin,
            "temperature" => &mut self.temperature,
            "alpha" => &mut self.alpha,
            "beta" => &mut self.beta,
            "base" => &mut self.base,
            "logit-scale" | "logit_scale" => &mut self.logit_scale,
            "logit-bias" | "logit_bias" => &mut self.logit_bias,
            _ => {
                return Err(bad(format!(
                    "unknown parameter `{key}` (the {} loss takes {})",
                    self.kind,
                    self.kind.parameters().join(", ")
                )))
            }
        };
        *slot = Some(v);
        Ok(())
    }
}

impl Loss {
    /// Checks the parameters that do not depend on the miner.
    fn validate_parameters(&self) -> Result<()> {
        match self {
            Loss::Contrastive(l) => l.validate(&crate::miner::Miner::none()),
            Loss::Pairwise(l) => l.validate(),
            Loss::Triplet(l) => l.validate(),
            Loss::MultiSimilarity(l) => l.validate(),
            Loss::Sigmoid(l) => l.validate(&crate::miner::Miner::none()),
        }
    }
}

impl Default for LossConfig {
    /// The default loss ([`LossKind::default`], triplet) with every default.
    fn default() -> Self {
        Self::new(LossKind::default())
    }
}

impl From<LossKind> for LossConfig {
    fn from(kind: LossKind) -> Self {
        Self::new(kind)
    }
}

impl FromStr for LossConfig {
    type Err = LossError;

    /// `name[:key=value,...]`; see [`LossConfig`].
    fn from_str(s: &str) -> Result<Self> {
        let (name, params) = match s.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (s, None),
        };
        let mut cfg = LossConfig::new(name.parse().map_err(|_| {
            LossError::Parse {
                what: "loss",
                input: s.into(),
                why:
                    "expected contrastive | pairwise | triplet | multi-similarity | sigmoid [:key=value,...]"
                        .into(),
            }
        })?);
        for kv in params.into_iter().flat_map(|p| p.split(',')) {
            let Some((k, v)) = kv.split_once('=') else {
                return Err(LossError::Parse {
                    what: "loss",
                    input: s.into(),
                    why: format!("`{kv}`: expected key=value"),
                });
            };
            cfg.set(k.trim().to_ascii_lowercase().as_str(), v.trim(), s)?;
        }
        Ok(cfg)
    }
}

impl fmt::Display for LossConfig {
    /// The text form [`FromStr`] reads back: the name, then the distance when it is not
    /// cosine and every parameter that is set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.name())?;
        let mut sep = ':';
        if self.distance != Distance::Cosine {
            write!(f, "{sep}distance={}", self.distance)?;
            sep = ',';
        }
        for (k, v) in self.set_parameters() {
            write!(f, "{sep}{k}={v}")?;
            sep = ',';
        }
        Ok(())
    }
}

// Stored in its text form (`Display` / `FromStr`).
serde_as_text!(LossConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_losses() {
        match "triplet".parse::<LossConfig>().unwrap().init().unwrap() {
            Loss::Triplet(t) => assert_eq!(t.margin, 0.2),
            other => panic!("{other:?}"),
        }
        match "pairwise".parse::<Loss>().unwrap() {
            Loss::Pairwise(p) => assert_eq!((p.pos_margin, p.neg_margin), (0.8, 0.3)),
            other => panic!("{other:?}"),
        }
        match "pairwise:distance=euclidean".parse::<Loss>().unwrap() {
            Loss::Pairwise(p) => assert_eq!((p.pos_margin, p.neg_margin), (0.0, 1.0)),
            other => panic!("{other:?}"),
        }
        match "sigmoid".parse::<Loss>().unwrap() {
            Loss::Sigmoid(s) => assert_eq!((s.logit_scale, s.logit_bias), (10f32.ln(), -10.0)),
            other => panic!("{other:?}"),
        }
        match "clip".parse::<Loss>().unwrap() {
            Loss::Contrastive(c) => assert_eq!(c.temperature, 0.07),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parameters_parse_and_round_trip() {
        let c: LossConfig = "Triplet: margin = 0.35".parse().unwrap();
        assert_eq!(c.margin, Some(0.35));
        assert_eq!(c.to_string(), "triplet:margin=0.35");
        let c: LossConfig = "pairwise:distance=dot,pos-margin=0.9,neg-margin=0.1"
            .parse()
            .unwrap();
        assert_eq!(c.to_string().parse::<LossConfig>().unwrap(), c);
        assert_eq!(
            LossConfig::new(LossKind::MultiSimilarity).to_string(),
            "multi-similarity"
        );
    }

    #[test]
    fn parameters_of_another_loss_are_errors() {
        let mut c = LossConfig::new(LossKind::Contrastive);
        c.margin = Some(0.3);
        let e = c.init().unwrap_err().to_string();
        assert!(e.contains("contrastive") && e.contains("margin"), "{e}");
        assert!("triplet:margin".parse::<LossConfig>().is_err());
        assert!("triplet:margin=abc".parse::<LossConfig>().is_err());
        assert!("triplet:gamma=1".parse::<LossConfig>().is_err());
        assert!("triplet:margin=-1".parse::<Loss>().is_err());
    }

    #[test]
    fn default_miners() {
        assert_eq!(LossKind::Triplet.default_miner().to_string(), "all");
        assert_eq!(LossKind::Contrastive.default_miner().to_string(), "none");
        assert_eq!(
            LossKind::MultiSimilarity.default_miner().to_string(),
            "multi-similarity"
        );
    }
}
