//! Retries of repository requests.
//!
//! The S3 client is built with the SDK's own retries disabled (`RetryConfig::disabled()`)
//! and every request goes through [`Retry::run`] instead, because we want:
//! full-jitter backoff with our own base and cap, a per-request budget in time
//! (`retry_for` of the repository: long enough to ride through an endpoint that restarts
//! or fails over, and optionally `max_attempts`), one log line per retry, an error that names the
//! operation, the key, the attempts and the final cause, and exact control of what is
//! transient (the SDK's standard mode also retries some 4xx codes we treat as final,
//! and cannot resume a download from the bytes already written).

use super::{StoreError, StoreErrorKind};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use std::future::Future;
use std::time::{Duration, Instant};

/// Default first backoff step.
pub const DEFAULT_BASE: Duration = Duration::from_millis(200);
/// Default longest backoff.
pub const DEFAULT_CAP: Duration = Duration::from_secs(10);
/// Default time a request keeps being retried: an S3 endpoint that restarts, or a load
/// balancer failing over, is back within this.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(120);
/// Environment overrides of base and cap (milliseconds), for tests and odd networks.
pub const ENV_BASE_MS: &str = "STAGEHAND_S3_RETRY_BASE_MS";
pub const ENV_CAP_MS: &str = "STAGEHAND_S3_RETRY_CAP_MS";

/// S3 error codes worth another attempt whatever their HTTP status.
const TRANSIENT_CODES: &[&str] = &[
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "TooManyRequests",
    "OperationAborted",
];

/// The retry policy of one store.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Attempts per request, the first included; 0: no limit but `budget`.
    pub max_attempts: u32,
    /// How long after its first attempt a request is no longer retried.
    pub budget: Duration,
    pub base: Duration,
    pub cap: Duration,
    /// Strings scrubbed from every message (the plan's keys).
    secrets: Vec<String>,
}

impl Retry {
    pub fn new(max_attempts: u32, base: Duration, cap: Duration) -> Self {
        Retry {
            max_attempts,
            budget: DEFAULT_RETRY_FOR,
            base,
            cap: cap.max(base),
            secrets: Vec::new(),
        }
    }

    /// Base and cap from the environment when set, else the defaults.
    pub fn from_env(max_attempts: u32) -> Self {
        let ms = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_millis)
        };
        Self::new(
            max_attempts,
            ms(ENV_BASE_MS).unwrap_or(DEFAULT_BASE),
            ms(ENV_CAP_MS).unwrap_or(DEFAULT_CAP),
        )
    }

    /// Retries a request for at most `budget` after its first attempt.
    pub fn with_budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }

    /// Never let these strings reach a message (credentials).
    pub fn with_secrets(mut self, secrets: impl IntoIterator<Item = String>) -> Self {
        self.secrets
            .extend(secrets.into_iter().filter(|s| !s.is_empty()));
        self
    }

    /// Full jitter: a uniform pick in `[0, min(cap, base · 2^attempt)]`, so clients
    /// that failed together do not come back together.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.cap);
        let ms = ceiling.as_millis().min(u128::from(u64::MAX)) as u64;
        Duration::from_millis(fastrand::u64(0..=ms))
    }

    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            out = out.replace(s.as_str(), "***");
        }
        out
    }

    /// Runs `attempt` until it succeeds, fails for good, or the budget is spent.
    /// `op` names the S3 operation and `target` the object (`s3://bucket/key`).
    pub async fn run<T, F, Fut>(
        &self,
        op: &str,
        target: &str,
        mut attempt: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut n = 0u32;
        let started = Instant::now();
        loop {
            n += 1;
            match attempt(n).await {
                Ok(v) => return Ok(v),
                Err(f) => {
                    if let Some(e) = self.give_up(op, target, n, started, &f) {
                        return Err(e);
                    }
                    self.pause(op, target, n, &f).await;
                }
            }
        }
    }

    /// The final error for failure `f` of attempt `n` of a request first tried at
    /// `started`, or `None` when another attempt is due.
    pub fn give_up(
        &self,
        op: &str,
        target: &str,
        n: u32,
        started: Instant,
        f: &Failure,
    ) -> Option<StoreError> {
        let cause = self.scrub(&f.cause);
        if f.kind != StoreErrorKind::Transient {
            let message = match repository_wide(op, target, f) {
                Some(what) => format!("{what} ({cause}; not retried)"),
                None => format!("{op} {target}: {cause} (attempt {n}, not retried)"),
            };
            return Some(StoreError::new(f.kind, message));
        }
        let spent = started.elapsed();
        let attempts_spent = self.max_attempts > 0 && n >= self.max_attempts;
        if attempts_spent || spent >= self.budget {
            return Some(StoreError::transient(format!(
                "{op} {target}: failed after {n} attempt{} in {:.1} s (retried for at most {}): {cause}",
                if n == 1 { "" } else { "s" },
                spent.as_secs_f64(),
                humantime::format_duration(self.budget)
            )));
        }
        None
    }

    /// Logs the retry and sleeps the backoff for attempt `n`.
    pub async fn pause(&self, op: &str, target: &str, n: u32, f: &Failure) {
        let wait = self.backoff(n - 1);
        tracing::warn!(
            op,
            target,
            attempt = n,
            max_attempts = self.max_attempts,
            wait_ms = wait.as_millis() as u64,
            "S3 request failed, retrying: {}",
            self.scrub(&f.cause)
        );
        tokio::time::sleep(wait).await;
    }
}

