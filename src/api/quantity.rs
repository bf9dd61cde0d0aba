//! Kubernetes resource quantities (`500m`, `1.5`, `128Mi`, `1G`, `2e3`), as
//! `resources` and `resourceFieldRef` write them.

/// What a quantity is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Thousandths (CPU: `500m` is 500, `1` is 1000).
    Millis,
    /// Whole units (memory in bytes).
    One,
}

/// A Kubernetes quantity (`500m`, `1.5`, `128Mi`, `1G`, `2e3`), in `unit`,
/// rounded up as Kubernetes rounds resource amounts.
pub(crate) fn parse_quantity(text: &str, unit: Unit) -> Result<u64, String> {
    let text = text.trim();
    let bad = || format!("'{text}' is not a quantity (such as 500m, 1.5, 128Mi or 1G)");
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if number.is_empty() || number.matches('.').count() > 1 {
        return Err(bad());
    }
    // Decimal exponent and binary multiplier of the suffix.
    let (exponent, binary): (i32, u64) = match suffix {
        "" => (0, 1),
        "m" => (-3, 1),
        "k" => (3, 1),
        "M" => (6, 1),
        "G" => (9, 1),
        "T" => (12, 1),
        "P" => (15, 1),
        "E" => (18, 1),
        "Ki" => (0, 1 << 10),
        "Mi" => (0, 1 << 20),
        "Gi" => (0, 1 << 30),
        "Ti" => (0, 1 << 40),
        "Pi" => (0, 1 << 50),
        "Ei" => (0, 1 << 60),
        s if s.starts_with(['e', 'E']) => (s[1..].parse::<i32>().map_err(|_| bad())?, 1),
        _ => return Err(bad()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    // The value as digits times 10^scale, computed in u128 to stay exact.
    let digits: u128 = format!("{whole}{fraction}").parse().map_err(|_| bad())?;
    let mut scale = exponent - i32::try_from(fraction.len()).map_err(|_| bad())?;
    if unit == Unit::Millis {
        scale += 3;
    }
    let value = digits.checked_mul(u128::from(binary)).ok_or_else(bad)?;
    let value = if scale >= 0 {
        10u128
            .checked_pow(scale.unsigned_abs())
            .and_then(|p| value.checked_mul(p))
            .ok_or_else(bad)?
    } else {
        let divisor = 10u128.checked_pow(scale.unsigned_abs()).ok_or_else(bad)?;
        value.div_ceil(divisor)
    };
    u64::try_from(value).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        for (text, unit, value) in [
            ("500m", Unit::Millis, 500),
            ("1", Unit::Millis, 1000),
            ("1.5", Unit::Millis, 1500),
            ("0.1", Unit::Millis, 100),
            ("128Mi", Unit::One, 128 << 20),
            ("640M", Unit::One, 640_000_000),
            ("1Gi", Unit::One, 1 << 30),
            ("2e3", Unit::One, 2000),
            ("1.5Ki", Unit::One, 1536),
            ("100m", Unit::One, 1),
        ] {
            assert_eq!(parse_quantity(text, unit), Ok(value), "{text}");
        }
        for bad in ["", "lots", "1.2.3", "5Q", "-1"] {
            assert!(parse_quantity(bad, Unit::One).is_err(), "{bad}");
        }
    }
}
