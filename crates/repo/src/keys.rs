//! Key files: the master key wrapped by keys derived from passphrases.
//!
//! A repository has one random 64-byte master key and any number of key files
//! (`keys/<id>`, plaintext JSON). Each holds argon2id parameters, a salt, and the master
//! key encrypted with AES-256-GCM under the key argon2id derives from its passphrase
//! (AAD: the repository id and the key id, so a key file cannot be moved between
//! repositories or renamed). Opening tries every key file with the passphrase; adding a
//! key needs an open repository; removing the last key is refused. The paper key prints
//! the master key itself, with a checksum, for a safe.

use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// argon2id cost of new keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane (RFC 9106's second recommended option, scaled to a
    /// backup proxy): about a quarter second here.
    fn default() -> KdfParams {
        KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

impl KdfParams {
    /// The cheapest accepted parameters (tests, and machines with little memory).
    pub const MIN: KdfParams = KdfParams {
        memory_kib: 8 * 1024,
        iterations: 1,
        parallelism: 1,
    };

    /// Refuse parameters below [`KdfParams::MIN`] (a tampered key file must not make
    /// guessing cheap) or absurdly high (it must not exhaust memory or time).
    fn check(&self, key: &str) -> Result<()> {
        let ok = (KdfParams::MIN.memory_kib..=4 * 1024 * 1024).contains(&self.memory_kib)
            && (1..=64).contains(&self.iterations)
            && (1..=16).contains(&self.parallelism);
        if ok {
            Ok(())
        } else {
            Err(Error::corrupt(
                key,
                format!("argon2id parameters out of range: {self:?}"),
            ))
        }
    }
}

/// One key file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    /// Format version (1).
    pub version: u32,
    /// The key's id (16 hex digits; also its object name).
    pub id: String,
    /// When it was made (seconds since the Unix epoch).
    pub created: u64,
    /// Who made it.
    pub user: String,
    /// On which machine.
    pub hostname: String,
    /// A note from the user.
    #[serde(default)]
    pub label: String,
    /// Always `argon2id`.
    pub kdf: String,
    /// Its cost.
    pub kdf_params: KdfParams,
    /// 16 random bytes, hex.
    pub salt: String,
    /// Always `aes-256-gcm`.
    pub cipher: String,
    /// 12 random bytes, hex.
    pub nonce: String,
    /// The master key encrypted, with its tag, hex.
    pub wrapped: String,
}

fn derive(passphrase: &[u8], salt: &[u8], p: &KdfParams) -> Result<[u8; 32]> {
    let params = argon2::Params::new(p.memory_kib, p.iterations, p.parallelism, Some(32))
        .map_err(|e| Error::InvalidArgument(format!("argon2id parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    argon
        .hash_password_into(passphrase, salt, &mut out)
        .map_err(|e| Error::InvalidArgument(format!("argon2id: {e}")))?;
    Ok(out)
}

fn kek_cipher(kek: &[u8; 32]) -> Result<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, kek)
        .map(LessSafeKey::new)
        .map_err(|_| Error::InvalidArgument("key length".into()))
}

fn aad(repo_id: &str, key_id: &str) -> Vec<u8> {
    format!("vcb-key\0{repo_id}\0{key_id}").into_bytes()
}

impl KeyFile {
    /// Wrap `master` under `passphrase` for the repository `repo_id`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for bad parameters.
    pub fn wrap(
        master: &MasterKey,
        passphrase: &[u8],
        repo_id: &str,
        params: KdfParams,
        label: &str,
    ) -> Result<KeyFile> {
        let id = format!("{:016x}", rand::random::<u64>());
        let mut salt = [0u8; 16];
        rand::fill(&mut salt[..]);
        let mut nonce = [0u8; 12];
        rand::fill(&mut nonce[..]);
        let kek = derive(passphrase, &salt, &params)?;
        let cipher = kek_cipher(&kek)?;
        let aad = aad(repo_id, &id);
        let mut wrapped = master.bytes.to_vec();
        cipher
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut wrapped,
            )
            .map_err(|_| Error::InvalidArgument("key wrapping failed".into()))?;
        Ok(KeyFile {
            version: 1,
            id,
            created: crate::now_secs(),
            user: std::env::var("USER").unwrap_or_default(),
            hostname: crate::hostname(),
            label: label.to_owned(),
            kdf: "argon2id".into(),
            kdf_params: params,
            salt: hex::encode(salt),
            cipher: "aes-256-gcm".into(),
            nonce: hex::encode(nonce),
            wrapped: hex::encode(wrapped),
        })
    }

    /// The master key, if `passphrase` is this key's; `Ok(None)` when it is not.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for a malformed key file.
    pub fn unwrap_key(&self, passphrase: &[u8], repo_id: &str) -> Result<Option<MasterKey>> {
        let name = format!("keys/{}", self.id);
        let bad = |why: &str| Error::corrupt(&name, why);
        if self.version != 1 || self.kdf != "argon2id" || self.cipher != "aes-256-gcm" {
            return Err(bad("unknown key format"));
        }
        self.kdf_params.check(&name)?;
        let salt = hex::decode(&self.salt).map_err(|_| bad("bad salt"))?;
        let nonce = hex::decode(&self.nonce).map_err(|_| bad("bad nonce"))?;
        let wrapped = hex::decode(&self.wrapped).map_err(|_| bad("bad wrapped key"))?;
        if salt.len() < 8 || nonce.len() != 12 || wrapped.len() != 64 + 16 {
            return Err(bad("wrong field sizes"));
        }
        let kek = derive(passphrase, &salt, &self.kdf_params)?;
        let cipher = kek_cipher(&kek)?;
        let aad = aad(repo_id, &self.id);
        let mut n = [0u8; 12];
        n.copy_from_slice(&nonce);
        let mut buf = wrapped;
        match cipher.open_in_place(Nonce::assume_unique_for_key(n), Aad::from(&aad), &mut buf) {
            Ok(plain) if plain.len() == 64 => {
                let mut bytes = [0u8; 64];
                bytes.copy_from_slice(plain);
                Ok(Some(MasterKey { bytes }))
            }
            Ok(_) => Err(bad("wrong key length")),
            Err(_) => Ok(None),
        }
    }
}

