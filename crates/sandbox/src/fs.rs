//! A workspace's files, reached only beneath its root. Everything in a workspace is the
//! agent's (or a cloned repository's): a symlink may point anywhere, a directory may be
//! swapped for a link between a check and a use, a "file" may be a FIFO that blocks whoever
//! opens it. So the host never resolves a workspace path itself: each open is one `openat2`
//! from the root's descriptor with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`, which the kernel
//! resolves atomically and refuses as soon as any step (`..`, an absolute or climbing link, a
//! `/proc` magic link) leads out. Where `openat2` is missing (kernels before 5.6, seccomp
//! profiles that deny it), a walk of `openat` with `O_NOFOLLOW` refuses every link instead.
//! Files are opened non-blocking and checked to be regular files before a byte is read or
//! written, and reads are bounded before they start.

use rustix::{
    fs::{FileType, Mode, OFlags, ResolveFlags},
    io::Errno,
};
use std::{
    fmt,
    io::{self, Read as _, Write as _},
    os::fd::{AsFd, OwnedFd},
    path::{Component, Path, PathBuf},
};

/// Why a workspace path could not be used.
#[derive(Debug)]
pub enum FsError {
    /// The path leads out of the workspace (`..`, another root, a link out).
    Outside(String),
    NotFound(String),
    /// It exists but is not a regular file (a directory, a FIFO, a device, a socket).
    NotAFile(String),
    /// Larger than the reader allows (its size, the bound).
    TooLarge {
        path: String,
        size: u64,
        max: u64,
    },
    Io(String, io::Error),
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsError::Outside(p) => write!(f, "{p} is outside the workspace"),
            FsError::NotFound(p) => write!(f, "{p} does not exist"),
            FsError::NotAFile(p) => write!(f, "{p} is not a regular file"),
            FsError::TooLarge { path, size, max } => {
                write!(f, "{path} is {size} bytes, over the {max} bytes that may be read")
            }
            FsError::Io(p, e) => write!(f, "{p}: {e}"),
        }
    }
}

impl std::error::Error for FsError {}

/// An entry of a listed directory.
#[derive(Debug, PartialEq)]
pub struct Entry {
    pub name: String,
    /// A directory (a symlink is never one here: it is not followed).
    pub dir: bool,
}

/// What a path is, seen beneath the root.
#[derive(Debug, PartialEq, Clone, Copy)]
pub enum Kind {
    File,
    Dir,
    Other,
}

/// [`Confined::relative`] for a workspace whose root is `root`, without opening it (lexical
/// only: links are the kernel's business when the path is opened beneath the root).
pub fn relative_to(root: &Path, given: &str) -> Result<PathBuf, FsError> {
    let path = Path::new(given);
    let rest = if path.is_absolute() {
        match path.strip_prefix(root) {
            Ok(rest) => rest,
            Err(_) => path.strip_prefix("/workspace").map_err(|_| FsError::Outside(given.to_owned()))?,
        }
    } else {
        path
    };
    let mut out = PathBuf::new();
    for c in rest.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return Err(FsError::Outside(given.to_owned())),
        }
    }
    Ok(out)
}

/// A workspace root, held open: every path is resolved from this descriptor.
#[derive(Debug)]
pub struct Confined {
    dir: OwnedFd,
    root: PathBuf,
}

