//! A fault-injecting HTTP proxy: it forwards each request to an upstream server, but answers
//! every `every`-th one (or each of the first `n`) with `503 Slow Down` (S3's throttling reply: a
//! client that does not retry fails, one that does succeeds) or, in the other modes, every request
//! that contains a given text with `403 Access Denied` or `503 Slow Down` (a permanent failure).
//!
//! Or it answers truthfully but leaves out of every listing page (ListObjectsV2) the objects whose
//! key contains a given text, and dates in 2020 every object it lists, and those it hides when asked
//! about them (HEAD): an old registry whose listings miss objects.
//!
//! One request per connection: the proxy asks upstream to close after its answer and relays
//! bytes until EOF, which keeps it free of HTTP body framing.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

const SLOW_DOWN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                         <Message>Please reduce your request rate.</Message></Error>";

enum Rule {
    Throttle { every: u64 },
    ThrottleFirst { n: u64 },
    Deny { needle: Vec<u8> },
    SlowDownAlways { needle: Vec<u8> },
    HideListed { needle: Vec<u8> },
}

const ACCESS_DENIED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied\
                             </Code><Message>Access Denied</Message></Error>";

/// A running proxy; stops on drop.
pub struct FaultProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    injected: Arc<AtomicU64>,
}

impl FaultProxy {
    /// Proxies to `upstream` (`host:port`), throttling requests number `every`, `2 * every`, ….
    pub fn start(upstream: &str, every: u64) -> FaultProxy {
        FaultProxy::spawn(upstream, Rule::Throttle { every })
    }

    /// Proxies to `upstream`, throttling requests number 1 to `n` (a storage that answers 503 for
    /// a while).
    pub fn throttle_first(upstream: &str, n: u64) -> FaultProxy {
        FaultProxy::spawn(upstream, Rule::ThrottleFirst { n })
    }

    /// Proxies to `upstream`, throttling every request whose bytes contain `needle`, forever.
    pub fn slow_down_always(upstream: &str, needle: &str) -> FaultProxy {
        FaultProxy::spawn(
            upstream,
            Rule::SlowDownAlways {
                needle: needle.as_bytes().to_vec(),
            },
        )
    }

    /// Proxies to `upstream`, denying every request whose bytes contain `needle`.
    pub fn deny(upstream: &str, needle: &str) -> FaultProxy {
        FaultProxy::spawn(
            upstream,
            Rule::Deny {
                needle: needle.as_bytes().to_vec(),
            },
        )
    }

    /// Proxies to `upstream`, leaving out of every listing the objects whose key contains `needle`
    /// (each page that loses one counts as injected); HEAD and GET still find them. Every object
    /// listed, and those HEAD finds, were last modified in 2020.
    pub fn hide_listed(upstream: &str, needle: &str) -> FaultProxy {
        FaultProxy::spawn(
            upstream,
            Rule::HideListed {
                needle: needle.as_bytes().to_vec(),
            },
        )
    }

