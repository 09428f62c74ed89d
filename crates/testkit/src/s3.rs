//! S3 test harness: a real `moto_server` on loopback ([`MotoServer`]) and a fault
//! injecting HTTP proxy in front of it ([`FaultProxy`]). No S3 mock: the store speaks
//! to a real S3 implementation, the proxy only breaks requests on purpose.

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
/// The SDK client the harness hands out, for tests that take one as a parameter.
pub use aws_sdk_s3::Client as S3Client;
use stagehand_repo::RepoConfig;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where `scripts/ensure-deps.sh` puts moto when pip cannot install into the system
/// Python (PEP 668), relative to `$HOME`.
pub const MOTO_VENV_BIN: &str = ".local/share/stagehand/moto/bin/moto_server";
pub const ENV_MOTO_SERVER: &str = "STAGEHAND_MOTO_SERVER";
pub const ACCESS_KEY: &str = "testing-access-key";
pub const SECRET_KEY: &str = "testing-secret-key";
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("moto_server not found (not on PATH, not in $STAGEHAND_MOTO_SERVER, not in ~/{MOTO_VENV_BIN} or ~/.local/bin): install it with `pip install 'moto[server]'` or `bash scripts/ensure-deps.sh`")]
    MotoNotFound,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("moto_server did not come up: {0}")]
    Startup(String),
    #[error("{0}")]
    Garage(String),
    #[error("{0}")]
    S3(String),
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

/// The `moto_server` binary: `$STAGEHAND_MOTO_SERVER`, `PATH`, the venv of
/// `scripts/ensure-deps.sh`, then `~/.local/bin`.
pub fn find_moto_server() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ENV_MOTO_SERVER).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("moto_server");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    // The venv of ensure-deps.sh, then pip's `--user` scripts (often not on PATH).
    let home = PathBuf::from(std::env::var_os("HOME")?);
    [
        home.join(MOTO_VENV_BIN),
        home.join(".local/bin/moto_server"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

pub(crate) fn free_port() -> Result<u16, HarnessError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("binding a free port"))?;
    Ok(l.local_addr().map_err(io("binding a free port"))?.port())
}

/// A `moto_server` on loopback, killed on drop.
pub struct MotoServer {
    child: Mutex<Child>,
    addr: SocketAddr,
}

impl MotoServer {
    /// Starts a server of its own (a few seconds: moto imports a lot).
    pub fn start() -> Result<MotoServer, HarnessError> {
        crate::watchdog::ensure_started();
        Self::spawn(false)
    }

