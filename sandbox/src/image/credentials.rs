//! Registry credentials as docker keeps them: the `auths` of `~/.docker/config.json` (or
//! `$DOCKER_CONFIG/config.json`), each a base64 `auth` of `user:password` (or `username` and
//! `password`) under the registry's name. Credential helpers (`credsStore`, `credHelpers`) are
//! not consulted.

use oci_client::secrets::RegistryAuth;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("credentials {path}: {why}")]
pub struct CredentialsError {
    pub path: PathBuf,
    pub why: String,
}

/// The registry's name as `auths` keys may spell it: `https://host/v1/`, `host`.
fn auth_key_host(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

/// The `auths` entry for `registry` in docker's config (`auth` is base64 of `user:password`);
/// none, or no file, means anonymous. Credential helpers (`credsStore`) are not consulted.
pub fn credentials(
    config: Option<&Path>,
    registry: &str,
) -> Result<RegistryAuth, CredentialsError> {
    use base64::Engine;
    let Some(path) = config else {
        return Ok(RegistryAuth::Anonymous);
    };
    let bad = |why: String| CredentialsError {
        path: path.to_path_buf(),
        why,
    };
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RegistryAuth::Anonymous),
        Err(e) => return Err(bad(e.to_string())),
    };
    let config: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    let hub = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    let same = |key: &str| {
        let host = auth_key_host(key);
        host == registry || (hub.contains(&registry) && hub.contains(&host))
    };
    let Some(entry) = config
        .get("auths")
        .and_then(|a| a.as_object())
        .and_then(|auths| auths.iter().find(|(key, _)| same(key)).map(|(_, v)| v))
    else {
        return Ok(RegistryAuth::Anonymous);
    };
    let field = |name: &str| entry.get(name).and_then(|v| v.as_str()).unwrap_or("");
    if !field("auth").is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(field("auth").trim())
            .map_err(|e| bad(format!("the auth of {registry} is not base64: {e}")))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| bad(format!("the auth of {registry} is not text")))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| bad(format!("the auth of {registry} is not user:password")))?;
        return Ok(RegistryAuth::Basic(user.into(), password.into()));
    }
    if !field("username").is_empty() {
        return Ok(RegistryAuth::Basic(
            field("username").into(),
            field("password").into(),
        ));
    }
    Ok(RegistryAuth::Anonymous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_the_docker_configs_auths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        // "user:pa:ss" in base64.
        std::fs::write(
            &path,
            r#"{"auths": {"https://index.docker.io/v1/": {"auth": "dXNlcjpwYTpzcw=="},
                          "127.0.0.1:5000": {"auth": "dXNlcjpwYTpzcw=="},
                          "bad.example": {"auth": "%%%"}}}"#,
        )
        .unwrap();
        let is_user = |registry| {
            matches!(credentials(Some(&path), registry).unwrap(),
                RegistryAuth::Basic(user, password) if user == "user" && password == "pa:ss")
        };
        assert!(is_user("docker.io"));
        assert!(is_user("127.0.0.1:5000"));
        assert!(matches!(
            credentials(Some(&path), "quay.io").unwrap(),
            RegistryAuth::Anonymous
        ));
        let err = credentials(Some(&path), "bad.example").unwrap_err();
        assert!(err.to_string().contains("not base64"), "{err}");
        let missing = dir.path().join("none.json");
        assert!(matches!(
            credentials(Some(&missing), "docker.io").unwrap(),
            RegistryAuth::Anonymous
        ));
    }
}