/// What a failure that concerns the bucket or the credentials, not the request that met
/// it, means: said without the request's operation and object, which only confuse (a
/// backup's first request deletes a stale manifest, for instance). Access denied keeps
/// the operation: it names the permission the key lacks.
fn repository_wide(op: &str, target: &str, f: &Failure) -> Option<String> {
    let bucket = target
        .strip_prefix("s3://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or(target);
    Some(match f.code.as_deref()? {
        "NoSuchBucket" => format!("S3 bucket `{bucket}` does not exist at this endpoint: create it, or correct the repository URL or endpoint"),
        "InvalidAccessKeyId" => "the S3 endpoint does not know this access key: check the repository's access_key_id".to_string(),
        "SignatureDoesNotMatch" => "the S3 secret key does not match the access key: check the repository's secret_access_key".to_string(),
        "ExpiredToken" | "TokenRefreshRequired" => "the S3 session token has expired: renew the credentials".to_string(),
        "AccessDenied" | "AllAccessDisabled" => format!("the S3 key may not {op} in bucket `{bucket}`: grant it that permission (see the README's S3 permissions)"),
        _ => return None,
    })
}

/// One failed attempt, classified.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: StoreErrorKind,
    /// What went wrong, for people (never credentials once scrubbed).
    pub cause: String,
    /// The HTTP status when the server answered.
    pub status: Option<u16>,
    /// The S3 error code when the server sent one.
    pub code: Option<String>,
}

impl Failure {
    pub fn new(kind: StoreErrorKind, cause: impl Into<String>) -> Self {
        Failure {
            kind,
            cause: cause.into(),
            status: None,
            code: None,
        }
    }
    pub fn transient(cause: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Transient, cause)
    }
    pub fn permanent(cause: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Permanent, cause)
    }
    pub fn is_code(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

/// Classifies an SDK error: transient (5xx, 429, throttling and timeout codes,
/// timeouts, connection and I/O errors, unreadable responses) or not (other 4xx).
pub fn classify<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let e = ctx.err();
            let code = e.code().map(str::to_string);
            let kind = classify_status(status, code.as_deref());
            let mut cause = format!("HTTP {status}");
            if let Some(c) = &code {
                cause.push(' ');
                cause.push_str(c);
            }
            match e.message().filter(|m| !m.is_empty()) {
                Some(m) => {
                    cause.push_str(": ");
                    cause.push_str(m);
                }
                None if code.is_none() => {
                    cause.push_str(": ");
                    cause.push_str(&DisplayErrorContext(e).to_string());
                }
                None => {}
            }
            Failure {
                kind,
                cause,
                status: Some(status),
                code,
            }
        }
        SdkError::TimeoutError(_) => {
            Failure::transient(format!("timed out ({})", DisplayErrorContext(err)))
        }
        SdkError::DispatchFailure(d) => {
            if let Some(creds) = credentials_error(err) {
                return creds;
            }
            // A request the client could not even build for sending (bad URI…) will
            // not improve; everything else here is the network.
            let kind = if d.is_user() {
                StoreErrorKind::Permanent
            } else {
                StoreErrorKind::Transient
            };
            Failure::new(kind, short_chain(err))
        }
        SdkError::ResponseError(_) => Failure::transient(DisplayErrorContext(err).to_string()),
        SdkError::ConstructionFailure(_) => {
            Failure::new(StoreErrorKind::Config, DisplayErrorContext(err).to_string())
        }
        _ => Failure::permanent(DisplayErrorContext(err).to_string()),
    }
}

