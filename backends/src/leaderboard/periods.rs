//! Leaderboard periods: `daily:<YYYY-MM-DD>` and `weekly:<YYYY-Www>` (ISO 8601 week), in UTC.
//! Pure calendar arithmetic (days from civil, after H. Hinnant) so every role names the same
//! period for the same instant.

const DAY_MS: u64 = 86_400_000;

/// (year, month, day) of a day number counted from 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `daily:YYYY-MM-DD` of the instant.
pub fn daily_board(at_ms: u64) -> String {
    let (y, m, d) = civil_from_days((at_ms / DAY_MS) as i64);
    format!("daily:{y:04}-{m:02}-{d:02}")
}

/// `weekly:YYYY-Www`, the ISO week of the instant (weeks start on Monday; week 1 holds the
/// year's first Thursday).
pub fn weekly_board(at_ms: u64) -> String {
    let (year, week) = iso_week(at_ms);
    format!("weekly:{year:04}-W{week:02}")
}

fn iso_week(at_ms: u64) -> (i64, u32) {
    let days = (at_ms / DAY_MS) as i64;
    // 1970-01-01 was a Thursday; Monday = 0.
    let weekday = (days + 3).rem_euclid(7);
    let thursday = days - weekday + 3;
    let (year, _, _) = civil_from_days(thursday);
    let jan1 = days_from_civil(year, 1, 1);
    (year, ((thursday - jan1) / 7 + 1) as u32)
}

/// Milliseconds from `at_ms` to the end of its day / ISO week.
pub fn day_end_ms(at_ms: u64) -> u64 {
    (at_ms / DAY_MS + 1) * DAY_MS
}

pub fn week_end_ms(at_ms: u64) -> u64 {
    let days = (at_ms / DAY_MS) as i64;
    let weekday = (days + 3).rem_euclid(7);
    ((days - weekday + 7) as u64) * DAY_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(y: i64, m: u32, d: u32) -> u64 {
        days_from_civil(y, m, d) as u64 * DAY_MS + 3_600_000
    }

    #[test]
    fn days_and_iso_weeks() {
        assert_eq!(daily_board(0), "daily:1970-01-01");
        assert_eq!(daily_board(ms(2026, 11, 21)), "daily:2026-11-21");
        assert_eq!(daily_board(ms(2024, 2, 29)), "daily:2024-02-29");
        // ISO weeks around year ends.
        assert_eq!(weekly_board(ms(2026, 11, 21)), "weekly:2026-W47");
        assert_eq!(weekly_board(ms(2021, 1, 3)), "weekly:2020-W53");
        assert_eq!(weekly_board(ms(2024, 12, 30)), "weekly:2025-W01");
        assert_eq!(weekly_board(ms(2026, 1, 1)), "weekly:2026-W01");
        // Ends of periods: 2026-11-21 is a Saturday; the week ends Monday 23rd 00:00.
        assert_eq!(
            day_end_ms(ms(2026, 11, 21)),
            days_from_civil(2026, 11, 22) as u64 * DAY_MS
        );
        assert_eq!(
            week_end_ms(ms(2026, 11, 21)),
            days_from_civil(2026, 11, 23) as u64 * DAY_MS
        );
        for d in 0..4000 {
            let t = d * DAY_MS;
            let (y, m, dd) = civil_from_days(d as i64);
            assert_eq!(days_from_civil(y, m, dd), d as i64);
            assert!(week_end_ms(t) > t && week_end_ms(t) - t <= 7 * DAY_MS);
        }
    }
}
