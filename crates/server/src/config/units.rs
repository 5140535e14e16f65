//! Human-readable durations ("30s", "5m", "1h30m", "250ms") and sizes
//! (`26214400`, "25MiB", "10MB", "512KiB"): parsing and canonical formatting.

use std::time::Duration;

/// Parses a duration made of one or more `<integer><unit>` parts, units `ms`,
/// `s`, `m`, `h`, `d` (e.g. "250ms", "30s", "1h30m"). Returns `None` if the text
/// is not such a duration or overflows.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total_ms = total_ms.checked_add(number.checked_mul(unit_ms)?)?;
    }
    Some(Duration::from_millis(total_ms))
}

/// Formats a duration the way [`parse_duration`] reads it back, largest units
/// first ("1h30m", "250ms", "0s"). Sub-millisecond precision is dropped.
pub fn format_duration(duration: Duration) -> String {
    let mut ms = duration.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, unit_ms) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        let count = ms / unit_ms;
        if count > 0 {
            out.push_str(&format!("{count}{unit}"));
            ms %= unit_ms;
        }
    }
    out
}

const SIZE_UNITS: &[(&str, u64)] = &[
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("kB", 1_000),
    ("KB", 1_000),
    ("B", 1),
];

/// Parses a size: a plain number of bytes ("1024") or a number with a unit
/// `B`, `KB`/`kB`, `MB`, `GB` (powers of 1000) or `KiB`, `MiB`, `GiB` (powers
/// of 1024), optionally separated by one space ("25MiB", "10 MB").
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let number: u64 = text[..digits].parse().ok()?;
    let unit = text[digits..].trim_start();
    if unit.is_empty() {
        return Some(number);
    }
    let (_, multiplier) = SIZE_UNITS.iter().find(|(name, _)| *name == unit)?;
    number.checked_mul(*multiplier)
}

/// Formats a size as the largest binary unit that divides it exactly
/// ("25MiB"), or as a plain byte count.
pub fn format_size(bytes: u64) -> String {
    for (unit, multiplier) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes != 0 && bytes.is_multiple_of(multiplier) {
            return format!("{}{unit}", bytes / multiplier);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86_400)));
        assert_eq!(
            parse_duration("1m30s500ms"),
            Some(Duration::from_millis(90_500))
        );
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
    }

    #[test]
    fn bad_durations_rejected() {
        for bad in [
            "",
            " ",
            "5",
            "5x",
            "s",
            "5 m",
            "-5s",
            "1.5h",
            "h1",
            "5sec",
            "1h 30m",
            "99999999999999999999s",
            "18446744073709551615d",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?} should be rejected");
        }
    }

    #[test]
    fn durations_round_trip() {
        for ms in [
            0u64, 1, 250, 1000, 1500, 60_000, 300_000, 5_400_000, 86_400_000, 90_061_001,
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)), Some(d), "{ms}ms");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("25MiB"), Some(25 * 1024 * 1024));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("512KiB"), Some(512 * 1024));
        assert_eq!(parse_size("10 MB"), Some(10_000_000));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("100B"), Some(100));
        assert_eq!(parse_size("64kB"), Some(64_000));
    }

    #[test]
    fn bad_sizes_rejected() {
        for bad in [
            "",
            "MiB",
            "10XB",
            "1.5MiB",
            "-1",
            "10mib",
            "99999999999GiB",
            "10 MiB extra",
        ] {
            assert_eq!(parse_size(bad), None, "{bad:?} should be rejected");
        }
    }

    #[test]
    fn sizes_round_trip() {
        for bytes in [0u64, 1, 1000, 1024, 25 * 1024 * 1024, 10_000_000, 3 << 30] {
            assert_eq!(parse_size(&format_size(bytes)), Some(bytes));
        }
        assert_eq!(format_size(25 * 1024 * 1024), "25MiB");
    }
}
