//! Shards: how `regsweep sweep --shard I/N` splits one collection between N processes.
//!
//! Blobs shard by the first byte of their digest, as the storage already lays them out
//! (`blobs/sha256/00` … `ff`): shard `I` of `N` owns the byte values `I, I+N, I+2N, …`, so a
//! shard lists only its own 256/N blob directories. Repositories (their links, tags, uploads and
//! empty directories) shard by a stable hash of their name (FNV-1a, the same on every machine and
//! every release), since names cluster (`team/…`) where digests do not. Every blob and every
//! repository belongs to exactly one shard of `N`.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::digest::Digest;
use crate::plan::Owner;

/// Shard `index` of `count` (`0 <= index < count <= 256`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    index: u16,
    count: u16,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ShardError {
    #[error("{0:?} is not a shard: expected I/N (as 3/16) or env:VARIABLE/N")]
    Malformed(String),
    #[error(
        "{0} is not set: --shard env:{0}/N reads the shard's index from it (a Kubernetes Indexed \
         Job sets JOB_COMPLETION_INDEX, an AWS Batch array job AWS_BATCH_JOB_ARRAY_INDEX)"
    )]
    Unset(String),
    #[error("{count} shards: between 1 and 256 (one per first byte of a digest at most)")]
    Count { count: u64 },
    #[error("shard {index} of {count}: shards are numbered from 0 to {}", count - 1)]
    Index { index: u64, count: u64 },
}

impl Shard {
    /// The whole registry: one shard of one.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: u64, count: u64) -> Result<Shard, ShardError> {
        if !(1..=256).contains(&count) {
            return Err(ShardError::Count { count });
        }
        if index >= count {
            return Err(ShardError::Index { index, count });
        }
        Ok(Shard {
            index: index as u16,
            count: count as u16,
        })
    }

    pub fn index(&self) -> u16 {
        self.index
    }

    pub fn count(&self) -> u16 {
        self.count
    }

    pub fn is_whole(&self) -> bool {
        self.count == 1
    }

    /// The first digest bytes this shard owns, ascending.
    pub fn blob_shards(&self) -> impl Iterator<Item = u8> + '_ {
        (self.index..256)
            .step_by(usize::from(self.count))
            .map(|b| b as u8)
    }

    pub fn owns_blob(&self, digest: &Digest) -> bool {
        u16::from(digest.as_bytes()[0]) % self.count == self.index
    }

    pub fn owns_repository(&self, name: &str) -> bool {
        (fnv1a(name.as_bytes()) % u64::from(self.count)) as u16 == self.index
    }

    /// Whether a deletion is this shard's to carry out (what lies outside blobs and repositories
    /// is shard 0's).
    pub fn owns(&self, owner: Owner<'_>) -> bool {
        match owner {
            Owner::BlobShard(byte) => u16::from(byte) % self.count == self.index,
            Owner::Repository(name) => self.owns_repository(name),
            Owner::Registry => self.index == 0,
        }
    }
}

/// FNV-1a, 64 bits: stable across machines and releases, unlike `std`'s randomly seeded hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(text: &str) -> Result<Shard, ShardError> {
        Shard::parse_with(text, |_| None)
    }
}

