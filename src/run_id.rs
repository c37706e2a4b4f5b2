//! Run identifiers: `20261129T031522Z-3f9a1c`, the UTC start second and a per-process suffix, so that
//! they sort by time and two runs started in the same second differ. A run ID names the run in the
//! lock record, in logs and in the quarantine (`_regsweep/quarantine/<run>/`).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunId(String);

impl RunId {
    /// A new ID for a run starting at `now`.
    pub fn new(now: SystemTime) -> RunId {
        let stamp = humantime::format_rfc3339_seconds(now)
            .to_string()
            .replace(['-', ':'], "");
        let nanos = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let suffix = (std::process::id() ^ nanos.rotate_left(7)) & 0xff_ffff;
        RunId(format!("{stamp}-{suffix:06x}"))
    }

    /// An ID as given back by an operator (`--run`): it must have the shape of one, so that it can
    /// never name a path outside the run's own directory.
    pub fn parse(text: &str) -> Option<RunId> {
        let (stamp, suffix) = text.split_once('-')?;
        let valid = stamp.len() == 16
            && stamp.bytes().enumerate().all(|(i, b)| match i {
                8 => b == b'T',
                15 => b == b'Z',
                _ => b.is_ascii_digit(),
            })
            && suffix.len() == 6
            && suffix.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| RunId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ids_sort_by_time_and_parse_back() {
        let early = RunId::new(UNIX_EPOCH + Duration::from_secs(1_795_000_000));
        let late = RunId::new(UNIX_EPOCH + Duration::from_secs(1_795_000_001));
        assert!(early.as_str().starts_with("20261118T"), "{early}");
        assert!(early.as_str()[..16] < late.as_str()[..16]);
        assert_eq!(RunId::parse(early.as_str()), Some(early));
        for bad in [
            "",
            "../../docker",
            "20261118T000000Z",
            "20261118T000000Z-zzzzzz",
            "x-123456",
        ] {
            assert_eq!(RunId::parse(bad), None, "{bad}");
        }
    }
}
