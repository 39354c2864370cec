//! Durations as written in scenario files: `250us`, `12ms`, `1.5s`, `2m`, `1h`.
use firmware_core::time::Duration;

/// Parse a duration with a unit suffix. Fractions are allowed (`1.5s`); the result is rounded
/// to the microsecond.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("bad duration `{text}`: missing unit (us, ms, s, m or h)"))?;
    let (num, unit) = t.split_at(split);
    let scale: f64 = match unit.trim() {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" | "min" => 60e6,
        "h" => 3600e6,
        other => {
            return Err(format!(
                "bad duration `{text}`: unknown unit `{other}` (use us, ms, s, m or h)"
            ));
        }
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("bad duration `{text}`: `{num}` is not a number"))?;
    let us = value * scale;
    if !us.is_finite() || !(0.0..=1e15).contains(&us) {
        return Err(format!("bad duration `{text}`: out of range"));
    }
    Ok(Duration::from_micros(us.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_fractions_parse() {
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1_500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3_600)));
    }

    #[test]
    fn bad_durations_say_what_is_wrong() {
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
        assert!(
            parse_duration("10 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(
            parse_duration("1.2.3s")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(parse_duration("-5s").is_err());
    }
}