/// The paper form of a master key: the repository id, the key in 8 groups of 16 hex
/// digits, and a checksum line, so a typo is caught before it is tried.
pub fn paper_key(master: &MasterKey, repo_id: &str) -> String {
    let h = hex::encode(master.bytes);
    let groups: Vec<&str> = (0..8).map(|i| &h[i * 16..(i + 1) * 16]).collect();
    let sum = hex::encode(&Sha256::digest(master.bytes)[..4]);
    format!(
        "vcb paper key v1\nrepository {repo_id}\n{}\n{}\nchecksum {sum}\n",
        groups[..4].join(" "),
        groups[4..].join(" ")
    )
}

/// Read a paper key back (whitespace and line breaks in the key are free).
///
/// # Errors
/// [`Error::InvalidArgument`] naming what is wrong (another repository, a typo).
pub fn parse_paper_key(text: &str, repo_id: &str) -> Result<MasterKey> {
    let bad = |why: &str| Error::InvalidArgument(format!("paper key: {why}"));
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next() != Some("vcb paper key v1") {
        return Err(bad("does not start with \"vcb paper key v1\""));
    }
    match lines.next().and_then(|l| l.strip_prefix("repository ")) {
        Some(id) if id.trim() == repo_id => {}
        Some(id) => {
            return Err(bad(&format!(
                "belongs to repository {}, not {repo_id}",
                id.trim()
            )))
        }
        None => return Err(bad("no repository line")),
    }
    let mut digits = String::new();
    let mut sum = None;
    for l in lines {
        if let Some(s) = l.strip_prefix("checksum ") {
            sum = Some(s.trim().to_owned());
        } else {
            digits.extend(l.chars().filter(|c| !c.is_whitespace()));
        }
    }
    let mut bytes = [0u8; 64];
    hex::decode_to_slice(&digits, &mut bytes).map_err(|_| bad("the key is not 128 hex digits"))?;
    if sum.as_deref() != Some(hex::encode(&Sha256::digest(bytes)[..4]).as_str()) {
        return Err(bad("checksum mismatch (a digit is mistyped)"));
    }
    Ok(MasterKey { bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_open_with_their_passphrase_only() {
        let m = MasterKey::random();
        let k = KeyFile::wrap(&m, b"secret", "repo1", KdfParams::MIN, "").unwrap();
        assert_eq!(
            k.unwrap_key(b"secret", "repo1").unwrap().unwrap().bytes,
            m.bytes
        );
        assert!(k.unwrap_key(b"Secret", "repo1").unwrap().is_none());
        assert!(k.unwrap_key(b"secret", "repo2").unwrap().is_none());
        let mut weak = k.clone();
        weak.kdf_params.memory_kib = 8;
        assert!(matches!(
            weak.unwrap_key(b"secret", "repo1"),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn paper_keys_round_trip_and_catch_typos() {
        let m = MasterKey::random();
        let text = paper_key(&m, "r1");
        assert_eq!(parse_paper_key(&text, "r1").unwrap().bytes, m.bytes);
        assert!(parse_paper_key(&text, "r2").is_err());
        let line = text.lines().nth(2).unwrap();
        let c = line.chars().next().unwrap();
        let flipped = if c == '0' { '1' } else { '0' };
        let typo = text.replacen(line, &format!("{flipped}{}", &line[1..]), 1);
        let e = parse_paper_key(&typo, "r1").unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
    }
}
