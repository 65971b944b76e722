//! Envelope encryption for secrets at rest (docs/decisions.md §8).
//!
//! Each user's key is derived with HKDF-SHA256 from a master key and the user id; values are
//! sealed with XChaCha20-Poly1305 with `table/field/user` as associated data, so a ciphertext
//! copied to another user's row (or another column) does not open. Every ciphertext names the
//! master key that sealed it (`v1.<key id>.<nonce>.<ciphertext>`, base64url): with the old
//! master kept as "previous", old rows stay readable while `rotate_keys` re-seals them.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine as _};
use chacha20poly1305::{
    aead::{Aead, KeyInit, Payload},
    XChaCha20Poly1305, XNonce,
};
use hkdf::Hkdf;
use plugin_sdk::{env, PluginError};
use sha2::{Digest, Sha256};

const VERSION: &str = "v1";

/// The environment variable of the current master key (else `JWT_SECRET`).
pub const OH_MASTER_KEY: &str = "OH_MASTER_KEY";
/// Comma-separated earlier master keys, still accepted for reading until `oh-host rotate-keys`
/// has re-sealed everything with the current one.
pub const OH_PREVIOUS_MASTER_KEYS: &str = "OH_PREVIOUS_MASTER_KEYS";

/// The deployment's master keys. The environment is the one place they are configured, so
/// every entry of every PostgreSQL plugin agrees: the current key is `master_key` (a profile
/// override, for tests and odd set-ups), else `OH_MASTER_KEY`, else `JWT_SECRET`, else
/// `fallback`; previous keys are `previous_master_keys`, else `OH_PREVIOUS_MASTER_KEYS`.
pub fn deployment_keyring(
    master_key: Option<&str>,
    previous_master_keys: Option<&[String]>,
    fallback: Option<&str>,
) -> Result<Keyring, PluginError> {
    let master = master_key
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .or_else(|| env("OH_MASTER_KEY"))
        .or_else(|| env("JWT_SECRET"))
        .or_else(|| fallback.filter(|k| !k.is_empty()).map(str::to_owned))
        .ok_or_else(|| {
            PluginError::invalid_config(
                "no master key for secrets at rest: set OH_MASTER_KEY (or JWT_SECRET) in the environment",
            )
        })?;
    let previous: Vec<String> = match previous_master_keys {
        Some(list) => list.to_vec(),
        None => env("OH_PREVIOUS_MASTER_KEYS")
            .map(|v| v.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default(),
    };
    Keyring::new(&master, &previous)
}

struct MasterKey {
    id: String,
    secret: Vec<u8>,
}

impl MasterKey {
    fn new(secret: &str) -> Result<MasterKey, PluginError> {
        if secret.len() < 16 {
            return Err(PluginError::invalid_config(
                "a master key must be at least 16 characters (use a long random value, e.g. `openssl rand -hex 32`)",
            ));
        }
        let digest = Sha256::digest(secret.as_bytes());
        let id = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        Ok(MasterKey { id, secret: secret.as_bytes().to_vec() })
    }

    fn cipher_for(&self, user_id: &str) -> XChaCha20Poly1305 {
        let hk = Hkdf::<Sha256>::new(Some(b"oh-host/postgres_stores/v1"), &self.secret);
        let mut key = [0u8; 32];
        hk.expand(format!("user:{user_id}").as_bytes(), &mut key).expect("32 bytes is a valid HKDF length");
        XChaCha20Poly1305::new((&key).into())
    }
}

/// The current master key and the previous ones still accepted for reading.
pub struct Keyring {
    current: MasterKey,
    previous: Vec<MasterKey>,
}

/// Where a sealed value lives: bound into the ciphertext.
pub struct Binding<'a> {
    pub table: &'a str,
    pub field: &'a str,
    pub user_id: &'a str,
}

impl Binding<'_> {
    fn aad(&self) -> String {
        format!("{}/{}/{}", self.table, self.field, self.user_id)
    }
}

