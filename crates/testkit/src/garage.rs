//! A real Garage (a production S3 server written in Rust) on loopback, for the storage
//! tests that must not only pass against moto: a single node with its own metadata and
//! data directories, a default key and bucket, killed with the test process.

use crate::s3::{client_with, create_bucket_with, free_port, io, HarnessError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The version `scripts/ensure-deps.sh --matrix` builds.
pub const GARAGE_VERSION: &str = "2.5.0";
/// Overrides where the harness looks for the binary.
pub const ENV_GARAGE_BIN: &str = "STAGEHAND_GARAGE_BIN";
/// Garage's key ids are `GK` and 24 hex digits, secrets 64 hex digits.
pub const GARAGE_ACCESS_KEY: &str = "GK57a6e7d1c0ffee0000000001";
pub const GARAGE_SECRET_KEY: &str =
    "5e0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b";
/// The region Garage signs for (its `s3_region`).
pub const GARAGE_REGION: &str = "garage";
const DEFAULT_BUCKET: &str = "stagehand-default";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `garage` binary: `$STAGEHAND_GARAGE_BIN`, the cache of `scripts/ensure-deps.sh`,
/// then `PATH`.
pub fn find_garage() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ENV_GARAGE_BIN).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let cached = std::env::var_os("HOME").map(|h| {
        PathBuf::from(h).join(format!(
            ".cache/stagehand/garage-{GARAGE_VERSION}/bin/garage"
        ))
    });
    if let Some(p) = cached.filter(|p| p.is_file()) {
        return Some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("garage"))
        .find(|p| p.is_file())
}

/// A single-node Garage on loopback; killed on drop (or with the test process).
pub struct GarageServer {
    child: Mutex<Child>,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl GarageServer {
    /// One server for the whole test binary, started on first use; panics with how to
    /// install Garage when it is missing.
    pub fn shared() -> &'static GarageServer {
        static SHARED: OnceLock<GarageServer> = OnceLock::new();
        SHARED.get_or_init(|| {
            crate::watchdog::ensure_started();
            // The parent-death signal fires when the spawning *thread* ends: spawn from
            // one that lives as long as the process.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(Self::spawn());
                loop {
                    std::thread::park();
                }
            });
            match rx.recv() {
                Ok(Ok(g)) => g,
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => panic!("the Garage starter thread died"),
            }
        })
    }

    fn spawn() -> Result<GarageServer, HarnessError> {
        let bin = find_garage().ok_or_else(|| {
            HarnessError::Garage(format!(
                "garage not found (not in ${ENV_GARAGE_BIN}, ~/.cache/stagehand/garage-{GARAGE_VERSION}/bin or PATH): run `bash scripts/ensure-deps.sh --matrix`, which builds it with `cargo install garage --version {GARAGE_VERSION} --locked --root ~/.cache/stagehand/garage-{GARAGE_VERSION}`"
            ))
        })?;
        let dir = tempfile::Builder::new()
            .prefix("stagehand-garage-")
            .tempdir()
            .map_err(io("creating Garage's directory"))?;
        let (s3_port, rpc_port) = (free_port()?, free_port()?);
        let config = dir.path().join("garage.toml");
        std::fs::write(&config, config_text(dir.path(), s3_port, rpc_port))
            .map_err(io("writing garage.toml"))?;
        let log = std::fs::File::create(dir.path().join("garage.log"))
            .map_err(io("creating garage.log"))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&config)
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", GARAGE_ACCESS_KEY)
            .env("GARAGE_DEFAULT_SECRET_KEY", GARAGE_SECRET_KEY)
            .env("GARAGE_DEFAULT_BUCKET", DEFAULT_BUCKET)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe and touches nothing else.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .map_err(io(format!("starting {}", bin.display())))?;
        let server = GarageServer {
            child: Mutex::new(child),
            addr: ([127, 0, 0, 1], s3_port).into(),
            _dir: dir,
        };
        server.wait_until_serving(&bin)?;
        Ok(server)
    }

    /// Garage answers once its single-node layout is applied and the default bucket
    /// exists: poll a ListObjects of that bucket.
    fn wait_until_serving(&self, bin: &std::path::Path) -> Result<(), HarnessError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("starting a runtime"))?;
        let client = self.client();
        loop {
            let listed = runtime.block_on(async {
                client
                    .list_objects_v2()
                    .bucket(DEFAULT_BUCKET)
                    .send()
                    .await
                    .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(e).to_string())
            });
            let last = match listed {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            let exited = self
                .child
                .lock()
                .map(|mut c| c.try_wait().ok().flatten())
                .unwrap_or(None);
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(self._dir.path().join("garage.log"))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                return Err(HarnessError::Garage(format!(
                    "Garage ({}) on {} did not come up: {} (last answer: {last})\n{}",
                    bin.display(),
                    self.addr,
                    match exited {
                        Some(s) => format!("exited with {s}"),
                        None => "not serving within 60 s".into(),
                    },
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A plain client with the server's key (no stagehand code in between).
    pub fn client(&self) -> aws_sdk_s3::Client {
        client_with(
            &self.endpoint(),
            GARAGE_REGION,
            GARAGE_ACCESS_KEY,
            GARAGE_SECRET_KEY,
        )
    }

    /// Creates a bucket (the default key may create buckets).
    pub async fn create_bucket(&self, bucket: &str) -> Result<(), HarnessError> {
        create_bucket_with(&self.client(), bucket).await
    }
}

impl Drop for GarageServer {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn config_text(dir: &std::path::Path, s3_port: u16, rpc_port: u16) -> String {
    // A random RPC secret: nothing else ever joins this node.
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect();
    format!(
        r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{GARAGE_REGION}"
api_bind_addr = "127.0.0.1:{s3_port}"
"#,
        meta = dir.join("meta").display(),
        data = dir.join("data").display(),
    )
}
