//! The statistic of hgq-torch's benchmark programs (included by each with `#[path]`: the
//! binaries share no module otherwise).

/// The median of `v` (the mean of the middle two for an even count; NaN-free input).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}