impl Keyring {
    pub fn new(current: &str, previous: &[String]) -> Result<Keyring, PluginError> {
        let current = MasterKey::new(current)?;
        let previous = previous.iter().map(|p| MasterKey::new(p)).collect::<Result<Vec<_>, _>>()?;
        Ok(Keyring { current, previous })
    }

    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Every key id this keyring opens, the current one first.
    pub fn ids(&self) -> Vec<&str> {
        std::iter::once(&self.current).chain(&self.previous).map(|k| k.id.as_str()).collect()
    }

    /// Whether values sealed with key `id` open with this keyring (the current key or a
    /// previous one).
    pub fn knows(&self, id: &str) -> bool {
        std::iter::once(&self.current).chain(&self.previous).any(|k| k.id == id)
    }

    pub fn seal(&self, plaintext: &[u8], at: &Binding<'_>) -> Result<String, PluginError> {
        let mut nonce = [0u8; 24];
        getrandom::getrandom(&mut nonce).map_err(|e| PluginError::internal(format!("no randomness: {e}")))?;
        let ct = self
            .current
            .cipher_for(at.user_id)
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: at.aad().as_bytes() })
            .map_err(|_| PluginError::internal("encryption failed"))?;
        Ok(format!("{VERSION}.{}.{}.{}", self.current.id, B64.encode(nonce), B64.encode(ct)))
    }

    /// The key id a sealed value names, if it is one.
    pub fn key_id(sealed: &str) -> Option<&str> {
        let mut parts = sealed.split('.');
        (parts.next() == Some(VERSION)).then(|| parts.next()).flatten()
    }

    pub fn open(&self, sealed: &str, at: &Binding<'_>) -> Result<Vec<u8>, PluginError> {
        let parts: Vec<&str> = sealed.split('.').collect();
        let [VERSION, key_id, nonce, ct] = parts[..] else {
            return Err(PluginError::internal("stored secret is not in the sealed format"));
        };
        let key = std::iter::once(&self.current).chain(&self.previous).find(|k| k.id == key_id).ok_or_else(|| {
            PluginError::internal(format!(
                "stored secret was sealed with master key {key_id}, which is neither the current nor a previous key; \
                 add it to previous_master_keys"
            ))
        })?;
        let nonce = B64.decode(nonce).map_err(|_| PluginError::internal("bad nonce encoding"))?;
        let ct = B64.decode(ct).map_err(|_| PluginError::internal("bad ciphertext encoding"))?;
        if nonce.len() != 24 {
            return Err(PluginError::internal("bad nonce length"));
        }
        key.cipher_for(at.user_id)
            .decrypt(XNonce::from_slice(&nonce), Payload { msg: &ct, aad: at.aad().as_bytes() })
            .map_err(|_| {
                PluginError::internal("stored secret does not decrypt: tampered, or copied from another user or column")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(user: &str) -> Binding<'_> {
        Binding { table: "user_secrets", field: "sealed", user_id: user }
    }

    #[test]
    fn sealed_values_are_bound_to_their_user_and_survive_rotation() {
        let old = Keyring::new("old-master-key-0123456789", &[]).unwrap();
        let sealed = old.seal(b"ghp_secret", &at("alice")).unwrap();
        assert!(!sealed.contains("ghp_secret"));
        assert_eq!(old.open(&sealed, &at("alice")).unwrap(), b"ghp_secret");
        assert!(old.open(&sealed, &at("bob")).is_err(), "another user's row must not open");

        let rotated = Keyring::new("new-master-key-9876543210", &["old-master-key-0123456789".to_owned()]).unwrap();
        assert_eq!(rotated.open(&sealed, &at("alice")).unwrap(), b"ghp_secret");
        assert_ne!(Keyring::key_id(&sealed), Some(rotated.current_id()));
        let resealed = rotated.seal(b"ghp_secret", &at("alice")).unwrap();
        assert_eq!(Keyring::key_id(&resealed), Some(rotated.current_id()));

        let forgot = Keyring::new("new-master-key-9876543210", &[]).unwrap();
        let err = forgot.open(&sealed, &at("alice")).unwrap_err();
        assert!(err.message.contains("previous_master_keys"), "{}", err.message);
        assert!(Keyring::new("short", &[]).is_err());
    }
}
