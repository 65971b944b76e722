//! A library's private copy (what runs) and its sha256 (what a pin, a reload and the
//! listings compare), taken from that copy.
//!
//! The copy is an anonymous memory file (`memfd`) filled by the kernel (`sendfile`, no pass
//! through this process's memory) and sealed against every change, so the file in the
//! plugins directory can be replaced or rewritten in place at any time (a new build dropped
//! in) without the running code changing under the server, which would crash it. Because
//! the copy cannot change, its hash can wait until something asks for it: a start with no
//! pin does not hash megabytes of libraries (about 1.4 GB/s here: 7 ms of the bundled
//! plugins' 10 MB, most of a start).

use sha2::{Digest as _, Sha256};
use std::{
    fs, io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::FileExt as _,
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
};

/// The descriptors of the private copies: kept open for the process's life. Libraries are
/// never unloaded, and a closed descriptor's number would come back: `dlopen` of the same
/// `/proc/self/fd/N` name would then answer with the library already loaded under it.
static COPIES: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

/// How many libraries this process has loaded (each file's contents once per load: a library
/// replaced in place and reloaded is a second one). Libraries are never unloaded.
pub fn resident() -> usize {
    COPIES.lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// A library's sha256 (lowercase hex), computed from its sealed copy when first asked, or
/// known from the start. Clones share the one computation.
#[derive(Clone)]
pub struct LibrarySum(Arc<Sum>);

struct Sum {
    hex: OnceLock<String>,
    /// The sealed copy to hash; `None` once known at creation.
    copy: Option<fs::File>,
}

impl LibrarySum {
    pub fn known(hex: String) -> Self {
        Self(Arc::new(Sum { hex: OnceLock::from(hex), copy: None }))
    }

    /// The hash, computed now if nobody asked before (milliseconds per megabyte). A copy
    /// that cannot be read any more (it never changes: an I/O error here is the kernel's)
    /// gives an empty string, which matches no pin and no other file.
    pub fn get(&self) -> &str {
        self.0.hex.get_or_init(|| match &self.0.copy {
            Some(copy) => hash_at(copy).unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot read a library's private copy to hash it");
                String::new()
            }),
            None => String::new(),
        })
    }
}

impl std::fmt::Display for LibrarySum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.get())
    }
}

impl std::fmt::Debug for LibrarySum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.hex.get() {
            Some(hex) => write!(f, "LibrarySum({hex})"),
            None => f.write_str("LibrarySum(not yet computed)"),
        }
    }
}

/// The sha256 of a file by path, streamed.
pub fn file_sha256(path: &Path) -> io::Result<String> {
    hash_at(&fs::File::open(path)?)
}

/// The sha256 of an open file from its start, by positioned reads (a shared descriptor's
/// offset is left alone).
fn hash_at(file: &fs::File) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut at = 0u64;
    loop {
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(hex(hasher))
}

fn hex(hasher: Sha256) -> String {
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A sealed private copy of the library file `source`: the path to `dlopen`
/// (`/proc/self/fd/N`) and its hash, still to compute.
pub(super) fn private_copy(source: &fs::File, name: &str) -> io::Result<(PathBuf, LibrarySum)> {
    let label = std::ffi::CString::new(format!("oh-plugin-{name}")).map_err(io::Error::other)?;
    // SAFETY: a valid C string and flags; the result is checked before use.
    let fd = unsafe { libc::memfd_create(label.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    loop {
        // SAFETY: two descriptors this function holds open; a null offset reads `source`
        // from its own position onwards (it was just opened: from the start).
        let sent = unsafe { libc::sendfile(file.as_raw_fd(), source.as_raw_fd(), std::ptr::null_mut(), 1 << 30) };
        match sent {
            0 => break,
            n if n > 0 => continue,
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a descriptor this function owns.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let sum = LibrarySum(Arc::new(Sum { hex: OnceLock::new(), copy: Some(file.try_clone()?) }));
    COPIES.lock().unwrap_or_else(|e| e.into_inner()).push(OwnedFd::from(file));
    Ok((path, sum))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn the_copy_is_the_files_bytes_sealed_and_hashed_as_the_file() {
        let path = std::env::temp_dir().join(format!("oh-copy-test-{}.so", std::process::id()));
        let bytes: Vec<u8> = (0..700_000u32).map(|i| (i * 31 % 251) as u8).collect();
        fs::File::create(&path).unwrap().write_all(&bytes).unwrap();
        let (copy, sum) = private_copy(&fs::File::open(&path).unwrap(), "x").unwrap();
        assert_eq!(fs::read(&copy).unwrap(), bytes);
        // Replacing the file changes neither the copy nor its hash.
        let expected = file_sha256(&path).unwrap();
        fs::write(&path, b"another build").unwrap();
        assert_eq!(sum.get(), expected);
        assert_eq!(fs::read(&copy).unwrap(), bytes);
        // Sealed: not even this process can write to it.
        assert!(fs::OpenOptions::new().write(true).open(&copy).and_then(|mut f| f.write_all(b"x")).is_err());
        fs::remove_file(&path).unwrap();
    }
}
