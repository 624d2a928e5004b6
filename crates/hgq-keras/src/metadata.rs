//! `metadata.json`, as Keras writes it.

use std::time::{SystemTime, UNIX_EPOCH};

/// The Keras version this crate's archives claim to be from (the one hgq2 0.2.0 is used with
/// here); Keras reads `metadata.json` only for a warning on a version mismatch.
pub const KERAS_VERSION: &str = "3.15.1";

/// `metadata.json` exactly as Keras 3 writes it: `{"keras_version": "3.15.1", "date_saved":
/// "2026-12-05@00:09:04"}` (Python's `json.dumps` spacing, `date_saved` in
/// `%Y-%m-%d@%H:%M:%S`). `unix_seconds` is the save time; Keras uses local time, this crate UTC.
///
/// ```
/// assert_eq!(
///     hgq_keras::keras_metadata(1_780_000_000),
///     r#"{"keras_version": "3.15.1", "date_saved": "2026-05-28@20:26:40"}"#
/// );
/// ```
pub fn keras_metadata(unix_seconds: u64) -> String {
    format!(
        r#"{{"keras_version": "{KERAS_VERSION}", "date_saved": "{}"}}"#,
        date_saved(unix_seconds)
    )
}

/// [`keras_metadata`] of the current time.
pub fn keras_metadata_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    keras_metadata(secs)
}

/// `%Y-%m-%d@%H:%M:%S` of a UTC time.
fn date_saved(unix_seconds: u64) -> String {
    let days = unix_seconds / 86_400;
    let rem = unix_seconds % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}@{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(date_saved(0), "1970-01-01@00:00:00");
        assert_eq!(date_saved(951_782_400), "2000-02-29@00:00:00");
        assert_eq!(date_saved(1_709_251_199), "2024-02-29@23:59:59");
        assert_eq!(date_saved(4_102_444_800), "2100-01-01@00:00:00");
    }
}
