//! Forget deleted blobs in the registry's Redis blob-descriptor cache
//! (`storage.cache.blobdescriptor: redis`), so that the registry needs no restart.
//!
//! The registry (2.8 `registry/storage/cache/redis/redis.go`; later versions keep the names) stores:
//!
//! - `blobs::<digest>`: a hash, the global descriptor of a blob;
//! - `repository::<name>::blobs`: a set, the digests linked in a repository (checked first by every
//!   repository-scoped lookup);
//! - `repository::<name>::blobs::<digest>`: a hash, the repository's media type for the blob.
//!
//! For every deleted blob regsweep sends `DEL blobs::<digest>`; for every deleted or orphaned link
//! `DEL repository::<name>::blobs::<digest>` and `SREM repository::<name>::blobs <digest>`; for every
//! repository deleted whole `DEL repository::<name>::blobs`. Commands are pipelined,
//! [`PIPELINE`] per round trip, one key each (so a Redis proxy sharding by key can route them).
//!
//! The client is a few dozen lines of RESP2 over one tokio TCP connection rather than the `redis`
//! crate: it needs four commands (`AUTH`, `SELECT`, `DEL`, `SREM`) whose replies are statuses,
//! errors and integers, and the crate (even without default features) would add a parser
//! combinator library, URL handling and connection management regsweep has no other use for.
//! Redis over TLS (`rediss://`) is not supported (the registry 2.8 does not support it either), nor
//! Redis Cluster redirections (`MOVED` answers count as refused commands).

use std::fmt;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use serde::Serialize;
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use url::{Host, Url};

use super::{Deleted, redact_url};
use crate::digest::Digest;

/// Commands per round trip.
pub const PIPELINE: usize = 1000;
/// Longest wait for the connection, or for the replies of one round trip.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Where the registry's Redis is: `redis://[[user]:password@]host[:port][/db]`. Shows (and
/// debug-prints) without its credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    host: String,
    port: u16,
    db: u32,
    username: Option<String>,
    password: Option<String>,
    shown: String,
}

/// Why a Redis URL was refused. Never repeats the URL, which may hold a password.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RedisUrlError {
    #[error("not a URL ({0}); expected redis://[user:password@]host:port[/db]")]
    Syntax(#[from] url::ParseError),
    #[error("rediss:// (Redis over TLS) is not supported")]
    Tls,
    #[error("the scheme must be redis://")]
    Scheme,
    #[error("no host; expected redis://[user:password@]host:port[/db]")]
    NoHost,
    #[error("the database must be a number: redis://host:port/<db>")]
    Database,
    #[error("the user name or password is not valid percent-encoded UTF-8")]
    Credentials,
    #[error("query parameters are not supported")]
    Query,
}

impl RedisUrl {
    pub fn parse(text: &str) -> Result<RedisUrl, RedisUrlError> {
        let url = Url::parse(text)?;
        match url.scheme() {
            "redis" => {}
            "rediss" => return Err(RedisUrlError::Tls),
            _ => return Err(RedisUrlError::Scheme),
        }
        if url.query().is_some() {
            return Err(RedisUrlError::Query);
        }
        let host = match url.host() {
            Some(Host::Domain(name)) if !name.is_empty() => name.to_owned(),
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(RedisUrlError::NoHost),
        };
        let db = match url.path().trim_start_matches('/') {
            "" => 0,
            db => db.parse().map_err(|_| RedisUrlError::Database)?,
        };
        let decode = |text: &str| {
            percent_decode_str(text)
                .decode_utf8()
                .map(|text| text.into_owned())
                .map_err(|_| RedisUrlError::Credentials)
        };
        let username = Some(decode(url.username())?).filter(|u| !u.is_empty());
        let password = url.password().map(decode).transpose()?;
        Ok(RedisUrl {
            host,
            port: url.port().unwrap_or(6379),
            db,
            username,
            password,
            shown: redact_url(&url),
        })
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.shown)
    }
}

/// What the cache flush did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RedisOutcome {
    /// The Redis URL, without credentials.
    pub url: String,
    pub success: bool,
    /// `DEL` and `SREM` commands answered.
    pub commands: u64,
    /// Keys that existed and were deleted.
    pub keys_deleted: u64,
    /// Digests removed from repository sets.
    pub members_removed: u64,
    /// `ok`, or what went wrong.
    pub status: String,
}

#[derive(Debug, Error)]
enum FlushError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {} s", TIMEOUT.as_secs())]
    Timeout,
    #[error("{command} refused: {message}")]
    Refused {
        command: &'static str,
        message: String,
    },
    #[error("{count} commands refused, the first ({command}): {message}")]
    Partly {
        count: usize,
        command: &'static str,
        message: String,
    },
    #[error("not a Redis reply: {0}")]
    Protocol(String),
}

/// One command: its name (all that errors show) and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub name: &'static str,
    pub args: Vec<String>,
}

fn blob_key(digest: &Digest) -> String {
    format!("blobs::{digest}")
}

fn repository_set_key(name: &str) -> String {
    format!("repository::{name}::blobs")
}

