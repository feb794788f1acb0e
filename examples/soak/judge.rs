//! Whether a sampled series is flat: a least-squares line through the
//! samples after warm-up, and its projected growth over that window
//! compared with the noise around the line.
//!
//! The criterion (docs/reliability.md §4): a series is flat when its
//! fitted growth from the first to the last post-warm-up sample is at most
//! `max(2 % of its post-warm-up mean, 3 × the residual standard deviation)`
//! (25 % of the mean for the abandoned sessions' keys, which churn).
//! A series that shrinks is flat (memory given back is no leak).

/// Relative growth a series may show over the judged window.
pub const RELATIVE_TOLERANCE: f64 = 0.02;
/// Relative growth the abandoned sessions' keys may show: their count is
/// sessions abandoned per second × how long each lives (the idle TTL and
/// the sweep's next tick), and that lifetime stretches while the machine
/// is busy (the soak runs beside the rest of the test suite in CI: one run
/// there grew by 9 keys, a fifth of them, while the other keys stayed
/// level). Keys that outlive their session grow by the whole count every
/// lifetime, several times this; keys that never go fail the drain check.
pub const CHURN_TOLERANCE: f64 = 0.25;
/// Residual standard deviations a series may grow by (the noise).
pub const NOISE_FACTOR: f64 = 3.0;

/// A least-squares line `y = intercept + slope × t` and the spread of
/// the samples around it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fit {
    pub slope: f64,
    pub intercept: f64,
    /// Standard deviation of the residuals (n − 2 degrees of freedom).
    pub residual_sd: f64,
    pub mean: f64,
}

/// Fits `points` (t, y); None below 3 points or when every t is equal.
pub fn fit(points: &[(f64, f64)]) -> Option<Fit> {
    let n = points.len();
    if n < 3 {
        return None;
    }
    let nf = n as f64;
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / nf;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / nf;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_y)).sum();
    let slope = sxy / sxx;
    let intercept = mean_y - slope * mean_t;
    let sse: f64 = points
        .iter()
        .map(|p| (p.1 - intercept - slope * p.0).powi(2))
        .sum();
    Some(Fit {
        slope,
        intercept,
        residual_sd: (sse / (nf - 2.0)).sqrt(),
        mean: mean_y,
    })
}

/// The verdict on one series.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub name: String,
    pub fit: Fit,
    /// Fitted growth over the judged window (slope × its length).
    pub growth: f64,
    /// The most growth allowed: max(2 % of the mean, 3 residual SDs).
    pub allowed: f64,
    pub flat: bool,
}

impl Verdict {
    /// One line for the report: the figures the verdict rests on.
    pub fn line(&self) -> String {
        format!(
            "{:<22} mean {:>14.1}  slope {:>+12.4}/s  growth {:>+12.1}  allowed {:>11.1}  noise sd {:>10.1}  {}",
            self.name,
            self.fit.mean,
            self.fit.slope,
            self.growth,
            self.allowed,
            self.fit.residual_sd,
            if self.flat { "flat" } else { "GROWS" }
        )
    }
}

/// Judges the samples of `name` taken at or after `warmup_end` seconds,
/// allowing growth of `relative` of the mean ([`RELATIVE_TOLERANCE`], or
/// [`CHURN_TOLERANCE`] for a churning series) or of the noise. None when
/// fewer than 3 samples are left to judge.
pub fn judge(name: &str, points: &[(f64, f64)], warmup_end: f64, relative: f64) -> Option<Verdict> {
    let judged: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|p| p.0 >= warmup_end)
        .collect();
    let fit = fit(&judged)?;
    let first = judged.first()?.0;
    let last = judged.last()?.0;
    let growth = fit.slope * (last - first);
    let allowed = (relative * fit.mean.abs()).max(NOISE_FACTOR * fit.residual_sd);
    Some(Verdict {
        name: name.to_string(),
        fit,
        growth,
        allowed,
        flat: growth <= allowed,
    })
}
