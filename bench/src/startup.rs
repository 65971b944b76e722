//! Section 12: how long the host takes to serve, and what it holds idle.

use crate::common::*;
use std::{io::Read as _, io::Write as _, path::Path, time::Instant};

/// One `GET /alive` over a fresh connection; whether it answered 200.
fn alive(addr: &str) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else { return false };
    let request = format!("GET /alive HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

/// Ten starts with `profile` (the bundled OSS plugins, a state directory with conversations
/// in it): start to the first `/alive` answered, and the RSS once idle.
pub(crate) fn startup(bin: &Path, profile: &Path) {
    println!("\n12. start-up with the bundled OSS plugins, 10 starts");
    let mut times = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let (mut child, addr) = spawn_host(bin, profile);
        while !alive(&addr) {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(std::time::Duration::from_millis(300));
        rss.push(rss_mib(child.id()).0);
        let _ = child.kill();
        let _ = child.wait();
    }
    times.sort_by(f64::total_cmp);
    rss.sort_by(f64::total_cmp);
    let (median, worst) = (times[times.len() / 2], times[times.len() - 1]);
    println!("   start to first /alive: median {median:.1} ms, worst {worst:.1} ms");
    target("start to first /alive, median of 10", format!("{median:.1} ms"), "<= 10 ms", median <= 10.0);
    let idle = rss[rss.len() / 2];
    target("RSS idle, median of 10", format!("{idle:.1} MiB"), "<= 15 MiB", idle <= 15.0);
}
