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
