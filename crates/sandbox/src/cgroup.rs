//! A cgroup per sandboxed command: it and everything it starts share one bound on processes
//! (`pids.max`: a fork bomb fails to fork instead of filling the machine) and one on memory
//! (all its processes together, the files it writes to its RAM-backed `/tmp` included: a
//! per-process rlimit lets two processes take twice the bound). cgroup v1 (a hierarchy per
//! controller, `/sys/fs/cgroup/{pids,memory}/oh-host`) and v2 (`/sys/fs/cgroup/oh-host` with
//! the controllers enabled) alike. Removed when dropped, after killing what is left in it.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::OnceLock,
    time::Duration,
};

/// What a command's cgroup bounds; 0 is no bound.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub max_processes: u64,
    pub memory_bytes: u64,
}

/// Where the commands' cgroups are made, per controller.
#[derive(Clone, Debug)]
enum Layout {
    /// One directory per controller.
    V1 { pids: Option<PathBuf>, memory: Option<PathBuf> },
    /// One directory with the controllers that could be enabled.
    V2 { dir: PathBuf, pids: bool, memory: bool },
}

/// A command's cgroup (one directory per hierarchy it is in).
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    memory: Option<PathBuf>,
    v2: bool,
}

fn layout() -> Result<Layout, String> {
    static LAYOUT: OnceLock<Result<Layout, String>> = OnceLock::new();
    LAYOUT.get_or_init(find_layout).clone()
}

fn make(dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    Ok(dir.to_path_buf())
}

fn find_layout() -> Result<Layout, String> {
    let root = Path::new("/sys/fs/cgroup");
    let v1 = |controller: &str| {
        let base = root.join(controller);
        base.join("cgroup.procs").exists().then(|| make(&base.join("oh-host")))
    };
    let (pids, memory) = (v1("pids"), v1("memory"));
    if pids.is_some() || memory.is_some() {
        return Ok(Layout::V1 { pids: pids.transpose()?, memory: memory.transpose()? });
    }
    let available = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let has = |c: &str| available.split_whitespace().any(|a| a == c);
    if !has("pids") && !has("memory") {
        return Err("no pids or memory cgroup controller is mounted under /sys/fs/cgroup".to_owned());
    }
    let dir = make(&root.join("oh-host"))?;
    let enabled = |c: &str| {
        has(c) && {
            let _ = std::fs::write(root.join("cgroup.subtree_control"), format!("+{c}"));
            std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")).is_ok()
        }
    };
    let (pids, memory) = (enabled("pids"), enabled("memory"));
    Ok(Layout::V2 { dir, pids, memory })
}

impl Cgroup {
    /// A new cgroup with `limits`, in every hierarchy a limit needs; an error names what is
    /// missing (a controller, or the right to write the hierarchy).
    pub fn create(limits: Limits) -> Result<Cgroup, String> {
        let name = random_name();
        let want_pids = limits.max_processes > 0;
        let want_memory = limits.memory_bytes > 0;
        let mut cgroup = Cgroup { dirs: Vec::new(), memory: None, v2: false };
        let write = |dir: &Path, file: &str, value: String| {
            std::fs::write(dir.join(file), value).map_err(|e| format!("cannot set {file} in {}: {e}", dir.display()))
        };
        match layout()? {
            Layout::V1 { pids, memory } => {
                if want_pids {
                    let base = pids.ok_or("no pids cgroup controller is mounted (cgroup v1)")?;
                    let dir = make(&base.join(&name))?;
                    cgroup.dirs.push(dir.clone());
                    write(&dir, "pids.max", limits.max_processes.to_string())?;
                }
                if want_memory {
                    let base = memory.ok_or("no memory cgroup controller is mounted (cgroup v1)")?;
                    let dir = make(&base.join(&name))?;
                    cgroup.dirs.push(dir.clone());
                    write(&dir, "memory.limit_in_bytes", limits.memory_bytes.to_string())?;
                    // No swap beyond the bound, where swap is accounted.
                    if dir.join("memory.memsw.limit_in_bytes").exists() {
                        write(&dir, "memory.memsw.limit_in_bytes", limits.memory_bytes.to_string())?;
                    }
                    cgroup.memory = Some(dir);
                }
            }
            Layout::V2 { dir: base, pids, memory } => {
                if (want_pids && !pids) || (want_memory && !memory) {
                    return Err(format!(
                        "the {} controller cannot be enabled in {}",
                        if want_pids && !pids { "pids" } else { "memory" },
                        base.display()
                    ));
                }
                if want_pids || want_memory {
                    let dir = make(&base.join(&name))?;
                    cgroup.dirs.push(dir.clone());
                    cgroup.v2 = true;
                    if want_pids {
                        write(&dir, "pids.max", limits.max_processes.to_string())?;
                    }
                    if want_memory {
                        write(&dir, "memory.max", limits.memory_bytes.to_string())?;
                        let _ = write(&dir, "memory.swap.max", "0".to_owned());
                        cgroup.memory = Some(dir);
                    }
                }
            }
        }
        Ok(cgroup)
    }

