//! Shared by the sections: the load driver, process figures, starting the host.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

pub(crate) const HTTP_CONCURRENCY: usize = 16;

pub(crate) const HTTP_DURATION: Duration = Duration::from_secs(5);

pub(crate) const HTTP_MAX_REQUESTS: usize = 200_000;

/// One figure next to its target (issue "Performance"), for the closing table.
pub(crate) fn target(label: &str, value: String, target: &str, met: bool) {
    println!("   -> {label}: {value}   target {target}   {}", if met { "met" } else { "NOT MET" });
}

/// Leases a running host said it lost to another node (its log's `lease lost` warnings),
/// over every host this process started: in a cluster with no host killed or paused, each
/// is a false failover (a healthy owner's conversation taken over).
pub(crate) static LEASES_LOST: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub(crate) fn leases_lost() -> usize {
    LEASES_LOST.load(std::sync::atomic::Ordering::Relaxed)
}

/// When each `resuming a conversation` line of any host was read: a takeover done.
pub(crate) static RESUMED: std::sync::Mutex<Vec<Instant>> = std::sync::Mutex::new(Vec::new());

/// The takeovers read since `since`, in order.
pub(crate) fn resumed_since(since: Instant) -> Vec<Instant> {
    RESUMED.lock().unwrap().iter().copied().filter(|t| *t >= since).collect()
}

/// Redis's counters: commands processed, bytes in, bytes out.
pub(crate) async fn redis_counters(redis: &str) -> (u64, u64, u64) {
    let client = reqwest::Url::parse(redis).unwrap();
    let addr = format!("{}:{}", client.host_str().unwrap_or("127.0.0.1"), client.port().unwrap_or(6379));
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("Redis for the cluster benchmark");
    stream.write_all(b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n").await.unwrap();
    let mut text = String::new();
    let mut buf = vec![0u8; 65536];
    while !text.contains("total_net_output_bytes") || !text.ends_with("\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0)
    };
    (field("total_commands_processed:"), field("total_net_input_bytes:"), field("total_net_output_bytes:"))
}

/// Process CPU seconds (user + system) of `pid`, from /proc.
pub(crate) fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After the command name: state is field 0, utime 11, stime 12 (clock ticks, 100 per s).
    (ticks(11) + ticks(12)) / 100.0
}

pub(crate) fn cookie(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix(&format!("{name}=")).map(|rest| rest.split(';').next().unwrap().to_owned()))
        .unwrap_or_else(|| panic!("no {name} cookie"))
}

/// Starts the binary; returns the child and its address once it listens.
/// `POST /api/conversations` with `body`; the new conversation's id.
pub(crate) async fn start_conversation(http: &reqwest::Client, base: &str, body: serde_json::Value) -> String {
    let r: serde_json::Value =
        http.post(format!("{base}/api/conversations")).json(&body).send().await.unwrap().json().await.unwrap();
    r["conversation_id"].as_str().expect("conversation created").to_owned()
}

