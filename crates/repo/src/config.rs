//! The `config` object: format, version and parameters (plaintext JSON, authenticated
//! after unlocking by its `mac`).

use crate::backend::Backend;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The repository format's major version; a repository of another is refused.
pub const FORMAT_VERSION: u32 = 1;

/// Default chunk size (see `docs/repository.md` for the measurement behind it).
pub const DEFAULT_CHUNK_SIZE: u32 = 4 << 20;

/// Default zstd level (see `docs/repository.md`).
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// The `config` object (plaintext JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Always `vcb-repository`.
    pub format: String,
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// Random id (32 hex digits).
    pub id: String,
    /// When it was created.
    pub created: u64,
    /// `aes-256-gcm` or `none`.
    pub encryption: String,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// `zstd`.
    pub compression: String,
    /// zstd level of new chunks.
    pub zstd_level: i32,
    /// HMAC of the fields above under the master key (encrypted repositories): a config
    /// changed behind the keys' back is refused.
    #[serde(default)]
    pub mac: Option<String>,
}

impl Config {
    pub(crate) fn mac_input(&self) -> Vec<u8> {
        format!(
            "{}\0{}\0{}\0{}\0{}\0{}\0{}\0{}",
            self.format,
            self.version,
            self.id,
            self.created,
            self.encryption,
            self.chunk_size,
            self.compression,
            self.zstd_level
        )
        .into_bytes()
    }
}

/// Read and check the `config` object of the repository in `backend`.
///
/// # Errors
/// [`Error::NotARepository`], [`Error::UnknownVersion`], backend errors.
pub fn read_config(backend: &dyn Backend) -> Result<Config> {
    let location = backend.location();
    let bytes = match backend.get("config") {
        Ok(b) => b,
        Err(e) if e.is_not_found() => {
            return Err(Error::NotARepository {
                location,
                reason: "no config object".into(),
            })
        }
        Err(e) => return Err(e),
    };
    parse_config(&location, &bytes)
}

/// Parse and check the bytes of a `config` object of the repository at `location`.
///
/// # Errors
/// As for [`read_config`].
pub fn parse_config(location: &str, bytes: &[u8]) -> Result<Config> {
    let location = location.to_owned();
    if bytes.len() > 64 << 10 {
        return Err(Error::NotARepository {
            location,
            reason: "config larger than 64 KiB".into(),
        });
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Error::NotARepository {
            location: location.clone(),
            reason: format!("config is not JSON: {e}"),
        })?;
    if value.get("format").and_then(|v| v.as_str()) != Some("vcb-repository") {
        return Err(Error::NotARepository {
            location,
            reason: "config is not a vcb repository's".into(),
        });
    }
    let version = value.get("version").and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(FORMAT_VERSION)) {
        return Err(Error::UnknownVersion {
            location,
            found: version
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(u32::MAX),
            supported: FORMAT_VERSION,
        });
    }
    let config: Config = serde_json::from_value(value).map_err(|e| Error::NotARepository {
        location: location.clone(),
        reason: format!("config: {e}"),
    })?;
    let bad = |why: String| Error::corrupt("config", why);
    if !config.chunk_size.is_power_of_two()
        || !(crate::index::MIN_CHUNK..=crate::index::MAX_CHUNK).contains(&config.chunk_size)
    {
        return Err(bad(format!(
            "chunk size {} out of range",
            config.chunk_size
        )));
    }
    if !matches!(config.encryption.as_str(), "aes-256-gcm" | "none") || config.compression != "zstd"
    {
        return Err(bad(format!(
            "unknown encryption {:?} or compression {:?}",
            config.encryption, config.compression
        )));
    }
    if !(1..=19).contains(&config.zstd_level) {
        return Err(bad(format!(
            "zstd level {} out of range",
            config.zstd_level
        )));
    }
    Ok(config)
}
