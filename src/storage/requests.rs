//! Request accounting: how many requests of each kind a run sent to its storage.
//!
//! On object storage each request costs money and a round trip, so operators and benchmarks want
//! the exact number the server saw — pages of a listing, DeleteObjects batches and retries
//! included. Counting our own `Storage` calls cannot give that (one `list` is many pages, one
//! `delete` of 1,000 keys is one request), so the count is taken where requests are sent: a
//! decorator around object_store's HTTP client ([`CountingConnector`]). The filesystem backend
//! counts its own system calls of the same kinds into the same [`RequestCounter`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use serde::Serialize;

/// What a request does, as the summary's `requests` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A listing page (S3 ListObjectsV2, Azure List Blobs, GCS objects.list), or a directory read.
    List,
    /// Reading an object.
    Get,
    /// Reading an object's metadata.
    Head,
    /// Deleting: one request per key, or one per batch (S3 DeleteObjects, Azure blob batch).
    Delete,
    /// Anything else (writes, token requests).
    Other,
}

/// Counters shared by a backend and the report. Cheap to clone (an `Arc`).
#[derive(Debug, Clone, Default)]
pub struct RequestCounter(Arc<[AtomicU64; 5]>);

impl RequestCounter {
    pub fn add(&self, kind: RequestKind, n: u64) {
        self.0[kind as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Requests {
        let get = |kind: RequestKind| self.0[kind as usize].load(Ordering::Relaxed);
        Requests {
            list: get(RequestKind::List),
            get: get(RequestKind::Get),
            head: get(RequestKind::Head),
            delete: get(RequestKind::Delete),
            other: get(RequestKind::Other),
        }
    }
}

/// Requests by kind, as the JSON summary reports them (field names are a contract).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Requests {
    pub list: u64,
    pub get: u64,
    pub head: u64,
    pub delete: u64,
    pub other: u64,
}

impl Requests {
    pub fn total(&self) -> u64 {
        self.list + self.get + self.head + self.delete + self.other
    }
}

/// Classifies one HTTP request of the S3, Azure or GCS APIs by its method and query string.
pub fn classify(method: &str, query: &str) -> RequestKind {
    let has = |name: &str| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(name))
    };
    match method {
        "HEAD" => RequestKind::Head,
        "DELETE" => RequestKind::Delete,
        // S3 DeleteObjects (`POST /bucket?delete`), Azure blob batch (`POST ?comp=batch`).
        "POST" if has("delete") || query.contains("comp=batch") => RequestKind::Delete,
        // S3 and GCS (XML API): ListObjectsV2 and ListMultipartUploads; Azure: List Blobs.
        "GET" if has("list-type") || has("uploads") || query.contains("comp=list") => {
            RequestKind::List
        }
        "GET" => RequestKind::Get,
        _ => RequestKind::Other,
    }
}

/// An object_store [`HttpConnector`] that counts every request sent, retries included.
#[derive(Debug)]
pub struct CountingConnector {
    pub counter: RequestCounter,
}

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(CountingService {
            inner,
            counter: self.counter.clone(),
        }))
    }
}

#[derive(Debug)]
struct CountingService {
    inner: HttpClient,
    counter: RequestCounter,
}

type ResponseFuture<'a> =
    Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'a>>;

// `HttpService` is declared with `#[async_trait]`; this is the signature that macro expands to,
// written out rather than adding a dependency for one impl.
impl HttpService for CountingService {
    fn call<'life0, 'async_trait>(&'life0 self, req: HttpRequest) -> ResponseFuture<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let uri = req.uri();
        let kind = classify(req.method().as_str(), uri.query().unwrap_or(""));
        self.counter.add(kind, 1);
        Box::pin(self.inner.execute(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(method: &str, uri: &str) -> RequestKind {
        classify(method, uri.split_once('?').map_or("", |(_, query)| query))
    }

    #[test]
    fn classifies_the_requests_of_each_cloud() {
        use RequestKind::*;
        let cases = [
            ("GET", "http://s3/bucket?list-type=2&prefix=docker%2F", List),
            ("GET", "http://s3/bucket/docker/registry/v2/x/link", Get),
            ("GET", "http://s3/bucket?uploads=&prefix=docker", List),
            ("HEAD", "http://s3/bucket/key", Head),
            ("POST", "http://s3/bucket?delete", Delete),
            ("DELETE", "http://s3/bucket/key", Delete),
            ("PUT", "http://s3/bucket/key", Other),
            (
                "GET",
                "http://az/acct/c?restype=container&comp=list&prefix=a",
                List,
            ),
            ("GET", "http://az/acct/c/a/link", Get),
            (
                "POST",
                "http://az/acct/c?restype=container&comp=batch",
                Delete,
            ),
            ("GET", "https://gcs/bucket?list-type=2&prefix=a", List),
            ("GET", "https://gcs/bucket/a/link", Get),
        ];
        for (method, uri, expected) in cases {
            assert_eq!(kind(method, uri), expected, "{method} {uri}");
        }
    }

    #[test]
    fn counter_snapshots_by_kind() {
        let counter = RequestCounter::default();
        counter.add(RequestKind::List, 3);
        counter.clone().add(RequestKind::Delete, 1);
        let snapshot = counter.snapshot();
        assert_eq!((snapshot.list, snapshot.delete, snapshot.get), (3, 1, 0));
        assert_eq!(snapshot.total(), 4);
    }
}
