//! Redis for tests: a key prefix per test on the machine's server (127.0.0.1:6379, or
//! `REDIS_HOST`/`REDIS_PORT`), and a server of a test's own for outage tests.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The machine's Redis.
pub fn url() -> String {
    let host = std::env::var("REDIS_HOST").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "127.0.0.1".to_owned());
    let port = std::env::var("REDIS_PORT").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "6379".to_owned());
    format!("redis://{host}:{port}/0")
}

/// Runs one command with `redis-cli` on the machine's Redis; its output.
pub fn cli(args: &[&str]) -> String {
    let url = url();
    let out = Command::new("redis-cli").arg("-u").arg(&url).args(args).output().expect("redis-cli runs");
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A key prefix no other test uses.
pub fn prefix(what: &str) -> String {
    let mut bytes = [0u8; 4];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut bytes).unwrap();
    format!("ohtest:{what}:{}:", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A `redis-server` of the test's own on a free port, without persistence (a restart loses
/// everything, the harder case).
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    pub fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = OwnRedis { port, child: None };
        redis.start_again();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start_again(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (run `make services`)");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not start on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (its data is gone).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP relay to a Redis that holds back each of its answers for a delay set at run time: a
/// node on the far side of a slow network link, for as long as the test wants it slow.
pub struct SlowLink {
    port: u16,
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowLink {
    /// Relays 127.0.0.1:<port> to `redis_url`'s server (no delay yet).
    pub async fn start(redis_url: &str) -> SlowLink {
        let target = redis_url.trim_start_matches("redis://").split('/').next().unwrap().to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let delay_ms = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let delay = delay_ms.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else { continue };
                tokio::spawn(relay(client, server, delay.clone()));
            }
        });
        SlowLink { port, delay_ms, task }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// From now on, every answer from Redis reaches its client `delay` late.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(delay.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Requests go through at once; each read of answers waits the link's delay before it is
/// passed on.
async fn relay(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match server_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let delay = delay_ms.load(std::sync::atomic::Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if client_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    requests.abort();
}
