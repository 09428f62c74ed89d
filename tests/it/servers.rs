//! Real servers for the notify tests, on loopback: an SMTP server (aiosmtpd, from Python)
//! that writes each message it receives to a directory as JSON, and an HTTP receiver
//! (a std TcpListener thread) that answers with scripted statuses and keeps what it got.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// aiosmtpd's controller with a handler that writes every message as `NNN.json`
/// (envelope, decoded headers and body, TLS and login) into a directory.
const SMTP_SERVER: &str = r#"
import email, email.policy, json, logging, os, ssl, sys, warnings
warnings.simplefilter("ignore")
logging.getLogger("mail.log").setLevel(logging.CRITICAL)
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

outdir, port, user, password, cert, key = sys.argv[1:7]

class Handler:
    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "tls": session.ssl is not None,
            "authenticated": bool(session.authenticated),
            "login": session.auth_data.decode() if isinstance(session.auth_data, bytes) else None,
            "subject": str(msg["subject"]),
            "from": str(msg["from"]),
            "to": str(msg["to"]),
            "cc": str(msg["cc"]) if msg["cc"] else None,
            "content_type": msg.get_content_type(),
            "charset": msg.get_content_charset(),
            "body": msg.get_content(),
            "raw": raw.decode("utf-8", "replace"),
        }
        n = len([f for f in os.listdir(outdir) if f.endswith(".json")])
        path = os.path.join(outdir, "%03d.json" % n)
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(path + ".tmp", path)
        return "250 Message accepted for delivery"

def authenticator(server, session, envelope, mechanism, auth_data):
    if isinstance(auth_data, LoginPassword) and auth_data.login == user.encode() and auth_data.password == password.encode():
        return AuthResult(success=True, auth_data=auth_data.login)
    return AuthResult(success=False, handled=False)

kwargs = {}
if user:
    kwargs.update(authenticator=authenticator, auth_require_tls=bool(cert))
if cert:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    kwargs.update(tls_context=context, require_starttls=True)
controller = Controller(Handler(), hostname="127.0.0.1", port=int(port), **kwargs)
controller.start()
print("READY", flush=True)
sys.stdin.read()
controller.stop()
"#;

/// A Python 3 that can import aiosmtpd: `$STAGEHAND_TEST_PYTHON`, `python3`, then
/// Debian's `/usr/bin/python3` (where `apt-get install python3-aiosmtpd` puts it).
fn python_with_aiosmtpd() -> String {
    let candidates: Vec<String> = std::env::var("STAGEHAND_TEST_PYTHON")
        .into_iter()
        .chain(["python3".to_string(), "/usr/bin/python3".to_string()])
        .collect();
    for py in &candidates {
        let ok = Command::new(py)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return py.clone();
        }
    }
    panic!(
        "the notify tests need the aiosmtpd SMTP server and none of {candidates:?} can import it: \
         run scripts/ensure-deps.sh, or `apt-get install python3-aiosmtpd` (Debian), \
         or `python3 -m pip install aiosmtpd`"
    );
}

/// A self-signed certificate for 127.0.0.1 and localhost (openssl): `(cert, key)`.
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// An aiosmtpd server on 127.0.0.1; stopped (and waited for) on drop.
pub struct SmtpServer {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

pub struct SmtpOptions<'a> {
    /// Require this login (AUTH PLAIN/LOGIN).
    pub login: Option<(&'a str, &'a str)>,
    /// Offer STARTTLS with this certificate and key, and require it.
    pub tls: Option<(&'a Path, &'a Path)>,
}

impl SmtpServer {
    pub fn start(dir: &Path, opts: SmtpOptions) -> Self {
        let python = python_with_aiosmtpd();
        let mail_dir = dir.join("mail");
        std::fs::create_dir_all(&mail_dir).expect("mail dir");
        let script = dir.join("smtp_server.py");
        std::fs::write(&script, SMTP_SERVER).expect("write the SMTP server script");
        let (user, password) = opts.login.unwrap_or(("", ""));
        let (cert, key) = opts
            .tls
            .map(|(c, k)| (c.display().to_string(), k.display().to_string()))
            .unwrap_or_default();
        let port = free_port();
        let mut child = Command::new(&python)
            .arg(&script)
            .arg(&mail_dir)
            .arg(port.to_string())
            .args([user, password, &cert, &key])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the SMTP server");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read from the SMTP server");
        assert_eq!(line.trim(), "READY", "the SMTP server started");
        Self {
            child,
            port,
            dir: mail_dir,
        }
    }

    /// A server with no login and no TLS.
    pub fn open(dir: &Path) -> Self {
        Self::start(
            dir,
            SmtpOptions {
                login: None,
                tls: None,
            },
        )
    }

    /// A server requiring the login `stagehand` with `password`, without TLS.
    pub fn with_login(dir: &Path, password: &str) -> Self {
        Self::start(
            dir,
            SmtpOptions {
                login: Some(("stagehand", password)),
                tls: None,
            },
        )
    }

    /// Messages received so far, in order.
    pub fn messages(&self) -> Vec<Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .expect("mail dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| {
                serde_json::from_str(&std::fs::read_to_string(f).expect("read message"))
                    .expect("message JSON")
            })
            .collect()
    }

    /// Waits (up to 10 s) for `n` messages.
    pub fn wait_for(&self, n: usize) -> Vec<Value> {
        let t0 = Instant::now();
        loop {
            let m = self.messages();
            if m.len() >= n || t0.elapsed() > Duration::from_secs(10) {
                return m;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request the HTTP receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub request_line: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 receiver on 127.0.0.1 that answers the n-th request with the n-th
/// status of its script (the last one after that), `Connection: close`.
pub struct HttpReceiver {
    pub port: u16,
    pub received: Arc<Mutex<Vec<Received>>>,
}

impl HttpReceiver {
    pub fn start(statuses: &[u16]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the HTTP receiver");
        let port = listener.local_addr().expect("addr").port();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let statuses = statuses.to_vec();
        let store = received.clone();
        // The thread ends with the test process; it serves a bounded number of requests.
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate().take(100) {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let Some(req) = read_request(&mut stream) else {
                    continue;
                };
                store.lock().expect("lock").push(req);
                let status = statuses.get(n).or(statuses.last()).copied().unwrap_or(200);
                let body = if status < 300 { "ok" } else { "try later" };
                let reason = match status {
                    200 => "OK",
                    404 => "Not Found",
                    503 => "Service Unavailable",
                    _ => "Status",
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.flush();
            }
        });
        Self { port, received }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn read_request(stream: &mut std::net::TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        request_line: request_line.trim_end().to_string(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
