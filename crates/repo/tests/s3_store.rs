//! The S3 store against a real moto_server, directly and through the fault proxy.
//! Run: `cargo test -p stagehand-repo --test s3_store`.

use stagehand_host::digest::hash_bytes;
use stagehand_repo::s3::S3Store;
use stagehand_repo::{ByteCounter, RepoConfig, Store, StoreError, StoreErrorKind};
use stagehand_testkit::s3::{unique_bucket, FaultProxy, MotoServer, Rule, ACCESS_KEY, SECRET_KEY};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

async fn bucket(tag: &str) -> (&'static MotoServer, String) {
    let moto = MotoServer::shared();
    let b = unique_bucket(tag);
    moto.create_bucket(&b).await.expect("create bucket");
    (moto, b)
}

async fn store(cfg: RepoConfig, bucket: &str, prefix: &str) -> S3Store {
    S3Store::connect(&cfg, bucket, prefix)
        .await
        .expect("connect")
        .with_backoff(Duration::from_millis(5), Duration::from_millis(50))
}

/// A store on `bucket`/`prefix` reached through a fresh fault proxy; `tweak` adjusts
/// the configuration first.
async fn proxied_store(
    moto: &MotoServer,
    bucket: &str,
    prefix: &str,
    tweak: impl FnOnce(&mut RepoConfig),
) -> (FaultProxy, S3Store) {
    let proxy = FaultProxy::start(moto.addr()).await.expect("fault proxy");
    let mut cfg = moto.repo_config(bucket, prefix);
    cfg.endpoint = Some(proxy.endpoint());
    tweak(&mut cfg);
    (proxy, store(cfg, bucket, prefix).await)
}

/// Multipart uploads of 5 MiB parts.
fn five_mib_parts(cfg: &mut RepoConfig) {
    cfg.part_size = "5MiB".into();
}

/// A file of random bytes in its own temporary directory.
struct TestFile {
    dir: tempfile::TempDir,
    path: PathBuf,
    sha: String,
    size: u64,
}

impl TestFile {
    fn random(size: usize) -> TestFile {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut data = vec![0u8; size];
        fastrand::fill(&mut data);
        let path = dir.path().join("data");
        std::fs::write(&path, &data).expect("write");
        TestFile {
            dir,
            path,
            sha: hash_bytes(&data),
            size: size as u64,
        }
    }

    /// Uploads the file as `key`, counting into `progress`.
    async fn put_counted(
        &self,
        s: &S3Store,
        key: &str,
        progress: &ByteCounter,
    ) -> Result<(), StoreError> {
        s.put_file(key, &self.path, self.size, &self.sha, progress)
            .await
    }

    async fn put(&self, s: &S3Store, key: &str) -> Result<(), StoreError> {
        self.put_counted(s, key, &ByteCounter::default()).await
    }

