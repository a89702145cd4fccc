//! Wall-clock time as text, in UTC, without a date library: zdd's ISO timestamps and the access
//! log's HAProxy dates.
use std::time::{Duration, SystemTime};

/// A UTC instant broken down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u64,
    pub minute: u64,
    pub second: u64,
    pub micros: u32,
}

impl Civil {
    /// `since` the Unix epoch, broken down (proleptic Gregorian calendar, after Howard
    /// Hinnant's days-to-civil algorithm).
    pub fn from_unix(since: Duration) -> Civil {
        let secs = since.as_secs();
        let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Civil {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            micros: since.subsec_micros(),
        }
    }

    pub fn of(t: SystemTime) -> Civil {
        Civil::from_unix(t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default())
    }

    /// `2026-12-06T08:30:05.123456` (naive, as zdd.py's `datetime.now().isoformat()`).
    pub fn iso(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.micros
        )
    }

    /// `06/Dec/2026:08:30:05.123`: HAProxy's log date.
    pub fn haproxy(&self) -> String {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        format!(
            "{:02}/{}/{:04}:{:02}:{:02}:{:02}.{:03}",
            self.day,
            MONTHS[(self.month as usize).clamp(1, 12) - 1],
            self.year,
            self.hour,
            self.minute,
            self.second,
            self.micros / 1000
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_come_out_as_the_calendar_says() {
        let t = Civil::from_unix(Duration::from_micros(1_796_545_805_123_456));
        assert_eq!(t.iso(), "2026-12-06T08:30:05.123456");
        assert_eq!(t.haproxy(), "06/Dec/2026:08:30:05.123");
        assert_eq!(
            Civil::from_unix(Duration::ZERO).iso(),
            "1970-01-01T00:00:00.000000"
        );
        let leap = Civil::from_unix(Duration::from_secs(951_782_400));
        assert_eq!(leap.iso(), "2000-02-29T00:00:00.000000");
    }
}
