//! A throwaway PostgreSQL for the tests: ONE server per test binary, started on first use from
//! the server binaries of Debian's `postgresql` package (`/usr/lib/postgresql/<version>/bin`,
//! the highest version), and a fresh database per test ([`database_url`]).
//!
//! The server runs from a temporary directory (`initdb`, then `postgres` on a free loopback
//! port, fsync off: nothing here must survive a crash), as `nobody` when the tests run as root
//! (PostgreSQL refuses to run as root). It gets a parent-death signal, so it dies with the test
//! process however that ends; the directories of servers whose test process is gone are
//! removed by the next run. Without the binaries the PostgreSQL tests skip, saying how to
//! enable them ([`available`]) — except under `CI=true`, where that is a failure. A test binary
//! of its own can [`stop`] and [`restart`] the server (an outage; it is shared by the
//! binary's tests).
//!
//! The server offers TLS, with a certificate for `127.0.0.1` and `localhost` signed by a
//! certificate authority made for it ([`tls_root`], its certificate): the tests' URLs say
//! nothing of TLS, so their connections take sqlx's default (`sslmode=prefer`: encrypted when
//! the server offers it), as a user's would.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The running server: its port (the data directory is removed by a later run), and the
/// way to the thread that owns it ([`stop`], [`restart`]).
struct Server {
    port: u16,
    control: std::sync::Mutex<std::sync::mpsc::Sender<Control>>,
}

/// What the thread that owns the server can be asked to do; it answers on the sender.
enum Control {
    Stop(std::sync::mpsc::Sender<Result<(), String>>),
    Start(std::sync::mpsc::Sender<Result<(), String>>),
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

/// Where Debian's server binaries are, the highest version first.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Whether the PostgreSQL tests can run: false (with a message) when the server binaries are
/// missing; under `CI=true` their absence fails the test instead.
pub fn available() -> bool {
    if bin_dir().is_some() {
        return true;
    }
    let message = "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin; \
                   `apt-get install postgresql` to run the PostgreSQL tests";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{message} (required under CI=true)");
    }
    eprintln!("skipped: {message}");
    false
}

/// A fresh, empty database on the shared server, as a `postgres://` URL for `--database`.
pub async fn database_url() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let server = SERVER
        .get_or_init(start)
        .as_ref()
        .unwrap_or_else(|e| panic!("PostgreSQL did not start: {e}"));
    let name = format!("t_{}", NEXT.fetch_add(1, Ordering::SeqCst));
    let admin = format!("postgres://poold@127.0.0.1:{}/postgres", server.port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match as_admin(&admin, &[format!("create database {name}")]).await {
            Ok(()) => break,
            // Until the server accepts connections.
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot create database {name}: {e}"),
        }
    }
    format!("postgres://poold@127.0.0.1:{}/{name}", server.port)
}

/// Like [`database_url`], but the database's tables live in `dir` (a new tablespace there;
/// the directory is made and handed to the server's user): to put them on a filesystem of
/// the test's choosing. The server's WAL stays in its own directory.
pub async fn database_url_in(dir: &Path) -> String {
    std::fs::create_dir_all(dir).expect("tablespace directory");
    if let Some((uid, gid)) = server_user().expect("the server's user") {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chown the tablespace");
    }
    let url = database_url().await;
    let (base, name) = url.rsplit_once('/').expect("a database name");
    let space = format!("{name}_space");
    let statements = [
        format!("create tablespace {space} location '{}'", dir.display()),
        format!("alter database {name} set tablespace {space}"),
    ];
    as_admin(&format!("{base}/postgres"), &statements)
        .await
        .unwrap_or_else(|e| panic!("{statements:?}: {e}"));
    url
}

/// Run `statements` (outside a transaction, as `create database` must be) on `admin`.
async fn as_admin(admin: &str, statements: &[String]) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    for sql in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut conn)
            .await?;
    }
    conn.close().await
}

/// Start the server from a thread that lives as long as the test process: the parent-death
/// signal fires when the thread that spawned the child ends, not only the process. The thread
/// then stops and starts it again on request (see [`Control`]).
fn start() -> Result<Server, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (control, requests) = std::sync::mpsc::channel::<Control>();
    std::thread::spawn(move || {
        let mut server = match Launcher::new() {
            Ok(launcher) => launcher,
            Err(e) => return drop(tx.send(Err(e))),
        };
        let mut child = match server.launch() {
            Ok(child) => Some(child),
            Err(e) => return drop(tx.send(Err(e))),
        };
        let _ = tx.send(Ok(server.port));
        // Until the process ends (the senders live in a static).
        while let Ok(request) = requests.recv() {
            match request {
                Control::Stop(answer) => {
                    let stopped = match child.take() {
                        Some(running) => stop_child(running),
                        None => Ok(()),
                    };
                    let _ = answer.send(stopped);
                }
                Control::Start(answer) => {
                    let started = match &child {
                        Some(_) => Ok(()),
                        None => server.launch().map(|c| child = Some(c)),
                    };
                    let _ = answer.send(started);
                }
            }
        }
    });
    let port = rx
        .recv()
        .map_err(|_| "the thread starting PostgreSQL died".to_string())??;
    Ok(Server {
        port,
        control: std::sync::Mutex::new(control),
    })
}

/// Stop the shared server (a fast shutdown: open connections are cut), as an outage.
pub fn stop() {
    ask(Control::Stop);
}

/// Start the shared server again after [`stop`], on the same port and data.
pub fn restart() {
    ask(Control::Start);
}

