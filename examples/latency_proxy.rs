//! An HTTP/1.1 forwarding proxy for S3 traffic that adds a fixed latency to every request and
//! counts the requests by kind: the benchmark (`scripts/bench`) puts it between the collectors and
//! `moto_server`, so that both tools pay the same round-trip cost and are counted by the same
//! counter.
//!
//! ```text
//! latency_proxy --upstream http://127.0.0.1:PORT [--listen 127.0.0.1:0] [--latency 10ms] [--stats FILE]
//! ```
//!
//! - Prints the bound address (`127.0.0.1:PORT`) as the first line of stdout.
//! - Clients may keep connections alive and open many at once: requests are framed by
//!   `Content-Length` or `Transfer-Encoding: chunked` (forwarded as received), and
//!   `Expect: 100-continue` is answered by the proxy. Upstream, each request goes on its own
//!   connection with `Connection: close`, so the answer ends at EOF; it is relayed to the client
//!   with its own framing (or a `Content-Length` added when it had none).
//! - Each request waits `--latency` before it is forwarded (one extra round trip's worth of delay,
//!   as a storage a few milliseconds away would add).
//! - `GET /__stats` answers the counts as JSON:
//!   `{"total", "connections", "latency_ms", "by_kind": {"list", "get", "head", "put", "delete",
//!   "delete_objects", "multipart", "other"}}`; `POST /__reset` zeroes them (and answers the counts
//!   before the reset). Neither is counted nor delayed. With `--stats FILE` the same JSON is
//!   written to FILE after each of them and, when the counts changed, every half second.
//!
//! Kinds (path-style requests, `/<bucket>[/<key>][?query]`): `multipart` is anything with an
//! `uploads` or `uploadId` parameter (start, parts, completion, abort, listings of uploads and
//! parts); `delete_objects` is `POST /<bucket>?delete` (one batch); `list` is a GET on a bucket
//! (ListObjects v1/v2: `list-type`, `prefix`, `delimiter`, markers, or no query at all); `get`,
//! `head`, `put`, `delete` are those methods on objects (HEAD and PUT of buckets included); the
//! rest (ListBuckets, bucket subresources such as `?location`) is `other`.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The request kinds, in the order of the counters.
const KINDS: [&str; 8] = [
    "list",
    "get",
    "head",
    "put",
    "delete",
    "delete_objects",
    "multipart",
    "other",
];

/// The largest request or response head accepted.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Parser, Debug)]
#[command(about = "HTTP/1.1 proxy for S3 traffic: fixed latency per request, counts by kind")]
struct Args {
    /// Address to listen on; the bound address is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// The server to forward to: `http://HOST:PORT` or `HOST:PORT`.
    #[arg(long)]
    upstream: String,
    /// Delay added before each request is forwarded (`10ms`, `0s`, `1ms`).
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Also write the counts (the JSON of `GET /__stats`) to this file.
    #[arg(long)]
    stats: Option<PathBuf>,
}

#[derive(Default)]
struct Stats {
    by_kind: [AtomicU64; KINDS.len()],
    connections: AtomicU64,
    /// Bumped on every change, so that the file writer knows when to write.
    version: AtomicU64,
}

struct State {
    upstream: String,
    latency: Duration,
    stats: Stats,
    stats_file: Option<PathBuf>,
}

impl State {
    fn json(&self) -> String {
        let counts: Vec<u64> = self
            .stats
            .by_kind
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let by_kind: serde_json::Map<String, serde_json::Value> = KINDS
            .iter()
            .zip(&counts)
            .map(|(k, n)| ((*k).to_owned(), (*n).into()))
            .collect();
        serde_json::json!({
            "total": counts.iter().sum::<u64>(),
            "connections": self.stats.connections.load(Ordering::Relaxed),
            "latency_ms": self.latency.as_secs_f64() * 1000.0,
            "by_kind": by_kind,
        })
        .to_string()
    }

    fn reset(&self) {
        for counter in &self.stats.by_kind {
            counter.store(0, Ordering::Relaxed);
        }
        self.stats.connections.store(0, Ordering::Relaxed);
        self.stats.version.fetch_add(1, Ordering::Relaxed);
    }

    async fn write_stats_file(&self) {
        if let Some(path) = &self.stats_file {
            // Write then rename: a reader never sees half a file.
            let tmp = path.with_extension("tmp");
            if tokio::fs::write(&tmp, self.json() + "\n").await.is_ok() {
                let _ = tokio::fs::rename(&tmp, path).await;
            }
        }
    }
}

#[tokio::main]
async fn main() -> io::Result<()> {
    let args = Args::parse();
    let upstream = args
        .upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let listener = TcpListener::bind(&args.listen).await?;
    let addr: SocketAddr = listener.local_addr()?;
    println!("{addr}");
    let state = Arc::new(State {
        upstream,
        latency: args.latency,
        stats: Stats::default(),
        stats_file: args.stats,
    });
    state.write_stats_file().await;
    if state.stats_file.is_some() {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let mut written = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let version = state.stats.version.load(Ordering::Relaxed);
                if version != written {
                    written = version;
                    state.write_stats_file().await;
                }
            }
        });
    }
    loop {
        let (client, _) = listener.accept().await?;
        let _ = client.set_nodelay(true);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            if let Err(e) = serve(client, &state).await {
                // Clients closing idle keep-alive connections are normal; log the rest.
                if e.kind() != io::ErrorKind::UnexpectedEof
                    && e.kind() != io::ErrorKind::ConnectionReset
                    && e.kind() != io::ErrorKind::BrokenPipe
                {
                    eprintln!("latency_proxy: {e}");
                }
            }
        });
    }
}

