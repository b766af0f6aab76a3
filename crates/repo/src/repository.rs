//! An open repository: its config, its keys, and reading and writing its objects.

use crate::backend::{Backend, PutMode};
use crate::crypto::{Crypto, Id, Kind, MasterKey};
use crate::error::{Error, Result};
use crate::index::DiskIndex;
use crate::keys::{KdfParams, KeyFile};
use crate::point::{Point, VerifyRecord};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

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
    fn mac_input(&self) -> Vec<u8> {
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

/// How a new repository is made.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Passphrase of the first key; `None`: an unencrypted repository.
    pub passphrase: Option<Vec<u8>>,
    /// argon2id cost of the first key.
    pub kdf: KdfParams,
    /// Chunk size (a power of two, 64 KiB to 16 MiB).
    pub chunk_size: u32,
    /// zstd level (1 to 19).
    pub zstd_level: i32,
    /// Share this master key (a copy target initialized `--from` another repository,
    /// so chunks travel between them without being re-encrypted).
    pub master_key: Option<MasterKey>,
}

impl Default for InitOptions {
    fn default() -> InitOptions {
        InitOptions {
            passphrase: None,
            kdf: KdfParams::default(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            master_key: None,
        }
    }
}

/// How to open an encrypted repository.
#[derive(Debug, Clone)]
pub enum Unlock {
    /// With a passphrase.
    Passphrase(Vec<u8>),
    /// With a paper key's text.
    PaperKey(String),
    /// Without a secret (unencrypted repositories only).
    None,
}

/// An open repository.
#[derive(Clone)]
pub struct Repository {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) config: Config,
    pub(crate) crypto: Crypto,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({})", self.backend.location())
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

impl Repository {
    /// Create a new repository in the empty location `backend`.
    ///
    /// # Errors
    /// [`Error::AlreadyInitialized`], [`Error::InvalidArgument`], backend errors.
    pub fn init(backend: Box<dyn Backend>, opts: &InitOptions) -> Result<Repository> {
        if !opts.chunk_size.is_power_of_two()
            || !(crate::index::MIN_CHUNK..=crate::index::MAX_CHUNK).contains(&opts.chunk_size)
        {
            return Err(Error::InvalidArgument(format!(
                "chunk size {} must be a power of two from 64 KiB to 16 MiB",
                opts.chunk_size
            )));
        }
        if !(1..=19).contains(&opts.zstd_level) {
            return Err(Error::InvalidArgument(format!(
                "zstd level {} must be 1 to 19",
                opts.zstd_level
            )));
        }
        if !backend.is_empty()? {
            return Err(Error::AlreadyInitialized {
                location: backend.location(),
            });
        }
        backend.create()?;
        let mut id = [0u8; 16];
        rand::fill(&mut id[..]);
        let mut config = Config {
            format: "vcb-repository".into(),
            version: FORMAT_VERSION,
            id: hex::encode(id),
            created: crate::now_secs(),
            encryption: if opts.passphrase.is_some() {
                "aes-256-gcm".into()
            } else {
                "none".into()
            },
            chunk_size: opts.chunk_size,
            compression: "zstd".into(),
            zstd_level: opts.zstd_level,
            mac: None,
        };
        let key = match &opts.passphrase {
            Some(pass) => {
                let master = opts.master_key.clone().unwrap_or_else(MasterKey::random);
                let kf = KeyFile::wrap(&master, pass, &config.id, opts.kdf, "initial key")?;
                put_key(&*backend, &kf)?;
                Some(master)
            }
            None => None,
        };
        let crypto = Crypto::new(key, config.zstd_level);
        if crypto.encrypted() {
            config.mac = Some(hex::encode(crypto.mac(&[&config.mac_input()])));
        }
        let text = serde_json::to_vec_pretty(&config)
            .map_err(|e| Error::InvalidArgument(format!("config: {e}")))?;
        // Written last: a location without `config` is not (yet) a repository.
        backend.put("config", &text, PutMode::Create)?;
        Ok(Repository {
            backend: Arc::from(backend),
            config,
            crypto,
        })
    }

    /// Open the repository in `backend`.
    ///
    /// # Errors
    /// [`Error::NotARepository`], [`Error::UnknownVersion`], [`Error::PassphraseNeeded`],
    /// [`Error::WrongPassphrase`], [`Error::Corrupt`] (a config changed behind the
    /// keys' back), backend errors.
    pub fn open(backend: Box<dyn Backend>, unlock: &Unlock) -> Result<Repository> {
        let config = read_config(&*backend)?;
        let location = backend.location();
        let key = if config.encryption == "none" {
            let mut any = false;
            backend.list("keys/", &mut |_| {
                any = true;
                Ok(())
            })?;
            if any {
                return Err(Error::corrupt(
                    "config",
                    "says the repository is unencrypted, but it has keys (refused)",
                ));
            }
            None
        } else {
            Some(match unlock {
                Unlock::None => return Err(Error::PassphraseNeeded { location }),
                Unlock::PaperKey(text) => crate::keys::parse_paper_key(text, &config.id)?,
                Unlock::Passphrase(p) => unlock_with(&*backend, &config, p)?,
            })
        };
        let crypto = Crypto::new(key, config.zstd_level);
        if crypto.encrypted() {
            let expected = hex::encode(crypto.mac(&[&config.mac_input()]));
            if config.mac.as_deref() != Some(expected.as_str()) {
                return Err(Error::corrupt(
                    "config",
                    "its authenticator does not match (changed behind the keys' back, or the paper key is another repository's)",
                ));
            }
        }
        Ok(Repository {
            backend: Arc::from(backend),
            config,
            crypto,
        })
    }