const NO_CREDENTIALS: &str = "no S3 credentials found: give the repository access_key_id and secret_access_key (the shipped plans read STAGEHAND_S3_ACCESS_KEY_ID and STAGEHAND_S3_SECRET_ACCESS_KEY), or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or an instance role";

/// A request that failed because no credentials could be loaded: final when no provider
/// has any (retrying will not make some appear), one line that says so.
fn credentials_error(err: &(dyn std::error::Error + 'static)) -> Option<Failure> {
    use aws_credential_types::provider::error::CredentialsError;
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            // The SDK's providers retry and time out on their own: only a provider
            // that timed out is worth another request.
            return Some(match c {
                CredentialsError::ProviderTimedOut(_) => Failure::transient(format!(
                    "loading S3 credentials timed out: {}",
                    short_chain(c)
                )),
                CredentialsError::CredentialsNotLoaded(_) => {
                    Failure::new(StoreErrorKind::Config, NO_CREDENTIALS.to_string())
                }
                _ => Failure::new(
                    StoreErrorKind::Config,
                    format!("{NO_CREDENTIALS} ({})", short_chain(c)),
                ),
            });
        }
        next = e.source();
    }
    None
}

/// An error and its causes as one line of their messages, without the debug structs
/// `DisplayErrorContext` appends.
fn short_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// What an HTTP status and S3 code mean for a retry.
pub fn classify_status(status: u16, code: Option<&str>) -> StoreErrorKind {
    // A success whose body did not parse: damaged on the way, like a truncated body.
    // 501 Not Implemented: this server lacks the operation; asking again will not help.
    if status == 501 {
        return StoreErrorKind::Permanent;
    }
    if status >= 500 || status == 429 || status == 408 || (200..300).contains(&status) {
        return StoreErrorKind::Transient;
    }
    if let Some(c) = code {
        if TRANSIENT_CODES.contains(&c) {
            return StoreErrorKind::Transient;
        }
        if c == "NoSuchKey" || c == "NoSuchUpload" || c == "NotFound" {
            return StoreErrorKind::NotFound;
        }
        return StoreErrorKind::Permanent;
    }
    if status == 404 {
        return StoreErrorKind::NotFound;
    }
    StoreErrorKind::Permanent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_implemented_is_not_retried() {
        assert_eq!(
            classify_status(501, Some("NotImplemented")),
            StoreErrorKind::Permanent
        );
    }

    #[test]
    fn a_request_is_retried_until_its_time_budget_is_spent() {
        let f = Failure::transient("HTTP 503");
        let unlimited = Retry::new(0, Duration::ZERO, Duration::ZERO);
        let long_ago = Instant::now() - Duration::from_secs(119);
        assert!(unlimited
            .give_up("PutObject", "s3://b/k", 40, long_ago, &f)
            .is_none());
        let spent = Instant::now() - Duration::from_secs(121);
        let e = unlimited
            .give_up("PutObject", "s3://b/k", 41, spent, &f)
            .map(|e| e.message)
            .unwrap_or_default();
        assert!(e.contains("after 41 attempts") && e.contains("2m"), "{e}");
        let counted = Retry::new(3, Duration::ZERO, Duration::ZERO);
        assert!(counted
            .give_up("PutObject", "s3://b/k", 3, Instant::now(), &f)
            .is_some());
    }

    #[test]
    fn statuses_and_codes() {
        assert_eq!(
            classify_status(503, Some("SlowDown")),
            StoreErrorKind::Transient
        );
        assert_eq!(classify_status(500, None), StoreErrorKind::Transient);
        assert_eq!(classify_status(429, None), StoreErrorKind::Transient);
        assert_eq!(
            classify_status(400, Some("RequestTimeout")),
            StoreErrorKind::Transient
        );
        assert_eq!(
            classify_status(403, Some("AccessDenied")),
            StoreErrorKind::Permanent
        );
        assert_eq!(
            classify_status(403, Some("SignatureDoesNotMatch")),
            StoreErrorKind::Permanent
        );
        assert_eq!(
            classify_status(403, Some("InvalidAccessKeyId")),
            StoreErrorKind::Permanent
        );
        assert_eq!(
            classify_status(404, Some("NoSuchBucket")),
            StoreErrorKind::Permanent
        );
        assert_eq!(
            classify_status(404, Some("NoSuchKey")),
            StoreErrorKind::NotFound
        );
        assert_eq!(classify_status(404, None), StoreErrorKind::NotFound);
    }

    #[test]
    fn bucket_and_credential_errors_do_not_name_the_request_that_met_them() {
        let r = Retry::new(3, Duration::from_millis(1), Duration::from_millis(1));
        let failure = |status: u16, code: &str| Failure {
            kind: classify_status(status, Some(code)),
            cause: format!("HTTP {status} {code}: some text"),
            status: Some(status),
            code: Some(code.to_string()),
        };
        let target = "s3://backups/db1 (1 keys from 20261207T010544Z/stagehand.json)";
        let started = Instant::now();
        let message = |status, code| {
            r.give_up("DeleteObjects", target, 1, started, &failure(status, code))
                .map(|e| e.message)
                .unwrap_or_default()
        };
        let missing = message(404, "NoSuchBucket");
        assert!(
            missing.starts_with("S3 bucket `backups` does not exist"),
            "{missing}"
        );
        assert!(
            !missing.contains("DeleteObjects") && !missing.contains("stagehand.json"),
            "{missing}"
        );
        assert!(missing.contains("HTTP 404 NoSuchBucket"), "{missing}");
        let key = message(403, "InvalidAccessKeyId");
        assert!(
            key.contains("access_key_id") && !key.contains("DeleteObjects"),
            "{key}"
        );
        let denied = message(403, "AccessDenied");
        assert!(
            denied.contains("may not DeleteObjects in bucket `backups`"),
            "{denied}"
        );
        let other = message(400, "InvalidArgument");
        assert!(
            other.starts_with("DeleteObjects s3://backups/db1"),
            "{other}"
        );
    }

    #[test]
    fn full_jitter_stays_under_the_ceiling() {
        let r = Retry::new(6, Duration::from_millis(200), Duration::from_secs(10));
        for attempt in 0..40 {
            let ceiling =
                Duration::from_millis(200 * (1u64 << attempt.min(20))).min(Duration::from_secs(10));
            for _ in 0..50 {
                assert!(r.backoff(attempt) <= ceiling);
            }
        }
    }

    #[tokio::test]
    async fn budget_and_messages() {
        let r = Retry::new(3, Duration::from_millis(1), Duration::from_millis(2))
            .with_secrets(["SECRETKEY".to_string()]);
        let mut calls = 0;
        let err = r
            .run("PutObject", "s3://b/k", |_| {
                calls += 1;
                async {
                    Err::<(), _>(Failure::transient(
                        "HTTP 500 InternalError: SECRETKEY leaked",
                    ))
                }
            })
            .await
            .unwrap_err();
        assert_eq!(calls, 3);
        assert_eq!(err.kind, StoreErrorKind::Transient);
        assert!(err.message.contains("after 3 attempts"), "{}", err.message);
        assert!(
            err.message.contains("PutObject s3://b/k"),
            "{}",
            err.message
        );
        assert!(!err.message.contains("SECRETKEY"), "{}", err.message);

        let mut calls = 0;
        let err = r
            .run("PutObject", "s3://b/k", |_| {
                calls += 1;
                async { Err::<(), _>(Failure::permanent("HTTP 403 AccessDenied")) }
            })
            .await
            .unwrap_err();
        assert_eq!(calls, 1);
        assert_eq!(err.kind, StoreErrorKind::Permanent);
        assert!(err.message.contains("not retried"), "{}", err.message);
    }
}
