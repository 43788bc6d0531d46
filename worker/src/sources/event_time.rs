//! Event times as sources write them: epoch milliseconds, epoch seconds or RFC 3339.

use weft_crds::join_pipeline::EventTimeFormat;

/// 2000-01-01T00:00:00Z: earlier timestamps are implausible for live traffic.
pub const PLAUSIBLE_FROM_MS: i64 = 946_684_800_000;
/// 2200-01-01T00:00:00Z: later timestamps are implausible (usually a unit mix-up).
pub const PLAUSIBLE_UNTIL_MS: i64 = 7_258_118_400_000;

/// Parses the raw JSON text of a value (a number, or a string with its quotes) into epoch
/// milliseconds. `None` when it is not a time in the declared format.
pub fn parse(raw: &str, format: EventTimeFormat) -> Option<i64> {
    let text = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(raw);
    // Trimmed only when it starts or ends with a space or a non-ASCII byte (rarely).
    let plain = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_graphic());
    let text = match plain(text.as_bytes().first()) && plain(text.as_bytes().last()) {
        true => text,
        false => text.trim(),
    };
    if text.is_empty() {
        return None;
    }
    match format {
        EventTimeFormat::EpochMillis => parse_number(text, 1.0),
        EventTimeFormat::EpochSeconds => parse_number(text, 1000.0),
        EventTimeFormat::Rfc3339 => parse_rfc3339(text),
    }
}

fn parse_number(text: &str, scale: f64) -> Option<i64> {
    if let Some(n) = parse_integer(text) {
        return n.checked_mul(scale as i64);
    }
    let f: f64 = text.parse().ok()?;
    let ms = (f * scale).round();
    (ms.is_finite() && ms.abs() < 9.0e15).then_some(ms as i64)
}

/// An integer as `str::parse::<i64>` reads it: plain digits (every time the join writes,
/// and most that messages carry) eight at a time, anything else through `parse`.
pub(crate) fn parse_integer(text: &str) -> Option<i64> {
    parse_digits(text.as_bytes())
        .and_then(|n| i64::try_from(n).ok())
        .or_else(|| text.parse().ok())
}

/// The value of 1 to 19 ASCII digits (no sign), eight at a time: every message has a
/// 13-digit time, and std's general parse took ~160 instructions for it.
fn parse_digits(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 24 {
        return None;
    }
    // Right-aligned behind leading zeros, to be read as whole words.
    let mut padded = [b'0'; 24];
    padded[24 - b.len()..].copy_from_slice(b);
    let words = b.len().div_ceil(8);
    let value = padded[24 - 8 * words..]
        .chunks_exact(8)
        .try_fold(0u64, |value, chunk| {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let digits = eight_digits(u64::from_le_bytes(word))?;
            value.checked_mul(100_000_000)?.checked_add(digits)
        })?;
    (b.len() <= 19).then_some(value)
}

/// Eight ASCII digits, the first in the lowest byte, as a number: pairs, then fours, then
/// the eight, each step a multiply and a shift.
fn eight_digits(word: u64) -> Option<u64> {
    const HIGH_NIBBLES: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    const ZEROS: u64 = u64::from_le_bytes([b'0'; 8]);
    // Every byte 0x30..=0x39: its high nibble is 3, and adding 6 leaves it 3 (no byte carries
    // into the next: 0x3F + 6 is 0x45).
    if word & HIGH_NIBBLES != ZEROS
        || word.wrapping_add(0x0606_0606_0606_0606) & HIGH_NIBBLES != ZEROS
    {
        return None;
    }
    let v = word - ZEROS;
    let v = (v * 10 + (v >> 8)) & 0x00FF_00FF_00FF_00FF;
    let v = (v * 100 + (v >> 16)) & 0x0000_FFFF_0000_FFFF;
    Some((v * 10_000 + (v >> 32)) & 0xFFFF_FFFF)
}