    /// Whether commands can be given cgroups with `limits` here (root, or a delegated
    /// hierarchy). Also removes the empty cgroups a host killed with -9 left behind (over ten
    /// minutes old: a command's shell joins its cgroup within milliseconds of its making).
    pub fn available(limits: Limits) -> Result<(), String> {
        let bases: Vec<PathBuf> = match layout()? {
            Layout::V1 { pids, memory } => pids.into_iter().chain(memory).collect(),
            Layout::V2 { dir, .. } => vec![dir],
        };
        for base in bases {
            for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
                let dir = entry.path();
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > Duration::from_secs(600)));
                let empty = std::fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty());
                if dir.is_dir() && stale && empty {
                    let _ = std::fs::remove_dir(&dir);
                }
            }
        }
        let probe = Limits {
            max_processes: if limits.max_processes > 0 { 8 } else { 0 },
            memory_bytes: if limits.memory_bytes > 0 { 64 << 20 } else { 0 },
        };
        Self::create(probe).map(drop)
    }

    /// The `cgroup.procs` files a process writes its pid to, to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The processes in it now.
    pub fn pids(&self) -> Vec<String> {
        let mut pids: Vec<String> = Vec::new();
        for file in self.procs_files() {
            for pid in std::fs::read_to_string(file).unwrap_or_default().split_whitespace() {
                if !pids.iter().any(|p| p == pid) {
                    pids.push(pid.to_owned());
                }
            }
        }
        pids
    }

    /// Whether the kernel killed a process of it for going over its memory bound.
    pub fn out_of_memory(&self) -> bool {
        let Some(dir) = &self.memory else { return false };
        let (file, key) = if self.v2 { ("memory.events", "oom_kill") } else { ("memory.oom_control", "oom_kill") };
        std::fs::read_to_string(dir.join(file))
            .unwrap_or_default()
            .lines()
            .any(|l| l.strip_prefix(key).and_then(|n| n.trim().parse::<u64>().ok()).is_some_and(|n| n > 0))
            || (!self.v2 && std::fs::read_to_string(dir.join("memory.failcnt")).is_ok_and(|n| n.trim() != "0"))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // A cgroup can only go once empty.
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                self.dirs.retain(|d| std::fs::remove_dir(d).is_err() && d.exists());
                if self.dirs.is_empty() {
                    return;
                }
            } else {
                let _ = std::process::Command::new("kill").arg("-KILL").args(&pids).stderr(Stdio::null()).status();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(cgroups = ?self.dirs, "a command's cgroup could not be removed");
    }
}

/// 16 hex digits: random, or from the time and pid when the system has no randomness.
fn random_name() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut buf = [0u8; 8];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (nanos >> (i * 8)) as u8 ^ (std::process::id() >> (i % 4 * 8)) as u8;
    }
    let mut extra = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut extra)).is_ok() {
        for (b, e) in buf.iter_mut().zip(extra) {
            *b ^= e;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
