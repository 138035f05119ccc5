//! The token cache: one file per issuer and client in the user's config directory, owner-only
//! (0600 in a 0700 directory on Unix; on Windows the profile directory is already private to
//! the user), written atomically, and a lock file that serialises concurrent runs.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::claims;

/// What is remembered between runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cached {
    /// The issuer it came from.
    pub issuer: String,
    /// The client it was issued to.
    pub client_id: String,
    /// The access token.
    pub access_token: String,
    /// When it expires, seconds since the epoch.
    pub expires_at: u64,
    /// When it arrived, by this computer's clock (seconds since the epoch); 0 in a file written
    /// before it was recorded.
    #[serde(default)]
    pub received_at: u64,
    /// For silent renewal.
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// What the sign-in asked for; `None` in a file written before it was recorded.
    #[serde(default)]
    pub requested: Option<Requested>,
    /// The scopes the IdP said it granted last (`scope` of its last answer that had one), sent
    /// back with the refresh token; `None` when it never said.
    #[serde(default)]
    pub scope: Option<String>,
}

/// The token a run handed out last, kept beside the cache in `<name>.handed-out`. It is written
/// without the lock (a fresh token is handed out without it), so never into the cache file: a run
/// writing back what it had read could undo a refresh and bring back a spent refresh token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandOut {
    /// [`digest`] of the token.
    pub token: String,
    /// When, seconds since the epoch.
    pub at: u64,
    /// [`digest`] of the last token renewed because a run asked for it again right after it
    /// was handed out: it is renewed only once.
    #[serde(default)]
    pub renewed: Option<String>,
}

impl HandOut {
    /// When `token` was handed out, if it was the last one.
    pub fn handed_out_at(&self, token: &str) -> Option<u64> {
        (self.token == digest(token)).then_some(self.at)
    }

    /// Whether `token` was already renewed for being asked for again.
    pub fn renewed(&self, token: &str) -> bool {
        self.renewed.as_deref() == Some(digest(token).as_str())
    }
}

/// A digest that tells tokens apart without keeping them.
pub fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// What a sign-in asks the IdP for besides the client: a saved sign-in serves only runs that ask
/// for the same. A refresh keeps the grant's audience and scopes (Auth0), so one made before the
/// settings changed would go on yielding tokens the gateway refuses until its refresh token dies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requested {
    /// The `audience` parameter, if any.
    pub audience: Option<String>,
    /// The scopes, sorted and without repeats (their order and spacing mean nothing).
    pub scopes: Vec<String>,
}

impl Requested {
    /// From the settings: the audience and the space-separated scopes.
    pub fn new(audience: Option<&str>, scopes: &str) -> Requested {
        let mut scopes: Vec<String> = scopes.split_whitespace().map(str::to_owned).collect();
        scopes.sort();
        scopes.dedup();
        Requested { audience: audience.map(str::to_owned), scopes }
    }
}

impl Cached {
    /// Whether this sign-in serves a run that asks for `asked`. One saved before the request was
    /// recorded is taken as made with today's settings (which it almost always was; setting it
    /// aside would send every person to sign in again on upgrading) unless its token names
    /// audiences without the one asked for: the case of an audience added to the settings.
    pub fn made_for(&self, asked: &Requested) -> bool {
        match (&self.requested, &asked.audience) {
            (Some(requested), _) => requested == asked,
            (None, Some(audience)) => claims::audiences(&self.access_token).is_none_or(|a| a.contains(audience)),
            (None, None) => true,
        }
    }
}

/// The cache location for one issuer and client.
#[derive(Debug, Clone)]
pub struct CacheFile {
    /// The directory (created 0700).
    pub dir: PathBuf,
    /// The token file.
    pub path: PathBuf,
    lock_path: PathBuf,
    handed_out_path: PathBuf,
}

impl CacheFile {
    /// `<dir>/<digest of issuer and client>.json`.
    pub fn new(dir: &Path, issuer: &str, client_id: &str) -> CacheFile {
        let digest = Sha256::digest(format!("{issuer}\n{client_id}").as_bytes());
        let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        CacheFile {
            dir: dir.to_path_buf(),
            path: dir.join(format!("{name}.json")),
            lock_path: dir.join(format!("{name}.lock")),
            handed_out_path: dir.join(format!("{name}.handed-out")),
        }
    }

    /// The default directory: `<config dir>/claude-sso`.
    pub fn default_dir() -> Option<PathBuf> {
        dirs::config_dir().map(|d| d.join("claude-sso"))
    }