fn ask(request: fn(std::sync::mpsc::Sender<Result<(), String>>) -> Control) {
    let server = SERVER
        .get()
        .and_then(|s| s.as_ref().ok())
        .expect("the PostgreSQL server was started");
    let (tx, rx) = std::sync::mpsc::channel();
    server
        .control
        .lock()
        .unwrap()
        .send(request(tx))
        .expect("the thread owning PostgreSQL is alive");
    rx.recv()
        .expect("an answer from the thread owning PostgreSQL")
        .unwrap_or_else(|e| panic!("{e}"));
}

/// SIGINT is PostgreSQL's fast shutdown.
fn stop_child(mut child: Child) -> Result<(), String> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).map_err(|e| e.to_string())?;
    child.wait().map_err(|e| e.to_string())?;
    Ok(())
}

/// How to run the server: its binaries, directory, user and port.
struct Launcher {
    bin: PathBuf,
    dir: PathBuf,
    data: PathBuf,
    user: Option<(u32, u32)>,
    port: u16,
}

impl Launcher {
    /// A new data directory (`initdb`) and a free port.
    fn new() -> Result<Self, String> {
        let bin = bin_dir().ok_or("no PostgreSQL server binaries")?;
        remove_stale_directories();
        let dir = log_dir();
        let data = dir.join("data");
        std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        // PostgreSQL refuses to run as root: then it runs as `nobody`, which owns its directory.
        let user = server_user()?;
        if let Some((uid, gid)) = user {
            for path in [&dir, &data] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .map_err(|e| format!("chown {}: {e}", path.display()))?;
            }
        }
        let launcher = Self {
            bin,
            dir,
            data,
            user,
            port: free_port()?,
        };
        let initdb = launcher
            .command("initdb")
            .args([
                "--auth=trust",
                "--username=poold",
                "--encoding=UTF8",
                "--no-sync",
            ])
            .arg("-D")
            .arg(&launcher.data)
            .stdout(Stdio::null())
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !initdb.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&initdb.stderr)
            ));
        }
        launcher.make_certificates()?;
        Ok(launcher)
    }

    /// A certificate authority ([`tls_root`]) and the server's certificate and key, signed by
    /// it, in the data directory (the key readable by the server's user alone, or PostgreSQL
    /// refuses it).
    fn make_certificates(&self) -> Result<(), String> {
        let (root, authority) = certificate_authority("poold tests' PostgreSQL authority")?;
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
                .map_err(|e| e.to_string())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params
            .signed_by(&key, &authority)
            .map_err(|e| e.to_string())?;
        let write = |path: PathBuf, text: String, mode: u32| -> Result<(), String> {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if let Some((uid, gid)) = self.user {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .map_err(|e| format!("chown {}: {e}", path.display()))?;
            }
            Ok(())
        };
        write(self.dir.join("ca.pem"), root, 0o644)?;
        write(self.data.join("server.crt"), cert.pem(), 0o644)?;
        write(self.data.join("server.key"), key.serialize_pem(), 0o600)
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Start `postgres` and wait until it listens.
    fn launch(&mut self) -> Result<Child, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))
            .map_err(|e| e.to_string())?;
        let mut command = self.command("postgres");
        command
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
                "-c",
                "ssl=on",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: the closure only calls prctl(2), which is async-signal-safe. It runs after the
        // uid change (which would clear the signal), just before exec.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGQUIT)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = command.spawn().map_err(|e| format!("postgres: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let log =
                    std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
                return Err(format!("postgres exited ({status}): {log}"));
            }
            if Instant::now() > deadline {
                return Err("postgres did not listen within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(child)
    }
}

/// The server's directory (its data, socket and log), where the tests' poold logs go too: it
/// is removed by the first run after this process ends.
pub fn log_dir() -> PathBuf {
    std::env::temp_dir().join(format!("poold-pg-{}", std::process::id()))
}

/// The certificate (PEM) of the authority that signed the server's certificate: what
/// `sslrootcert` names for `sslmode=verify-full`.
pub fn tls_root() -> PathBuf {
    log_dir().join("ca.pem")
}

/// A new certificate authority named `name`: its certificate (PEM) and what signs with it.
pub fn certificate_authority(
    name: &str,
) -> Result<(String, rcgen::Issuer<'static, rcgen::KeyPair>), String> {
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), rcgen::Issuer::new(params, key)))
}

/// The user and group the server runs as when the tests run as root (PostgreSQL refuses
/// root): `nobody`'s; otherwise none (this process's own).
fn server_user() -> Result<Option<(u32, u32)>, String> {
    if id("-u", None)? != 0 {
        return Ok(None);
    }
    Ok(Some((id("-u", Some("nobody"))?, id("-g", Some("nobody"))?)))
}

/// `id -u` (this process's user) or `id -g nobody` and the like.
fn id(flag: &str, user: Option<&str>) -> Result<u32, String> {
    let out = Command::new("id")
        .arg(flag)
        .args(user)
        .output()
        .map_err(|e| format!("id: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("id {flag} {user:?}: {e}"))
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// Directories of servers whose test process has ended.
fn remove_stale_directories() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("poold-pg-"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Run a query that returns one row of one text column holding JSON on the database at `url`,
/// and parse it (like `sqlite_json`): what poold left stored.
pub async fn query_json(url: &str, sql: &str) -> serde_json::Value {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to the test database");
    let (text,): (String,) = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    conn.close().await.expect("close the test database");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{sql} gave {text:?}: {e}"))
}
