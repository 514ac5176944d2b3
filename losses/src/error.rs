//! Errors for bad input to distances, miners and losses.

use thiserror::Error;

/// Everything that can go wrong when a loss is asked to run on bad input.
///
/// These are the caller's data problems (shapes, labels, non-finite values,
/// configuration); programmer errors inside the crate panic instead.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum LossError {
    /// The embeddings and their labels disagree on the batch size.
    #[error("{side}: {embeddings} embeddings but {labels} labels")]
    LabelCount {
        /// `"anchors"` or `"references"`.
        side: &'static str,
        /// Rows of the embedding matrix.
        embeddings: usize,
        /// Length of the label slice.
        labels: usize,
    },
    /// Anchors and references have different embedding widths.
    #[error("anchors are {anchors}-d but references are {references}-d")]
    DimensionMismatch {
        /// Width of the anchor embeddings.
        anchors: usize,
        /// Width of the reference embeddings.
        references: usize,
    },
    /// An embedding row contains NaN or an infinity (found from the distance matrix).
    #[error("{side} embedding at row {row} is not finite (NaN or infinite values)")]
    NonFinite {
        /// `"anchor"` or `"reference"`.
        side: &'static str,
        /// The offending row.
        row: usize,
    },
    /// A margin has the wrong sign or order for the chosen distance.
    #[error("{loss}: {what} (distance {distance})")]
    BadMargin {
        /// The loss being configured.
        loss: &'static str,
        /// Which margin and what was expected.
        what: String,
        /// The distance's name.
        distance: &'static str,
    },
    /// A positive parameter (temperature, alpha, beta, logit scale) is zero, negative or not finite.
    #[error("{what} must be finite and > 0, got {value}")]
    NonPositive {
        /// The parameter's name.
        what: &'static str,
        /// The value given.
        value: f32,
    },
    /// A parameter that may have any sign (the sigmoid loss's bias) is NaN or infinite.
    #[error("{what} must be finite, got {value}")]
    NotFinite {
        /// The parameter's name.
        what: &'static str,
        /// The value given.
        value: f32,
    },
    /// The miner cannot produce the tuples this loss needs.
    #[error("the {loss} loss cannot use the `{miner}` miner: {why}")]
    UnsupportedMiner {
        /// The loss.
        loss: &'static str,
        /// The miner's name.
        miner: &'static str,
        /// Why not.
        why: &'static str,
    },
    /// A loss configuration sets a parameter that loss does not take.
    #[error("the {loss} loss has no `{parameter}` parameter (it takes {expected})")]
    UnknownParameter {
        /// The loss.
        loss: &'static str,
        /// The parameter given.
        parameter: &'static str,
        /// The parameters the loss takes.
        expected: String,
    },
    /// A string (CLI flag, config file) does not name a known distance, miner, loss or schedule.
    #[error("cannot parse {what} from {input:?}: {why}")]
    Parse {
        /// What was being parsed.
        what: &'static str,
        /// The text given.
        input: String,
        /// What was expected.
        why: String,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, LossError>;

impl LossError {
    /// [`LossError::LabelCount`] unless `rows` embeddings of `side` have as many `labels`.
    pub(crate) fn check_labels(side: &'static str, rows: usize, labels: usize) -> Result<()> {
        if rows == labels {
            return Ok(());
        }
        Err(LossError::LabelCount {
            side,
            embeddings: rows,
            labels,
        })
    }

    /// [`LossError::DimensionMismatch`] unless anchors and references are equally wide.
    pub(crate) fn check_widths(anchors: usize, references: usize) -> Result<()> {
        if anchors == references {
            return Ok(());
        }
        Err(LossError::DimensionMismatch {
            anchors,
            references,
        })
    }
}