    /// Whether the repository at `backend` needs a passphrase to open.
    ///
    /// # Errors
    /// As for [`read_config`].
    pub fn is_encrypted(backend: &dyn Backend) -> Result<bool> {
        Ok(read_config(backend)?.encryption != "none")
    }

    /// The repository as the user wrote it.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// Its config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Its backend.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// How it seals objects.
    pub fn crypto(&self) -> &Crypto {
        &self.crypto
    }

    /// Read and open the object `name` of `kind`.
    ///
    /// # Errors
    /// [`Error::Missing`] when it does not exist (saying `what`), [`Error::Corrupt`].
    pub fn get(&self, kind: Kind, name: &str, what: &str) -> Result<Vec<u8>> {
        let raw = self.backend.get(name).map_err(|e| {
            if e.is_not_found() {
                Error::Missing {
                    object: name.to_owned(),
                    what: what.to_owned(),
                }
            } else {
                e
            }
        })?;
        self.crypto.open(kind, name, &raw)
    }

    /// Seal and write the object `name` of `kind`; returns its stored size.
    ///
    /// # Errors
    /// Backend errors.
    pub fn put(&self, kind: Kind, name: &str, plain: &[u8], mode: PutMode) -> Result<u64> {
        let sealed = self.crypto.seal(kind, name, plain)?;
        self.backend.put(name, &sealed, mode)?;
        Ok(sealed.len() as u64)
    }

    /// Read a JSON object.
    pub(crate) fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        kind: Kind,
        name: &str,
        what: &str,
    ) -> Result<T> {
        let plain = self.get(kind, name, what)?;
        serde_json::from_slice(&plain).map_err(|e| Error::corrupt(name, format!("bad JSON: {e}")))
    }

    /// Write a JSON object.
    pub(crate) fn put_json<T: Serialize>(
        &self,
        kind: Kind,
        name: &str,
        value: &T,
        mode: PutMode,
    ) -> Result<u64> {
        let plain = serde_json::to_vec(value)
            .map_err(|e| Error::InvalidArgument(format!("{name}: {e}")))?;
        self.put(kind, name, &plain, mode)
    }

    /// The data of chunk `id`, authenticated. In an encrypted repository the envelope's
    /// tag, which binds the chunk's name, is the proof (only a holder of the key can
    /// produce it); an unencrypted chunk's content is checked against its id.
    ///
    /// # Errors
    /// [`Error::Missing`], [`Error::Corrupt`].
    pub fn read_chunk(&self, id: &Id) -> Result<Vec<u8>> {
        self.read_chunk_with(id, !self.crypto.encrypted())
    }

    /// [`read_chunk`](Self::read_chunk), always recomputing the id from the content
    /// (`verify`: it also catches a writer that stored wrong data under a name).
    ///
    /// # Errors
    /// As for [`read_chunk`](Self::read_chunk).
    pub fn read_chunk_checked(&self, id: &Id) -> Result<Vec<u8>> {
        self.read_chunk_with(id, true)
    }

    fn read_chunk_with(&self, id: &Id, check_id: bool) -> Result<Vec<u8>> {
        let name = id.chunk_name();
        let plain = self.get(Kind::Chunk, &name, "a chunk a backup point uses")?;
        if plain.len() > self.config.chunk_size as usize {
            return Err(Error::corrupt(&name, "larger than the chunk size"));
        }
        if check_id && self.crypto.chunk_id(&plain) != *id {
            return Err(Error::corrupt(&name, "content does not match its id"));
        }
        Ok(plain)
    }

    /// The disk index `id`.
    ///
    /// # Errors
    /// [`Error::Missing`], [`Error::Corrupt`].
    pub fn load_index(&self, id: &str) -> Result<DiskIndex> {
        let name = format!("indexes/{id}");
        Id::parse(id).map_err(|_| Error::corrupt(&name, "not an index id"))?;
        let plain = self.get(Kind::Index, &name, "a disk index a backup point uses")?;
        if hex::encode(self.crypto.mac(&[b"index", &plain])) != id {
            return Err(Error::corrupt(&name, "content does not match its id"));
        }
        let index = DiskIndex::decode(&name, &plain)?;
        if index.chunk_size != self.config.chunk_size {
            return Err(Error::corrupt(
                &name,
                "chunk size differs from the repository's",
            ));
        }
        Ok(index)
    }

