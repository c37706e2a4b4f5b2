//! Content digests.
//!
//! The registry addresses every blob by a digest `sha256:<64 lowercase hex>`. regsweep handles sha256
//! only: objects under other algorithms are never deleted (fail closed), so a digest here is 32 raw
//! bytes — compact enough to sort and search tens of millions of them.

use std::fmt;

use thiserror::Error;

/// The algorithm prefix of every digest regsweep collects.
pub const SHA256: &str = "sha256";

/// A sha256 content digest, stored as its 32 raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest([u8; 32]);

/// Why a digest string was rejected.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest algorithm {0:?} is not sha256")]
    UnsupportedAlgorithm(String),
    #[error("digest {0:?} is not of the form sha256:<64 lowercase hex>")]
    Malformed(String),
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex>` exactly: no whitespace, no newline, no upper case.
    pub fn parse(text: &str) -> Result<Digest, DigestError> {
        let Some((algorithm, hex)) = text.split_once(':') else {
            return Err(DigestError::Malformed(text.to_owned()));
        };
        if algorithm != SHA256 {
            let known = matches!(algorithm, "sha384" | "sha512");
            return Err(if known {
                DigestError::UnsupportedAlgorithm(algorithm.to_owned())
            } else {
                DigestError::Malformed(text.to_owned())
            });
        }
        Digest::from_hex(hex).ok_or_else(|| DigestError::Malformed(text.to_owned()))
    }

    /// Decodes the 64 lowercase hex characters of a sha256 digest, as they appear in storage keys.
    pub fn from_hex(hex: &str) -> Option<Digest> {
        let hex = hex.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
            *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(Digest(bytes))
    }

    /// The 64 lowercase hex characters, as used in storage keys.
    pub fn hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for byte in self.0 {
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0xf)] as char);
        }
        out
    }

    /// Builds a digest from raw bytes (benchmarks and synthetic data).
    pub const fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Lowercase hex only: the registry never writes upper case, so anything else is corruption.
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SHA256}:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";

    #[test]
    fn round_trips() {
        let d = Digest::parse(&format!("sha256:{HEX}")).unwrap();
        assert_eq!(d.hex(), HEX);
        assert_eq!(d.to_string(), format!("sha256:{HEX}"));
        assert_eq!(Digest::from_hex(HEX), Some(d));
    }

    #[test]
    fn rejects_anything_not_exact() {
        for bad in [
            format!("sha256:{HEX}\n"),
            format!(" sha256:{HEX}"),
            format!("sha256:{}", HEX.to_uppercase()),
            format!("sha256:{}", &HEX[1..]),
            format!("sha256:{HEX}0"),
            format!("SHA256:{HEX}"),
            HEX.to_owned(),
            String::new(),
            format!("sha256:{}g", &HEX[1..]),
        ] {
            assert!(
                matches!(Digest::parse(&bad), Err(DigestError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            Digest::parse(&format!("sha512:{HEX}{HEX}")),
            Err(DigestError::UnsupportedAlgorithm("sha512".into()))
        );
    }
}
