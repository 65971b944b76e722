//! A fresh PostgreSQL database per test on the machine's server (127.0.0.1:5432, or
//! `DB_HOST`/`DB_PORT`/`DB_USER`/`DB_PASS`), created and dropped by the harness, so tests run
//! in parallel without seeing each other's rows.

use sqlx::{Connection as _, PgConnection};

pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}

fn server_url(db: &str) -> String {
    let host = env_or("DB_HOST", "127.0.0.1");
    let port = env_or("DB_PORT", "5432");
    let user = env_or("DB_USER", "postgres");
    match std::env::var("DB_PASS").ok().filter(|p| !p.is_empty()) {
        Some(pass) => format!("postgres://{user}:{pass}@{host}:{port}/{db}"),
        None => format!("postgres://{user}@{host}:{port}/{db}"),
    }
}

impl TestDb {
    pub async fn create() -> TestDb {
        let mut bytes = [0u8; 6];
        getrandom_fill(&mut bytes);
        let name = format!("oh_test_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let admin_url = server_url("postgres");
        let mut conn = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {admin_url}: {e} (run `make services`)"));
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
        TestDb { url: server_url(&name), name, admin_url }
    }

    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap()
    }
}

fn getrandom_fill(buf: &mut [u8]) {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf)).expect("/dev/urandom");
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop on a thread of its own: Drop may run inside a runtime.
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok(mut c) = PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut c).await;
                }
            });
        })
        .join();
    }
}

/// A PostgreSQL server of a test's own (initdb + pg_ctl on a free port in a temp dir), for
/// tests that stop and restart it: the shared server the other tests use is never touched.
pub struct OwnPostgres {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    pub port: u16,
}

fn as_root() -> bool {
    std::process::Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false)
}

impl OwnPostgres {
    /// The newest installed server's `bin` directory.
    fn bin_dir() -> std::path::PathBuf {
        let mut versions: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql (run `make services`)")
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .collect();
        versions.sort();
        versions.pop().expect("no initdb under /usr/lib/postgresql/*/bin")
    }

    /// Runs a server binary, as the `postgres` user when we are root (initdb refuses root).
    fn run(&self, tool: &str, args: &[&str]) -> std::process::Output {
        let path = self.bin.join(tool);
        let mut cmd = if as_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            std::process::Command::new(&path)
        };
        let out = cmd.args(args).output().unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn start() -> OwnPostgres {
        let dir = tempfile::tempdir().unwrap();
        if as_root() {
            let status = std::process::Command::new("chown").args(["-R", "postgres"]).arg(dir.path()).status().unwrap();
            assert!(status.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pg = OwnPostgres { dir, bin: Self::bin_dir(), port };
        let data = pg.data();
        pg.run("initdb", &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"]);
        pg.start_again();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start_again(&self) {
        let options =
            format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on", self.port, self.dir.path().display());
        let log = self.dir.path().join("server.log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-o", &options, "-l", &log, "-w", "start"]);
    }

    /// Stops it (fast: connections are cut, committed data is kept).
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let path = self.bin.join("pg_ctl");
        let data = self.data();
        let mut cmd = if as_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            std::process::Command::new(&path)
        };
        let _ = cmd.args(["-D", &data, "-m", "immediate", "stop"]).output();
    }
}
