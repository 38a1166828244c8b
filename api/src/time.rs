//! Time parameters: RFC 3339 timestamps or Unix seconds in, RFC 3339 (UTC) out.
//!
//! Hand-written (proleptic Gregorian calendar, Howard Hinnant's day algorithms) so the library
//! needs no date crate; every instant is Unix-epoch nanoseconds in a `u64`.

const NS: u64 = 1_000_000_000;

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses an instant: Unix seconds (`1700000000`, `1700000000.25`) or RFC 3339
/// (`2024-05-01T12:00:00Z`, `2024-05-01T12:00:00.5+02:00`; a space may replace the `T`).
/// Returns Unix nanoseconds; instants before 1970 are rejected.
pub fn parse_instant(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty time".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return parse_unix_seconds(s);
    }
    parse_rfc3339(s)
}

fn parse_unix_seconds(s: &str) -> Result<u64, String> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || frac.contains('.') || int.len() > 12 {
        return Err(format!("{s:?} is not Unix seconds"));
    }
    let secs: u64 = int
        .parse()
        .map_err(|_| format!("{s:?} is not Unix seconds"))?;
    let ns = parse_fraction(frac).ok_or_else(|| format!("{s:?} is not Unix seconds"))?;
    secs.checked_mul(NS)
        .and_then(|v| v.checked_add(ns))
        .ok_or_else(|| format!("{s:?} is out of range"))
}

/// Digits after the decimal point as nanoseconds (more than 9 digits are truncated).
fn parse_fraction(frac: &str) -> Option<u64> {
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut ns = 0u64;
    for i in 0..9 {
        let d = frac.as_bytes().get(i).map_or(0, |b| u64::from(b - b'0'));
        ns = ns * 10 + d;
    }
    Some(ns)
}

fn num(s: &str, what: &str, full: &str) -> Result<u32, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{full:?} is not RFC 3339 (bad {what}); use e.g. 2024-05-01T12:00:00Z or Unix seconds"
        ));
    }
    s.parse().map_err(|_| format!("{full:?}: bad {what}"))
}

fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "{s:?} is not RFC 3339 or Unix seconds; use e.g. 2024-05-01T12:00:00Z or 1714564800"
        )
    };
    if !s.is_ascii() || s.len() < 20 {
        return Err(bad());
    }
    let b = s.as_bytes();
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' {
        return Err(bad());
    }
    if b[16] != b':' {
        return Err(bad());
    }
    let year = num(&s[0..4], "year", s)?;
    let month = num(&s[5..7], "month", s)?;
    let day = num(&s[8..10], "day", s)?;
    let hour = num(&s[11..13], "hour", s)?;
    let min = num(&s[14..16], "minute", s)?;
    let sec = num(&s[17..19], "second", s)?;
    let mut rest = &s[19..];
    let mut frac_ns = 0;
    if let Some(r) = rest.strip_prefix('.') {
        let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        if end == 0 {
            return Err(bad());
        }
        frac_ns = parse_fraction(&r[..end]).ok_or_else(bad)?;
        rest = &r[end..];
    }
    let offset_s: i64 = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':' =>
        {
            let h = num(&rest[1..3], "offset", s)?;
            let m = num(&rest[4..6], "offset", s)?;
            if h > 23 || m > 59 {
                return Err(bad());
            }
            let v = i64::from(h * 3600 + m * 60);
            if rest.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return Err(bad()),
    };
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(i64::from(year), month)
        || hour > 23
        || min > 59
        || sec > 60
    {
        return Err(format!("{s:?} is not a valid date and time"));
    }
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + min * 60 + sec.min(59)) - offset_s;
    if secs < 0 {
        return Err(format!("{s:?} is before 1970"));
    }
    (secs as u64)
        .checked_mul(NS)
        .and_then(|n| n.checked_add(frac_ns))
        .ok_or_else(|| format!("{s:?} is too far in the future"))
}

/// Formats Unix nanoseconds as RFC 3339 UTC, with as many fractional digits as needed
/// (none, 3, 6 or 9): `2024-05-01T12:00:00.250Z`.
pub fn format_rfc3339(ns: u64) -> String {
    let secs = ns / NS;
    let frac = ns % NS;
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let sod = secs % 86_400;
    let mut out = format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
    if frac != 0 {
        if frac.is_multiple_of(1_000_000) {
            out.push_str(&format!(".{:03}", frac / 1_000_000));
        } else if frac.is_multiple_of(1000) {
            out.push_str(&format!(".{:06}", frac / 1000));
        } else {
            out.push_str(&format!(".{frac:09}"));
        }
    }
    out.push('Z');
    out
}

/// Now, in Unix nanoseconds.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_seconds() {
        assert_eq!(parse_instant("0").unwrap(), 0);
        assert_eq!(parse_instant("1700000000").unwrap(), 1_700_000_000 * NS);
        assert_eq!(
            parse_instant("1700000000.25").unwrap(),
            1_700_000_000 * NS + 250_000_000
        );
        assert!(parse_instant("17.00.1").is_err());
        assert!(parse_instant(".5").is_err());
        assert!(parse_instant("").is_err());
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_instant("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_instant("2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000 * NS
        );
        assert_eq!(
            parse_instant("2023-11-15T00:13:20.5+02:00").unwrap(),
            1_700_000_000 * NS + 500_000_000
        );
        assert_eq!(
            parse_instant("2023-11-14 21:13:20.000000001-01:00").unwrap(),
            1_700_000_000 * NS + 1
        );
        assert_eq!(
            parse_instant("2024-02-29T00:00:00Z").unwrap(),
            1_709_164_800 * NS
        );
        for bad in [
            "2023-02-29T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-11-14T22:13:20",
            "2023-11-14T25:13:20Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14",
            "yesterday",
            "1969-12-31T23:59:59Z",
            "2023-11-14T22:13:20+2:00",
        ] {
            assert!(parse_instant(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn far_future_is_an_error_not_a_wrap() {
        let e = parse_instant("2600-01-01T00:00:00Z").unwrap_err();
        assert!(e.contains("too far in the future"), "{e}");
        assert!(parse_instant("2500-01-01T00:00:00Z").is_ok());
    }

    #[test]
    fn format_round_trips() {
        for ns in [
            0,
            1_700_000_000 * NS,
            1_700_000_000 * NS + 250_000_000,
            1_700_000_000 * NS + 250_001_000,
            1_700_000_000 * NS + 7,
            4_102_444_800 * NS,
            951_782_400 * NS,
        ] {
            let s = format_rfc3339(ns);
            assert_eq!(parse_instant(&s).unwrap(), ns, "{s}");
        }
        assert_eq!(format_rfc3339(1_700_000_000 * NS), "2023-11-14T22:13:20Z");
        assert_eq!(
            format_rfc3339(1_700_000_000 * NS + 250_000_000),
            "2023-11-14T22:13:20.250Z"
        );
    }
}