fn repository_blob_key(name: &str, digest: &Digest) -> String {
    format!("repository::{name}::blobs::{digest}")
}

/// The commands that make the cache forget `deleted`, made as they are sent (a large collection
/// makes millions).
pub fn commands(deleted: &Deleted) -> impl Iterator<Item = Command> + '_ {
    let del = |key| Command {
        name: "DEL",
        args: vec![key],
    };
    let blobs = deleted.blobs.iter().map(move |d| del(blob_key(d)));
    let links = deleted
        .links
        .iter()
        .map(move |(name, d)| del(repository_blob_key(name, d)));
    // One SREM per repository (and per PIPELINE members), except for repositories whose whole
    // set goes below.
    let mut members = deleted
        .links
        .iter()
        .filter(|(name, _)| !deleted.repositories.contains(name))
        .peekable();
    let sets = std::iter::from_fn(move || {
        let (name, digest) = members.next()?;
        let mut args = vec![repository_set_key(name), digest.to_string()];
        while args.len() <= PIPELINE
            && let Some((_, digest)) = members.next_if(|(next, _)| next == name)
        {
            args.push(digest.to_string());
        }
        Some(Command { name: "SREM", args })
    });
    let repositories = deleted
        .repositories
        .iter()
        .map(move |name| del(repository_set_key(name)));
    blobs.chain(links).chain(sets).chain(repositories)
}

/// Deletes the cache entries of everything in `deleted`. Keeps going after a refused command, so
/// that as much as possible is forgotten.
pub async fn forget(url: &RedisUrl, deleted: &Deleted) -> RedisOutcome {
    let mut outcome = RedisOutcome {
        url: url.to_string(),
        success: false,
        commands: 0,
        keys_deleted: 0,
        members_removed: 0,
        status: String::new(),
    };
    match flush(url, commands(deleted), &mut outcome).await {
        Ok(()) => {
            outcome.success = true;
            outcome.status = "ok".to_owned();
        }
        Err(e) => outcome.status = e.to_string(),
    }
    outcome
}

async fn flush(
    url: &RedisUrl,
    mut commands: impl Iterator<Item = Command>,
    outcome: &mut RedisOutcome,
) -> Result<(), FlushError> {
    let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect((url.host.as_str(), url.port)))
        .await
        .map_err(|_| FlushError::Timeout)?
        .map_err(FlushError::Connect)?;
    stream.set_nodelay(true)?;
    let mut connection = Connection {
        stream: BufReader::new(stream),
    };

    let mut setup = Vec::new();
    if let Some(password) = &url.password {
        let mut args: Vec<String> = url.username.iter().cloned().collect();
        args.push(password.clone());
        setup.push(Command { name: "AUTH", args });
    }
    if url.db != 0 {
        setup.push(Command {
            name: "SELECT",
            args: vec![url.db.to_string()],
        });
    }
    for (command, reply) in setup.iter().zip(connection.round_trip(&setup).await?) {
        if let Reply::Error(message) = reply {
            return Err(FlushError::Refused {
                command: command.name,
                message,
            });
        }
    }

    let mut refused: Option<(usize, &'static str, String)> = None;
    loop {
        let chunk: Vec<Command> = commands.by_ref().take(PIPELINE).collect();
        if chunk.is_empty() {
            break;
        }
        for (command, reply) in chunk.iter().zip(connection.round_trip(&chunk).await?) {
            outcome.commands += 1;
            match reply {
                Reply::Integer(n) => {
                    let n = u64::try_from(n).unwrap_or(0);
                    if command.name == "SREM" {
                        outcome.members_removed += n;
                    } else {
                        outcome.keys_deleted += n;
                    }
                }
                Reply::Error(message) => match &mut refused {
                    Some((count, _, _)) => *count += 1,
                    None => refused = Some((1, command.name, message)),
                },
                Reply::Status(text) => {
                    return Err(FlushError::Protocol(format!(
                        "{} answered +{text}",
                        command.name
                    )));
                }
            }
        }
    }
    match refused {
        None => Ok(()),
        Some((1, command, message)) => Err(FlushError::Refused { command, message }),
        Some((count, command, message)) => Err(FlushError::Partly {
            count,
            command,
            message,
        }),
    }
}

/// The replies these commands get (RESP2).
enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
}

struct Connection {
    stream: BufReader<TcpStream>,
}

impl Connection {
    /// Sends `commands` in one write and reads their replies, in order.
    async fn round_trip(&mut self, commands: &[Command]) -> Result<Vec<Reply>, FlushError> {
        let exchange = async {
            self.stream.get_mut().write_all(&encode(commands)).await?;
            let mut replies = Vec::with_capacity(commands.len());
            for _ in commands {
                replies.push(self.read_reply().await?);
            }
            Ok(replies)
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| FlushError::Timeout)?
    }

