//! Encryption at rest with a local key file (XChaCha20-Poly1305).
//!
//! The key is 32 random bytes in `<state_dir>/.keys/file_stores.key`, created 0600 (directory
//! 0700) on first use. Every sealed value binds what it is for (kind and user id) as associated
//! data, so a sealed blob copied into another user's file does not decrypt.

use crate::fsutil;
use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use chacha20poly1305::{
    aead::{Aead, KeyInit, Payload},
    XChaCha20Poly1305, XNonce,
};
use plugin_sdk::PluginError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::{
    fs::{self, DirBuilder, OpenOptions},
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::Path,
};

const FORMAT: &str = "oh-host-sealed-v1";

/// A sealed value as stored on disk.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct Sealed {
    pub(crate) format: String,
    /// First 8 bytes (hex) of the key's SHA-256: which key sealed it.
    pub(crate) key_id: String,
    pub(crate) nonce: String,
    pub(crate) ciphertext: String,
}

pub(crate) struct Keyring {
    cipher: XChaCha20Poly1305,
    key_id: String,
}

impl Keyring {
    /// Loads the key file under `root`, creating it on first use.
    pub(crate) fn open(root: &Path) -> Result<Keyring, PluginError> {
        let dir = root.join(".keys");
        let path = dir.join("file_stores.key");
        if plugin_sdk::read_only() && !path.exists() {
            // `oh-host check`: nothing is sealed or opened, and no key file is made.
            let mut key = [0u8; 32];
            getrandom::getrandom(&mut key).map_err(|e| PluginError::internal(format!("no randomness: {e}")))?;
            let cipher =
                XChaCha20Poly1305::new_from_slice(&key).map_err(|_| PluginError::internal("bad key length"))?;
            return Ok(Keyring { cipher, key_id: "unsaved".to_owned() });
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| fsutil::io_error("create the key directory", &dir, e))?;
        let key = match fs::read(&path) {
            Ok(key) => key,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key(&path)?,
            Err(e) => return Err(fsutil::io_error("read the key file", &path, e)),
        };
        if key.len() != 32 {
            return Err(PluginError::invalid_config(format!(
                "key file {} holds {} bytes, expected 32; restore it from a backup (without it the stored secrets cannot be read)",
                path.display(),
                key.len()
            )));
        }
        let mode = fs::metadata(&path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
        if mode & 0o077 != 0 {
            return Err(PluginError::invalid_config(format!(
                "key file {} has mode {mode:o}; run `chmod 600 {}`",
                path.display(),
                path.display()
            )));
        }
        let digest = Sha256::digest(&key);
        let key_id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let cipher = XChaCha20Poly1305::new_from_slice(&key).map_err(|_| PluginError::internal("bad key length"))?;
        Ok(Keyring { cipher, key_id })
    }

    pub(crate) fn seal(&self, plaintext: &[u8], aad: &str) -> Result<Sealed, PluginError> {
        let mut nonce = [0u8; 24];
        getrandom::getrandom(&mut nonce).map_err(|e| PluginError::internal(format!("no randomness: {e}")))?;
        let ciphertext = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: aad.as_bytes() })
            .map_err(|_| PluginError::internal("encryption failed"))?;
        Ok(Sealed {
            format: FORMAT.to_owned(),
            key_id: self.key_id.clone(),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(ciphertext),
        })
    }

    pub(crate) fn open_sealed(&self, sealed: &Sealed, aad: &str) -> Result<Vec<u8>, PluginError> {
        if sealed.format != FORMAT {
            return Err(PluginError::internal(format!("unknown sealed format `{}`", sealed.format)));
        }
        if sealed.key_id != self.key_id {
            return Err(PluginError::internal(format!(
                "sealed with key {} but the key file is {}; the key file was replaced",
                sealed.key_id, self.key_id
            )));
        }
        let nonce = B64.decode(&sealed.nonce).map_err(|_| PluginError::internal("bad nonce encoding"))?;
        let ciphertext =
            B64.decode(&sealed.ciphertext).map_err(|_| PluginError::internal("bad ciphertext encoding"))?;
        if nonce.len() != 24 {
            return Err(PluginError::internal("bad nonce length"));
        }
        self.cipher
            .decrypt(XNonce::from_slice(&nonce), Payload { msg: &ciphertext, aad: aad.as_bytes() })
            .map_err(|_| PluginError::internal("cannot decrypt: the data was tampered with or belongs to another user"))
    }
}

fn create_key(path: &Path) -> Result<Vec<u8>, PluginError> {
    let mut key = vec![0u8; 32];
    getrandom::getrandom(&mut key).map_err(|e| PluginError::internal(format!("no randomness: {e}")))?;
    // create_new: if another store created it first, read theirs.
    match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(mut file) => {
            file.write_all(&key)
                .and_then(|()| file.sync_all())
                .map_err(|e| fsutil::io_error("write the key file", path, e))?;
            tracing::info!(path = %path.display(), "created the file stores' encryption key");
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            fs::read(path).map_err(|e| fsutil::io_error("read the key file", path, e))
        }
        Err(e) => Err(fsutil::io_error("create the key file", path, e)),
    }
}

/// Associated data for a sealed value: what it is and whose.
pub(crate) fn aad(kind: &str, user_id: Option<&str>) -> String {
    format!("oh-host/file_stores/{kind}/{}", user_id.unwrap_or("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_private_and_binding_holds() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::open(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(".keys/file_stores.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = ring.seal(b"hunter2", &aad("secrets", Some("alice"))).unwrap();
        assert!(!sealed.ciphertext.contains("hunter2"));
        assert_eq!(ring.open_sealed(&sealed, &aad("secrets", Some("alice"))).unwrap(), b"hunter2");
        assert!(ring.open_sealed(&sealed, &aad("secrets", Some("bob"))).is_err());
        // A second open reads the same key.
        let again = Keyring::open(dir.path()).unwrap();
        assert_eq!(again.open_sealed(&sealed, &aad("secrets", Some("alice"))).unwrap(), b"hunter2");
    }
}
