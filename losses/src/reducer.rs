//! Reducers: how per-tuple losses become one number (pytorch-metric-learning `reducers/`).

use std::str::FromStr;

use crate::error::LossError;

/// How per-tuple (or per-row) losses are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reducer {
    /// Mean over every mined tuple, zero losses included (PML `MeanReducer`).
    Mean,
    /// Sum over tuples (PML `SumReducer`).
    Sum,
    /// Mean over the tuples with a strictly positive loss (PML `AvgNonZeroReducer`):
    /// easy tuples do not dilute the gradient as training progresses.
    MeanNonZero,
}

impl Reducer {
    /// The divisor for a sum of losses over `total` tuples of which `nonzero` are active;
    /// `None` when nothing is left to average (the loss is then zero).
    pub fn divisor(&self, total: usize, nonzero: usize) -> Option<f64> {
        self.weighted_divisor(total as f64, nonzero as f64)
    }

    /// [`Reducer::divisor`] for weighted tuples (see [`crate::Weights`]): `total` is the sum
    /// of every tuple's anchor weight, `nonzero` that of the tuples with a positive loss;
    /// with unit weights these are the counts, and the divisor is the unweighted one.
    pub fn weighted_divisor(&self, total: f64, nonzero: f64) -> Option<f64> {
        let n = match self {
            Reducer::Mean => total,
            Reducer::Sum => return (total > 0.0).then_some(1.0),
            Reducer::MeanNonZero => nonzero,
        };
        (n > 0.0).then_some(n)
    }
}

impl FromStr for Reducer {
    type Err = LossError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mean" => Ok(Reducer::Mean),
            "sum" => Ok(Reducer::Sum),
            "mean-nonzero" | "avg-nonzero" | "nonzero" => Ok(Reducer::MeanNonZero),
            _ => Err(LossError::Parse {
                what: "reducer",
                input: s.into(),
                why: "expected mean | sum | mean-nonzero".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divisors() {
        assert_eq!(Reducer::Mean.divisor(10, 3), Some(10.0));
        assert_eq!(Reducer::MeanNonZero.divisor(10, 3), Some(3.0));
        assert_eq!(Reducer::MeanNonZero.divisor(10, 0), None);
        assert_eq!(Reducer::Sum.divisor(10, 0), Some(1.0));
        assert_eq!(Reducer::Sum.divisor(0, 0), None);
        assert_eq!(Reducer::Mean.weighted_divisor(2.5, 1.0), Some(2.5));
        assert_eq!(Reducer::MeanNonZero.weighted_divisor(2.5, 0.0), None);
    }
}
