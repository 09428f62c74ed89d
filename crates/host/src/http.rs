//! A small blocking HTTP client for webhooks and the Pushgateway (ureq; call it from
//! `spawn_blocking` in async code). Errors never carry the URL's path or query, which
//! often hold a token (Slack webhook URLs are secrets).

use std::time::Duration;

/// What the server answered (any status: the caller decides what is an error).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The start of the body, for error messages.
    pub body: String,
}

impl Response {
    /// 5xx, 408 and 429 are worth trying again.
    pub fn is_transient(&self) -> bool {
        self.status >= 500 || self.status == 408 || self.status == 429
    }
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL `{0}`: give http://HOST[:PORT]/PATH or https://…")]
    Url(String),
    /// No answer: connection refused or reset, DNS, timeout. Transient.
    #[error("{target}: {reason}")]
    Transport { target: String, reason: String },
    /// TLS or proxy configuration: trying again will not help.
    #[error("{target}: {reason}")]
    Setup { target: String, reason: String },
}

impl HttpError {
    pub fn is_transient(&self) -> bool {
        matches!(self, HttpError::Transport { .. })
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Method {
    Post,
    Put,
}

/// `scheme://host[:port]` of a URL: what messages may show of it.
pub fn origin(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<invalid URL>".into();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // Credentials in the authority (`user:pass@host`) are not shown either.
    let host = authority.rsplit('@').next().unwrap_or_default();
    format!("{scheme}://{host}")
}

/// Sends one request with a body and returns the status and the start of the body.
pub fn send(
    method: Method,
    url: &str,
    content_type: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response, HttpError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(HttpError::Url(origin(url)));
    }
    let target = origin(url);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("stagehand/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut req = match method {
        Method::Post => agent.post(url),
        Method::Put => agent.put(url),
    }
    .header("Content-Type", content_type);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let mut resp = req.send(body).map_err(|e| classify(&target, e))?;
    let status = resp.status().as_u16();
    // The body is only for messages: its first 4 KiB are enough, and an unreadable one
    // does not change the status.
    let body = resp
        .body_mut()
        .with_config()
        .limit(4096)
        .read_to_string()
        .unwrap_or_default();
    Ok(Response { status, body })
}

fn classify(target: &str, e: ureq::Error) -> HttpError {
    use ureq::Error as E;
    let reason = match &e {
        // ureq names the URL in some errors; the path may hold a token.
        E::BadUri(_) => return HttpError::Url(target.to_string()),
        E::Timeout(t) => format!("no answer in time ({t})"),
        E::Io(io) => format!("connection problem: {io}"),
        E::HostNotFound => "host not found".into(),
        E::ConnectionFailed => "connection failed".into(),
        E::Tls(_) | E::Rustls(_) | E::InvalidProxyUrl => {
            return HttpError::Setup {
                target: target.to_string(),
                reason: e.to_string(),
            }
        }
        other => other.to_string(),
    };
    HttpError::Transport {
        target: target.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_hides_path_query_and_credentials() {
        assert_eq!(
            origin("https://hooks.slack.com/services/T0/B0/secret?x=1"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            origin("http://u:p@127.0.0.1:9091/metrics"),
            "http://127.0.0.1:9091"
        );
        assert_eq!(origin("nonsense"), "<invalid URL>");
    }

    #[test]
    fn refused_connections_are_transient() {
        // A port nobody listens on: bind, note the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(1);
        let err = send(
            Method::Post,
            &format!("http://127.0.0.1:{port}/hook/secret-token"),
            "application/json",
            &[],
            b"{}",
            Duration::from_secs(5),
        )
        .err();
        let err = err.map(|e| (e.is_transient(), e.to_string()));
        assert!(matches!(&err, Some((true, _))), "{err:?}");
        assert!(!format!("{err:?}").contains("secret-token"));
    }
}
