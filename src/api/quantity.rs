//! Exact parsing of Kubernetes resource quantities ("64Mi", "1.5Gi", "1G", "500m", "1e3").
//!
//! Kubernetes keeps quantities as arbitrary-precision decimals; we parse the same grammar into
//! an exact rational (integer mantissa and a power of ten) and only then round to whole units,
//! upwards, as `Quantity.Value()` does. No floating point is involved anywhere.

use std::fmt;

/// A quantity that did not follow the Kubernetes grammar, or does not fit in the target unit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{field}: {reason} in quantity {}; expected a number with an optional suffix (Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E, m), e.g. \"64Mi\" or \"1.5Gi\"",
    super::quoted(.value)
)]
pub struct QuantityError {
    pub field: String,
    pub value: String,
    pub reason: &'static str,
}

/// A parsed quantity: `mantissa * 10^exp10 * 2^exp2`, exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exact {
    mantissa: i128,
    exp10: i32,
    exp2: u32,
}

fn parse_exact(s: &str) -> Result<Exact, &'static str> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty value");
    }
    let (sign, rest) = match s.as_bytes()[0] {
        b'-' => (-1i128, &s[1..]),
        b'+' => (1, &s[1..]),
        _ => (1, s),
    };
    let number_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err("missing number");
    }
    if fraction.contains('.') {
        return Err("more than one decimal point");
    }
    let digits = format!("{whole}{fraction}");
    if digits.len() > 30 {
        return Err("too many digits");
    }
    let mut mantissa: i128 = digits.parse().map_err(|_| "missing number")?;
    mantissa *= sign;
    let mut exp10 = -(fraction.len() as i32);
    let exp2 = match suffix {
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        "Ti" => 40,
        "Pi" => 50,
        "Ei" => 60,
        _ => {
            exp10 += decimal_suffix_exponent(suffix)?;
            0
        }
    };
    Ok(Exact {
        mantissa,
        exp10,
        exp2,
    })
}

fn decimal_suffix_exponent(suffix: &str) -> Result<i32, &'static str> {
    Ok(match suffix {
        "" => 0,
        "n" => -9,
        "u" => -6,
        "m" => -3,
        "k" => 3,
        "M" => 6,
        "G" => 9,
        "T" => 12,
        "P" => 15,
        "E" => 18,
        _ => {
            let exponent = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))
                .ok_or("unknown suffix")?;
            let value: i32 = exponent.parse().map_err(|_| "unknown suffix")?;
            if !(-30..=30).contains(&value) {
                return Err("exponent out of range");
            }
            value
        }
    })
}

impl Exact {
    /// The value scaled by `10^scale`, rounded up to a whole number (as Kubernetes rounds).
    fn ceil_scaled(self, scale: i32) -> Result<i128, &'static str> {
        let too_large = "value too large";
        let mut numerator = self
            .mantissa
            .checked_mul(1i128 << self.exp2)
            .ok_or(too_large)?;
        let exp = self.exp10 + scale;
        if exp >= 0 {
            for _ in 0..exp {
                numerator = numerator.checked_mul(10).ok_or(too_large)?;
            }
            return Ok(numerator);
        }
        let divisor = 10i128.checked_pow((-exp) as u32).ok_or(too_large)?;
        let quotient = numerator.div_euclid(divisor);
        let rounded_up = if numerator.rem_euclid(divisor) == 0 {
            0
        } else {
            1
        };
        Ok(quotient + rounded_up)
    }
}

fn to_u64(value: &str, field: &str, scale: i32) -> Result<u64, QuantityError> {
    let error = |reason| QuantityError {
        field: field.to_string(),
        value: value.to_string(),
        reason,
    };
    let exact = parse_exact(value).map_err(error)?;
    let scaled = exact.ceil_scaled(scale).map_err(error)?;
    if scaled < 0 {
        return Err(error("negative value"));
    }
    u64::try_from(scaled).map_err(|_| error("value too large"))
}

/// Parses a quantity of bytes (memory, disk capacity), rounding a fractional byte up.
pub fn parse_bytes(value: &str, field: &str) -> Result<u64, QuantityError> {
    to_u64(value, field, 0)
}

/// Parses a CPU quantity into millicores ("500m" -> 500, "2" -> 2000).
pub fn parse_millicores(value: &str, field: &str) -> Result<u64, QuantityError> {
    to_u64(value, field, 3)
}

/// Formats bytes the way an operator reads them ("1.5 GiB").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanBytes(pub u64);

impl fmt::Display for HumanBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit < UNITS.len() - 1 {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_kubernetes_accepts() {
        let cases = [
            ("64Mi", 67_108_864),
            ("1G", 1_000_000_000),
            ("1.5Gi", 1_610_612_736),
            ("128974848", 128_974_848),
            ("129e6", 129_000_000),
            ("123Mi", 128_974_848),
            ("0.5Ki", 512),
            ("1k", 1000),
            ("2Ti", 2_199_023_255_552),
            ("+1Ki", 1024),
            (".5Ki", 512),
            ("1E", 1_000_000_000_000_000_000),
        ];
        for (input, bytes) in cases {
            assert_eq!(parse_bytes(input, "f"), Ok(bytes), "{input}");
        }
    }

    #[test]
    fn fractional_bytes_round_up_like_kubernetes() {
        assert_eq!(parse_bytes("1.5", "f"), Ok(2));
        assert_eq!(parse_bytes("100m", "f"), Ok(1));
        assert_eq!(parse_bytes("1.0001k", "f"), Ok(1001));
    }

    #[test]
    fn cpu_in_millicores() {
        assert_eq!(parse_millicores("500m", "f"), Ok(500));
        assert_eq!(parse_millicores("2", "f"), Ok(2000));
        assert_eq!(parse_millicores("0.25", "f"), Ok(250));
        assert_eq!(parse_millicores("1u", "f"), Ok(1));
    }

    #[test]
    fn malformed_quantities_name_the_field() {
        for bad in [
            "", "Mi", "1.2.3", "12MB", "1 Gi", "1Gib", "-1Gi", "1e99", "abc", "1e", ".",
        ] {
            let err = parse_bytes(bad, "spec.domain.resources.requests.memory").unwrap_err();
            assert_eq!(err.field, "spec.domain.resources.requests.memory", "{bad}");
            assert!(
                err.to_string()
                    .contains("spec.domain.resources.requests.memory"),
                "{err}"
            );
        }
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        assert!(parse_bytes("999999999999999999999999999999Ei", "f").is_err());
        assert!(parse_bytes("99999999999999999999", "f").is_err());
    }

    #[test]
    fn a_huge_value_is_not_echoed_back() {
        let err = parse_bytes(&"9".repeat(1 << 20), "f").unwrap_err();
        assert_eq!(err.reason, "too many digits");
        assert!(err.to_string().len() < 400, "{err}");
    }

    #[test]
    fn human_bytes() {
        assert_eq!(HumanBytes(512).to_string(), "512 B");
        assert_eq!(HumanBytes(1_610_612_736).to_string(), "1.5 GiB");
    }
}