    fn spawn(upstream: &str, rule: Rule) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("non-blocking accept");
        let port = listener.local_addr().expect("proxy address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let injected = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(AtomicU64::new(0));
        let upstream = upstream.to_owned();
        let rule = Arc::new(rule);
        let (stop2, injected2) = (Arc::clone(&stop), Arc::clone(&injected));
        thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let n = seen.fetch_add(1, Ordering::Relaxed) + 1;
                        let (upstream, rule) = (upstream.clone(), Arc::clone(&rule));
                        let injected = Arc::clone(&injected2);
                        thread::spawn(move || {
                            let _ = handle(client, &upstream, &rule, n, &injected);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        FaultProxy {
            port,
            stop,
            injected,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many requests were answered with a fault.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads one request (head and `Content-Length` body) from `client`.
fn read_request(client: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut request = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        let n = client.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        request.extend_from_slice(&buf[..n]);
        if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while request.len() < head_end + length {
        let n = client.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    Ok(request)
}

fn contains(request: &[u8], needle: &[u8]) -> bool {
    request.windows(needle.len()).any(|w| w == needle)
}

fn handle(
    mut client: TcpStream,
    upstream: &str,
    rule: &Rule,
    n: u64,
    injected: &AtomicU64,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let request = read_request(&mut client)?;
    let fault = match rule {
        Rule::Throttle { every } => {
            (*every > 0 && n.is_multiple_of(*every)).then_some(("503 Slow Down", SLOW_DOWN))
        }
        Rule::ThrottleFirst { n: first } => (n <= *first).then_some(("503 Slow Down", SLOW_DOWN)),
        Rule::Deny { needle } => {
            contains(&request, needle).then_some(("403 Forbidden", ACCESS_DENIED))
        }
        Rule::SlowDownAlways { needle } => {
            contains(&request, needle).then_some(("503 Slow Down", SLOW_DOWN))
        }
        Rule::HideListed { .. } => None,
    };
    if let Some((status, body)) = fault {
        injected.fetch_add(1, Ordering::Relaxed);
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        client.write_all(response.as_bytes())?;
        return client.shutdown(Shutdown::Both);
    }
    // Ask upstream to close after answering: then its answer ends at EOF.
    let head_end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&request[..head_end]);
    let mut forwarded: String = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect::<Vec<_>>()
        .join("\r\n");
    forwarded.push_str("\r\nConnection: close\r\n\r\n");
    let mut server = TcpStream::connect(upstream)?;
    server.write_all(forwarded.as_bytes())?;
    server.write_all(&request[head_end + 4..])?;
    let mut response = Vec::new();
    server.read_to_end(&mut response)?;
    if let Rule::HideListed { needle } = rule {
        let request_line = head.lines().next().unwrap_or_default();
        if request_line.contains("list-type=2")
            && let Some((filtered, hidden)) = listed_in_2020(&response, needle)
        {
            if hidden {
                injected.fetch_add(1, Ordering::Relaxed);
            }
            response = filtered;
        } else if request_line.starts_with("HEAD ") && contains(request_line.as_bytes(), needle) {
            response = dated_2020(&response);
        }
    }
    client.write_all(&response)?;
    client.shutdown(Shutdown::Both)
}

/// `response` (a whole HTTP response to a HEAD) with its `Last-Modified` in 2020.
fn dated_2020(response: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(response);
    text.split("\r\n")
        .map(|line| {
            if line.to_ascii_lowercase().starts_with("last-modified:") {
                "Last-Modified: Wed, 01 Jan 2020 00:00:00 GMT"
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
        .into_bytes()
}

/// `response` (a whole HTTP response with a `Content-Length` body) without the `<Contents>`
/// elements that contain `needle`, every `<LastModified>` in 2020; and whether any was left out.
fn listed_in_2020(response: &[u8], needle: &[u8]) -> Option<(Vec<u8>, bool)> {
    let text = String::from_utf8(response.to_vec()).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let needle = std::str::from_utf8(needle).ok()?;
    let mut kept = String::with_capacity(body.len());
    let mut rest = body;
    let mut hidden = false;
    while let Some(start) = rest.find("<Contents>") {
        let end = start + rest[start..].find("</Contents>")? + "</Contents>".len();
        kept.push_str(&rest[..start]);
        if rest[start..end].contains(needle) {
            hidden = true;
        } else {
            kept.push_str(&rest[start..end]);
        }
        rest = &rest[end..];
    }
    kept.push_str(rest);
    let mut dated = String::with_capacity(kept.len());
    let mut rest = kept.as_str();
    while let Some(start) = rest.find("<LastModified>") {
        let end = start + rest[start..].find("</LastModified>")?;
        dated.push_str(&rest[..start]);
        dated.push_str("<LastModified>2020-01-01T00:00:00.000Z");
        rest = &rest[end..];
    }
    dated.push_str(rest);
    let head: Vec<String> = head
        .split("\r\n")
        .map(|line| {
            if line.to_ascii_lowercase().starts_with("content-length:") {
                format!("Content-Length: {}", dated.len())
            } else {
                line.to_owned()
            }
        })
        .collect();
    Some((
        format!("{}\r\n\r\n{dated}", head.join("\r\n")).into_bytes(),
        hidden,
    ))
}