/// A parsed request or response head.
struct Head {
    /// The request or status line, without CRLF.
    first: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    fn parse(bytes: &[u8]) -> io::Result<Head> {
        let text = std::str::from_utf8(bytes).map_err(|_| invalid("head is not UTF-8"))?;
        let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
        let first = lines
            .next()
            .ok_or_else(|| invalid("empty head"))?
            .to_owned();
        let headers = lines
            .map(|l| {
                l.split_once(':')
                    .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                    .ok_or_else(|| invalid("malformed header"))
            })
            .collect::<io::Result<_>>()?;
        Ok(Head { first, headers })
    }

    /// The head as bytes, without the headers named in `drop`, plus `extra` lines.
    fn encode(&self, drop: &[&str], extra: &[String]) -> Vec<u8> {
        let mut out = self.first.clone();
        out.push_str("\r\n");
        for (name, value) in &self.headers {
            if !drop.iter().any(|d| name.eq_ignore_ascii_case(d)) {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        for line in extra {
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

/// Reads a head up to and including its blank line; `None` on EOF before the first byte.
async fn read_head<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = reader.read_until(b'\n', &mut head).await?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        if head.len() > MAX_HEAD {
            return Err(invalid("head too large"));
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            // Tolerate blank lines between requests (RFC 9112 2.2).
            if before == 0 {
                head.clear();
                continue;
            }
            return Ok(Some(head));
        }
    }
}

/// Reads a chunked body as it is on the wire (chunks, last chunk, trailers).
async fn read_chunked<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let start = body.len();
        if reader.read_until(b'\n', &mut body).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let line = std::str::from_utf8(&body[start..]).map_err(|_| invalid("chunk size"))?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| invalid("chunk size"))?;
        if size == 0 {
            // Trailers, up to the blank line.
            loop {
                let start = body.len();
                if reader.read_until(b'\n', &mut body).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                if &body[start..] == b"\r\n" || &body[start..] == b"\n" {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size + 2, 0);
        reader.read_exact(&mut body[start..]).await?;
    }
}

/// The kind of a path-style S3 request (see the module documentation).
fn classify(method: &str, target: &str) -> usize {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = path.trim_start_matches('/');
    let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
    let params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map_or(p, |(n, _)| n))
        .collect();
    let has = |name: &str| params.contains(&name);
    let kind = if has("uploads") || has("uploadId") {
        "multipart"
    } else if bucket.is_empty() {
        "other"
    } else if method == "POST" && key.is_empty() && has("delete") {
        "delete_objects"
    } else if method == "GET" && key.is_empty() {
        const LIST_PARAMS: [&str; 8] = [
            "list-type",
            "prefix",
            "delimiter",
            "continuation-token",
            "marker",
            "start-after",
            "max-keys",
            "encoding-type",
        ];
        if params.is_empty() || params.iter().any(|p| LIST_PARAMS.contains(p)) {
            "list"
        } else {
            "other"
        }
    } else {
        match method {
            "GET" => "get",
            "HEAD" => "head",
            "PUT" => "put",
            "DELETE" => "delete",
            _ => "other",
        }
    };
    KINDS
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(KINDS.len() - 1)
}

/// Headers that concern one connection only (RFC 9110 7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
];

