//! `setup` and `uninstall`: merging exactly our keys into Claude Code's `settings.json`, and
//! removing exactly those keys again, leaving every other key as it was; and reading the
//! helper's configuration back from that file for runs from a terminal.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The `env` keys `setup` writes and `uninstall` removes.
pub const ENV_KEYS: [&str; 10] = [
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_MODEL",
    "ANTHROPIC_DEFAULT_SONNET_MODEL",
    "ANTHROPIC_DEFAULT_OPUS_MODEL",
    "ANTHROPIC_DEFAULT_HAIKU_MODEL",
    // Subagents asking for `fable` otherwise send Claude Code's built-in id, which no tier has.
    "ANTHROPIC_DEFAULT_FABLE_MODEL",
    "ANTHROPIC_SMALL_FAST_MODEL",
    "CLAUDE_CODE_API_KEY_HELPER_TTL_MS",
    "CLAUDE_SSO_ISSUER",
    "CLAUDE_SSO_CLIENT_ID",
];

/// `env` keys for the helper's other settings, each written by `setup` only when it was given
/// (a value other than its default), so that the helper Claude Code runs asks the IdP for what
/// `setup` was told (an Auth0 `audience`, scopes, the redirect port, the gateway's token age);
/// `setup` removes those not given, and `uninstall` removes them all.
pub const OPTIONAL_ENV_KEYS: [&str; 6] = [
    "CLAUDE_SSO_AUDIENCE",
    "CLAUDE_SSO_SCOPES",
    "CLAUDE_SSO_REDIRECT_PORT",
    "CLAUDE_SSO_MAX_TOKEN_AGE_SECONDS",
    "CLAUDE_SSO_MARGIN_SECONDS",
    "CLAUDE_SSO_ALLOW_INSECURE_HTTP",
];

/// What `setup` writes.
#[derive(Debug, Clone)]
pub struct Setup {
    /// `apiKeyHelper`: the absolute path of this binary (Claude Code on Windows needs it
    /// absolute), quoted for the shell as [`helper_command`] does.
    pub helper: String,
    /// `ANTHROPIC_BASE_URL`: the gateway.
    pub gateway_url: String,
    /// Values for `ENV_KEYS[1..]`, in order.
    pub values: [String; 9],
    /// Values for `OPTIONAL_ENV_KEYS`, in order: `None` for one not given.
    pub optional: [Option<String>; 6],
}

/// Why the settings file could not be changed.
#[derive(Debug)]
pub enum SettingsError {
    /// Reading or writing failed.
    Io(std::io::Error),
    /// The file is not a JSON object; it is left untouched.
    NotAnObject(String),
}

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SettingsError::Io(e) => write!(f, "{e}"),
            SettingsError::NotAnObject(why) => {
                write!(f, "settings file is not a JSON object ({why}); fix or move it first")
            }
        }
    }
}

fn load(path: &Path) -> Result<Map<String, Value>, SettingsError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
        Err(e) => return Err(SettingsError::Io(e)),
    };
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(SettingsError::NotAnObject("not an object".to_owned())),
        Err(e) => Err(SettingsError::NotAnObject(e.to_string())),
    }
}

fn save(path: &Path, map: Map<String, Value>) -> Result<(), SettingsError> {
    let text =
        serde_json::to_string_pretty(&Value::Object(map)).map_err(|e| SettingsError::Io(std::io::Error::other(e)))?;
    let target = follow_links(path).map_err(SettingsError::Io)?;
    if let Some(dir) = target.parent() {
        fs::create_dir_all(dir).map_err(SettingsError::Io)?;
    }
    replace(&target, format!("{text}\n").as_bytes()).map_err(SettingsError::Io)
}

