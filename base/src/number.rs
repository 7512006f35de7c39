//! The rules for numbers as they enter, from a flag or a config key, so that no command
//! accepts what its sibling refuses: a [`Rule`] says what a value must be, checks it under the
//! name the user gave it, and parses it for the CLI.

use std::fmt::Display;
use std::str::FromStr;

/// A number given where it has no meaning; names the flag or key and the value given.
#[derive(Clone, Debug, PartialEq)]
pub struct NumberError {
    /// The flag (`--iters`) or config key (`optim.lr`).
    pub what: String,
    /// What the rule wants, as a phrase ("a whole number of at least 1").
    pub want: &'static str,
    /// The value as given.
    pub got: String,
}

impl Display for NumberError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} must be {} (got {})", self.what, self.want, self.got)
    }
}

impl std::error::Error for NumberError {}

/// The numeric types flags and config keys use.
pub trait Number: Copy + Display + FromStr {
    fn as_f64(self) -> f64;
}

macro_rules! number {
    ($($t:ty),*) => {$(
        impl Number for $t {
            fn as_f64(self) -> f64 {
                self as f64
            }
        }
    )*};
}
number!(u8, u16, u32, u64, usize, f32, f64);

/// What a value must be: a phrase for messages and the test.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub want: &'static str,
    ok: fn(f64) -> bool,
}

/// Counts (iterations, frames, images, epochs, threads): 0 has no meaning.
pub const COUNT: Rule = Rule {
    want: "a whole number of at least 1",
    ok: |v| v >= 1.0,
};
/// Sizes and rates (widths, learning rates, budgets): finite and above 0.
pub const POSITIVE: Rule = Rule {
    want: "a positive, finite number",
    ok: |v| v.is_finite() && v > 0.0,
};
/// Allowances and decays (a drop budget, weight decay): finite, 0 allowed.
pub const NON_NEGATIVE: Rule = Rule {
    want: "a finite number ≥ 0",
    ok: |v| v.is_finite() && v >= 0.0,
};
/// Offsets (a normalisation mean): any finite number.
pub const FINITE: Rule = Rule {
    want: "a finite number",
    ok: f64::is_finite,
};
/// Seconds to wait: finite and not negative, 0 meaning not at all. The bound keeps
/// `Duration::from_secs_f64` from panicking; 1e9 s (31 years) outlasts any wait.
pub const SECONDS: Rule = Rule {
    want: "a finite number of seconds in 0..=1e9",
    ok: |v| (0.0..=1e9).contains(&v),
};
/// A percentile of |x| (calibration): in (0, 100].
pub const PERCENTILE: Rule = Rule {
    want: "a percentile in (0, 100]",
    ok: |v| v > 0.0 && v <= 100.0,
};
/// Momentum, label smoothing: in [0, 1).
pub const FRACTION: Rule = Rule {
    want: "a number in [0, 1)",
    ok: |v| (0.0..1.0).contains(&v),
};
/// A publishing rate in frames per second (`--fps`): at least 0.01 (one frame per 100 s).
pub const RATE: Rule = Rule {
    want: "a finite rate of at least 0.01 per second",
    ok: |v| v.is_finite() && v >= 0.01,
};

impl Rule {
    /// `v` if it keeps the rule, else an error naming `what` and the value.
    pub fn check<T: Number>(&self, what: &str, v: T) -> Result<T, NumberError> {
        if (self.ok)(v.as_f64()) {
            Ok(v)
        } else {
            Err(NumberError {
                what: what.to_string(),
                want: self.want,
                got: v.to_string(),
            })
        }
    }

    /// Parses a flag's text and checks it; the message names the text (clap adds the flag).
    pub fn parse<T: Number>(&self, s: &str) -> Result<T, String> {
        match s.trim().parse::<T>() {
            Ok(v) if (self.ok)(v.as_f64()) => Ok(v),
            _ => Err(format!("`{s}`: want {}", self.want)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_refuses_what_has_no_meaning_and_names_the_value() {
        let bad: [(Rule, &[f64]); 8] = [
            (FINITE, &[f64::NAN, f64::INFINITY]),
            (COUNT, &[0.0]),
            (POSITIVE, &[0.0, -1.0, f64::NAN, f64::INFINITY]),
            (NON_NEGATIVE, &[-0.5, f64::NAN, f64::NEG_INFINITY]),
            (SECONDS, &[-1.0, f64::NAN, f64::INFINITY, 1e300]),
            (PERCENTILE, &[0.0, 100.5, f64::NAN]),
            (FRACTION, &[1.0, -0.1, f64::NAN]),
            (RATE, &[0.0, 0.001, f64::NAN, f64::INFINITY]),
        ];
        for (rule, values) in bad {
            for &v in values {
                let e = rule.check("--x", v).unwrap_err();
                assert_eq!(e.what, "--x");
                assert!(e.to_string().contains(&v.to_string()), "{e}");
            }
        }
        assert_eq!(COUNT.check("--iters", 3usize), Ok(3));
        assert_eq!(NON_NEGATIVE.check("budget", 0.0), Ok(0.0));
        assert_eq!(SECONDS.check("--wait", 0.0), Ok(0.0));
        assert_eq!(PERCENTILE.check("--percentile", 100.0), Ok(100.0));
        assert_eq!(RATE.check("--fps", 0.01), Ok(0.01));
    }

    #[test]
    fn parse_refuses_text_that_is_no_number_of_the_type() {
        assert_eq!(COUNT.parse::<usize>("7"), Ok(7));
        for s in ["0", "-1", "1.5", "x", ""] {
            let e = COUNT.parse::<usize>(s).unwrap_err();
            assert!(e.contains(&format!("`{s}`")), "{e}");
        }
        assert!(POSITIVE.parse::<f64>("nan").is_err());
        assert!(POSITIVE.parse::<f64>("inf").is_err());
        assert_eq!(SECONDS.parse::<f64>(" 2.5"), Ok(2.5));
    }
}