/// Serves one client connection: any number of requests, one after the other.
async fn serve(client: TcpStream, state: &State) -> io::Result<()> {
    state.stats.connections.fetch_add(1, Ordering::Relaxed);
    let (read_half, mut write_half) = client.into_split();
    let mut reader = BufReader::new(read_half);
    while let Some(head_bytes) = read_head(&mut reader).await? {
        let head = Head::parse(&head_bytes)?;
        let mut words = head.first.split(' ');
        let method = words.next().unwrap_or("").to_owned();
        let target = words.next().unwrap_or("").to_owned();
        let version = words.next().unwrap_or("HTTP/1.1").to_owned();
        let client_closes = head.has_token("connection", "close")
            || (version == "HTTP/1.0" && !head.has_token("connection", "keep-alive"));
        if head.has_token("expect", "100-continue") {
            write_half
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await?;
        }
        let chunked = head.has_token("transfer-encoding", "chunked");
        let body = if chunked {
            read_chunked(&mut reader).await?
        } else {
            let length: usize = match head.header("content-length") {
                Some(v) => v.parse().map_err(|_| invalid("content-length"))?,
                None => 0,
            };
            let mut body = vec![0; length];
            reader.read_exact(&mut body).await?;
            body
        };

        let path = target.split('?').next().unwrap_or("");
        let response = match (method.as_str(), path) {
            ("GET", "/__stats") => {
                state.write_stats_file().await;
                json_response(&state.json())
            }
            ("POST", "/__reset") => {
                let before = state.json();
                state.reset();
                state.write_stats_file().await;
                json_response(&before)
            }
            _ => {
                let kind = classify(&method, &target);
                state.stats.by_kind[kind].fetch_add(1, Ordering::Relaxed);
                state.stats.version.fetch_add(1, Ordering::Relaxed);
                if !state.latency.is_zero() {
                    tokio::time::sleep(state.latency).await;
                }
                let mut forwarded = head.encode(
                    &[&HOP_BY_HOP[..], &["expect"]].concat(),
                    &["Connection: close".to_owned()],
                );
                forwarded.extend_from_slice(&body);
                match forward(&state.upstream, &forwarded, &method).await {
                    Ok(response) => response,
                    Err(e) => {
                        eprintln!("latency_proxy: {method} {target}: upstream: {e}");
                        plain_response("502 Bad Gateway", &format!("upstream: {e}\n"))
                    }
                }
            }
        };
        let (response_head, response_body) = response;
        let extra = if client_closes {
            vec!["Connection: close".to_owned()]
        } else {
            Vec::new()
        };
        let mut out = response_head.encode(&HOP_BY_HOP, &extra);
        out.extend_from_slice(&response_body);
        write_half.write_all(&out).await?;
        if client_closes {
            break;
        }
    }
    write_half.shutdown().await
}

fn json_response(json: &str) -> (Head, Vec<u8>) {
    let body = format!("{json}\n").into_bytes();
    (
        Head {
            first: "HTTP/1.1 200 OK".to_owned(),
            headers: vec![
                ("Content-Type".to_owned(), "application/json".to_owned()),
                ("Content-Length".to_owned(), body.len().to_string()),
            ],
        },
        body,
    )
}

fn plain_response(status: &str, text: &str) -> (Head, Vec<u8>) {
    (
        Head {
            first: format!("HTTP/1.1 {status}"),
            headers: vec![
                ("Content-Type".to_owned(), "text/plain".to_owned()),
                ("Content-Length".to_owned(), text.len().to_string()),
            ],
        },
        text.as_bytes().to_vec(),
    )
}

/// Sends one request (head with `Connection: close`, and body) on a new upstream connection and
/// reads the answer to EOF. The answer keeps its framing when it has one; a body delimited by EOF
/// gets a `Content-Length`.
async fn forward(upstream: &str, request: &[u8], method: &str) -> io::Result<(Head, Vec<u8>)> {
    let mut server = TcpStream::connect(upstream).await?;
    let _ = server.set_nodelay(true);
    server.write_all(request).await?;
    let mut reader = BufReader::new(server);
    loop {
        let head_bytes = read_head(&mut reader)
            .await?
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let mut head = Head::parse(&head_bytes)?;
        let status: u16 = head
            .first
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("status line"))?;
        if (100..200).contains(&status) {
            continue; // interim answers (we strip Expect, but be safe)
        }
        let mut body = Vec::new();
        reader.read_to_end(&mut body).await?;
        let bodyless = method == "HEAD" || status == 204 || status == 304;
        let framed = head.header("content-length").is_some()
            || head.has_token("transfer-encoding", "chunked");
        if bodyless {
            body.clear();
        } else if !framed {
            head.headers
                .push(("Content-Length".to_owned(), body.len().to_string()));
        }
        return Ok((head, body));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(method: &str, target: &str) -> &'static str {
        KINDS[classify(method, target)]
    }

    #[test]
    fn classifies_s3_requests() {
        assert_eq!(kind("GET", "/b?list-type=2&prefix=a/"), "list");
        assert_eq!(kind("GET", "/b/?prefix=a/&delimiter=/"), "list");
        assert_eq!(kind("GET", "/b"), "list");
        assert_eq!(kind("GET", "/b?location"), "other");
        assert_eq!(kind("GET", "/"), "other");
        assert_eq!(kind("GET", "/b/docker/registry/v2/x/data"), "get");
        assert_eq!(kind("HEAD", "/b/k"), "head");
        assert_eq!(kind("PUT", "/b/k"), "put");
        assert_eq!(kind("DELETE", "/b/k"), "delete");
        assert_eq!(kind("POST", "/b?delete"), "delete_objects");
        assert_eq!(kind("POST", "/b/?delete="), "delete_objects");
        assert_eq!(kind("GET", "/b?uploads&prefix=x"), "multipart");
        assert_eq!(kind("POST", "/b/k?uploads"), "multipart");
        assert_eq!(kind("PUT", "/b/k?partNumber=1&uploadId=u"), "multipart");
        assert_eq!(kind("DELETE", "/b/k?uploadId=u"), "multipart");
    }

    #[tokio::test]
    async fn reads_chunked_bodies_as_sent() {
        let wire = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let mut reader = BufReader::new(&wire[..]);
        let body = read_chunked(&mut reader).await.unwrap();
        assert_eq!(body, &wire[..wire.len() - 4]);
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"NEXT");
    }
}
