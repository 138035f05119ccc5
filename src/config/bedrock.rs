//! The Bedrock part of a target: region, AWS credentials (in the config or named VM
//! environment variables, like `api_key` / `api_key_env`) and the beta allow-list.

use super::raw::RawTarget;
use super::ConfigError;
use crate::bedrock::{Credentials, DEFAULT_BETAS};

/// Where and as whom a Bedrock target calls Bedrock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BedrockTarget {
    /// AWS region, e.g. `us-east-1`; the endpoint is `bedrock-runtime.<region>.amazonaws.com`.
    pub region: String,
    /// Signing credentials. `Debug` hides the secret parts.
    pub credentials: Credentials,
    /// Betas forwarded in `anthropic_beta`; others are dropped.
    pub betas: Vec<String>,
}

/// Refuses Bedrock fields on a target of another provider.
pub(super) fn check_absent(field: &str, raw: &RawTarget) -> Result<(), ConfigError> {
    let bedrock_only = [
        ("region", raw.region.is_some()),
        ("access_key_id", raw.access_key_id.is_some()),
        ("access_key_id_env", raw.access_key_id_env.is_some()),
        ("secret_access_key", raw.secret_access_key.is_some()),
        ("secret_access_key_env", raw.secret_access_key_env.is_some()),
        ("session_token", raw.session_token.is_some()),
        ("session_token_env", raw.session_token_env.is_some()),
        ("betas", raw.betas.is_some()),
    ];
    match bedrock_only.iter().find(|(_, given)| *given) {
        Some((name, _)) => Err(ConfigError::new(format!("{field}.{name}"), "only for provider bedrock")),
        None => Ok(()),
    }
}

/// Compiles the Bedrock fields of target `field` (`targets.<name>`).
pub(super) fn compile(
    field: &str,
    raw: &RawTarget,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BedrockTarget, ConfigError> {
    if raw.api_key.is_some() || raw.api_key_env.is_some() {
        let name = if raw.api_key.is_some() { "api_key" } else { "api_key_env" };
        return Err(ConfigError::new(
            format!("{field}.{name}"),
            "not used by provider bedrock (give access_key_id and secret_access_key, or their _env forms)",
        ));
    }
    let region = match &raw.region {
        None => return Err(ConfigError::new(format!("{field}.region"), "required for provider bedrock")),
        Some(r) => r.clone(),
    };
    let region_ok = region.split('-').count() >= 3
        && region.split('-').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    if !region_ok {
        return Err(ConfigError::new(
            format!("{field}.region"),
            format!("{region:?} is not an AWS region such as us-east-1"),
        ));
    }
    let access_key_id = secret(field, "access_key_id", &raw.access_key_id, &raw.access_key_id_env, env)?;
    let secret_access_key =
        secret(field, "secret_access_key", &raw.secret_access_key, &raw.secret_access_key_env, env)?;
    let session_token = secret(field, "session_token", &raw.session_token, &raw.session_token_env, env)?;
    let (Some(access_key_id), Some(secret_access_key)) = (access_key_id, secret_access_key) else {
        let missing = if raw.access_key_id.is_none() && raw.access_key_id_env.is_none() {
            "access_key_id"
        } else {
            "secret_access_key"
        };
        return Err(ConfigError::new(field, format!("{missing} or {missing}_env is required for provider bedrock")));
    };
    // The key id goes verbatim into the Authorization header's Credential= part.
    if !access_key_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        let key_field = if raw.access_key_id.is_some() { "access_key_id" } else { "access_key_id_env" };
        return Err(ConfigError::new(format!("{field}.{key_field}"), "access_key_id must be letters and digits"));
    }
    let betas = match &raw.betas {
        None => DEFAULT_BETAS.iter().map(|b| (*b).to_owned()).collect(),
        Some(list) => list.clone(),
    };
    if let Some(i) = betas.iter().position(|b| b.is_empty() || !b.bytes().all(|c| c.is_ascii_graphic() && c != b',')) {
        return Err(ConfigError::new(
            format!("{field}.betas[{i}]"),
            "must be a beta name (no spaces, commas or control characters)",
        ));
    }
    Ok(BedrockTarget { region, credentials: Credentials { access_key_id, secret_access_key, session_token }, betas })
}