    /// One server for the whole test binary, started on first use; it dies with the
    /// test process (parent-death signal), since statics are never dropped.
    pub fn shared() -> &'static MotoServer {
        static SHARED: OnceLock<MotoServer> = OnceLock::new();
        SHARED.get_or_init(|| {
            // The signal fires when the *thread* that spawned the child ends, so spawn
            // from a thread that lives as long as the process.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(Self::spawn(true));
                loop {
                    std::thread::park();
                }
            });
            match rx.recv() {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => panic!("the moto_server starter thread died"),
            }
        })
    }

    fn spawn(die_with_parent: bool) -> Result<MotoServer, HarnessError> {
        let bin = find_moto_server().ok_or(HarnessError::MotoNotFound)?;
        let port = free_port()?;
        let mut cmd = Command::new(&bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if die_with_parent {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe and touches nothing else.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(io(format!("starting {}", bin.display())))?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // Keep the last lines of its log for a startup failure, and drain the pipe.
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        if let Some(err) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if let Ok(mut l) = log.lock() {
                        l.push(line);
                        let n = l.len();
                        if n > 40 {
                            l.drain(..n - 40);
                        }
                    }
                }
            });
        }
        let server = MotoServer {
            child: Mutex::new(child),
            addr,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if http_ok(addr) {
                return Ok(server);
            }
            let exited = server
                .child
                .lock()
                .map(|mut c| c.try_wait().ok().flatten())
                .unwrap_or(None);
            if exited.is_some() || Instant::now() > deadline {
                let tail = log.lock().map(|l| l.join("\n")).unwrap_or_default();
                return Err(HarnessError::Startup(format!(
                    "{} on port {port}: {}\n{tail}",
                    bin.display(),
                    match exited {
                        Some(s) => format!("exited with {s}"),
                        None => "no answer within 60 s".into(),
                    }
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A repository config for `s3://bucket/prefix` on this server.
    pub fn repo_config(&self, bucket: &str, prefix: &str) -> RepoConfig {
        repo_config(&self.endpoint(), bucket, prefix)
    }

    /// A plain client for the tests' own checks (no stagehand code in between).
    pub fn client(&self) -> aws_sdk_s3::Client {
        client_for(&self.endpoint())
    }

    pub async fn create_bucket(&self, bucket: &str) -> Result<(), HarnessError> {
        create_bucket_with(&self.client(), bucket).await
    }
}

/// CreateBucket through `client`.
pub(crate) async fn create_bucket_with(
    client: &aws_sdk_s3::Client,
    bucket: &str,
) -> Result<(), HarnessError> {
    client
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| {
            HarnessError::S3(format!(
                "CreateBucket {bucket}: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            ))
        })
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A one-shot `GET /` over a raw socket: is the server answering HTTP?
fn http_ok(addr: SocketAddr) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    use std::io::Write;
    if s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.")
}

/// A repository config for `s3://bucket/prefix` at `endpoint`, path style, dummy keys.
pub fn repo_config(endpoint: &str, bucket: &str, prefix: &str) -> RepoConfig {
    let url = if prefix.is_empty() {
        format!("s3://{bucket}")
    } else {
        format!("s3://{bucket}/{prefix}")
    };
    let mut cfg = RepoConfig::at(&url);
    cfg.endpoint = Some(endpoint.to_string());
    cfg.region = Some("us-east-1".into());
    cfg.path_style = true;
    cfg.access_key_id = Some(ACCESS_KEY.into());
    cfg.secret_access_key = Some(SECRET_KEY.into());
    cfg
}

/// A plain SDK client for `endpoint` with the dummy keys.
pub fn client_for(endpoint: &str) -> aws_sdk_s3::Client {
    client_with(endpoint, "us-east-1", ACCESS_KEY, SECRET_KEY)
}

/// A plain SDK client for `endpoint` in `region` with these keys.
pub fn client_with(endpoint: &str, region: &str, key: &str, secret: &str) -> aws_sdk_s3::Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new(region.to_string()))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(
            key.to_string(),
            secret.to_string(),
            None,
            None,
            "test",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// A bucket name no other test uses.
pub fn unique_bucket(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tag: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(30)
        .collect();
    format!("sh-{tag}-{}-{n}", std::process::id())
}

// ---------------------------------------------------------------------------------
// Fault proxy

/// What the proxy does to a request a rule matches.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answers this status with an S3 XML error of this code; nothing is forwarded.
    Status(u16, String),
    /// Reads the request, then resets the connection.
    Reset,
    /// Reads the request, says nothing for this long, then closes.
    Stall(Duration),
    /// Forwards, relays the response head and this many body bytes, then resets.
    Truncate(usize),
}

/// Which requests a fault hits, and how many times.
#[derive(Debug, Clone)]
pub struct Rule {
    op: Option<String>,
    method: Option<String>,
    contains: Option<String>,
    remaining: Option<u32>,
    fault: Fault,
}

impl Rule {
    /// Requests of one S3 operation (`PutObject`, `UploadPart`, … see
    /// [`s3_operation`]). Default: every time, HTTP 500 InternalError.
    pub fn op(op: &str) -> Rule {
        Rule {
            op: Some(op.to_string()),
            ..Rule::any()
        }
    }
    /// Every request.
    pub fn any() -> Rule {
        Rule {
            op: None,
            method: None,
            contains: None,
            remaining: None,
            fault: Fault::Status(500, "InternalError".into()),
        }
    }
    pub fn method(mut self, m: &str) -> Rule {
        self.method = Some(m.to_ascii_uppercase());
        self
    }
    /// Requests whose target (path and query) contains `s`.
    pub fn target_contains(mut self, s: &str) -> Rule {
        self.contains = Some(s.to_string());
        self
    }
    /// Only the next `n` matching requests.
    pub fn times(mut self, n: u32) -> Rule {
        self.remaining = Some(n);
        self
    }
    pub fn status(mut self, status: u16, code: &str) -> Rule {
        self.fault = Fault::Status(status, code.to_string());
        self
    }
    pub fn reset(mut self) -> Rule {
        self.fault = Fault::Reset;
        self
    }
    pub fn stall(mut self, d: Duration) -> Rule {
        self.fault = Fault::Stall(d);
        self
    }
    pub fn truncate(mut self, body_bytes: usize) -> Rule {
        self.fault = Fault::Truncate(body_bytes);
        self
    }

    fn matches(&self, op: &str, method: &str, target: &str) -> bool {
        self.remaining != Some(0)
            && self.op.as_deref().is_none_or(|o| o == op)
            && self.method.as_deref().is_none_or(|m| m == method)
            && self.contains.as_deref().is_none_or(|c| target.contains(c))
    }
}

/// A request the proxy saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub op: String,
    pub method: String,
    pub target: String,
    /// The fault applied, if any.
    pub fault: Option<String>,
}

#[derive(Default)]
struct ProxyState {
    rules: Vec<Rule>,
    seen: Vec<Seen>,
}

/// An HTTP/1.1 proxy on loopback in front of an S3 server, with scriptable faults.
/// Each request is forwarded on a fresh upstream connection (`Connection: close`) and
/// each client connection serves one request.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> Result<FaultProxy, HarnessError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(io("binding the fault proxy"))?;
        let addr = listener
            .local_addr()
            .map_err(io("binding the fault proxy"))?;
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            // Connection tasks live in the set: aborting the proxy aborts them all.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((sock, _)) = accepted else { continue };
                        let st = st.clone();
                        conns.spawn(async move {
                            if let Err(e) = handle(sock, upstream, st).await {
                                tracing::debug!("fault proxy connection: {e}");
                            }
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(FaultProxy { addr, state, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a rule; rules are tried in the order they were added.
    pub fn add(&self, rule: Rule) {
        self.lock().rules.push(rule);
    }

    /// Removes every rule.
    pub fn clear_rules(&self) {
        self.lock().rules.clear();
    }

    /// Forgets the requests seen so far.
    pub fn reset_counts(&self) {
        self.lock().seen.clear();
    }

    /// Requests of operation `op` seen (faulted or not).
    pub fn count(&self, op: &str) -> usize {
        self.lock().seen.iter().filter(|s| s.op == op).count()
    }

    /// Requests of operation `op` that got a fault.
    pub fn faulted(&self, op: &str) -> usize {
        self.lock()
            .seen
            .iter()
            .filter(|s| s.op == op && s.fault.is_some())
            .count()
    }

    pub fn total(&self) -> usize {
        self.lock().seen.len()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProxyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The S3 operation of a request: the SDK's `x-id` query parameter when present,
/// else from method, path and query (path-style addressing).
pub fn s3_operation(method: &str, target: &str) -> String {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params: HashSet<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map_or(p, |(k, _)| k))
        .collect();
    if let Some(x) = query.split('&').find_map(|p| p.strip_prefix("x-id=")) {
        return x.to_string();
    }
    let has = |k: &str| params.contains(k);
    let object = path
        .trim_start_matches('/')
        .split_once('/')
        .is_some_and(|(_, k)| !k.is_empty());
    let op = match method {
        "POST" if has("uploads") => "CreateMultipartUpload",
        "POST" if has("uploadId") => "CompleteMultipartUpload",
        "POST" if has("delete") => "DeleteObjects",
        "PUT" if has("uploadId") => "UploadPart",
        "DELETE" if has("uploadId") => "AbortMultipartUpload",
        "GET" if has("uploadId") => "ListParts",
        "GET" if has("uploads") => "ListMultipartUploads",
        "GET" if query.contains("list-type=2") => "ListObjectsV2",
        "GET" if object => "GetObject",
        "GET" => "ListObjects",
        "HEAD" if object => "HeadObject",
        "HEAD" => "HeadBucket",
        "PUT" if object => "PutObject",
        "PUT" => "CreateBucket",
        "DELETE" if object => "DeleteObject",
        "DELETE" => "DeleteBucket",
        _ => "Other",
    };
    op.to_string()
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Reads until the end of a message head; returns the head and what came after it.
async fn read_head(s: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find_head_end(&buf) {
            let rest = buf.split_off(end);
            return Ok(Some((String::from_utf8_lossy(&buf).into_owned(), rest)));
        }
        if buf.len() > 256 * 1024 {
            return Err(std::io::Error::other("message head too long"));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads exactly `n` more bytes after `have`.
async fn read_more(s: &mut TcpStream, have: &mut Vec<u8>, n: usize) -> std::io::Result<()> {
    let start = have.len();
    have.resize(start + n, 0);
    s.read_exact(&mut have[start..]).await?;
    Ok(())
}

async fn read_request(s: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let Some((head, mut rest)) = read_head(s).await? else {
        return Ok(None);
    };
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    if header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    let chunked =
        header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        read_chunked(s, rest).await?
    } else {
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if rest.len() < len {
            let missing = len - rest.len();
            read_more(s, &mut rest, missing).await?;
        }
        rest.truncate(len);
        rest
    };
    Ok(Some(Request {
        method,
        target,
        headers,
        body,
    }))
}

/// Decodes a chunked body (forwarded with a Content-Length instead).
async fn read_chunked(s: &mut TcpStream, mut buf: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers, up to the empty line.
            while find_head_end(&[b"\r\n".as_slice(), &buf].concat()).is_none() {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(body);
        }
        if buf.len() < size + 2 {
            let missing = size + 2 - buf.len();
            read_more(s, &mut buf, missing).await?;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

fn is_hop_header(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "expect",
        "transfer-encoding",
        "content-length",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

async fn handle(
    mut client: TcpStream,
    upstream: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
) -> std::io::Result<()> {
    let Some(req) = read_request(&mut client).await? else {
        return Ok(());
    };
    let op = s3_operation(&req.method, &req.target);
    let fault = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        let fault = st
            .rules
            .iter_mut()
            .find(|r| r.matches(&op, &req.method, &req.target))
            .map(|r| {
                if let Some(n) = r.remaining.as_mut() {
                    *n -= 1;
                }
                r.fault.clone()
            });
        st.seen.push(Seen {
            op: op.clone(),
            method: req.method.clone(),
            target: req.target.clone(),
            fault: fault.as_ref().map(|f| format!("{f:?}")),
        });
        fault
    };
    match fault {
        Some(Fault::Status(status, code)) => {
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the fault proxy</Message><RequestId>faultproxy</RequestId></Error>"
            );
            let body = if req.method == "HEAD" {
                ""
            } else {
                xml.as_str()
            };
            let resp = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nx-amz-request-id: faultproxy\r\nConnection: close\r\n\r\n{body}",
                reason(status),
                body.len()
            );
            client.write_all(resp.as_bytes()).await?;
            client.shutdown().await?;
            Ok(())
        }
        Some(Fault::Reset) => {
            client.set_zero_linger()?;
            drop(client);
            Ok(())
        }
        Some(Fault::Stall(d)) => {
            tokio::time::sleep(d).await;
            Ok(())
        }
        Some(Fault::Truncate(n)) => forward(client, upstream, &req, Some(n)).await,
        None => forward(client, upstream, &req, None).await,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    req: &Request,
    truncate: Option<usize>,
) -> std::io::Result<()> {
    let mut up = TcpStream::connect(upstream).await?;
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.target);
    for (k, v) in req.headers.iter().filter(|(k, _)| !is_hop_header(k)) {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        req.body.len()
    ));
    up.write_all(head.as_bytes()).await?;
    up.write_all(&req.body).await?;
    up.flush().await?;

    let Some((resp_head, rest)) = read_head(&mut up).await? else {
        return Err(std::io::Error::other("upstream closed without answering"));
    };
    // The client must not reuse its connection: this one ends with the response.
    let mut out = String::new();
    for (i, line) in resp_head
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        if i > 0 {
            let name = line.split(':').next().unwrap_or("");
            if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive") {
                continue;
            }
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    client.write_all(out.as_bytes()).await?;
    match truncate {
        Some(n) => {
            let mut body = rest;
            while body.len() < n {
                let mut chunk = [0u8; 8192];
                let k = up.read(&mut chunk).await?;
                if k == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..k]);
            }
            body.truncate(n);
            client.write_all(&body).await?;
            client.flush().await?;
            client.set_zero_linger()?;
            drop(client);
        }
        None => {
            client.write_all(&rest).await?;
            tokio::io::copy(&mut up, &mut client).await?;
            client.shutdown().await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::s3_operation;

    #[test]
    fn operations() {
        assert_eq!(s3_operation("PUT", "/b/k?x-id=PutObject"), "PutObject");
        assert_eq!(
            s3_operation("PUT", "/b/k?partNumber=1&uploadId=x"),
            "UploadPart"
        );
        assert_eq!(
            s3_operation("POST", "/b/k?uploads"),
            "CreateMultipartUpload"
        );
        assert_eq!(
            s3_operation("POST", "/b/k?uploadId=x"),
            "CompleteMultipartUpload"
        );
        assert_eq!(
            s3_operation("GET", "/b?list-type=2&prefix=p"),
            "ListObjectsV2"
        );
        assert_eq!(
            s3_operation("GET", "/b?uploads&prefix=p"),
            "ListMultipartUploads"
        );
        assert_eq!(s3_operation("HEAD", "/b/k"), "HeadObject");
        assert_eq!(s3_operation("PUT", "/b"), "CreateBucket");
        assert_eq!(s3_operation("POST", "/b?delete"), "DeleteObjects");
    }
}