    /// Every point's object name, in name order.
    ///
    /// # Errors
    /// Backend errors.
    pub fn point_names(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.backend.list("points/", &mut |m| {
            if m.name.split('/').count() == 3 {
                out.push(m.name);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Load the point stored as `name`, checking that it is where it says it is.
    ///
    /// # Errors
    /// [`Error::Missing`], [`Error::Corrupt`], [`Error::UnknownVersion`].
    pub fn load_point(&self, name: &str) -> Result<Point> {
        let point: Point = self.get_json(Kind::Point, name, "a backup point")?;
        if point.version != crate::point::POINT_VERSION {
            return Err(Error::UnknownVersion {
                location: format!("{}: {name}", self.location()),
                found: point.version,
                supported: crate::point::POINT_VERSION,
            });
        }
        if point.name() != name {
            return Err(Error::corrupt(name, "names another point"));
        }
        Ok(point)
    }

    /// Every point, oldest first. Points that cannot be read are returned as errors
    /// beside them (a damaged point must not hide the others).
    ///
    /// # Errors
    /// Backend errors of the listing.
    pub fn points(&self) -> Result<(Vec<Point>, Vec<Error>)> {
        let mut points = Vec::new();
        let mut bad = Vec::new();
        for name in self.point_names()? {
            match self.load_point(&name) {
                Ok(p) => points.push(p),
                Err(Error::Missing { .. }) => {}
                Err(e) => bad.push(e),
            }
        }
        points.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        Ok((points, bad))
    }

    /// The point `spec` names: a point id or a unique prefix of one (at least 4 hex
    /// digits), or a VM's name or uuid (its latest point); `VM@N` is its N-th latest
    /// (0 = latest).
    ///
    /// # Errors
    /// [`Error::PointNotFound`], [`Error::AmbiguousPoint`], reading errors.
    pub fn find_point(&self, spec: &str) -> Result<Point> {
        let (points, bad) = self.points()?;
        let not_found = || Error::PointNotFound {
            location: self.location(),
            spec: spec.to_owned(),
        };
        let is_hex = spec.len() >= 4 && spec.bytes().all(|b| b.is_ascii_hexdigit());
        if is_hex {
            let by_id: Vec<&Point> = points.iter().filter(|p| p.id.starts_with(spec)).collect();
            // A point that matches but cannot be read: say why, not "no such point".
            if by_id.is_empty() {
                if let Some(e) = bad
                    .into_iter()
                    .find(|e| damaged_point_id(e).is_some_and(|id| id.starts_with(spec)))
                {
                    return Err(e);
                }
            }
            match by_id.len() {
                1 => return Ok(by_id[0].clone()),
                0 => {}
                count => {
                    return Err(Error::AmbiguousPoint {
                        location: self.location(),
                        spec: spec.to_owned(),
                        count,
                    })
                }
            }
        }
        let (vm, nth) = match spec.rsplit_once('@') {
            Some((vm, n)) => (vm, n.parse::<usize>().map_err(|_| not_found())?),
            None => (spec, 0),
        };
        let mut of_vm: Vec<&Point> = points
            .iter()
            .filter(|p| p.vm.name == vm || p.vm.uuid.as_deref() == Some(vm))
            .collect();
        of_vm.reverse();
        of_vm.get(nth).map(|p| (*p).clone()).ok_or_else(not_found)
    }

    /// The group id of a VM (a keyed hash of its uuid, else its name).
    pub fn group_of(&self, vm: &crate::point::VmInfo) -> String {
        let key = vm.uuid.as_deref().unwrap_or(&vm.name);
        hex::encode(&self.crypto.mac(&[b"group", key.as_bytes()])[..16])
    }

    /// The latest verify record of point `id`, if any.
    ///
    /// # Errors
    /// [`Error::Corrupt`], backend errors.
    pub fn verify_record(&self, id: &str) -> Result<Option<VerifyRecord>> {
        match self.get_json(Kind::Verify, &format!("verify/{id}"), "a verify record") {
            Ok(r) => Ok(Some(r)),
            Err(Error::Missing { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

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

/// The point id a point-reading error is about.
fn damaged_point_id(e: &Error) -> Option<&str> {
    match e {
        Error::Corrupt { object, .. } | Error::Missing { object, .. } => {
            object.strip_prefix("points/")?.rsplit('/').next()
        }
        Error::UnknownVersion { location, .. } => location.rsplit('/').next(),
        _ => None,
    }
}

fn put_key(backend: &dyn Backend, kf: &KeyFile) -> Result<()> {
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

fn unlock_with(backend: &dyn Backend, config: &Config, passphrase: &[u8]) -> Result<MasterKey> {
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