/// Waits (60 s at most) until the host at `addr` answers `/ready` (its stores migrated).
pub(crate) async fn until_ready(addr: &str) {
    let started = std::time::Instant::now();
    let client = reqwest::Client::new();
    while !client.get(format!("http://{addr}/ready")).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(started.elapsed() < Duration::from_secs(60), "{addr} was not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn spawn_host(bin: &Path, profile: &Path) -> (std::process::Child, String) {
    spawn_host_env(bin, profile, &[])
}

pub(crate) fn spawn_host_env(bin: &Path, profile: &Path, env: &[(&str, String)]) -> (std::process::Child, String) {
    let mut command = Command::new(bin);
    command.arg("--config").arg(profile).envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    spawn_listening(command)
}

/// The log filter that keeps plugins' info lines (which conversations a node took over).
pub(crate) const PLUGIN_INFO: &str = "warn,oh_host::cli=info,plugin=info";

/// Starts a process that prints `listening on http://<addr>` on stderr; returns it and the address.
pub(crate) fn spawn_listening(mut command: Command) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader, Write as _};
    let bin = PathBuf::from(command.get_program());
    // `OH_BENCH_LOGS=<dir>`: each host's log goes on to `<dir>/<pid>.log`, plugins' info lines
    // included (e.g. which path took a conversation over in section 6).
    let logs = std::env::var_os("OH_BENCH_LOGS").map(PathBuf::from);
    let filter = if logs.is_some() { PLUGIN_INFO } else { "warn,oh_host::cli=info" };
    // A caller's own filter stays (section 6 reads plugins' info lines).
    if !command.get_envs().any(|(k, _)| k == "RUST_LOG") {
        command.env("RUST_LOG", filter);
    }
    let mut child = command
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("oh-host exited before listening").unwrap();
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let mut sink: Box<dyn std::io::Write + Send> = match logs {
        Some(dir) => Box::new(std::fs::File::create(dir.join(format!("{}.log", child.id()))).unwrap()),
        None => Box::new(std::io::sink()),
    };
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line.contains("lease lost to another node") {
                LEASES_LOST.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if line.contains("cluster: resuming a conversation") {
                RESUMED.lock().unwrap().push(Instant::now());
            }
            let _ = writeln!(sink, "{line}");
        }
    });
    (child, addr)
}

/// CPU seconds every process of the machine spent (all but idle and I/O wait), from
/// /proc/stat: with PostgreSQL and Redis on the same cores, what the hosts' own figure misses.
pub(crate) fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else { return 0.0 };
    // user nice system idle iowait irq softirq steal (clock ticks, 100 per s)
    let ticks: Vec<f64> = cpu.split_whitespace().skip(1).take(8).filter_map(|v| v.parse().ok()).collect();
    ticks.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum::<f64>() / 100.0
}

/// `VmRSS` and `VmHWM` (peak) of a process, in MiB.
pub(crate) fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

pub(crate) const TOKENS: usize = 50;

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Times `calls` sequential awaits of `call()`; µs per call.
pub(crate) async fn per_call<F, Fut>(calls: u32, mut call: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..calls / 10 {
        call().await; // warm up
    }
    let start = Instant::now();
    for _ in 0..calls {
        call().await;
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(calls)
}

/// Drives `requests` (a fresh request per call) from `HTTP_CONCURRENCY` connections for
/// `HTTP_DURATION`; every answer must be 2xx. Returns (count, elapsed, sorted latencies).
pub(crate) async fn load(
    make: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder + Send + Sync + Clone + 'static,
) -> Stats {
    let client = reqwest::Client::builder().pool_max_idle_per_host(HTTP_CONCURRENCY).build().unwrap();
    let start = Instant::now();
    let deadline = start + HTTP_DURATION;
    let mut tasks = Vec::new();
    for _ in 0..HTTP_CONCURRENCY {
        let (client, make) = (client.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline && lat.len() < HTTP_MAX_REQUESTS / HTTP_CONCURRENCY {
                let t = Instant::now();
                let r = make(&client).send().await.expect("request");
                assert!(r.status().is_success(), "{}", r.status());
                let _ = r.bytes().await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    Stats { elapsed: start.elapsed(), latencies: all }
}

pub(crate) struct Stats {
    pub(crate) elapsed: Duration,
    pub(crate) latencies: Vec<Duration>,
}

impl Stats {
    pub(crate) fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p` quantile of the latencies, in µs.
    pub(crate) fn pct_us(&self, p: f64) -> f64 {
        let l = &self.latencies;
        l[((l.len() as f64 * p) as usize).min(l.len() - 1)].as_secs_f64() * 1e6
    }

    pub(crate) fn p99_ms(&self) -> f64 {
        self.pct_us(0.99) / 1e3
    }

    pub(crate) fn tap_row(self, label: &str) -> Self {
        self.row(label);
        self
    }

    pub(crate) fn row(&self, label: &str) {
        println!(
            "   {label:<38} {:>8.0} req/s   p50 {:>6.0} µs   p99 {:>6.0} µs   ({} requests)",
            self.rate(),
            self.pct_us(0.5),
            self.pct_us(0.99),
            self.latencies.len()
        );
    }
}