    fn ensure_dir(&self) -> std::io::Result<()> {
        // Created owner-only (and so are the parents it creates): created with the umask's mode
        // and restricted after, it was open to others meanwhile under a permissive umask.
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(&self.dir)?;
        // One that was already there keeps its mode unless restricted.
        restrict(&self.dir, 0o700)
    }

    /// Takes the exclusive lock; it is released when the returned file is dropped.
    pub fn lock(&self) -> std::io::Result<File> {
        let file = self.lock_file()?;
        file.lock()?;
        Ok(file)
    }

    /// Takes the exclusive lock if it comes within `wait` (`Ok(None)`: another process held it
    /// all that time, such as a `login` waiting for its person).
    pub fn lock_within(&self, wait: std::time::Duration) -> std::io::Result<Option<File>> {
        let file = self.lock_file()?;
        let deadline = std::time::Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Some(file)),
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Where the lock is, for messages.
    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    fn lock_file(&self) -> std::io::Result<File> {
        self.ensure_dir()?;
        let mut options = OpenOptions::new();
        options.create(true).truncate(false).write(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(&self.lock_path)?;
        restrict(&self.lock_path, 0o600)?;
        Ok(file)
    }

    /// The cached tokens, if any (an unreadable file counts as none).
    pub fn load(&self) -> Option<Cached> {
        let text = fs::read_to_string(&self.path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes atomically: a private temporary file, then a rename over the old one.
    pub fn store(&self, cached: &Cached) -> std::io::Result<()> {
        self.replace(&self.path, cached)
    }

    /// The token handed out last (all empty when nothing was recorded or it cannot be read).
    pub fn last_hand_out(&self) -> HandOut {
        fs::read_to_string(&self.handed_out_path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default()
    }

    /// Records that `token` is handed out at `now`, keeping which token was renewed last.
    pub fn record_hand_out(&self, token: &str, now: u64) -> std::io::Result<()> {
        let renewed = self.last_hand_out().renewed;
        self.replace(&self.handed_out_path, &HandOut { token: digest(token), at: now, renewed })
    }

    /// Records that `token` is being renewed because it was asked for again.
    pub fn record_renewal(&self, token: &str) -> std::io::Result<()> {
        let last = self.last_hand_out();
        self.replace(&self.handed_out_path, &HandOut { renewed: Some(digest(token)), ..last })
    }

    /// Writes `value` as JSON to `path` atomically: a private temporary file, then a rename.
    fn replace(&self, path: &Path, value: &impl Serialize) -> std::io::Result<()> {
        self.ensure_dir()?;
        let json = serde_json::to_string(value).map_err(std::io::Error::other)?;
        // A random part in the name: a name from the PID alone collided with the file a killed
        // run had left (PIDs repeat, in containers soon), and the refreshed tokens were lost.
        let mut random = [0u8; 8];
        getrandom::getrandom(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
        let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = self.dir.join(format!(".{}.{}.{random}.tmp", file_name(path), std::process::id()));
        let written = write_new(&tmp, json.as_bytes(), None).and_then(|()| fs::rename(&tmp, path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    /// Deletes the cache (and the record of the last hand-out); returns whether there was one.
    pub fn delete(&self) -> std::io::Result<bool> {
        match fs::remove_file(&self.handed_out_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Creates `path` (owner-only while it is written; nothing already there is followed), writes
/// `bytes`, gives it `permissions` if any, and syncs it to disk.
pub(crate) fn write_new(path: &Path, bytes: &[u8], permissions: Option<fs::Permissions>) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.create_new(true).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    if let Some(permissions) = permissions {
        file.set_permissions(permissions)?;
    }
    file.sync_all()
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn restrict(_: &Path, _: u32) -> std::io::Result<()> {
    // On Windows the file lives under the user's own profile, whose ACL already admits only
    // the user, SYSTEM and administrators.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Cached {
        Cached {
            issuer: "https://idp".into(),
            client_id: "c".into(),
            access_token: "a".into(),
            expires_at: 5,
            received_at: 1,
            refresh_token: Some("r".into()),
            requested: Some(Requested::new(None, "openid email")),
            scope: Some("openid email".into()),
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("csg-cache-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn store_load_delete_round_trip() {
        let root = temp_dir("roundtrip");
        let cache = CacheFile::new(&root.join("claude-sso"), "https://idp", "c");
        assert_eq!(cache.load(), None);
        cache.store(&sample()).unwrap();
        assert_eq!(cache.load(), Some(sample()));
        assert!(cache.delete().unwrap());
        assert!(!cache.delete().unwrap());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_file_written_before_received_at_was_recorded_still_loads() {
        let root = temp_dir("older");
        let cache = CacheFile::new(&root.join("claude-sso"), "https://idp", "c");
        fs::create_dir_all(&cache.dir).unwrap();
        let older = r#"{"issuer":"https://idp","client_id":"c","access_token":"a","expires_at":5,"refresh_token":"r"}"#;
        fs::write(&cache.path, older).unwrap();
        assert_eq!(cache.load(), Some(Cached { received_at: 0, requested: None, scope: None, ..sample() }));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn the_last_hand_out_keeps_the_renewal_and_goes_with_the_cache() {
        let root = temp_dir("handout");
        let cache = CacheFile::new(&root.join("claude-sso"), "https://idp", "c");
        assert_eq!(cache.last_hand_out(), HandOut::default());
        cache.store(&sample()).unwrap();
        cache.record_hand_out("token-1", 100).unwrap();
        cache.record_renewal("token-1").unwrap();
        cache.record_hand_out("token-2", 105).unwrap();
        let last = cache.last_hand_out();
        assert_eq!((last.handed_out_at("token-2"), last.handed_out_at("token-1")), (Some(105), None));
        assert!(last.renewed("token-1") && !last.renewed("token-2"));
        assert!(!fs::read_to_string(&cache.handed_out_path).unwrap().contains("token-"), "a digest, not the token");
        assert!(cache.delete().unwrap());
        assert_eq!(cache.last_hand_out(), HandOut::default());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_stale_temporary_file_does_not_block_a_store() {
        // A run killed mid-write left its temporary file; a later run with the same PID (PIDs
        // repeat in containers) must still store. This is that PID: the test process stores.
        let root = temp_dir("stale");
        let cache = CacheFile::new(&root.join("claude-sso"), "https://idp", "c");
        fs::create_dir_all(&cache.dir).unwrap();
        let name = file_name(&cache.path);
        for stale in [format!(".{}.{name}.tmp", std::process::id()), format!(".{name}.{}.tmp", std::process::id())] {
            fs::write(cache.dir.join(stale), "").unwrap();
        }
        cache.store(&sample()).unwrap();
        assert_eq!(cache.load(), Some(sample()));
        let left: Vec<_> = fs::read_dir(&cache.dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 3, "no temporary file of this store is left behind: {left:?}");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_sign_in_serves_only_runs_that_ask_for_the_same() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let jwt = |claims: serde_json::Value| format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims.to_string()));
        let api = Some("https://api");
        let made = |requested, token: &str| Cached { requested, access_token: token.to_owned(), ..sample() };
        let recorded = |audience| made(Some(Requested::new(audience, "openid email")), "opaque");
        let older = |token: &str| made(None, token);
        let for_old_api = jwt(serde_json::json!({"aud": ["https://old-api", "https://idp/userinfo"]}));
        let for_api = jwt(serde_json::json!({"aud": "https://api"}));
        let cases = [
            ("the same", recorded(None), None, " email  openid openid", true),
            ("an audience added", recorded(None), api, "openid email", false),
            ("the audience removed", recorded(api), None, "openid email", false),
            ("a scope added", recorded(None), None, "openid email groups", false),
            ("older file, no audience asked", older(&for_old_api), None, "openid email groups", true),
            ("older file, token for another audience", older(&for_old_api), api, "openid email", false),
            ("older file, token for this audience", older(&for_api), api, "openid email", true),
            ("older file, opaque token", older("opaque"), api, "openid email", true),
        ];
        for (name, saved, audience, scopes, want) in cases {
            assert_eq!(saved.made_for(&Requested::new(audience, scopes)), want, "{name}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn owner_only_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let root = temp_dir("perms");
        let cache = CacheFile::new(&root.join("claude-sso"), "https://idp", "c");
        cache.store(&sample()).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&cache.dir), 0o700);
        assert_eq!(mode(&cache.path), 0o600);
        drop(cache.lock().unwrap());
        assert_eq!(mode(&cache.lock_path), 0o600);
        // A new directory is owner-only from the start, not restricted after: the mode given at
        // creation is what a parent it creates along the way gets too.
        let nested = CacheFile::new(&root.join("new").join("claude-sso"), "https://idp", "c");
        nested.store(&sample()).unwrap();
        assert_eq!(mode(&root.join("new")), 0o700);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn one_file_per_issuer_and_client() {
        let dir = Path::new("/x");
        let a = CacheFile::new(dir, "https://idp-a", "c").path;
        assert_ne!(a, CacheFile::new(dir, "https://idp-b", "c").path);
        assert_ne!(a, CacheFile::new(dir, "https://idp-a", "d").path);
        assert_eq!(a, CacheFile::new(dir, "https://idp-a", "c").path);
    }
}
