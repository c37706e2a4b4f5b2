//! Deterministic content: random-looking bytes derived from a seed and a counter with SHA-256, so a
//! workload is the same on every run and every machine.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for byte in hash {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// The registry digest of `bytes`: `sha256:<hex>`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// The hex part of a `sha256:<hex>` digest.
pub fn hex_of(digest: &str) -> &str {
    digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest:?}"))
}

/// A generator of deterministic, random-looking content.
#[derive(Debug, Clone)]
pub struct ContentGen {
    seed: String,
    counter: u64,
}

impl ContentGen {
    pub fn new(seed: &str) -> ContentGen {
        ContentGen {
            seed: seed.to_owned(),
            counter: 0,
        }
    }

    /// A fresh number, also usable to make JSON documents unique.
    pub fn next_id(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// `len` random-looking bytes for item `id`.
    pub fn bytes_for(&self, id: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 32);
        let mut block = 0u64;
        while out.len() < len {
            let mut hasher = Sha256::new();
            hasher.update(self.seed.as_bytes());
            hasher.update(id.to_le_bytes());
            hasher.update(block.to_le_bytes());
            out.extend_from_slice(&hasher.finalize());
            block += 1;
        }
        out.truncate(len);
        out
    }

    /// A new blob of a size between `min` and `max` bytes (inclusive), both derived from the seed.
    pub fn next_bytes(&mut self, min: usize, max: usize) -> Vec<u8> {
        assert!(min > 0 && min <= max, "bad size range {min}..={max}");
        let id = self.next_id();
        let pick = self.bytes_for(id ^ 0x5eed_5eed_5eed_5eed, 8);
        let r = u64::from_le_bytes(pick.try_into().expect("8 bytes"));
        let span = (max - min + 1) as u64;
        let len = min + (r % span) as usize;
        self.bytes_for(id, len)
    }
}

/// `t` as RFC 3339 UTC with second precision (`2024-05-01T12:00:00Z`), as the registry writes
/// `startedat`.
pub fn rfc3339(t: SystemTime) -> String {
    let Utc { y, m, d, rem, .. } = Utc::of(t);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// `t` as an HTTP date (RFC 1123, `Thu, 29 Feb 2024 12:34:56 GMT`), as Azure's `x-ms-date`
/// header wants it.
pub fn http_date(t: SystemTime) -> String {
    const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let Utc { days, y, m, d, rem } = Utc::of(t);
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS[((days + 4) % 7) as usize];
    format!(
        "{weekday}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        MONTHS[m as usize - 1],
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// A UTC instant split for formatting: days since the epoch, the civil date, seconds of the day.
struct Utc {
    days: i64,
    y: i64,
    m: u32,
    d: u32,
    rem: u64,
}

impl Utc {
    fn of(t: SystemTime) -> Utc {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let days = (secs / 86_400) as i64;
        let (y, m, d) = civil_from_days(days);
        Utc {
            days,
            y,
            m,
            d,
            rem: secs % 86_400,
        }
    }
}

/// Howard Hinnant's days-since-epoch → (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // 2024-02-29T12:34:56Z
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
        assert_eq!(http_date(t), "Thu, 29 Feb 2024 12:34:56 GMT");
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
