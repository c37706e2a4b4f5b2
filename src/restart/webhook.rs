//! Tell a webhook that the registry must forget: `POST` the run's JSON summary to a URL (a
//! deployment tool's hook, a small service that restarts the registry, …).
//!
//! The request: `POST <url>`, `Content-Type: application/json`, the body the summary that
//! `--format json` prints, as it stands before the webhook (so without `restart_url`). Userinfo in
//! the URL is sent as HTTP Basic authentication and never shown. Redirects are not followed; any
//! answer but 2xx, a connection failure or no answer within [`TIMEOUT`] is a failure.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;
use url::Url;

use super::redact_url;
use crate::report::error_chain;

/// Longest wait for the whole exchange.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// An `http://` or `https://` URL. Shows (and debug-prints) without its credentials and query.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    url: Url,
    shown: String,
}

/// Why a webhook URL was refused. Never repeats the URL, which may hold credentials.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WebhookUrlError {
    #[error("not a URL ({0})")]
    Syntax(#[from] url::ParseError),
    #[error("the scheme must be http:// or https://")]
    Scheme,
}

impl WebhookUrl {
    pub fn parse(text: &str) -> Result<WebhookUrl, WebhookUrlError> {
        let url = Url::parse(text)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(WebhookUrlError::Scheme);
        }
        Ok(WebhookUrl {
            shown: redact_url(&url),
            url,
        })
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({})", self.shown)
    }
}

/// How the webhook answered.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WebhookOutcome {
    /// The URL, without credentials or query.
    pub url: String,
    pub success: bool,
    /// The HTTP status, when the server answered.
    pub http_status: Option<u16>,
    /// What happened, in words: `HTTP 204 No Content`, or why there was no answer.
    pub status: String,
}

#[derive(Debug, Error)]
enum NotifyError {
    #[error("no answer within {} s", TIMEOUT.as_secs())]
    Timeout,
    #[error("{0}")]
    Http(String),
}

/// `POST`s `body` (JSON) to `url`.
pub async fn notify(url: &WebhookUrl, body: Vec<u8>) -> WebhookOutcome {
    let mut outcome = WebhookOutcome {
        url: url.to_string(),
        success: false,
        http_status: None,
        status: String::new(),
    };
    match post(url, body).await {
        Ok((status, answer)) => {
            outcome.success = status.is_success();
            outcome.http_status = Some(status.as_u16());
            outcome.status = format!("HTTP {status}");
            if !outcome.success && !answer.is_empty() {
                outcome.status = format!("{}: {answer}", outcome.status);
            }
        }
        Err(e) => outcome.status = e.to_string(),
    }
    outcome
}

/// The status and the start of the answer's body (for failures).
async fn post(url: &WebhookUrl, body: Vec<u8>) -> Result<(http::StatusCode, String), NotifyError> {
    // Errors print without the URL: it may hold credentials (and the outcome names it anyway).
    let failed = |e: reqwest::Error| {
        if e.is_timeout() {
            NotifyError::Timeout
        } else {
            NotifyError::Http(error_chain(&e.without_url()))
        }
    };
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("regsweep/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(failed)?;
    let response = client
        .post(url.url.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(failed)?;
    let status = response.status();
    let answer = if status.is_success() {
        String::new()
    } else {
        // What the server said, briefly: enough to tell a misconfiguration.
        let text = response.text().await.unwrap_or_default();
        let text: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(200)
            .collect();
        text.trim().to_owned()
    };
    Ok((status, answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_http_and_show_no_credentials() {
        let url = WebhookUrl::parse("https://ci:t0ken@hooks.example.com/registry/restart?key=k3y")
            .unwrap();
        assert_eq!(
            url.to_string(),
            "https://***@hooks.example.com/registry/restart?***"
        );
        let debug = format!("{url:?}");
        assert!(
            !debug.contains("t0ken") && !debug.contains("k3y"),
            "{debug}"
        );
        assert_eq!(WebhookUrl::parse("ftp://h/x"), Err(WebhookUrlError::Scheme));
        let error = WebhookUrl::parse("http://u:t0ken@h:99999/").unwrap_err();
        assert!(!error.to_string().contains("t0ken"), "{error}");
    }
}
