//! The agent's users: names, roles and argon2id password hashes in `users.json` (0600,
//! written through the crash-safe helper).

use crate::{Error, Result};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The users file in the agent's folder.
pub const USERS_FILE: &str = "users.json";

/// What a user may do; each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// List and look up.
    Readonly,
    /// Also snapshot, read disks and restore.
    Backup,
    /// Everything (power operations, host configuration).
    Admin,
}

impl std::str::FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Role> {
        match s {
            "readonly" => Ok(Role::Readonly),
            "backup" => Ok(Role::Backup),
            "admin" => Ok(Role::Admin),
            _ => Err(Error::Invalid(format!(
                "role {s:?}: expected admin, backup or readonly"
            ))),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Readonly => "readonly",
            Role::Backup => "backup",
            Role::Admin => "admin",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    name: String,
    role: Role,
    /// PHC string of the argon2id hash.
    hash: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    users: Vec<User>,
}

/// The users of one agent.
#[derive(Debug)]
pub struct Users {
    path: PathBuf,
    file: File,
    /// A hash checked for unknown names, so they take as long as known ones.
    decoy: String,
}

impl Users {
    /// Loads `dir/users.json` (none: no users).
    ///
    /// # Errors
    /// An unreadable, too open or malformed file.
    pub fn load(dir: &Path) -> Result<Users> {
        let path = dir.join(USERS_FILE);
        let file = match std::fs::read(&path) {
            Ok(bytes) => {
                fsio::check_private(&path)?;
                serde_json::from_slice(&bytes)
                    .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(e) => return Err(Error::io(&path, "read", e)),
        };
        let decoy = hash("decoy password")?;
        Ok(Users { path, file, decoy })
    }

    /// Adds `name` with `role` (or replaces its role and password when `replace`).
    ///
    /// # Errors
    /// A bad name, an existing user (without `replace`), an empty password; write errors.
    pub fn add(&mut self, name: &str, role: Role, password: &str, replace: bool) -> Result<()> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
        if !valid {
            return Err(Error::Invalid(format!(
                "user name {name:?}: use 1-64 letters, digits, '.', '_', '-', '@'"
            )));
        }
        if password.is_empty() {
            return Err(Error::Invalid("empty password".into()));
        }
        let exists = self.file.users.iter().any(|u| u.name == name);
        if exists && !replace {
            return Err(Error::Invalid(format!("user {name} exists")));
        }
        self.file.users.retain(|u| u.name != name);
        self.file.users.push(User {
            name: name.to_owned(),
            role,
            hash: hash(password)?,
        });
        self.save()
    }

    /// Removes `name`.
    ///
    /// # Errors
    /// No such user; write errors.
    pub fn remove(&mut self, name: &str) -> Result<()> {
        let before = self.file.users.len();
        self.file.users.retain(|u| u.name != name);
        if self.file.users.len() == before {
            return Err(Error::Invalid(format!("no user {name}")));
        }
        self.save()
    }

    /// Every user and role.
    pub fn list(&self) -> Vec<(String, Role)> {
        self.file
            .users
            .iter()
            .map(|u| (u.name.clone(), u.role))
            .collect()
    }

    /// The role of `name` when `password` is right; an unknown name costs the same time.
    pub fn verify(&self, name: &str, password: &str) -> Option<Role> {
        let user = self.file.users.iter().find(|u| u.name == name);
        let phc = user.map_or(self.decoy.as_str(), |u| u.hash.as_str());
        let parsed = PasswordHash::new(phc).ok()?;
        let ok = argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        user.filter(|_| ok).map(|u| u.role)
    }

    fn save(&self) -> Result<()> {
        let text = serde_json::to_vec_pretty(&self.file)
            .map_err(|e| Error::Invalid(format!("users: {e}")))?;
        fsio::write_private(&self.path, &text)?;
        Ok(())
    }
}

fn hash(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::Invalid(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Invalid(format!("password hash: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_stored_hashed_and_private() {
        let t = tempfile::tempdir().unwrap();
        let mut u = Users::load(t.path()).unwrap();
        u.add("alice", Role::Backup, "s3cret", false).unwrap();
        assert!(u.add("alice", Role::Admin, "x", false).is_err());
        assert!(u.add("bad name", Role::Admin, "x", false).is_err());
        let text = std::fs::read_to_string(t.path().join(USERS_FILE)).unwrap();
        assert!(!text.contains("s3cret") && text.contains("$argon2id$"));
        let again = Users::load(t.path()).unwrap();
        assert_eq!(again.verify("alice", "s3cret"), Some(Role::Backup));
        assert_eq!(again.verify("alice", "wrong"), None);
        assert_eq!(again.verify("bob", "s3cret"), None);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(t.path().join(USERS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
