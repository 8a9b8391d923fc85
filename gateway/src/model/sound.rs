//! Sound levels average as energies, not as numbers (limits.md: `Leq = 10·log10(mean(10^(L/10)))`):
//! the one place the conversion is written, for the rules' windows, their scripts and the history.

/// The relative sound energy of a level in dB.
#[inline]
pub fn energy(level_db: f64) -> f64 {
    10f64.powf(level_db / 10.0)
}

/// The level in dB of a (mean) relative sound energy.
#[inline]
pub fn level(energy: f64) -> f64 {
    10.0 * energy.log10()
}

/// The energy average of levels held for equal times; `None` for no levels.
pub fn leq(levels: &[f64]) -> Option<f64> {
    if levels.is_empty() {
        return None;
    }
    Some(level(levels.iter().map(|l| energy(*l)).sum::<f64>() / levels.len() as f64))
}

#[cfg(test)]
mod tests {
    #[test]
    fn equal_levels_average_to_themselves_and_loud_ones_dominate() {
        assert!((super::leq(&[55.0, 55.0]).unwrap() - 55.0).abs() < 1e-12);
        // 60 and 57 dB held for equal times average to 58.75 dB, not 58.5.
        assert!((super::leq(&[60.0, 57.0]).unwrap() - 58.754).abs() < 1e-3);
        assert_eq!(super::leq(&[]), None);
    }
}
