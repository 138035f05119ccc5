//! `setup` and `uninstall`: merging exactly our keys into Claude Code's `settings.json`, and
//! removing exactly those keys again, leaving every other key as it was; and reading the
//! helper's configuration back from that file for runs from a terminal.

use std::fs;
use std::path::Path;

use serde_json::{Map, Value};

/// The `env` keys `setup` writes and `uninstall` removes.
pub const ENV_KEYS: [&str; 9] = [
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_MODEL",
    "ANTHROPIC_DEFAULT_SONNET_MODEL",
    "ANTHROPIC_DEFAULT_OPUS_MODEL",
    "ANTHROPIC_DEFAULT_HAIKU_MODEL",
    "ANTHROPIC_SMALL_FAST_MODEL",
    "CLAUDE_CODE_API_KEY_HELPER_TTL_MS",
    "CLAUDE_SSO_ISSUER",
    "CLAUDE_SSO_CLIENT_ID",
];

/// What `setup` writes.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Absolute path of this binary (Claude Code on Windows needs it absolute).
    pub helper: String,
    /// `ANTHROPIC_BASE_URL`: the gateway.
    pub gateway_url: String,
    /// Values for `ENV_KEYS[1..]`, in order.
    pub values: [String; 8],
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
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(SettingsError::Io)?;
    }
    let text =
        serde_json::to_string_pretty(&Value::Object(map)).map_err(|e| SettingsError::Io(std::io::Error::other(e)))?;
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    fs::write(&tmp, format!("{text}\n")).map_err(SettingsError::Io)?;
    fs::rename(&tmp, path).map_err(SettingsError::Io)
}

/// Whether an `env` key of Claude Code's settings configures this helper.
fn configures_helper(key: &str) -> bool {
    key.starts_with("CLAUDE_SSO_") || key == "CLAUDE_CODE_API_KEY_HELPER_TTL_MS"
}

/// The helper's configuration in the settings file's `env` block (the `CLAUDE_SSO_*` keys and the
/// helper TTL). Claude Code passes that block to the helper; a person who runs
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
        for key in ENV_KEYS {
            changed |= env.remove(key).is_some();
        }
        if env.is_empty() {
            map.remove("env");
        }
    }
    save(path, map)?;
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
            values: ["m", "s", "o", "h", "f", "300000", "https://idp", "claude-code"].map(String::from),
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
        assert!(uninstall(&path).unwrap());
        let restored: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            restored,
            json!({"theme": "dark", "permissions": {"allow": ["Bash(ls)"]}, "env": {"HTTPS_PROXY": "http://proxy:3128"}})
        );
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

    #[test]
    fn broken_settings_are_left_alone() {
        let path = temp("broken", Some("{ not json"));
        assert!(matches!(setup(&path, &sample()), Err(SettingsError::NotAnObject(_))));
        assert_eq!(fs::read_to_string(&path).unwrap(), "{ not json");
        fs::remove_file(path).unwrap();
    }
}
