//! Paired comparisons over seeds: mean difference, its standard error, a two-sided paired
//! t-test (Student's t CDF through the regularised incomplete beta function) and a two-sided
//! exact sign test; and the nearest-rank percentile of latency reports.

/// The p-th percentile (nearest rank) of sorted samples; NaN for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `ln Γ(x)` for `x > 0`: Lanczos' approximation with Numerical Recipes' coefficients
/// (Press et al., *Numerical Recipes*, 3rd ed., §6.1, `gammln`; |error| < 2e-10).
pub fn ln_gamma(x: f64) -> f64 {
    const COF: [f64; 6] = [
        76.180_091_729_471_46,
        -86.505_320_329_416_77,
        24.014_098_240_830_91,
        -1.231_739_572_450_155,
        0.120_865_097_386_617_9e-2,
        -0.539_523_938_495_3e-5,
    ];
    let tmp = x + 5.5;
    let tmp = tmp - (x + 0.5) * tmp.ln();
    let mut ser = 1.000_000_000_190_015;
    let mut y = x;
    for c in COF {
        y += 1.0;
        ser += c / y;
    }
    -tmp + (2.506_628_274_631_000_5 * ser / x).ln()
}

/// Floor for the modified Lentz method's running terms (keeps them off zero).
const LENTZ_TINY: f64 = 1e-300;

/// One step of the modified Lentz method for the partial numerator `aa`: updates the running
/// `c` and `d` and returns the factor `c·d` the convergent is multiplied by.
fn lentz_step(aa: f64, c: &mut f64, d: &mut f64) -> f64 {
    *d = 1.0 + aa * *d;
    if d.abs() < LENTZ_TINY {
        *d = LENTZ_TINY;
    }
    *c = 1.0 + aa / *c;
    if c.abs() < LENTZ_TINY {
        *c = LENTZ_TINY;
    }
    *d = 1.0 / *d;
    *d * *c
}

/// The continued fraction of the incomplete beta function by the modified Lentz method
/// (Numerical Recipes, 3rd ed., §6.4, `betacf`; Abramowitz & Stegun 26.5.8): each iteration
/// takes the even and then the odd partial numerator.
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < LENTZ_TINY {
        d = LENTZ_TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        h *= lentz_step(m * (b - m) * x / ((qam + m2) * (a + m2)), &mut c, &mut d);
        let del = lentz_step(
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
            &mut c,
            &mut d,
        );
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// The regularised incomplete beta function `I_x(a, b)` for `a, b > 0`, `0 ≤ x ≤ 1`
/// (Numerical Recipes, 3rd ed., §6.4, `betai`: the continued fraction directly or through the
/// symmetry `I_x(a, b) = 1 − I_{1−x}(b, a)`, whichever converges fast).
pub fn inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let bt = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        bt * beta_cf(a, b, x) / a
    } else {
        1.0 - bt * beta_cf(b, a, 1.0 - x) / b
    }
}

/// Two-sided p-value of Student's t with `df` degrees of freedom:
/// `P(|T| ≥ |t|) = I_{df/(df+t²)}(df/2, 1/2)` (Abramowitz & Stegun 26.7.1 with 26.5.27;
/// Numerical Recipes, 3rd ed., eq. 6.14.11).
pub fn t_two_sided_p(t: f64, df: f64) -> f64 {
    if t.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if t.is_infinite() {
        return 0.0;
    }
    inc_beta(df / 2.0, 0.5, df / (df + t * t))
}

/// Two-sided exact sign test: the probability under Binomial(pos + neg, ½) of a split at
/// least as uneven as `pos`/`neg` (ties already dropped), capped at 1.
pub fn sign_test_p(pos: usize, neg: usize) -> f64 {
    let n = pos + neg;
    if n == 0 {
        return 1.0;
    }
    let k = pos.min(neg);
    // Σ_{i ≤ k} C(n, i) / 2^n in logs (n can exceed what 2^n holds in f64 only far beyond
    // any seed count, but logs cost nothing).
    let ln_c = |i: usize| {
        ln_gamma(n as f64 + 1.0) - ln_gamma(i as f64 + 1.0) - ln_gamma((n - i) as f64 + 1.0)
    };
    let tail: f64 = (0..=k)
        .map(|i| (ln_c(i) - n as f64 * std::f64::consts::LN_2).exp())
        .sum();
    (2.0 * tail).min(1.0)
}

/// A paired comparison of two methods over the same seeds (`diff = method − baseline`).
#[derive(Clone, Debug, PartialEq)]
pub struct Paired {
    pub n: usize,
    pub mean_diff: f64,
    /// Standard error of the mean difference, `sd(diff) / √n` (NaN for fewer than 2 pairs).
    pub se: f64,
    pub t: f64,
    /// Two-sided paired t-test p-value, `n − 1` degrees of freedom (NaN below 2 pairs).
    pub p_t: f64,
    /// Pairs with the method above / below the baseline (ties are neither).
    pub above: usize,
    pub below: usize,
    /// Two-sided exact sign test p-value.
    pub p_sign: f64,
}