/// A credential given in the config (`name`) or by the VM environment variable named in
/// `<name>_env`. `None` when neither is given.
fn secret(
    field: &str,
    name: &str,
    value: &Option<String>,
    env_name: &Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, ConfigError> {
    let value = match (value, env_name) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(field, format!("give {name} or {name}_env, not both")));
        }
        (None, None) => return Ok(None),
        (Some(v), None) => v.clone(),
        (None, Some(var)) => super::from_env(&format!("{field}.{name}_env"), var, env)?,
    };
    let value_field = if env_name.is_some() { format!("{field}.{name}_env") } else { format!("{field}.{name}") };
    super::check_credential(&value_field, name, &value, env_name.as_deref())?;
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::super::{tests::sample, ConfigError, Plan, Provider};
    use serde_json::{json, Value};

    fn env(name: &str) -> Option<String> {
        match name {
            "ANTHROPIC_API_KEY" => Some("sk-ant-test".to_owned()),
            "AWS_ACCESS_KEY_ID" => Some("AKIDENVEXAMPLE".to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some("env-secret".to_owned()),
            "AWS_SESSION_TOKEN" => Some("env-token".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn with_bedrock(target: Value) -> Value {
        let mut doc = sample();
        doc["targets"]["bedrock"] = target;
        doc["models"][0]["target"] = json!("bedrock");
        doc["models"][0]["model_id"] = json!("us.anthropic.claude-sonnet-4-20250514-v1:0");
        doc
    }

    fn base() -> Value {
        json!({"provider": "bedrock", "region": "us-east-1",
               "access_key_id_env": "AWS_ACCESS_KEY_ID", "secret_access_key_env": "AWS_SECRET_ACCESS_KEY"})
    }

    fn load(doc: &Value) -> Result<Plan, ConfigError> {
        Plan::from_json(doc.to_string().as_bytes(), &env)
    }

    #[test]
    fn bedrock_target_compiles_with_env_credentials_and_default_betas() {
        let plan = load(&with_bedrock(base())).unwrap();
        let target = plan.targets.iter().find(|t| t.name == "bedrock").unwrap();
        assert_eq!(target.provider, Provider::Bedrock);
        assert_eq!(target.provider.name(), "bedrock");
        assert_eq!(target.api_key, "");
        let b = target.bedrock.as_ref().unwrap();
        assert_eq!(b.region, "us-east-1");
        assert_eq!(b.credentials.access_key_id, "AKIDENVEXAMPLE");
        assert_eq!(b.credentials.secret_access_key, "env-secret");
        assert_eq!(b.credentials.session_token, None);
        assert_eq!(b.betas, crate::bedrock::DEFAULT_BETAS);
        assert!(plan.targets.iter().find(|t| t.name == "anthropic").unwrap().bedrock.is_none());
        let text = format!("{plan:?}");
        assert!(!text.contains("env-secret") && text.contains("AKIDENVEXAMPLE"), "{text}");
    }

    #[test]
    fn inline_credentials_session_token_and_betas() {
        let target = json!({"provider": "bedrock", "region": "eu-central-1", "access_key_id": "ASIAEXAMPLE",
                            "secret_access_key": "inline-secret", "session_token_env": "AWS_SESSION_TOKEN",
                            "betas": ["interleaved-thinking-2025-05-14"]});
        let plan = load(&with_bedrock(target)).unwrap();
        let b = plan.targets.iter().find_map(|t| t.bedrock.as_ref()).unwrap();
        assert_eq!(b.credentials.session_token.as_deref(), Some("env-token"));
        assert_eq!(b.credentials.secret_access_key, "inline-secret");
        assert_eq!(b.betas, ["interleaved-thinking-2025-05-14"]);
        let kong_empty = json!({"provider": "bedrock", "region": "eu-central-1", "access_key_id": "A1",
                                "secret_access_key": "s", "betas": {}, "session_token": null});
        let plan = load(&with_bedrock(kong_empty)).unwrap();
        assert!(plan.targets.iter().find_map(|t| t.bedrock.as_ref()).unwrap().betas.is_empty());
    }

    #[test]
    fn invalid_bedrock_targets_name_the_field() {
        type Edit = fn(&mut Value);
        let cases: &[(&str, Edit, &str)] = &[
            (
                "no region",
                |t| _ = t.as_object_mut().unwrap().remove("region"),
                "config error: targets.bedrock.region: required for provider bedrock",
            ),
            (
                "bad region",
                |t| t["region"] = json!("US East"),
                "config error: targets.bedrock.region: \"US East\" is not an AWS region such as us-east-1",
            ),
            (
                "no access key id",
                |t| _ = t.as_object_mut().unwrap().remove("access_key_id_env"),
                "config error: targets.bedrock: access_key_id or access_key_id_env is required for provider bedrock",
            ),
            (
                "no secret",
                |t| _ = t.as_object_mut().unwrap().remove("secret_access_key_env"),
                "config error: targets.bedrock: secret_access_key or secret_access_key_env is required for provider bedrock",
            ),
            (
                "secret env var not set",
                |t| t["secret_access_key_env"] = json!("NOPE"),
                "config error: targets.bedrock.secret_access_key_env: environment variable NOPE is not set in the VM",
            ),
            (
                "session token env var not set",
                |t| t["session_token_env"] = json!("NO_TOKEN"),
                "config error: targets.bedrock.session_token_env: environment variable NO_TOKEN is not set in the VM",
            ),
            (
                "both forms of the key id",
                |t| t["access_key_id"] = json!("AKID"),
                "config error: targets.bedrock: give access_key_id or access_key_id_env, not both",
            ),
            (
                "empty secret",
                |t| {
                    t.as_object_mut().unwrap().remove("secret_access_key_env");
                    t["secret_access_key"] = json!(" ");
                },
                "config error: targets.bedrock.secret_access_key: secret_access_key is empty",
            ),
            (
                "secret with a space after it",
                |t| {
                    t.as_object_mut().unwrap().remove("secret_access_key_env");
                    t["secret_access_key"] = json!("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY ");
                },
                "config error: targets.bedrock.secret_access_key: secret_access_key has spaces around it or \
                 characters that are not ASCII",
            ),
            (
                "session token with a character that is not ASCII",
                |t| t["session_token"] = json!("IQoJb3JpZ2luX2VjE\u{a0}"),
                "config error: targets.bedrock.session_token: session_token has spaces around it or characters \
                 that are not ASCII",
            ),
            (
                "secret from a variable that is set but empty",
                |t| t["secret_access_key_env"] = json!("EMPTY"),
                "config error: targets.bedrock.secret_access_key_env: environment variable EMPTY is set but empty",
            ),
            (
                "control character in token",
                |t| t["session_token"] = json!("a\nb"),
                "config error: targets.bedrock.session_token: session_token contains control characters",
            ),
            (
                "key id with a comma",
                |t| {
                    t.as_object_mut().unwrap().remove("access_key_id_env");
                    t["access_key_id"] = json!("AKID,x");
                },
                "config error: targets.bedrock.access_key_id: access_key_id must be letters and digits",
            ),
            (
                "api key on bedrock",
                |t| t["api_key"] = json!("sk"),
                "config error: targets.bedrock.api_key: not used by provider bedrock (give access_key_id and secret_access_key, or their _env forms)",
            ),
            (
                "beta with a comma",
                |t| t["betas"] = json!(["context-1m-2025-08-07", "a,b"]),
                "config error: targets.bedrock.betas[1]: must be a beta name (no spaces, commas or control characters)",
            ),
        ];
        for (name, edit, expected) in cases {
            let mut target = base();
            edit(&mut target);
            let err = load(&with_bedrock(target)).unwrap_err().to_string();
            assert_eq!(&err, expected, "{name}");
        }
    }

    #[test]
    fn bedrock_fields_are_refused_on_anthropic_targets() {
        let cases = [("region", json!("us-east-1")), ("betas", json!([])), ("secret_access_key_env", json!("X"))];
        for (field, value) in cases {
            let mut doc = sample();
            doc["targets"]["anthropic"][field] = value;
            let err = load(&doc).unwrap_err().to_string();
            assert_eq!(err, format!("config error: targets.anthropic.{field}: only for provider bedrock"));
        }
    }
}