    /// A path next to the file, to download into.
    fn beside(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn sha_of(p: &Path) -> String {
    hash_bytes(&std::fs::read(p).expect("read"))
}

/// Multipart uploads still open in the bucket, asked of moto directly.
async fn open_uploads(moto: &MotoServer, bucket: &str) -> usize {
    let out = moto
        .client()
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .expect("ListMultipartUploads");
    out.uploads().len()
}

async fn exists(moto: &MotoServer, bucket: &str, key: &str) -> bool {
    moto.client()
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_put_get_list_delete() {
    let (moto, b) = bucket("roundtrip").await;
    let mut cfg = moto.repo_config(&b, "team/repo");
    cfg.sse = Some("AES256".into());
    cfg.storage_class = Some("STANDARD_IA".into());
    let s = store(cfg, &b, "team/repo").await;
    let small = TestFile::random(300_000);
    let progress = ByteCounter::default();

    small
        .put_counted(&s, "20260101T000000Z/ibdata1", &progress)
        .await
        .expect("put_file");
    assert_eq!(progress.load(Ordering::Relaxed), 300_000);
    s.put_bytes("20260101T000000Z/stagehand.json", b"{\"a\":1}".to_vec())
        .await
        .expect("put_bytes");
    s.put_bytes("20260102T000000Z/db/t1.ibd", b"x".to_vec())
        .await
        .expect("put_bytes");

    // Stored under the prefix, with the hash, the storage class and encryption.
    let head = moto
        .client()
        .head_object()
        .bucket(&b)
        .key("team/repo/20260101T000000Z/ibdata1")
        .send()
        .await
        .expect("head under the prefix");
    assert_eq!(
        head.metadata().and_then(|m| m.get("hash")),
        Some(&small.sha)
    );
    assert_eq!(
        head.server_side_encryption().map(|s| s.as_str()),
        Some("AES256")
    );
    assert_eq!(
        head.storage_class().map(|s| s.as_str()),
        Some("STANDARD_IA")
    );

    let all = s.list("").await.expect("list");
    let keys: Vec<_> = all.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "20260101T000000Z/ibdata1",
            "20260101T000000Z/stagehand.json",
            "20260102T000000Z/db/t1.ibd"
        ]
    );
    assert_eq!(all[0].size, 300_000);
    assert_eq!(s.list("20260102T000000Z/").await.unwrap().len(), 1);
    assert_eq!(
        s.list_dirs("").await.expect("list_dirs"),
        ["20260101T000000Z", "20260102T000000Z"]
    );
    assert_eq!(s.list_dirs("20260102T000000Z/").await.unwrap(), ["db"]);

    assert_eq!(
        s.get_bytes("20260101T000000Z/stagehand.json")
            .await
            .unwrap(),
        Some(b"{\"a\":1}".to_vec())
    );
    assert_eq!(s.get_bytes("20260101T000000Z/missing").await.unwrap(), None);
    let back = small.beside("back");
    let n = s
        .get_to_file("20260101T000000Z/ibdata1", &back, 0, &progress)
        .await
        .expect("get_to_file");
    assert_eq!(n, 300_000);
    assert_eq!(sha_of(&back), small.sha);
    assert_eq!(progress.load(Ordering::Relaxed), 600_000);

    let keys: Vec<String> = all.iter().map(|o| o.key.clone()).collect();
    s.delete(&keys).await.expect("delete");
    s.delete(&keys)
        .await
        .expect("deleting missing keys is fine");
    assert!(s.list("").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_mib_goes_multipart_in_three_parts() {
    let (moto, b) = bucket("multipart").await;
    let (proxy, s) = proxied_store(moto, &b, "p", five_mib_parts).await;
    let big = TestFile::random(12 * MIB);
    let progress = ByteCounter::default();
    big.put_counted(&s, "id/big", &progress)
        .await
        .expect("multipart put");
    assert_eq!(proxy.count("CreateMultipartUpload"), 1);
    assert_eq!(proxy.count("UploadPart"), 3);
    assert_eq!(proxy.count("CompleteMultipartUpload"), 1);
    assert_eq!(proxy.count("PutObject"), 0);
    assert_eq!(progress.load(Ordering::Relaxed), (12 * MIB) as u64);
    let head = moto
        .client()
        .head_object()
        .bucket(&b)
        .key("p/id/big")
        .send()
        .await
        .unwrap();
    assert!(
        head.e_tag().unwrap_or("").ends_with("-3\""),
        "{:?}",
        head.e_tag()
    );

    let back = big.beside("back");
    let n = s
        .get_to_file("id/big", &back, 0, &progress)
        .await
        .expect("get");
    assert_eq!(n, (12 * MIB) as u64);
    assert_eq!(sha_of(&back), big.sha);
    assert_eq!(open_uploads(moto, &b).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_get_resumes_from_offset() {
    let (moto, b) = bucket("resume").await;
    let (proxy, s) = proxied_store(moto, &b, "", |_| {}).await;
    let obj = TestFile::random(3 * MIB);
    let data = std::fs::read(&obj.path).unwrap();
    obj.put(&s, "k/obj").await.unwrap();
    let sha = &obj.sha;

    // A partial earlier download: its first MiB is good, what follows is garbage.
    let back = obj.beside("back");
    let mut partial = data[..MIB].to_vec();
    partial.extend_from_slice(&[0xAB; 4096]);
    std::fs::write(&back, &partial).unwrap();
    let progress = ByteCounter::default();
    let n = s
        .get_to_file("k/obj", &back, MIB as u64, &progress)
        .await
        .expect("resume");
    assert_eq!(n, data.len() as u64);
    assert_eq!(progress.load(Ordering::Relaxed), (2 * MIB) as u64);
    assert_eq!(&sha_of(&back), sha);

    // Nothing left to fetch.
    let n = s
        .get_to_file("k/obj", &back, data.len() as u64, &progress)
        .await
        .expect("at the end");
    assert_eq!(n, data.len() as u64);
    assert_eq!(&sha_of(&back), sha);

    // A body cut short is resumed from where it stopped.
    proxy.reset_counts();
    proxy.add(Rule::op("GetObject").times(1).truncate(700_000));
    let back2 = obj.beside("back2");
    let n = s
        .get_to_file("k/obj", &back2, 0, &ByteCounter::default())
        .await
        .expect("after a cut");
    assert_eq!(n, data.len() as u64);
    assert_eq!(&sha_of(&back2), sha);
    assert_eq!(proxy.count("GetObject"), 2);
}

/// A streamed GET cut short is resumed where it stopped: the writer sees every byte
/// once and in order. A writer that fails ends the download at once, with no retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_get_resumes_into_the_writer_and_stops_when_the_writer_fails() {
    let (moto, b) = bucket("stream").await;
    let (proxy, s) = proxied_store(moto, &b, "", |_| {}).await;
    let obj = TestFile::random(3 * MIB);
    let data = std::fs::read(&obj.path).unwrap();
    obj.put(&s, "k/obj").await.unwrap();

    proxy.reset_counts();
    proxy.add(Rule::op("GetObject").times(1).truncate(700_000));
    let mut sink: Vec<u8> = Vec::new();
    let progress = ByteCounter::default();
    let n = s
        .get_to_writer("k/obj", &mut sink, &progress)
        .await
        .expect("after a cut");
    assert_eq!(n, data.len() as u64);
    assert!(
        sink == data,
        "the writer got the object exactly once, in order"
    );
    assert_eq!(progress.load(Ordering::Relaxed), data.len() as u64);
    assert_eq!(proxy.count("GetObject"), 2, "one cut attempt, one resumed");

    proxy.reset_counts();
    let (mut writer, reader) = tokio::io::duplex(64 * 1024);
    drop(reader);
    let err = s
        .get_to_writer("k/obj", &mut writer, &ByteCounter::default())
        .await
        .expect_err("a writer that fails");
    assert!(err.message.contains("writing"), "{err}");
    assert_eq!(proxy.count("GetObject"), 1, "not retried: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_down_twice_then_success() {
    let (moto, b) = bucket("slowdown").await;
    let (proxy, s) = proxied_store(moto, &b, "p", |_| {}).await;
    proxy.add(Rule::op("PutObject").times(2).status(503, "SlowDown"));
    s.put_bytes("a/stagehand.json", b"{}".to_vec())
        .await
        .expect("put after 503s");
    assert_eq!(proxy.count("PutObject"), 3);
    assert_eq!(proxy.faulted("PutObject"), 2);
    assert!(exists(moto, &b, "p/a/stagehand.json").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_reset_is_retried() {
    let (moto, b) = bucket("reset").await;
    let (proxy, s) = proxied_store(moto, &b, "p", five_mib_parts).await;
    let big = TestFile::random(11 * MIB);
    proxy.add(Rule::op("UploadPart").times(1).reset());
    proxy.add(Rule::op("HeadObject").times(1).reset());
    big.put(&s, "x/big").await.expect("put after resets");
    assert_eq!(proxy.count("UploadPart"), 4);
    assert_eq!(proxy.count("HeadObject"), 2);
    let back = big.beside("back");
    s.get_to_file("x/big", &back, 0, &ByteCounter::default())
        .await
        .unwrap();
    assert_eq!(sha_of(&back), big.sha);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_beyond_read_timeout_is_retried() {
    let (moto, b) = bucket("stall").await;
    let (proxy, s) = proxied_store(moto, &b, "p", |cfg| cfg.read_timeout = "1s".into()).await;
    for op in ["PutObject", "GetObject"] {
        proxy.add(Rule::op(op).times(1).stall(Duration::from_secs(10)));
    }
    let t = Instant::now();
    s.put_bytes("s/m.json", b"hello".to_vec())
        .await
        .expect("put after a stall");
    assert_eq!(
        s.get_bytes("s/m.json").await.expect("get after a stall"),
        Some(b"hello".to_vec())
    );
    // Two stalls cut at the 1 s read timeout, not at the attempt timeout (7 s).
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(proxy.count("PutObject"), 2);
    assert_eq!(proxy.count("GetObject"), 2);
}

/// An endpoint that refuses every connection for a few seconds (a restart, a failover):
/// requests are retried through it, within the default `retry_for` of two minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_down_for_seconds_is_ridden_through() {
    let (moto, b) = bucket("outage").await;
    let (proxy, s) = proxied_store(moto, &b, "p", |_| {}).await;
    proxy.add(Rule::any().reset());
    let put = tokio::spawn(async move { s.put_bytes("o/stagehand.json", b"{}".to_vec()).await });
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.clear_rules();
    put.await
        .expect("put task")
        .expect("the put outlives a 3 s outage");
    assert!(
        proxy.faulted("PutObject") >= 10,
        "{}",
        proxy.faulted("PutObject")
    );
    assert!(exists(moto, &b, "p/o/stagehand.json").await);
}

/// `retry_for` bounds how long an outage is waited out; the error says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_retry_for_fails_saying_how_long_it_tried() {
    let (moto, b) = bucket("outage-long").await;
    let (proxy, s) = proxied_store(moto, &b, "p", |cfg| cfg.retry_for = "1s".into()).await;
    proxy.add(Rule::any().reset());
    let t = Instant::now();
    let err = s
        .put_bytes("o/stagehand.json", b"{}".to_vec())
        .await
        .expect_err("the endpoint never comes back");
    assert_eq!(err.kind, StoreErrorKind::Transient);
    assert!(
        err.message.contains("retried for at most 1s"),
        "{}",
        err.message
    );
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_forever_fail_after_max_attempts_and_leave_nothing() {
    let (moto, b) = bucket("forever").await;
    let (proxy, s) = proxied_store(moto, &b, "p", |cfg| {
        five_mib_parts(cfg);
        cfg.max_attempts = 3;
    })
    .await;
    let big = TestFile::random(12 * MIB);
    proxy.add(Rule::op("UploadPart").status(500, "InternalError"));
    let err = big.put(&s, "x/big").await.expect_err("must fail");
    assert_eq!(err.kind, StoreErrorKind::Transient);
    let m = &err.message;
    assert!(m.contains("UploadPart"), "{m}");
    assert!(m.contains("s3://") && m.contains("p/x/big"), "{m}");
    assert!(m.contains("after 3 attempts"), "{m}");
    assert!(m.contains("500") && m.contains("InternalError"), "{m}");
    assert!(!m.contains(SECRET_KEY), "{m}");
    assert_eq!(proxy.count("AbortMultipartUpload"), 1);
    assert_eq!(proxy.count("CompleteMultipartUpload"), 0);
    assert_eq!(open_uploads(moto, &b).await, 0);
    assert!(!exists(moto, &b, "p/x/big").await);
    // Each part had its own budget of 3, no more.
    assert!(
        proxy.count("UploadPart") <= 9,
        "{}",
        proxy.count("UploadPart")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_are_not_retried() {
    let moto = MotoServer::shared();
    let b = unique_bucket("never-created");
    let (proxy, s) = proxied_store(moto, &b, "p", |_| {}).await;
    let err = s
        .put_bytes("a/stagehand.json", b"{}".to_vec())
        .await
        .expect_err("no bucket");
    assert_eq!(err.kind, StoreErrorKind::Permanent);
    assert!(err.message.contains("NoSuchBucket"), "{}", err.message);
    // The bucket is named, not the request that found it missing.
    assert!(
        err.message
            .contains(&format!("S3 bucket `{b}` does not exist")),
        "{}",
        err.message
    );
    assert!(err.message.contains("not retried"), "{}", err.message);
    assert!(!err.message.contains(SECRET_KEY), "{}", err.message);
    assert_eq!(proxy.count("PutObject"), 1);
    assert_eq!(proxy.total(), 1);

    // Access denied is final too.
    let (moto, b) = bucket("denied").await;
    let (proxy, s) = proxied_store(moto, &b, "p", |_| {}).await;
    proxy.add(Rule::op("ListObjectsV2").status(403, "AccessDenied"));
    let err = s.list("").await.expect_err("denied");
    assert_eq!(err.kind, StoreErrorKind::Permanent);
    assert!(err.message.contains("AccessDenied"), "{}", err.message);
    assert!(!err.message.contains(ACCESS_KEY), "{}", err.message);
    assert_eq!(proxy.count("ListObjectsV2"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_in_batches_and_abort_incomplete_uploads() {
    let (moto, b) = bucket("batches").await;
    let (proxy, s) = proxied_store(moto, &b, "p", |_| {}).await;
    s.put_bytes("a/1", b"1".to_vec()).await.unwrap();
    s.put_bytes("a/2", b"2".to_vec()).await.unwrap();
    let mut keys: Vec<String> = (0..1500).map(|i| format!("gone/{i}")).collect();
    keys.push("a/1".into());
    keys.push("a/2".into());
    s.delete(&keys).await.expect("delete");
    assert_eq!(proxy.count("DeleteObjects"), 2);
    assert!(s.list("").await.unwrap().is_empty());

    // Two interrupted uploads under the prefix, one outside it.
    let c = moto.client();
    for k in ["p/x/1", "p/y/2", "elsewhere/3"] {
        c.create_multipart_upload()
            .bucket(&b)
            .key(k)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(s.abort_incomplete_uploads("").await.expect("abort"), 2);
    assert_eq!(open_uploads(moto, &b).await, 1);
    assert_eq!(s.abort_incomplete_uploads("").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_upload_is_aborted() {
    let (moto, b) = bucket("cancel").await;
    let (proxy, s) = proxied_store(moto, &b, "p", five_mib_parts).await;
    let big = TestFile::random(11 * MIB);
    proxy.add(Rule::op("UploadPart").stall(Duration::from_secs(20)));
    let r = tokio::time::timeout(Duration::from_secs(2), big.put(&s, "c/big")).await;
    assert!(r.is_err(), "the put should still be running");
    assert!(proxy.count("UploadPart") >= 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_uploads(moto, &b).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the dropped upload was not aborted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!exists(moto, &b, "p/c/big").await);
}
