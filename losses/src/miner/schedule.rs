//! The hardness schedule: which miner at which epoch.

use std::fmt;
use std::str::FromStr;

use crate::error::LossError;

use super::{parse_err, Miner};

/// Which miner to use at which epoch: hardest-negative mining from the start is known to
/// collapse (Schroff et al. 2015 §3.2; Hermans et al. 2017), so start easier, then harden.
///
/// Parsed from `"semihard:2,hard"`: semi-hard for epochs `< 2`, then batch-hard. Each stage
/// but the last is `miner:until_epoch`; a single miner name is a one-stage schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct HardnessSchedule {
    /// `(miner, first epoch after this stage)`; the last stage has `None` (forever).
    pub stages: Vec<(Miner, Option<usize>)>,
}

impl HardnessSchedule {
    /// A one-stage schedule.
    pub fn constant(miner: Miner) -> Self {
        Self {
            stages: vec![(miner, None)],
        }
    }

    /// The miner for 0-based `epoch`.
    pub fn miner_for_epoch(&self, epoch: usize) -> &Miner {
        self.stages
            .iter()
            .find(|(_, until)| until.is_none_or(|u| epoch < u))
            .map(|(m, _)| m)
            .unwrap_or_else(|| {
                &self
                    .stages
                    .last()
                    .expect("a schedule has at least one stage")
                    .0
            })
    }
}

impl FromStr for HardnessSchedule {
    type Err = LossError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let mut stages = Vec::with_capacity(parts.len());
        let mut last_until = 0usize;
        for (i, part) in parts.iter().enumerate() {
            let is_last = i + 1 == parts.len();
            match part.rsplit_once(':') {
                Some((name, until)) => {
                    let until: usize = until.trim().parse().map_err(|_| {
                        parse_err(
                            "hardness schedule",
                            s,
                            format!("`{part}`: the epoch after `:` must be an integer"),
                        )
                    })?;
                    if until <= last_until && i > 0 {
                        return Err(parse_err(
                            "hardness schedule",
                            s,
                            "stage epochs must increase",
                        ));
                    }
                    last_until = until;
                    stages.push((name.parse()?, Some(until)));
                }
                None if is_last => stages.push((part.parse()?, None)),
                None => {
                    return Err(parse_err(
                        "hardness schedule",
                        s,
                        format!("`{part}` needs `:epoch` (only the last stage may omit it)"),
                    ))
                }
            }
        }
        if stages.is_empty() {
            return Err(parse_err("hardness schedule", s, "empty"));
        }
        Ok(Self { stages })
    }
}

impl fmt::Display for HardnessSchedule {
    /// The text form [`FromStr`] reads back (`semihard:2,hard`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (miner, until)) in self.stages.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{miner}")?;
            if let Some(u) = until {
                write!(f, ":{u}")?;
            }
        }
        Ok(())
    }
}

// Stored in its text form (`Display` / `FromStr`).
serde_as_text!(HardnessSchedule);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_round_trip_through_text() {
        for text in [
            "hard",
            "semihard:2,hard",
            "all@16:1,semihard:3,max-violation",
        ] {
            let s: HardnessSchedule = text.parse().unwrap();
            assert_eq!(s.to_string(), text);
        }
        let s: HardnessSchedule = "semihard:2,hard".parse().unwrap();
        assert_eq!(s.miner_for_epoch(1).name(), "semihard");
        assert_eq!(s.miner_for_epoch(2).name(), "hard");
    }
}
