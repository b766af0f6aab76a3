//! The repository's keys: listing, adding and removing key files, unlocking with a
//! passphrase, the paper key.

use crate::backend::{Backend, PutMode};
use crate::config::Config;
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::keys::{KdfParams, KeyFile};
use crate::repository::Repository;

impl Repository {
    /// The key files.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for an unreadable key file; backend errors.
    pub fn keys(&self) -> Result<Vec<KeyFile>> {
        list_keys(&*self.backend)
    }

    /// Add a key opening the repository with `passphrase`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] on an unencrypted repository; backend errors.
    pub fn add_key(&self, passphrase: &[u8], kdf: KdfParams, label: &str) -> Result<KeyFile> {
        let master = self.crypto.master_key().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{}: the repository is not encrypted",
                self.location()
            ))
        })?;
        let kf = KeyFile::wrap(master, passphrase, &self.config.id, kdf, label)?;
        put_key(&*self.backend, &kf)?;
        Ok(kf)
    }

    /// Remove the key `id` (a unique prefix is enough); the last key cannot go.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an unknown id or the last key; backend errors.
    pub fn remove_key(&self, id: &str) -> Result<KeyFile> {
        let keys = self.keys()?;
        let matching: Vec<&KeyFile> = keys.iter().filter(|k| k.id.starts_with(id)).collect();
        let key = match matching.as_slice() {
            [k] => (*k).clone(),
            [] => return Err(Error::InvalidArgument(format!("no key {id:?}"))),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "{id:?} matches several keys"
                )))
            }
        };
        if keys.len() == 1 {
            return Err(Error::InvalidArgument(
                "refusing to remove the repository's last key (nothing could open it again)".into(),
            ));
        }
        self.backend.delete(&format!("keys/{}", key.id))?;
        Ok(key)
    }

    /// The paper form of the master key.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] on an unencrypted repository.
    pub fn paper_key(&self) -> Result<String> {
        let master = self.crypto.master_key().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{}: the repository is not encrypted",
                self.location()
            ))
        })?;
        Ok(crate::keys::paper_key(master, &self.config.id))
    }
}

pub(crate) fn put_key(backend: &dyn Backend, kf: &KeyFile) -> Result<()> {
    let text =
        serde_json::to_vec_pretty(kf).map_err(|e| Error::InvalidArgument(format!("key: {e}")))?;
    backend.put(&format!("keys/{}", kf.id), &text, PutMode::Create)
}

fn list_keys(backend: &dyn Backend) -> Result<Vec<KeyFile>> {
    let mut names = Vec::new();
    backend.list("keys/", &mut |m| {
        names.push(m.name);
        Ok(())
    })?;
    let mut keys = Vec::new();
    for name in names {
        let bytes = backend.get(&name)?;
        let kf: KeyFile = serde_json::from_slice(&bytes)
            .map_err(|e| Error::corrupt(&name, format!("bad key file: {e}")))?;
        if format!("keys/{}", kf.id) != name {
            return Err(Error::corrupt(&name, "names another key"));
        }
        keys.push(kf);
    }
    Ok(keys)
}

pub(crate) fn unlock_with(
    backend: &dyn Backend,
    config: &Config,
    passphrase: &[u8],
) -> Result<MasterKey> {
    let keys = list_keys(backend)?;
    if keys.is_empty() {
        return Err(Error::corrupt(
            "keys/",
            "the repository is encrypted but has no key",
        ));
    }
    for kf in &keys {
        match kf.unwrap_key(passphrase, &config.id) {
            Ok(Some(m)) => return Ok(m),
            Ok(None) => {}
            // A damaged key must not keep the good ones from opening.
            Err(e) => tracing::warn!("{e}"),
        }
    }
    Err(Error::WrongPassphrase {
        location: backend.location(),
    })
}
