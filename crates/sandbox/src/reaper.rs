//! Processes that die with the host: a PID namespace whose first process is killed when the
//! thread that started it ends (`setpriv --pdeathsig`), so everything started inside it,
//! daemons included, ends with it.

use std::process::Stdio;

/// How a local command is put in a PID namespace that dies with the host: `unshare` as root,
/// else in a user namespace of its own; None when neither works here (then a command's
/// background processes may outlive it, and a host killed with -9).
pub fn local_reaper() -> Option<&'static [&'static str]> {
    static REAPER: std::sync::OnceLock<Option<&'static [&'static str]>> = std::sync::OnceLock::new();
    *REAPER.get_or_init(|| {
        const ROOT: &[&str] = &["unshare", "--pid", "--fork", "--kill-child"];
        const USER: &[&str] = &["unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child"];
        [ROOT, USER].into_iter().find(|prefix| {
            std::process::Command::new("setpriv")
                .args(["--pdeathsig", "KILL", "--"])
                .args(*prefix)
                .arg("true")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    })
}
