//! p-values of the paired t-test that every table's significance marks come from.
//!
//! Here rather than in scipy because comparing runs (`xmfast compare`, `xmfast report`) should
//! start in a fraction of a second, and importing scipy.special alone took 0.2 s (issue 25). The
//! t distribution is statrs's (its regularised incomplete beta function);
//! tests/test_compare.py holds it to scipy's `stdtr`.

use statrs::function::beta::checked_beta_reg;

use crate::{Error, Result};

/// Two-sided p-value of Student's t statistic `t` with `df` degrees of freedom: 2 P(T ≤ −|t|) =
/// I_x(df/2, 1/2) with x = df / (df + t²), the regularised incomplete beta function, for |t| ≥ 1
/// (p ≤ 0.32); in the far tail this keeps its relative accuracy (1.6e-12 at t = 40, df = 3,000,
/// p = 8.7e-281). For |t| < 1 x rounds towards 1 (statrs's own t CDF says p = 1 for t = 6e-8,
/// df = 4, 4.5e-8 from the truth), so there it is 1 − I_y(1/2, df/2) with y = t² / (df + t²)
/// formed directly; p > 0.31 there, so the subtraction loses nothing. Relative error against
/// mpmath: below 3e-11 up to 5,000 degrees of freedom and 5e-9 up to a million; beyond, it grows
/// about as df · 1e-16 (statrs forms 1 − x itself when x is near 1). A `t` whose square is
/// infinite gives 0, a NaN one NaN.
pub fn t_two_sided_p(t: f64, df: f64) -> Result<f64> {
    if !(df > 0.0 && df.is_finite()) {
        return Err(Error::invalid(format!(
            "the t distribution needs positive, finite degrees of freedom, got {df}"
        )));
    }
    if t.is_nan() {
        return Ok(f64::NAN);
    }
    let t2 = t * t;
    if t2.is_infinite() {
        return Ok(0.0);
    }
    let beta = |a: f64, b: f64, x: f64| {
        checked_beta_reg(a, b, x).map_err(|e| Error::invalid(e.to_string()))
    };
    let p = if t2 < 1.0 {
        1.0 - beta(0.5, df / 2.0, t2 / (df + t2))?
    } else {
        beta(df / 2.0, 0.5, df / (df + t2))?
    };
    Ok(p.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs()
    }

    #[test]
    fn known_values() {
        // t = 0: p = 1 at any df
        assert_eq!(t_two_sided_p(0.0, 7.0).unwrap(), 1.0);
        // df = 1 is the Cauchy distribution: P(T <= -1) = 1/4, so p = 1/2
        assert!(close(t_two_sided_p(1.0, 1.0).unwrap(), 0.5, 1e-14));
        assert!(close(t_two_sided_p(-1.0, 1.0).unwrap(), 0.5, 1e-14));
        // df = 2: P(T <= -t) = (1 - t / sqrt(t^2 + 2)) / 2, so p = 1 - t / sqrt(t^2 + 2)
        for t in [0.5_f64, 2.0, 10.0] {
            let exact = 1.0 - t / (t * t + 2.0).sqrt();
            assert!(
                close(t_two_sided_p(t, 2.0).unwrap(), exact, 1e-12),
                "t = {t}"
            );
        }
        // the two-sided 5% critical value of t with 10 degrees of freedom, 2.228138851986...
        assert!(close(
            t_two_sided_p(2.228_138_851_986_274, 10.0).unwrap(),
            0.05,
            1e-9
        ));
        // near t = 0 with df = 4: p = 1 - (3/8) t + O(t^3) (the density at 0 is 3/8 for df = 4)
        let t = 6e-8;
        assert!(close(t_two_sided_p(t, 4.0).unwrap(), 1.0 - 0.75 * t, 1e-15));
    }

    #[test]
    fn tails_and_edges() {
        assert_eq!(t_two_sided_p(f64::INFINITY, 5.0).unwrap(), 0.0);
        assert!(t_two_sided_p(f64::NAN, 5.0).unwrap().is_nan());
        let tiny = t_two_sided_p(40.0, 3000.0).unwrap(); // far tail: small but not zero
        assert!(tiny > 0.0 && tiny < 1e-200, "{tiny}");
        assert!(t_two_sided_p(1.0, 0.0).is_err());
        assert!(t_two_sided_p(1.0, f64::NAN).is_err());
    }
}