impl Shard {
    /// `I/N`, or `env:VARIABLE/N` with the index read through `lookup` (the environment): batch
    /// engines hand each worker its index in a variable (`JOB_COMPLETION_INDEX`,
    /// `AWS_BATCH_JOB_ARRAY_INDEX`), and a container image without a shell cannot expand it.
    pub fn parse_with(
        text: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Shard, ShardError> {
        let malformed = || ShardError::Malformed(text.to_owned());
        let (index, count) = text.rsplit_once('/').ok_or_else(malformed)?;
        let number = |s: &str| s.parse::<u64>().map_err(|_| malformed());
        let index = match index.strip_prefix("env:") {
            Some(name) if !name.is_empty() => {
                let value = lookup(name).ok_or_else(|| ShardError::Unset(name.to_owned()))?;
                value
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| ShardError::Malformed(format!("{text} ({name}={value})")))?
            }
            Some(_) => return Err(malformed()),
            None => number(index)?,
        };
        Shard::new(index, number(count)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!("3/16".parse(), Shard::new(3, 16));
        assert_eq!("0/1".parse::<Shard>().unwrap(), Shard::WHOLE);
        assert_eq!("3/16".parse::<Shard>().unwrap().to_string(), "3/16");
        assert_eq!(
            "4/4".parse::<Shard>(),
            Err(ShardError::Index { index: 4, count: 4 })
        );
        assert_eq!(
            "0/257".parse::<Shard>(),
            Err(ShardError::Count { count: 257 })
        );
        assert_eq!("0/0".parse::<Shard>(), Err(ShardError::Count { count: 0 }));
        for bad in ["3", "a/4", "1/4/2", "-1/4", " 1/4"] {
            assert!(
                matches!(bad.parse::<Shard>(), Err(ShardError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_index_may_come_from_the_environment() {
        let env = |name: &str| (name == "JOB_COMPLETION_INDEX").then(|| "5".to_owned());
        assert_eq!(
            Shard::parse_with("env:JOB_COMPLETION_INDEX/16", env),
            Shard::new(5, 16)
        );
        assert_eq!(
            Shard::parse_with("env:AWS_BATCH_JOB_ARRAY_INDEX/16", env),
            Err(ShardError::Unset("AWS_BATCH_JOB_ARRAY_INDEX".to_owned()))
        );
        assert_eq!(
            Shard::parse_with("env:JOB_COMPLETION_INDEX/4", env),
            Err(ShardError::Index { index: 5, count: 4 })
        );
        let junk = |_: &str| Some("five".to_owned());
        assert!(matches!(
            Shard::parse_with("env:X/4", junk),
            Err(ShardError::Malformed(m)) if m.contains("X=five")
        ));
        assert!(matches!(
            Shard::parse_with("env:/4", env),
            Err(ShardError::Malformed(_))
        ));
    }

    #[test]
    fn every_blob_byte_and_repository_has_exactly_one_shard() {
        let names: Vec<String> = (0..2000)
            .map(|i| format!("team-{}/app{i}", i % 7))
            .collect();
        for count in [1, 2, 3, 4, 7, 16, 255, 256] {
            let shards: Vec<Shard> = (0..count).map(|i| Shard::new(i, count).unwrap()).collect();
            let mut bytes: Vec<u8> = shards.iter().flat_map(|s| s.blob_shards()).collect();
            bytes.sort_unstable();
            assert_eq!(bytes, (0..=255).collect::<Vec<u8>>(), "{count} shards");
            for byte in 0..=255u8 {
                let digest = Digest::from_bytes([byte; 32]);
                let owners: Vec<_> = shards.iter().filter(|s| s.owns_blob(&digest)).collect();
                assert_eq!(owners.len(), 1);
                assert!(owners[0].blob_shards().any(|b| b == byte));
            }
            for name in &names {
                assert_eq!(shards.iter().filter(|s| s.owns_repository(name)).count(), 1);
            }
        }
    }

    #[test]
    fn repositories_spread_over_the_shards_and_the_hash_is_stable() {
        // Fixed values: a shard's repositories must not move between releases or machines.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let shards: Vec<Shard> = (0..4).map(|i| Shard::new(i, 4).unwrap()).collect();
        let mut per_shard = [0; 4];
        for i in 0..4000 {
            let name = format!("team/app{i}");
            per_shard[shards
                .iter()
                .position(|s| s.owns_repository(&name))
                .unwrap()] += 1;
        }
        assert!(
            per_shard.iter().all(|&n| (800..1200).contains(&n)),
            "{per_shard:?}"
        );
    }
}
