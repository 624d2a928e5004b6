//! Rounding and overflow modes, with the reference's strings, and the call mode.
use crate::error::CoreError;
use std::fmt;
use std::str::FromStr;

/// How `x * 2^f` is rounded to an integer (SPEC 1). The names are those of `ap_fixed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoundMode {
    /// Truncate toward minus infinity: `floor(v)`.
    Trn,
    /// Round to nearest, ties toward plus infinity: `floor(v + 0.5)`.
    Rnd,
    /// Round to nearest, ties to even.
    RndConv,
    /// Truncate toward zero.
    TrnZero,
    /// Round to nearest, ties toward zero.
    RndZero,
    /// Round to nearest, ties away from zero.
    RndInf,
    /// Round to nearest, ties toward minus infinity.
    RndMinInf,
    /// Stochastic rounding in training (this crate's extension), RND otherwise.
    SRnd,
    /// Stochastic rounding in training (this crate's extension), RND_CONV otherwise.
    SRndConv,
}

impl RoundMode {
    /// Every mode, in the reference's order.
    pub const ALL: [RoundMode; 9] = [
        RoundMode::Trn,
        RoundMode::Rnd,
        RoundMode::RndConv,
        RoundMode::TrnZero,
        RoundMode::RndZero,
        RoundMode::RndInf,
        RoundMode::RndMinInf,
        RoundMode::SRnd,
        RoundMode::SRndConv,
    ];

    /// The reference's string for this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            RoundMode::Trn => "TRN",
            RoundMode::Rnd => "RND",
            RoundMode::RndConv => "RND_CONV",
            RoundMode::TrnZero => "TRN_ZERO",
            RoundMode::RndZero => "RND_ZERO",
            RoundMode::RndInf => "RND_INF",
            RoundMode::RndMinInf => "RND_MIN_INF",
            RoundMode::SRnd => "S_RND",
            RoundMode::SRndConv => "S_RND_CONV",
        }
    }

    /// Whether the mode rounds stochastically in training.
    pub fn is_stochastic(self) -> bool {
        matches!(self, RoundMode::SRnd | RoundMode::SRndConv)
    }

    /// The deterministic mode used outside training (S_RND -> RND, S_RND_CONV -> RND_CONV).
    pub fn deterministic(self) -> RoundMode {
        match self {
            RoundMode::SRnd => RoundMode::Rnd,
            RoundMode::SRndConv => RoundMode::RndConv,
            m => m,
        }
    }
}

impl fmt::Display for RoundMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RoundMode {
    type Err = CoreError;
    /// Case-insensitive, as the reference upper-cases its input.
    ///
    /// ```
    /// use hgq_core::RoundMode;
    /// assert_eq!("rnd_conv".parse::<RoundMode>().unwrap(), RoundMode::RndConv);
    /// assert!("ROUND".parse::<RoundMode>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let up = s.to_ascii_uppercase();
        RoundMode::ALL
            .into_iter()
            .find(|m| m.as_str() == up)
            .ok_or_else(|| CoreError::UnknownRoundMode(s.to_string()))
    }
}

/// What happens to values outside the representable range (SPEC 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OverflowMode {
    /// Two's complement wrap-around.
    Wrap,
    /// Saturate to `[-k 2^i, 2^i - 2^-f]`.
    Sat,
    /// Saturate symmetrically to `[-k (2^i - 2^-f), 2^i - 2^-f]`. `SYM` is accepted as an alias.
    SatSym,
    /// Sign-magnitude wrap (needs RND-like rounding and k = 1).
    WrapSm,
}

impl OverflowMode {
    /// Every mode.
    pub const ALL: [OverflowMode; 4] = [
        OverflowMode::Wrap,
        OverflowMode::Sat,
        OverflowMode::SatSym,
        OverflowMode::WrapSm,
    ];

    /// The reference's string for this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            OverflowMode::Wrap => "WRAP",
            OverflowMode::Sat => "SAT",
            OverflowMode::SatSym => "SAT_SYM",
            OverflowMode::WrapSm => "WRAP_SM",
        }
    }

    /// Whether the range is symmetric (the mode's name ends with SYM).
    pub fn is_symmetric(self) -> bool {
        self == OverflowMode::SatSym
    }
}

impl fmt::Display for OverflowMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OverflowMode {
    type Err = CoreError;
    /// Case-insensitive; `SYM` parses as [`OverflowMode::SatSym`].
    ///
    /// ```
    /// use hgq_core::OverflowMode;
    /// assert_eq!("sym".parse::<OverflowMode>().unwrap(), OverflowMode::SatSym);
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let up = s.to_ascii_uppercase();
        if up == "SYM" {
            return Ok(OverflowMode::SatSym);
        }
        OverflowMode::ALL
            .into_iter()
            .find(|m| m.as_str() == up)
            .ok_or_else(|| CoreError::UnknownOverflowMode(s.to_string()))
    }
}

/// Checks a (round, overflow) pair that the reference accepts.
pub fn check_modes(round: RoundMode, overflow: OverflowMode) -> Result<(), CoreError> {
    if overflow == OverflowMode::WrapSm
        && !matches!(round.deterministic(), RoundMode::Rnd | RoundMode::RndConv)
    {
        return Err(CoreError::WrapSmRounding(round.to_string()));
    }
    Ok(())
}

/// How a layer-level quantizer is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CallMode {
    /// Training: gradients, WRAP integer-bit decay, stochastic rounding.
    Training,
    /// Inference: the firmware's arithmetic.
    #[default]
    Inference,
    /// Tracing: record the integer bits and signs a data set needs (hgq2's `trace_minmax`).
    Tracing,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_strings() {
        for m in RoundMode::ALL {
            assert_eq!(m.to_string().parse::<RoundMode>().unwrap(), m);
            assert_eq!(m.as_str().to_lowercase().parse::<RoundMode>().unwrap(), m);
        }
        for m in OverflowMode::ALL {
            assert_eq!(m.to_string().parse::<OverflowMode>().unwrap(), m);
        }
        assert!(matches!(
            "SATURATE".parse::<OverflowMode>(),
            Err(CoreError::UnknownOverflowMode(_))
        ));
        assert!(check_modes(RoundMode::Trn, OverflowMode::WrapSm).is_err());
        assert!(check_modes(RoundMode::SRnd, OverflowMode::WrapSm).is_ok());
    }
}
