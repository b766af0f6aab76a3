//! An open repository: its config, its keys, and reading and writing its objects.

use crate::backend::{Backend, PutMode};
use crate::config::{read_config, Config, DEFAULT_CHUNK_SIZE, DEFAULT_ZSTD_LEVEL, FORMAT_VERSION};
use crate::crypto::{Crypto, Id, Kind, MasterKey};
use crate::error::{Error, Result};
use crate::index::DiskIndex;
use crate::keyring::{put_key, unlock_with};
use crate::keys::{KdfParams, KeyFile};
use crate::point::{Point, VerifyRecord};
use serde::Serialize;
use std::sync::Arc;

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

    /// The chunks of `ids` the backend does not have, looked up with a few requests in
    /// flight (a restore checks every chunk exists before it writes anything).
    ///
    /// # Errors
    /// Backend errors.
    pub fn missing_chunks(&self, ids: &[Id]) -> Result<Vec<Id>> {
        let threads = if self.backend.is_remote() { 16 } else { 2 };
        let next = std::sync::atomic::AtomicUsize::new(0);
        let missing = std::sync::Mutex::new(Vec::new());
        let failed = std::sync::Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..threads.min(ids.len().max(1)) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(id) = ids.get(i) else { return };
                    match self.backend.stat(&id.chunk_name()) {
                        Ok(Some(_)) => {}
                        Ok(None) => missing
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(*id),
                        Err(e) => {
                            failed
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .get_or_insert(e);
                            next.store(ids.len(), std::sync::atomic::Ordering::Relaxed);
                            return;
                        }
                    }
                });
            }
        });
        if let Some(e) = failed
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            return Err(e);
        }
        let mut missing = missing
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        missing.sort();
        Ok(missing)
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