/// Compares paired values (same seed at the same index).
pub fn paired(method: &[f64], baseline: &[f64]) -> Paired {
    assert_eq!(method.len(), baseline.len(), "pairs");
    let d: Vec<f64> = method.iter().zip(baseline).map(|(a, b)| a - b).collect();
    let n = d.len();
    let mean = d.iter().sum::<f64>() / n.max(1) as f64;
    let (se, t, p_t) = if n >= 2 {
        let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let se = (var / n as f64).sqrt();
        // Differences equal up to rounding (errors are multiples of 1/test-images, so equal
        // differences come out of subtraction a few ulps apart) have no spread: without this,
        // se ≈ 1e-18 and t ≈ 1e12.
        let scale = d.iter().fold(0f64, |a, x| a.max(x.abs()));
        let se = if se <= 1e-9 * scale { 0.0 } else { se };
        let t = if se > 0.0 {
            mean / se
        } else if mean == 0.0 {
            0.0
        } else {
            mean.signum() * f64::INFINITY
        };
        (se, t, t_two_sided_p(t, (n - 1) as f64))
    } else {
        (f64::NAN, f64::NAN, f64::NAN)
    };
    let above = d.iter().filter(|&&x| x > 0.0).count();
    let below = d.iter().filter(|&&x| x < 0.0).count();
    Paired {
        n,
        mean_diff: if n == 0 { f64::NAN } else { mean },
        se,
        t,
        p_t,
        above,
        below,
        p_sign: sign_test_p(above, below),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn student_t_matches_tables() {
        // t = 2, df = 4: p = 0.116117 (closed form for df = 4: p = 1 − x(3 − x²)/2 with
        // x = t/√(t² + 4); Abramowitz & Stegun 26.7.3).
        assert!((t_two_sided_p(2.0, 4.0) - 0.116_117).abs() < 1e-5);
        // Critical values of two-sided 5% tests (any t table): df 1: 12.706, df 4: 2.776,
        // df 10: 2.228.
        for (t, df) in [(12.706_2, 1.0), (2.776_4, 4.0), (2.228_1, 10.0)] {
            assert!((t_two_sided_p(t, df) - 0.05).abs() < 1e-4, "{t} {df}");
        }
        // df = 1 is Cauchy: P(|T| ≥ 1) = 1/2 exactly; t = 0 gives 1.
        assert!((t_two_sided_p(1.0, 1.0) - 0.5).abs() < 1e-12);
        assert!((t_two_sided_p(0.0, 3.0) - 1.0).abs() < 1e-12);
        assert!((t_two_sided_p(-2.0, 4.0) - t_two_sided_p(2.0, 4.0)).abs() < 1e-15);
        // I_x(1, 1) = x, I_x(a, 1) = x^a.
        assert!((inc_beta(1.0, 1.0, 0.3) - 0.3).abs() < 1e-12);
        assert!((inc_beta(2.5, 1.0, 0.4) - 0.4f64.powf(2.5)).abs() < 1e-12);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-9);
    }

    #[test]
    fn sign_test_is_the_binomial_tail() {
        // 3 of 3 one way: 2 · (1/8) = 0.25; 5 of 5: 2/32; 4 of 5: 2 · 6/32; 1/1: 1.
        assert!((sign_test_p(3, 0) - 0.25).abs() < 1e-12);
        assert!((sign_test_p(0, 5) - 0.0625).abs() < 1e-12);
        assert!((sign_test_p(4, 1) - 0.375).abs() < 1e-12);
        assert_eq!(sign_test_p(2, 2), 1.0);
        assert_eq!(sign_test_p(0, 0), 1.0);
    }

    /// A hand-computed example: differences −2, −4, −3 (method − baseline).
    /// mean −3; sd = √((1 + 1 + 0)/2) = 1; se = 1/√3 = 0.57735; t = −3√3 = −5.19615, df 2;
    /// two-sided p for df = 2 is 1 − |t|/√(t² + 2) (closed form of the t CDF at df 2)
    /// = 1 − 5.19615/√29 = 0.035098; sign test 3 below of 3: 0.25.
    #[test]
    fn paired_hand_example() {
        let p = paired(&[10.0, 11.0, 12.0], &[12.0, 15.0, 15.0]);
        assert_eq!(p.n, 3);
        assert!((p.mean_diff + 3.0).abs() < 1e-12);
        assert!((p.se - 1.0 / 3f64.sqrt()).abs() < 1e-12);
        assert!((p.t + 27f64.sqrt()).abs() < 1e-9);
        assert!((p.p_t - (1.0 - 27f64.sqrt() / 29f64.sqrt())).abs() < 1e-9);
        assert!((p.p_t - 0.035_098).abs() < 1e-6);
        assert_eq!((p.above, p.below), (0, 3));
        assert!((p.p_sign - 0.25).abs() < 1e-12);
        // Identical differences: no spread, t infinite, p 0; one pair: no test.
        let p = paired(&[1.0, 2.0], &[0.0, 1.0]);
        assert_eq!((p.se, p.p_t), (0.0, 0.0));
        // The same, when the equal differences come out of subtraction a few ulps apart.
        let p = paired(&[9.7, 9.71, 9.72], &[9.69, 9.7, 9.71]);
        assert_eq!(p.se, 0.0, "{p:?}");
        assert!(p.t.is_infinite());
        let p = paired(&[1.0], &[0.0]);
        assert!(p.se.is_nan() && p.p_t.is_nan());
        assert_eq!(p.p_sign, 1.0);
    }
}
