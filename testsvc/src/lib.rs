//! Private MariaDB and Redis servers for tests and benchmarks (DESIGN.md §7): each runs from
//! the machine's server binary on a free loopback port with its files in a temp directory, so
//! tests never depend on, or disturb, the machine-wide services.
//!
//! **Missing binaries:** `mariadb()` and `redis()` return `None` after saying so loudly on
//! stderr, and the caller skips — unless `WEIR_REQUIRE_SERVICES=1` (set by the README's test
//! command), when they panic instead.
//!
//! **Lifetimes:** one MariaDB per process, started on first use and shared (tests take a
//! database each from `MariaDb::fresh_database_name`); it is killed at process exit (`atexit`)
//! and, if the process dies abruptly, by the kernel (`PR_SET_PDEATHSIG` against a spawner
//! thread that never exits). A Redis is per caller and stops when dropped.
//!
//! The MariaDB runs with `log_bin`, `binlog_format=ROW` and `binlog_row_image=FULL` (the CDC
//! source needs them), the UTC time zone, and a user `weir`/`weir` with every privilege,
//! replication included. `mariadb_private` starts one of the caller's own (with or without a
//! binary log) that stops on drop.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// Longest wait for a server to accept connections.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The user the private MariaDB grants everything to.
pub const MARIADB_USER: &str = "weir";
/// That user's password.
pub const MARIADB_PASSWORD: &str = "weir";

/// Whether a missing service is a failure (`WEIR_REQUIRE_SERVICES=1`) rather than a skip.
pub fn services_required() -> bool {
    std::env::var("WEIR_REQUIRE_SERVICES").is_ok_and(|value| value == "1")
}

/// Says loudly that `service` is unavailable; panics when services are required.
fn unavailable(service: &str, why: &str) {
    let message = format!("{service} is unavailable: {why}");
    if services_required() {
        panic!("{message} (WEIR_REQUIRE_SERVICES=1; install it, e.g. `apt-get install mariadb-server redis-server`)");
    }
    eprintln!("\n*** SKIPPING: {message}; set WEIR_REQUIRE_SERVICES=1 to make this a failure ***\n");
}

/// The first of `candidates` that is an executable file or is found on `PATH`.
fn find_binary(candidates: &[&str]) -> Option<PathBuf> {
    let path_dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    for candidate in candidates {
        let candidate = Path::new(candidate);
        if candidate.is_absolute() {
            if candidate.is_file() {
                return Some(candidate.to_path_buf());
            }
            continue;
        }
        for dir in &path_dirs {
            let full = dir.join(candidate);
            if full.is_file() {
                return Some(full);
            }
        }
    }
    None
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

/// How a server shows it is ready: it answers on a fresh connection as its protocol says (a
/// bare TCP connect succeeds while MariaDB still runs its init file, and could reach another
/// kind of process that took the port).
type Greets = fn(&mut TcpStream) -> bool;

/// MariaDB sends its handshake first: packet sequence 0, protocol version 10.
fn mariadb_greets(stream: &mut TcpStream) -> bool {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).is_ok() && head[3] == 0 && head[4] == 10
}

/// Redis answers `PING` with `+PONG`.
fn redis_greets(stream: &mut TcpStream) -> bool {
    let mut answer = [0u8; 5];
    stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut answer).is_ok() && &answer == b"+PONG"
}

