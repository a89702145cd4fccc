//! Marathon's timestamps and identifiers: ISO-8601 UTC with milliseconds, random UUIDs, and the
//! task/instance id forms real Marathon hands out.
use std::time::{SystemTime, UNIX_EPOCH};

/// Formats a time the way Marathon does in `version`, `stagedAt` and event `timestamp` fields:
/// `2017-07-19T17:34:41.967Z`.
pub(crate) fn iso8601(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let millis = since.subsec_millis();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// The current time in Marathon's format.
pub(crate) fn now() -> String {
    iso8601(SystemTime::now())
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); the era-based conversion
/// avoids pulling a date crate in for one format.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A random version-4 UUID in its canonical textual form.
pub(crate) fn uuid() -> String {
    let mut v: u128 = rand::random();
    v = (v & !(0xf << 76)) | (0x4 << 76);
    v = (v & !(0x3 << 62)) | (0x2 << 62);
    let hex = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The app id as Marathon writes it inside task ids: `/group/app` becomes `group_app`.
pub(crate) fn app_id_in_task_id(app_id: &str) -> String {
    app_id.trim_start_matches('/').replace('/', "_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        let at = UNIX_EPOCH + Duration::from_millis(1_500_486_081_967);
        assert_eq!(iso8601(at), "2017-07-19T17:41:21.967Z");
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(iso8601(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn uuid_is_canonical_v4() {
        let id = uuid();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
    }
}