    async fn read_reply(&mut self) -> Result<Reply, FlushError> {
        let mut line = Vec::new();
        self.stream.read_until(b'\n', &mut line).await?;
        let Some(line) = line.strip_suffix(b"\r\n") else {
            return Err(if line.is_empty() {
                FlushError::Io(std::io::ErrorKind::UnexpectedEof.into())
            } else {
                FlushError::Protocol(String::from_utf8_lossy(&line).into_owned())
            });
        };
        let text = String::from_utf8_lossy(line.get(1..).unwrap_or_default()).into_owned();
        match line.first() {
            Some(b'+') => Ok(Reply::Status(text)),
            Some(b'-') => Ok(Reply::Error(text)),
            Some(b':') => text
                .parse()
                .map(Reply::Integer)
                .map_err(|_| FlushError::Protocol(format!(":{text}"))),
            // None of these commands answers a bulk string or an array; read it whole anyway, to
            // say what it was.
            Some(b'$') => {
                let len: usize = text
                    .parse()
                    .map_err(|_| FlushError::Protocol(format!("${text}")))?;
                let mut body = vec![0; len + 2];
                self.stream.read_exact(&mut body).await?;
                Err(FlushError::Protocol(format!(
                    "a bulk string: {}",
                    String::from_utf8_lossy(&body[..len])
                )))
            }
            _ => Err(FlushError::Protocol(
                String::from_utf8_lossy(line).into_owned(),
            )),
        }
    }
}

/// RESP: each command as an array of bulk strings.
fn encode(commands: &[Command]) -> Vec<u8> {
    let mut out = Vec::new();
    for command in commands {
        let parts = std::iter::once(command.name).chain(command.args.iter().map(String::as_str));
        out.extend_from_slice(format!("*{}\r\n", command.args.len() + 1).as_bytes());
        for part in parts {
            out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
            out.extend_from_slice(part.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    #[test]
    fn parses_redis_urls_and_never_shows_the_password() {
        let url = RedisUrl::parse("redis://default:p%40ss@cache.internal:6380/2").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.db),
            ("cache.internal", 6380, 2)
        );
        assert_eq!(url.username.as_deref(), Some("default"));
        assert_eq!(url.password.as_deref(), Some("p@ss"));
        assert_eq!(url.to_string(), "redis://***@cache.internal:6380/2");
        assert!(!format!("{url:?}").contains("p%40ss"));

        let url = RedisUrl::parse("redis://:secret@[::1]").unwrap();
        assert_eq!((url.host.as_str(), url.port, url.db), ("::1", 6379, 0));
        assert_eq!(url.username, None);
        assert_eq!(url.password.as_deref(), Some("secret"));

        for (text, error) in [
            ("rediss://h:6379", RedisUrlError::Tls),
            ("http://h:6379", RedisUrlError::Scheme),
            ("redis://h:6379/zero", RedisUrlError::Database),
            ("redis://h:6379/0?password=x", RedisUrlError::Query),
            ("redis:///0", RedisUrlError::NoHost),
        ] {
            assert_eq!(RedisUrl::parse(text), Err(error), "{text}");
        }
        let error = RedisUrl::parse("redis://u:secret@h:notaport").unwrap_err();
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    #[test]
    fn commands_name_the_registry_keys() {
        let deleted = Deleted {
            blobs: [d(1)].into(),
            links: [("app", 1), ("app", 2), ("lib/gone", 3)]
                .map(|(r, n)| (r.to_owned(), d(n)))
                .into(),
            repositories: ["lib/gone".to_owned()].into(),
        };
        let shown: Vec<String> = commands(&deleted)
            .map(|c| format!("{} {}", c.name, c.args.join(" ")))
            .collect();
        let (d1, d2, d3) = (d(1), d(2), d(3));
        assert_eq!(
            shown,
            [
                format!("DEL blobs::{d1}"),
                format!("DEL repository::app::blobs::{d1}"),
                format!("DEL repository::app::blobs::{d2}"),
                format!("DEL repository::lib/gone::blobs::{d3}"),
                format!("SREM repository::app::blobs {d1} {d2}"),
                "DEL repository::lib/gone::blobs".to_owned(),
            ]
        );
    }

    #[test]
    fn large_sets_shrink_in_pipeline_sized_commands() {
        let links = (0..=PIPELINE).map(|i| {
            let mut bytes = [0; 32];
            bytes[..8].copy_from_slice(&(i as u64).to_be_bytes());
            ("app".to_owned(), Digest::from_bytes(bytes))
        });
        let deleted = Deleted {
            links: links.collect(),
            ..Deleted::default()
        };
        let members: Vec<usize> = commands(&deleted)
            .filter(|c| c.name == "SREM")
            .map(|c| c.args.len() - 1)
            .collect();
        assert_eq!(members, [PIPELINE, 1]);
    }

    #[test]
    fn commands_are_resp_arrays_of_bulk_strings() {
        let commands = [
            Command {
                name: "AUTH",
                args: vec!["pässword".into()],
            },
            Command {
                name: "SELECT",
                args: vec!["2".into()],
            },
        ];
        assert_eq!(
            encode(&commands),
            b"*2\r\n$4\r\nAUTH\r\n$9\r\np\xc3\xa4ssword\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n"
        );
    }
}