/// Waits until `port` accepts a connection on which the server `greets`, or `child` exits,
/// or the timeout passes.
fn wait_until_listening(child: &mut Child, port: u16, log: &Path, service: &str, greets: Greets) -> Result<(), String> {
    let started = Instant::now();
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(200)) {
            let answered = stream.set_read_timeout(Some(Duration::from_secs(2))).is_ok() && greets(&mut stream);
            // And our child still running: one whose bind failed because another process took
            // the port has exited by now, unless it has not tried to bind yet.
            if answered && matches!(child.try_wait(), Ok(None)) {
                return Ok(());
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{service} exited with {status} before listening; log {}:\n{}",
                log.display(),
                tail(log)
            ));
        }
        if started.elapsed() > STARTUP_TIMEOUT {
            return Err(format!(
                "{service} not answering on port {port} after {STARTUP_TIMEOUT:?}; log:\n{}",
                tail(log)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Runs `command` as a child that the kernel kills when the spawning thread dies. The spawn
/// happens on one thread that never exits, so the child lives until the process does.
fn spawn_tied_to_process(mut command: Command) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (jobs, incoming) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("weir-testsvc-spawner".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
                // The senders live in a static: this loop never ends, so the thread (the
                // children's "parent" for PR_SET_PDEATHSIG) lives as long as the process.
            })
            .expect("spawn the spawner thread");
        Mutex::new(jobs)
    });
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply, response) = mpsc::channel();
    spawner.lock().expect("spawner lock").send((command, reply)).expect("spawner thread alive");
    response.recv().expect("spawner thread replied")
}

/// Starts the server `command_for(port)` builds on a free port and waits until it listens;
/// a port taken between choosing and binding makes the server exit, so a few are tried.
fn start_on_free_port(
    server: &Path,
    name: &str,
    log: &Path,
    greets: Greets,
    mut command_for: impl FnMut(u16) -> Command,
) -> Result<(u16, Child), String> {
    let mut last_error = String::new();
    for _ in 0..5 {
        let port = free_port();
        let mut child =
            spawn_tied_to_process(command_for(port)).map_err(|e| format!("cannot run {}: {e}", server.display()))?;
        match wait_until_listening(&mut child, port, log, name, greets) {
            Ok(()) => return Ok((port, child)),
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                last_error = error;
            }
        }
    }
    Err(last_error)
}

/// A private MariaDB server.
pub struct MariaDb {
    port: u16,
    pid: u32,
    dir: PathBuf,
}

static MARIADB: OnceLock<Option<MariaDb>> = OnceLock::new();

/// A MariaDB of the caller's own, stopped on drop: without a binary log when `binlog` is
/// false (for tests of what a CDC source says about such a server). `None` (after a loud
/// message) when the binaries are missing and services are not required.
pub fn mariadb_private(binlog: bool) -> Option<PrivateMariaDb> {
    match MariaDb::start(binlog) {
        Ok(server) => Some(PrivateMariaDb(server)),
        Err(why) => {
            unavailable("MariaDB", &why);
            None
        }
    }
}

/// A MariaDB that stops when dropped.
pub struct PrivateMariaDb(MariaDb);