/// The file `path` names: a symbolic link (settings kept in a dotfiles repository) is followed
/// to its target, even one that does not exist yet, so that the target is written and the link
/// stays a link.
fn follow_links(path: &Path) -> std::io::Result<PathBuf> {
    let mut file = path.to_path_buf();
    // As many links as Linux follows (ELOOP).
    for _ in 0..40 {
        match fs::symlink_metadata(&file) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&file)?;
                // A relative target is relative to the link's directory; `join` keeps an absolute one.
                file = file.parent().map_or_else(|| target.clone(), |dir| dir.join(&target));
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            Ok(_) | Err(_) => return Ok(file),
        }
    }
    Err(std::io::Error::other("too many levels of symbolic links"))
}

/// Replaces `target` with `bytes` atomically: a new temporary file next to it (a unique name,
/// created only if absent, so nothing planted there is followed), with the permissions the old
/// file had (owner-only for a new file: the `env` block often holds secrets), then renamed over it.
fn replace(target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let permissions = match fs::metadata(target) {
        Ok(meta) => Some(meta.permissions()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let random = crate::pkce::random(8).map_err(|e| std::io::Error::other(e.to_string()))?;
    let tmp = target.with_file_name(format!(".{name}.{}.{random}.tmp", std::process::id()));
    let written = crate::cache::write_new(&tmp, bytes, permissions).and_then(|()| fs::rename(&tmp, target));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// `apiKeyHelper` for the helper at `path`. Claude Code runs it as a shell command (`/bin/sh`
/// on macOS and Linux), so a path with anything but `A-Za-z0-9/._+-` is single-quoted (a `'`
/// in it written `'\''`). On Windows (`windows`) a path with more than those, `\` and `:` is
/// double-quoted instead, which cmd.exe, Windows argument parsing and sh all take around a
/// path (a Windows path cannot hold `"`).
pub fn helper_command(path: &str, windows: bool) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._+-".contains(c);
    if windows {
        if !path.is_empty() && path.chars().all(|c| plain(c) || c == '\\' || c == ':') {
            return path.to_owned();
        }
        return format!("\"{path}\"");
    }
    if !path.is_empty() && path.chars().all(plain) {
        return path.to_owned();
    }
    format!("'{}'", path.replace('\'', r"'\''"))
}

/// Variables of Claude Code's `env` block that also steer how the helper reaches the IdP (its
/// HTTP client takes the proxy and the CA certificates from them).
const NETWORK_KEYS: [&str; 10] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// Whether an `env` key of Claude Code's settings configures this helper.
fn configures_helper(key: &str) -> bool {
    key.starts_with("CLAUDE_SSO_") || key == "CLAUDE_CODE_API_KEY_HELPER_TTL_MS" || NETWORK_KEYS.contains(&key)
}

/// The helper's configuration in the settings file's `env` block (the `CLAUDE_SSO_*` keys, the
/// helper TTL, the proxy and CA variables). Claude Code passes that block to the helper; a person who runs
/// `claude-sso-signin login` in a terminal has none of it, so it is read from the file. A missing
/// or unreadable file gives nothing.
pub fn helper_env(path: &Path) -> Vec<(String, String)> {
    let Ok(map) = load(path) else { return Vec::new() };
    let Some(Value::Object(env)) = map.get("env") else { return Vec::new() };
    env.iter()
        .filter(|(k, _)| configures_helper(k))
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

/// Merges our keys into the settings file, keeping all others.
pub fn setup(path: &Path, setup: &Setup) -> Result<(), SettingsError> {
    let mut map = load(path)?;
    map.insert("apiKeyHelper".to_owned(), Value::String(setup.helper.clone()));
    let env = map.entry("env").or_insert_with(|| Value::Object(Map::new()));
    if !env.is_object() {
        *env = Value::Object(Map::new());
    }
    if let Value::Object(env) = env {
        env.insert(ENV_KEYS[0].to_owned(), Value::String(setup.gateway_url.clone()));
        for (key, value) in ENV_KEYS[1..].iter().zip(&setup.values) {
            env.insert((*key).to_owned(), Value::String(value.clone()));
        }
        for (key, value) in OPTIONAL_ENV_KEYS.iter().zip(&setup.optional) {
            match value {
                Some(value) => env.insert((*key).to_owned(), Value::String(value.clone())),
                None => env.remove(*key),
            };
        }
    }
    save(path, map)
}

/// Removes exactly our keys (and `env` if nothing else is left in it).
pub fn uninstall(path: &Path) -> Result<bool, SettingsError> {
    if !path.exists() {
        return Ok(false);
    }
    let mut map = load(path)?;
    let mut changed = map.remove("apiKeyHelper").is_some();
    if let Some(Value::Object(env)) = map.get_mut("env") {
        for key in ENV_KEYS.iter().chain(&OPTIONAL_ENV_KEYS) {
            changed |= env.remove(*key).is_some();
        }
        if env.is_empty() {
            map.remove("env");
        }
    }
    // Nothing of ours there: the file is left as it is, byte for byte.
    if changed {
        save(path, map)?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Setup {
        Setup {
            helper: "/opt/bin/claude-sso-signin".into(),
            gateway_url: "https://claude-gw.example.com".into(),
            values: ["m", "s", "o", "h", "fa", "f", "300000", "https://idp", "claude-code"].map(String::from),
            optional: Default::default(),
        }
    }

    fn temp(name: &str, content: Option<&str>) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("csg-settings-{name}-{}.json", std::process::id()));
        let _ = fs::remove_file(&path);
        if let Some(c) = content {
            fs::write(&path, c).unwrap();
        }
        path
    }

    #[test]
    fn setup_keeps_other_keys_and_uninstall_restores_them() {
        let original = json!({"theme": "dark", "permissions": {"allow": ["Bash(ls)"]},
                              "env": {"HTTPS_PROXY": "http://proxy:3128", "ANTHROPIC_MODEL": "old"}});
        let path = temp("merge", Some(&original.to_string()));
        setup(&path, &sample()).unwrap();
        let merged: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(merged["theme"], "dark");
        assert_eq!(merged["permissions"], original["permissions"]);
        assert_eq!(merged["apiKeyHelper"], "/opt/bin/claude-sso-signin");
        assert_eq!(merged["env"]["HTTPS_PROXY"], "http://proxy:3128");
        assert_eq!(merged["env"]["ANTHROPIC_BASE_URL"], "https://claude-gw.example.com");
        assert_eq!(merged["env"]["ANTHROPIC_MODEL"], "m");
        assert_eq!(merged["env"]["CLAUDE_CODE_API_KEY_HELPER_TTL_MS"], "300000");
        assert_eq!(merged["env"]["ANTHROPIC_DEFAULT_FABLE_MODEL"], "fa");
        assert_eq!(merged["env"]["ANTHROPIC_SMALL_FAST_MODEL"], "f");
        assert!(uninstall(&path).unwrap());
        let restored: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            restored,
            json!({"theme": "dark", "permissions": {"allow": ["Bash(ls)"]}, "env": {"HTTPS_PROXY": "http://proxy:3128"}})
        );
        fs::remove_file(path).unwrap();
    }

    #[test]
    fn the_settings_given_go_along_and_those_not_given_are_taken_out() {
        let path = temp("optional", None);
        let mut given = sample();
        given.optional = [Some("api://gw"), Some("openid offline_access"), Some("0"), Some("3600"), None, None]
            .map(|v| v.map(str::to_owned));
        setup(&path, &given).unwrap();
        let env =
            |path: &Path| serde_json::from_str::<Value>(&fs::read_to_string(path).unwrap()).unwrap()["env"].clone();
        let written = env(&path);
        assert_eq!(written["CLAUDE_SSO_AUDIENCE"], "api://gw");
        assert_eq!(written["CLAUDE_SSO_SCOPES"], "openid offline_access");
        assert_eq!(written["CLAUDE_SSO_REDIRECT_PORT"], "0");
        assert_eq!(written["CLAUDE_SSO_MAX_TOKEN_AGE_SECONDS"], "3600");
        assert!(written.get("CLAUDE_SSO_MARGIN_SECONDS").is_none());
        // The helper run from a terminal reads them back, so it asks the IdP for the same.
        let read: Vec<String> = helper_env(&path).into_iter().map(|(k, _)| k).collect();
        assert!(read.contains(&"CLAUDE_SSO_AUDIENCE".to_owned()), "{read:?}");
        // Set up again without them: none lingers.
        setup(&path, &sample()).unwrap();
        let again = env(&path);
        assert!(OPTIONAL_ENV_KEYS.iter().all(|k| again.get(*k).is_none()), "{again}");
        setup(&path, &given).unwrap();
        uninstall(&path).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&fs::read_to_string(&path).unwrap()).unwrap(), json!({}));
        fs::remove_file(path).unwrap();
    }

    #[test]
    fn uninstall_with_nothing_of_ours_leaves_the_file_alone() {
        let text = "{\"theme\":\"dark\",\"n\":1e3, \"env\": {}}\n";
        let path = temp("untouched", Some(text));
        assert!(!uninstall(&path).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
        fs::remove_file(path).unwrap();
    }

    #[test]
    fn setup_on_missing_file_and_uninstall_drops_empty_env() {
        let path = temp("fresh", None);
        setup(&path, &sample()).unwrap();
        uninstall(&path).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&fs::read_to_string(&path).unwrap()).unwrap(), json!({}));
        fs::remove_file(path).unwrap();
    }

    #[test]
    fn helper_env_reads_only_our_keys() {
        let cases = [
            ("missing file", None, vec![]),
            ("broken file", Some("{ not json"), vec![]),
            ("no env", Some(r#"{"theme": "dark"}"#), vec![]),
            (
                "our keys only, strings only",
                Some(
                    r#"{"env": {"ANTHROPIC_BASE_URL": "https://gw", "CLAUDE_SSO_ISSUER": "https://idp",
                        "CLAUDE_SSO_CLIENT_ID": "cc", "CLAUDE_CODE_API_KEY_HELPER_TTL_MS": "60000",
                        "CLAUDE_SSO_MARGIN_SECONDS": 5, "HTTPS_PROXY": "http://p"}}"#,
                ),
                vec![
                    ("CLAUDE_SSO_ISSUER", "https://idp"),
                    ("CLAUDE_SSO_CLIENT_ID", "cc"),
                    ("CLAUDE_CODE_API_KEY_HELPER_TTL_MS", "60000"),
                    // The way to the IdP Claude Code's runs of the helper take.
                    ("HTTPS_PROXY", "http://p"),
                ],
            ),
        ];
        for (name, content, want) in cases {
            let path = temp(&format!("env-{}", name.replace(' ', "-")), content);
            let want: Vec<(String, String)> = want.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
            assert_eq!(helper_env(&path), want, "{name}");
            let _ = fs::remove_file(path);
        }
    }

    #[cfg(unix)]
    #[test]
    fn setup_and_uninstall_keep_the_files_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("perms");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // The env block often holds secrets (proxy credentials, API keys): a private file must
        // not become readable by others; any other mode stays as the person set it.
        for kept in [0o600, 0o640] {
            let path = dir.join(format!("settings-{kept:o}.json"));
            fs::write(&path, r#"{"env": {"HTTPS_PROXY": "http://user:s3cret@proxy:3128"}}"#).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(kept)).unwrap();
            setup(&path, &sample()).unwrap();
            assert_eq!(mode(&path), kept, "setup changed the mode {kept:o}");
            assert!(uninstall(&path).unwrap());
            assert_eq!(mode(&path), kept, "uninstall changed the mode {kept:o}");
        }
        let fresh = dir.join("new").join("settings.json");
        setup(&fresh, &sample()).unwrap();
        assert_eq!(mode(&fresh), 0o600, "a new settings file is owner-only");
        assert_no_temporary_files(&dir);
        fs::remove_dir_all(dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn setup_and_uninstall_write_through_a_symlink() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let dir = temp_dir("link");
        let target = dir.join("dotfiles").join("claude-settings.json");
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::write(&target, r#"{"theme": "dark"}"#).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.join("claude").join("settings.json");
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        // A relative link, as a dotfiles manager makes them, through a second link.
        symlink("../dotfiles/claude-settings.json", dir.join("claude").join("real.json")).unwrap();
        symlink("real.json", &link).unwrap();
        let is_link = |p: &Path| fs::symlink_metadata(p).unwrap().file_type().is_symlink();

        setup(&link, &sample()).unwrap();
        assert!(is_link(&link), "the link was replaced by a file");
        let merged: Value = serde_json::from_str(&fs::read_to_string(&target).unwrap()).unwrap();
        assert_eq!(
            (merged["theme"].as_str(), merged["apiKeyHelper"].as_str()),
            (Some("dark"), Some("/opt/bin/claude-sso-signin"))
        );
        assert_eq!(fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(uninstall(&link).unwrap());
        assert!(is_link(&link));
        assert_eq!(
            serde_json::from_str::<Value>(&fs::read_to_string(&target).unwrap()).unwrap(),
            json!({"theme": "dark"})
        );

        // A link whose target does not exist yet: the target is created, the link kept.
        let dangling = dir.join("claude").join("dangling.json");
        symlink("../dotfiles/later.json", &dangling).unwrap();
        setup(&dangling, &sample()).unwrap();
        assert!(is_link(&dangling));
        assert!(dir.join("dotfiles").join("later.json").is_file());
        assert_no_temporary_files(&dir);
        fs::remove_dir_all(dir).unwrap();
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("csg-settings-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn assert_no_temporary_files(dir: &Path) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !fs::symlink_metadata(&path).unwrap().file_type().is_symlink() {
                assert_no_temporary_files(&path);
            }
            assert!(!path.to_string_lossy().ends_with(".tmp"), "left behind: {}", path.display());
        }
    }

    #[test]
    fn the_helper_path_is_quoted_for_the_shell_when_it_needs_to_be() {
        let cases = [
            ("plain", "/opt/bin/claude-sso-signin", false, "/opt/bin/claude-sso-signin"),
            ("a space", "/Users/Ann Lee/bin/claude-sso-signin", false, "'/Users/Ann Lee/bin/claude-sso-signin'"),
            ("a single quote", "/home/o'brien/claude-sso-signin", false, r"'/home/o'\''brien/claude-sso-signin'"),
            ("a dollar", "/opt/$HOME/claude-sso-signin", false, "'/opt/$HOME/claude-sso-signin'"),
            ("version and plus", "/opt/c++/v1.2_3-x/claude-sso-signin", false, "/opt/c++/v1.2_3-x/claude-sso-signin"),
            (
                "Windows, plain",
                r"C:\Users\ann\bin\claude-sso-signin.exe",
                true,
                r"C:\Users\ann\bin\claude-sso-signin.exe",
            ),
            (
                "Windows, a space",
                r"C:\Program Files (x86)\csg\claude-sso-signin.exe",
                true,
                r#""C:\Program Files (x86)\csg\claude-sso-signin.exe""#,
            ),
        ];
        for (name, path, windows, want) in cases {
            assert_eq!(helper_command(path, windows), want, "{name}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_quoted_helper_path_runs_in_sh() {
        // What Claude Code does with apiKeyHelper: `/bin/sh -c <it>`.
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("quoted");
        for folder in ["My Tools", "it's here", "a $b & c"] {
            let program = dir.join(folder).join("claude-sso-signin");
            fs::create_dir_all(program.parent().unwrap()).unwrap();
            fs::write(&program, "#!/bin/sh\necho token\n").unwrap();
            fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).unwrap();
            let command = helper_command(&program.to_string_lossy(), false);
            let out = std::process::Command::new("/bin/sh").args(["-c", &command]).output().unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "token\n",
                "{command}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn broken_settings_are_left_alone() {
        let path = temp("broken", Some("{ not json"));
        assert!(matches!(setup(&path, &sample()), Err(SettingsError::NotAnObject(_))));
        assert_eq!(fs::read_to_string(&path).unwrap(), "{ not json");
        fs::remove_file(path).unwrap();
    }
}