impl Confined {
    /// Opens `root` (a directory the host chose: trusted, resolved normally).
    pub fn open(root: &Path) -> io::Result<Confined> {
        let root = root.canonicalize()?;
        let dir = rustix::fs::open(&root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(Confined { dir, root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path someone named, relative to the root: absolute within the root, or relative
    /// to it (`/workspace/` prefixed, as OpenHands' web client sends, counts as relative).
    /// Refused lexically when it climbs (`..`) or names another root; links are the kernel's
    /// business at open time.
    pub fn relative(&self, given: &str) -> Result<PathBuf, FsError> {
        relative_to(&self.root, given)
    }

    /// Opens `rel` beneath the root (see the module's comment).
    fn open_at(&self, rel: &Path, flags: OFlags, mode: Mode) -> Result<OwnedFd, FsError> {
        let target = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
        // openat2 is strict: O_PATH takes no other open flags, and no mode without O_CREAT.
        let flags = if flags.contains(OFlags::PATH) {
            flags | OFlags::CLOEXEC
        } else {
            flags | OFlags::CLOEXEC | OFlags::NOCTTY
        };
        let shown = || rel.display().to_string();
        let result = match rustix::fs::openat2(
            &self.dir,
            target,
            flags,
            mode,
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            Err(Errno::NOSYS) | Err(Errno::PERM) => self.walk(target, flags, mode),
            other => other,
        };
        result.map_err(|e| match e {
            Errno::XDEV | Errno::LOOP => FsError::Outside(shown()),
            Errno::NOENT => FsError::NotFound(shown()),
            // A FIFO without a peer, opened non-blocking for writing.
            Errno::NXIO => FsError::NotAFile(shown()),
            e => FsError::Io(shown(), e.into()),
        })
    }

    /// `openat` component by component, following no link at all.
    fn walk(&self, rel: &Path, flags: OFlags, mode: Mode) -> rustix::io::Result<OwnedFd> {
        let parts: Vec<&std::ffi::OsStr> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(p) => Some(p),
                _ => None,
            })
            .collect();
        let mut dir =
            rustix::fs::openat(&self.dir, ".", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let Some((last, parents)) = parts.split_last() else {
            return rustix::fs::openat(&self.dir, ".", flags, mode);
        };
        for part in parents {
            dir = rustix::fs::openat(
                &dir,
                *part,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
        }
        rustix::fs::openat(&dir, *last, flags | OFlags::NOFOLLOW, mode)
    }

    /// What `rel` is (links not followed out), or None when it does not exist.
    pub fn kind(&self, rel: &Path) -> Result<Option<Kind>, FsError> {
        match self.open_at(rel, OFlags::PATH, Mode::empty()) {
            Ok(fd) => Ok(Some(kind_of(&fd, rel)?)),
            Err(FsError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The whole regular file `rel`, if it is at most `max` bytes (checked before reading,
    /// and again while reading: a file that grows is cut off and refused).
    pub fn read(&self, rel: &Path, max: u64) -> Result<Vec<u8>, FsError> {
        let fd = self.open_at(rel, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty())?;
        if kind_of(&fd, rel)? != Kind::File {
            return Err(FsError::NotAFile(rel.display().to_string()));
        }
        let size = stat(&fd, rel)?.st_size as u64;
        let too_large = |size| FsError::TooLarge { path: rel.display().to_string(), size, max };
        if size > max {
            return Err(too_large(size));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        std::fs::File::from(fd)
            .take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| FsError::Io(rel.display().to_string(), e))?;
        if bytes.len() as u64 > max {
            return Err(too_large(bytes.len() as u64));
        }
        Ok(bytes)
    }

    /// Writes `bytes` as the content of the regular file `rel` (created 0644 when missing,
    /// with its missing parent directories).
    pub fn write(&self, rel: &Path, bytes: &[u8]) -> Result<(), FsError> {
        let shown = || rel.display().to_string();
        let name_ok = rel.file_name().is_some();
        if !name_ok {
            return Err(FsError::NotAFile(shown()));
        }
        if let Some(parent) = rel.parent() {
            self.create_dir_all(parent)?;
        }
        // Not O_TRUNC: a FIFO or device is refused before anything happens to it.
        let fd = self.open_at(rel, OFlags::WRONLY | OFlags::CREATE | OFlags::NONBLOCK, Mode::from_raw_mode(0o644))?;
        if kind_of(&fd, rel)? != Kind::File {
            return Err(FsError::NotAFile(shown()));
        }
        rustix::fs::ftruncate(&fd, 0).map_err(|e| FsError::Io(shown(), e.into()))?;
        let mut file = std::fs::File::from(fd);
        file.write_all(bytes).map_err(|e| FsError::Io(shown(), e))
    }

    /// Makes the directory `rel` and its missing parents, beneath the root.
    pub fn create_dir_all(&self, rel: &Path) -> Result<(), FsError> {
        match self.kind(rel)? {
            Some(Kind::Dir) => return Ok(()),
            Some(_) => return Err(FsError::NotAFile(rel.display().to_string())),
            None => {}
        }
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else { return Ok(()) };
        self.create_dir_all(parent)?;
        let dir = self.open_at(parent, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())?;
        match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => Ok(()),
            Err(e) => Err(FsError::Io(rel.display().to_string(), e.into())),
        }
    }

    /// The entries of the directory `rel`, sorted by name.
    pub fn list(&self, rel: &Path) -> Result<Vec<Entry>, FsError> {
        let fd = self.open_at(rel, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        let shown = || rel.display().to_string();
        let dir = rustix::fs::Dir::read_from(&fd).map_err(|e| FsError::Io(shown(), e.into()))?;
        let mut entries = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|e| FsError::Io(shown(), e.into()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let dir = match entry.file_type() {
                FileType::Directory => true,
                FileType::Unknown => rustix::fs::statat(&fd, entry.file_name(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory),
                _ => false,
            };
            entries.push(Entry { name, dir });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// The disk space the tree under the root takes (allocated blocks, so sparse files count
    /// what they use), counted until it passes `stop_above` (then that is enough to know).
    /// Links are not followed; hard-linked files count once per link.
    pub fn disk_usage(&self, stop_above: u64) -> u64 {
        let mut total = 0u64;
        let Ok(root) =
            rustix::fs::openat(&self.dir, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        else {
            return 0;
        };
        let mut stack = vec![root];
        while let Some(fd) = stack.pop() {
            let Ok(dir) = rustix::fs::Dir::read_from(&fd) else { continue };
            for entry in dir.flatten() {
                let name = entry.file_name();
                if name.to_bytes() == b"." || name.to_bytes() == b".." {
                    continue;
                }
                let Ok(st) = rustix::fs::statat(&fd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) else { continue };
                total = total.saturating_add(st.st_blocks as u64 * 512);
                if total > stop_above {
                    return total;
                }
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    if let Ok(sub) = rustix::fs::openat(
                        &fd,
                        name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    ) {
                        stack.push(sub);
                    }
                }
            }
        }
        total
    }
}

fn stat(fd: &impl AsFd, rel: &Path) -> Result<rustix::fs::Stat, FsError> {
    rustix::fs::fstat(fd).map_err(|e| FsError::Io(rel.display().to_string(), e.into()))
}

fn kind_of(fd: &impl AsFd, rel: &Path) -> Result<Kind, FsError> {
    Ok(match FileType::from_raw_mode(stat(fd, rel)?.st_mode) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        _ => Kind::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, tempfile::TempDir, Confined) {
        let outside = tempfile::tempdir().unwrap();
        let ws = tempfile::tempdir().unwrap();
        let confined = Confined::open(ws.path()).unwrap();
        (outside, ws, confined)
    }

    #[test]
    fn paths_are_relative_to_the_root_and_never_climb() {
        let (_o, _w, c) = setup();
        assert_eq!(c.relative("a/./b.txt").unwrap(), Path::new("a/b.txt"));
        assert_eq!(c.relative(&format!("{}/x.py", c.root().display())).unwrap(), Path::new("x.py"));
        assert_eq!(c.relative("/workspace/src/lib.rs").unwrap(), Path::new("src/lib.rs"));
        for bad in ["../x", "a/../../x", "/etc/passwd"] {
            assert!(matches!(c.relative(bad), Err(FsError::Outside(_))), "{bad}");
        }
    }

    #[test]
    fn no_link_leads_a_read_or_a_write_out() {
        let (outside, ws, c) = setup();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, "host secret").unwrap();
        symlink(&secret, ws.path().join("abs")).unwrap();
        symlink(outside.path(), ws.path().join("dir")).unwrap();
        symlink(outside.path().join("new-file"), ws.path().join("dangling")).unwrap();
        symlink("../../../../../../../../etc/passwd", ws.path().join("climb")).unwrap();
        for rel in ["abs", "dir/secret", "climb"] {
            assert!(matches!(c.read(Path::new(rel), 1000), Err(FsError::Outside(_))), "read {rel}");
        }
        for rel in ["abs", "dir/new", "dangling", "dir/sub/new"] {
            assert!(matches!(c.write(Path::new(rel), b"x"), Err(FsError::Outside(_))), "write {rel}");
        }
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "host secret");
        assert!(!outside.path().join("new-file").exists() && !outside.path().join("new").exists());
        assert!(!outside.path().join("sub").exists());
        // A link that stays inside is fine.
        std::fs::write(ws.path().join("real.txt"), "inside").unwrap();
        symlink("real.txt", ws.path().join("alias.txt")).unwrap();
        assert_eq!(c.read(Path::new("alias.txt"), 100).unwrap(), b"inside");
    }

    #[test]
    fn the_walk_without_openat2_follows_no_link() {
        let (outside, ws, c) = setup();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        symlink(outside.path(), ws.path().join("dir")).unwrap();
        std::fs::create_dir(ws.path().join("sub")).unwrap();
        std::fs::write(ws.path().join("sub/f"), "ok").unwrap();
        assert!(c.walk(Path::new("dir/secret"), OFlags::RDONLY, Mode::empty()).is_err());
        assert!(c.walk(Path::new("sub/f"), OFlags::RDONLY, Mode::empty()).is_ok());
    }

    #[test]
    fn reads_are_bounded_before_they_start_and_fifos_never_block() {
        let (_o, ws, c) = setup();
        let big = std::fs::File::create(ws.path().join("sparse")).unwrap();
        big.set_len(200 * 1024 * 1024).unwrap();
        match c.read(Path::new("sparse"), 1024 * 1024) {
            Err(FsError::TooLarge { size, max, .. }) => assert_eq!((size, max), (200 * 1024 * 1024, 1024 * 1024)),
            other => panic!("{other:?}"),
        }
        let fifo = ws.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(matches!(c.read(Path::new("fifo"), 100), Err(FsError::NotAFile(_))));
        assert!(matches!(c.write(Path::new("fifo"), b"x"), Err(FsError::NotAFile(_))));
    }

    #[test]
    fn writes_make_parents_and_listing_shows_kinds() {
        let (_o, ws, c) = setup();
        c.write(Path::new("a/b/c.txt"), b"hello").unwrap();
        c.write(Path::new("a/b/c.txt"), b"hi").unwrap();
        assert_eq!(std::fs::read_to_string(ws.path().join("a/b/c.txt")).unwrap(), "hi");
        symlink("/", ws.path().join("a/root")).unwrap();
        let listed = c.list(Path::new("a")).unwrap();
        assert_eq!(listed, vec![Entry { name: "b".into(), dir: true }, Entry { name: "root".into(), dir: false }]);
        assert!(matches!(c.list(Path::new("a/root")), Err(FsError::Outside(_))));
        assert_eq!(c.kind(Path::new("a/b")).unwrap(), Some(Kind::Dir));
        assert_eq!(c.kind(Path::new("nope")).unwrap(), None);
        assert!(c.disk_usage(u64::MAX) > 0);
    }
}