impl std::ops::Deref for PrivateMariaDb {
    type Target = MariaDb;
    fn deref(&self) -> &MariaDb {
        &self.0
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// The process's private MariaDB, started on first call; `None` (after a loud message) when
/// the server binaries are missing and services are not required.
pub fn mariadb() -> Option<&'static MariaDb> {
    MARIADB
        .get_or_init(|| match MariaDb::start(true) {
            Ok(server) => {
                // SAFETY: registering a plain extern "C" function.
                unsafe { libc::atexit(stop_mariadb_at_exit) };
                Some(server)
            }
            Err(why) => {
                unavailable("MariaDB", &why);
                None
            }
        })
        .as_ref()
}

extern "C" fn stop_mariadb_at_exit() {
    if let Some(Some(server)) = MARIADB.get() {
        server.stop();
    }
}

impl MariaDb {
    fn start(binlog: bool) -> Result<MariaDb, String> {
        let server = find_binary(&["/usr/sbin/mariadbd", "mariadbd", "/usr/sbin/mysqld"])
            .ok_or("no `mariadbd` binary (Debian package mariadb-server)")?;
        let install = find_binary(&["mariadb-install-db", "mysql_install_db"])
            .ok_or("no `mariadb-install-db` binary (Debian package mariadb-server)")?;
        let dir = tempfile::Builder::new()
            .prefix("weir-mariadb-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir: {e}"))?
            .keep();
        let data = dir.join("data");
        let install_log = dir.join("install.log");
        let log_file = std::fs::File::create(&install_log).map_err(|e| e.to_string())?;
        let status = Command::new(&install)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .args(run_as_root_args())
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file)
            .status()
            .map_err(|e| format!("cannot run {}: {e}", install.display()))?;
        if !status.success() {
            return Err(format!("{} failed ({status}):\n{}", install.display(), tail(&install_log)));
        }
        let init = dir.join("init.sql");
        std::fs::write(
            &init,
            format!(
                "CREATE USER IF NOT EXISTS '{MARIADB_USER}'@'%' IDENTIFIED BY '{MARIADB_PASSWORD}';\n\
                 GRANT ALL PRIVILEGES ON *.* TO '{MARIADB_USER}'@'%' WITH GRANT OPTION;\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let error_log = dir.join("error.log");
        let (port, child) = start_on_free_port(&server, "mariadbd", &error_log, mariadb_greets, |port| {
            let mut command = Command::new(&server);
            command
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
                .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
                .arg(format!("--log-error={}", error_log.display()))
                .arg(format!("--port={port}"))
                .arg("--bind-address=127.0.0.1")
                .args(binlog_args(&data, binlog))
                .arg("--server-id=1")
                .arg("--default-time-zone=+00:00")
                .arg("--skip-name-resolve")
                .arg(format!("--init-file={}", init.display()))
                .arg("--innodb-buffer-pool-size=128M")
                .arg("--innodb-log-file-size=48M")
                .arg("--max-connections=200")
                .arg("--character-set-server=utf8mb4")
                .args(run_as_root_args())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            command
        })?;
        Ok(MariaDb { port, pid: child.id(), dir })
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A `mysql://` URL for the `weir` user, on `database` (empty: none).
    pub fn url(&self, database: &str) -> String {
        format!("mysql://{MARIADB_USER}:{MARIADB_PASSWORD}@127.0.0.1:{}/{database}", self.port)
    }

    /// A database name no other caller in this process gets (the caller creates it).
    pub fn fresh_database_name(&self, prefix: &str) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        format!("{prefix}_{}", NEXT.fetch_add(1, Ordering::Relaxed))
    }

    fn stop(&self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A binary log with full row images, or none.
fn binlog_args(data: &Path, binlog: bool) -> Vec<String> {
    if !binlog {
        return vec!["--skip-log-bin".into()];
    }
    vec![
        format!("--log-bin={}", data.join("binlog").display()),
        "--binlog-format=ROW".into(),
        "--binlog-row-image=FULL".into(),
    ]
}

/// `--user=root` when running as root (the servers refuse root otherwise).
fn run_as_root_args() -> Vec<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 { vec!["--user=root"] } else { Vec::new() }
}

/// A private Redis server, stopped on drop.
pub struct Redis {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

/// Starts a private Redis; `None` (after a loud message) when `redis-server` is missing and
/// services are not required.
pub fn redis() -> Option<Redis> {
    match Redis::start() {
        Ok(server) => Some(server),
        Err(why) => {
            unavailable("Redis", &why);
            None
        }
    }
}

impl Redis {
    fn start() -> Result<Redis, String> {
        let server = find_binary(&["redis-server", "/usr/bin/redis-server"])
            .ok_or("no `redis-server` binary (Debian package redis-server)")?;
        let dir = tempfile::Builder::new().prefix("weir-redis-").tempdir().map_err(|e| e.to_string())?;
        let log = dir.path().join("redis.log");
        let (port, child) = start_on_free_port(&server, "redis-server", &log, redis_greets, |port| {
            let mut command = Command::new(&server);
            command
                .arg("--port")
                .arg(port.to_string())
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .arg("--dir")
                .arg(dir.path())
                .arg("--logfile")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            command
        })?;
        Ok(Redis { port, child, _dir: dir })
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A `redis://` URL for this server.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