/// RFC 3339 (`2026-11-22T08:30:00.123+08:00`, `...Z`; `t`/space separators and lower-case `z`
/// accepted), to epoch milliseconds. Fractions beyond milliseconds are truncated.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0i64, |acc, d| {
            d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
        })
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..3 {
            millis *= 10;
        }
    }
    let offset_minutes = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (h, m) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            if *sign == b'+' {
                h * 60 + m
            } else {
                -(h * 60 + m)
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_forms() {
        assert_eq!(
            parse("1763800000123", EventTimeFormat::EpochMillis),
            Some(1_763_800_000_123)
        );
        assert_eq!(
            parse("\"1763800000123\"", EventTimeFormat::EpochMillis),
            Some(1_763_800_000_123)
        );
        assert_eq!(
            parse("1763800000.5", EventTimeFormat::EpochSeconds),
            Some(1_763_800_000_500)
        );
        assert_eq!(
            parse("1763800000", EventTimeFormat::EpochSeconds),
            Some(1_763_800_000_000)
        );
        // Spaces around the time, ASCII or not, are trimmed.
        for padded in ["\" 1763800000123\t\"", "\"\u{a0}1763800000123\u{2003}\""] {
            assert_eq!(
                parse(padded, EventTimeFormat::EpochMillis),
                Some(1_763_800_000_123),
                "{padded}"
            );
        }
        assert_eq!(parse("\"soon\"", EventTimeFormat::EpochMillis), None);
        assert_eq!(parse("null", EventTimeFormat::EpochSeconds), None);
        assert_eq!(parse("1e400", EventTimeFormat::EpochSeconds), None);
    }

    proptest::proptest! {
        /// A time reads as `str::parse` reads it: any integer, with leading zeros or a
        /// sign, and any other text.
        #[test]
        fn a_time_reads_as_its_parse(n in proptest::num::i64::ANY, zeros in 0usize..8, text in "[-+0-9a]{0,24}") {
            for t in [n.to_string(), format!("{}{}", "0".repeat(zeros), n.unsigned_abs()), text] {
                proptest::prop_assert_eq!(parse_integer(&t), t.parse::<i64>().ok(), "{}", t);
            }
        }
    }

    proptest::proptest! {
        /// Digits eight at a time read what std's parse reads, for any text of digits and
        /// other bytes, of any length around the chunk size.
        #[test]
        fn digits_parse_as_std_parses_them(text in "[0-9]{0,21}|[0-9/:+\\- .a]{0,12}[0-9]{0,9}") {
            let std = text.parse::<u64>().ok().filter(|_| !text.starts_with('+'));
            let expected = std.filter(|_| (1..=19).contains(&text.len()));
            proptest::prop_assert_eq!(parse_digits(text.as_bytes()), expected, "{}", text);
        }
    }

    #[test]
    fn digits_eight_at_a_time_refuse_every_other_byte_anywhere() {
        for at in 0..8 {
            for byte in 0..=255u8 {
                let mut word = *b"12345678";
                word[at] = byte;
                let expected = byte
                    .is_ascii_digit()
                    .then(|| std::str::from_utf8(&word).unwrap().parse::<u64>().unwrap());
                assert_eq!(eight_digits(u64::from_le_bytes(word)), expected, "{word:?}");
            }
        }
        assert_eq!(parse_digits(b"1763800000123"), Some(1_763_800_000_123));
        assert_eq!(
            parse_digits(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(parse_digits(b"99999999999999999999"), None);
    }

    #[test]
    fn rfc3339_with_offsets_and_fractions() {
        // 2025-11-22T08:30:00Z = 1763800200 s.
        assert_eq!(
            parse_rfc3339("2025-11-22T08:30:00Z"),
            Some(1_763_800_200_000)
        );
        assert_eq!(
            parse_rfc3339("2025-11-22T16:30:00.123+08:00"),
            Some(1_763_800_200_123)
        );
        assert_eq!(
            parse_rfc3339("2025-11-22t08:30:00.1z"),
            Some(1_763_800_200_100)
        );
        assert_eq!(
            parse_rfc3339("2025-11-22T03:30:00.123456-05:00"),
            Some(1_763_800_200_123)
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000)
        );
        for bad in [
            "2025-02-29T00:00:00Z",
            "2025-11-22T08:30:00",
            "2025-11-22T24:00:00Z",
            "2025-11-22",
            "2025-11-22T08:30:00.Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
