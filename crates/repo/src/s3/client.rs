//! Building the SDK client from a repository configuration: credentials, region,
//! endpoint, path style, timeouts (longer for requests with a body), the SDK's own
//! retries and flexible checksums off, and the Content-MD5 header for in-memory bodies.

use super::{md5_of, Inner, PartMemory, S3Store};
use crate::retry::Retry;
use crate::{RepoConfig, StoreError};
use aws_config::{BehaviorVersion, SdkConfig};
use aws_credential_types::Credentials;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::types::{ServerSideEncryption, StorageClass};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use std::sync::Arc;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The slowest upload we accept before calling a request stalled: the response
/// timeout of a request with a body grows by its size at this rate.
const MIN_UPLOAD_RATE: u64 = 256 * 1024;

impl S3Store {
    /// Builds the client; sends nothing (a wrong bucket or key shows on first use).
    pub async fn connect(cfg: &RepoConfig, bucket: &str, prefix: &str) -> Result<Self, StoreError> {
        let read_timeout = cfg.read_timeout_duration()?;
        let retry_for = cfg.retry_for_duration()?;
        let part_size = cfg.part_size_bytes()?;
        let (sdk, secrets) = load_sdk_config(cfg, read_timeout).await;
        Ok(S3Store {
            inner: Arc::new(Inner {
                client: Client::from_conf(s3_config(&sdk, cfg.path_style)),
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
                retry: Retry::from_env(cfg.max_attempts)
                    .with_budget(retry_for)
                    .with_secrets(secrets),
                part_size,
                part_parallel: cfg.part_parallel.max(1),
                part_memory: PartMemory::new(cfg.buffer_memory_bytes()?),
                read_timeout,
                storage_class: cfg.storage_class.as_deref().map(StorageClass::from),
                sse: cfg.sse.as_deref().map(ServerSideEncryption::from),
                sse_kms_key_id: cfg.sse_kms_key_id.clone(),
                location: location(cfg, bucket, prefix),
            }),
        })
    }
}

/// The shared AWS configuration, and the secrets in it (which error messages must
/// never show).
async fn load_sdk_config(cfg: &RepoConfig, read_timeout: Duration) -> (SdkConfig, Vec<String>) {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        // Our own loop retries (retry.rs says why).
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts(read_timeout, 0));
    // Without a region here the loader's chain (environment, profile, IMDS) asks,
    // with our HTTP client; us-east-1 when nothing says.
    if let Some(r) = &cfg.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(ep) = &cfg.endpoint {
        loader = loader.endpoint_url(ep);
    }
    let mut secrets = Vec::new();
    if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) {
        secrets.push(id.clone());
        secrets.push(secret.clone());
        secrets.extend(cfg.session_token.clone());
        loader = loader.credentials_provider(Credentials::new(
            id,
            secret,
            cfg.session_token.clone(),
            None,
            "stagehand-repository",
        ));
    }
    (loader.load().await, secrets)
}

/// The S3 client's configuration on top of the shared one.
fn s3_config(sdk: &SdkConfig, path_style: bool) -> aws_sdk_s3::Config {
    let mut conf = aws_sdk_s3::config::Builder::from(sdk);
    if sdk.region().is_none() {
        conf = conf.region(Region::from_static("us-east-1"));
    }
    conf.force_path_style(path_style)
        // Third-party servers (older MinIO, Ceph, Garage) reject or ignore the
        // newer flexible checksums; Content-MD5 covers our bodies.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .retry_config(RetryConfig::disabled())
        .build()
}

/// The repository for people: bucket, prefix and endpoint, never keys.
fn location(cfg: &RepoConfig, bucket: &str, prefix: &str) -> String {
    match &cfg.endpoint {
        Some(ep) => format!("s3://{bucket}/{prefix} (endpoint {ep})"),
        None => format!("s3://{bucket}/{prefix}"),
    }
}

/// Connect, response and attempt timeouts; `body` bytes extend the response timeout
/// at [`MIN_UPLOAD_RATE`] because the response only starts once the body is sent.
fn timeouts(read: Duration, body: u64) -> TimeoutConfig {
    let read = read + Duration::from_secs(body / MIN_UPLOAD_RATE);
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(read)
        .operation_attempt_timeout(CONNECT_TIMEOUT + read * 2)
        .build()
}

/// Adds a Content-MD5 header to a request with an in-memory body (DeleteObjects:
/// some S3-compatible servers insist on it).
pub(super) fn add_content_md5(req: &mut aws_sdk_s3::config::http::HttpRequest) {
    if let Some(body) = req.body().bytes() {
        let md5 = aws_smithy_types::base64::encode(md5_of(body));
        req.headers_mut().insert("content-md5", md5);
    }
}

impl Inner {
    /// The per-request configuration of a request with a `body`-byte body.
    pub(super) fn upload_override(&self, body: u64) -> aws_sdk_s3::config::Builder {
        aws_sdk_s3::config::Builder::default().timeout_config(timeouts(self.read_timeout, body))
    }
}
