//! The shared AWS files, as the AWS CLI and boto (so `s3fs`, so Lightning) read them:
//! `~/.aws/credentials` (`AWS_SHARED_CREDENTIALS_FILE`) and `~/.aws/config`
//! (`AWS_CONFIG_FILE`), profile `AWS_PROFILE` (else `AWS_DEFAULT_PROFILE`, else `default`).
//!
//! `object_store` reads only environment variables; this fills in what they leave unset:
//! the access key, secret and session token (credentials file first, then config file; taken
//! together, never mixed with a key from the environment), the region and the endpoint
//! (`endpoint_url`). Single sign-on, `credential_process` and role assumption are not
//! followed: a profile that relies on one of them (and has no key pair) is an error saying
//! how to export its keys, rather than a confusing instance-metadata failure later.

use std::collections::HashMap;
use std::path::PathBuf;

/// What a profile sets, as `object_store` configuration keys and values.
pub(crate) type Settings = Vec<(&'static str, String)>;

/// An error naming the file or the profile.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProfileError {
    /// A file could not be read (other than not existing).
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `AWS_PROFILE` names a profile neither file has.
    #[error("AWS_PROFILE={0:?}: no such profile in the AWS credentials or config file")]
    Missing(String),
    /// The profile gets its keys in a way this reader does not follow.
    #[error(
        "AWS profile {profile:?} gets its credentials through `{key}`, which lightning-rs does \
         not read; export them instead (`eval \"$(aws configure export-credentials --profile \
         {profile} --format env)\"`) or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )]
    Unsupported {
        /// The profile.
        profile: String,
        /// The setting (`credential_process`, `sso_session`, `role_arn`, ...).
        key: &'static str,
    },
}

/// Profile settings that fetch credentials some other way: without a key pair beside them, a
/// profile using one would otherwise end in a confusing instance-metadata error.
const INDIRECT: [&str; 5] = [
    "credential_process",
    "sso_session",
    "sso_start_url",
    "role_arn",
    "web_identity_token_file",
];

/// Environment variables through which `object_store` itself finds credentials.
const ENV_CREDENTIALS: [&str; 4] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
];

/// The settings of the selected profile that the environment (`env`) leaves unset.
pub(crate) fn settings(env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ProfileError> {
    let home = env("HOME").map(PathBuf::from);
    let file = |var: &str, name: &str| {
        env(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(name)))
    };
    let explicit = env("AWS_PROFILE").or_else(|| env("AWS_DEFAULT_PROFILE"));
    let profile = explicit.clone().unwrap_or_else(|| "default".into());
    let credentials = read(file("AWS_SHARED_CREDENTIALS_FILE", "credentials"))?;
    let config = read(file("AWS_CONFIG_FILE", "config"))?;
    // The credentials file names sections `[name]`; the config file `[profile name]`, and
    // `[default]`.
    let from_credentials = sections(&credentials).remove(profile.as_str());
    let config_section = match profile.as_str() {
        "default" => "default".to_string(),
        p => format!("profile {p}"),
    };
    let from_config = sections(&config).remove(config_section.as_str());
    if from_credentials.is_none() && from_config.is_none() {
        return match explicit {
            Some(p) => Err(ProfileError::Missing(p)),
            None => Ok(Vec::new()),
        };
    }
    let get = |key: &str, first: &Option<HashMap<String, String>>| {
        first.as_ref().and_then(|s| s.get(key)).cloned()
    };
    let mut out = Vec::new();
    if ENV_CREDENTIALS.iter().all(|k| env(k).is_none()) {
        // The first file holding a key pair gives the whole set.
        for s in [&from_credentials, &from_config] {
            if let (Some(id), Some(secret)) =
                (get("aws_access_key_id", s), get("aws_secret_access_key", s))
            {
                out.push(("aws_access_key_id", id));
                out.push(("aws_secret_access_key", secret));
                if let Some(token) = get("aws_session_token", s) {
                    out.push(("aws_session_token", token));
                }
                break;
            }
        }
        if out.is_empty() {
            let indirect = INDIRECT
                .iter()
                .find(|k| get(k, &from_config).is_some() || get(k, &from_credentials).is_some());
            if let Some(key) = indirect {
                return Err(ProfileError::Unsupported { profile, key });
            }
        }
    }
    if env("AWS_REGION").is_none()
        && env("AWS_DEFAULT_REGION").is_none()
        && let Some(r) = get("region", &from_config).or_else(|| get("region", &from_credentials))
    {
        out.push(("aws_region", r));
    }
    if env("AWS_ENDPOINT").is_none()
        && env("AWS_ENDPOINT_URL").is_none()
        && let Some(e) = get("endpoint_url", &from_config)
    {
        out.push(("aws_endpoint", e));
    }
    Ok(out)
}

/// A file's text; a missing file (or no home directory) is empty.
fn read(path: Option<PathBuf>) -> Result<String, ProfileError> {
    let Some(path) = path else {
        return Ok(String::new());
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(ProfileError::Read { path, source }),
    }
}

/// The `[section]`s of an AWS INI file and their top-level `key = value` pairs. Comments
/// (`#`, `;`) and blank lines are skipped, and so are indented lines (the nested settings of
/// a key such as `s3 =`). Keys are lower-cased, as the CLI treats them.
fn sections(text: &str) -> HashMap<&str, HashMap<String, String>> {
    let mut out: HashMap<&str, HashMap<String, String>> = HashMap::new();
    let mut current: Option<&str> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            let name = name.trim();
            out.entry(name).or_default();
            current = Some(name);
            continue;
        }
        if line.starts_with([' ', '\t']) {
            continue;
        }
        if let (Some(section), Some((k, v))) = (current, trimmed.split_once('=')) {
            let v = v.trim();
            if !v.is_empty()
                && let Some(s) = out.get_mut(section)
            {
                s.insert(k.trim().to_ascii_lowercase(), v.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> + use<> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        move |k: &str| m.get(k).cloned()
    }

    fn files(credentials: &str, config: &str) -> (tempfile::TempDir, Vec<(&'static str, String)>) {
        let dir = tempfile::tempdir().unwrap();
        let (c, f) = (dir.path().join("credentials"), dir.path().join("config"));
        std::fs::write(&c, credentials).unwrap();
        std::fs::write(&f, config).unwrap();
        let env = vec![
            ("AWS_SHARED_CREDENTIALS_FILE", c.display().to_string()),
            ("AWS_CONFIG_FILE", f.display().to_string()),
        ];
        (dir, env)
    }

    const CREDENTIALS: &str = "\
# a comment
[default]
aws_access_key_id = AKDEFAULT
aws_secret_access_key = secret-default

[work]
aws_access_key_id=AKWORK
aws_secret_access_key=secret-work
aws_session_token = token-work
";
    const CONFIG: &str = "\
[default]
region = eu-west-1
s3 =
    max_concurrent_requests = 20
    endpoint_url = http://nested.invalid

[profile work]
region = us-east-2
endpoint_url = http://127.0.0.1:5000
; another comment
[profile keys-in-config]
aws_access_key_id = AKCONFIG
aws_secret_access_key = secret-config

[profile sso]
sso_session = corp
region = eu-west-1
";

    #[test]
    fn the_default_profile_fills_in_keys_and_region() {
        let (_d, env) = files(CREDENTIALS, CONFIG);
        let got = settings(&env_of(&env)).unwrap();
        assert_eq!(
            got,
            [
                ("aws_access_key_id", "AKDEFAULT".to_string()),
                ("aws_secret_access_key", "secret-default".into()),
                ("aws_region", "eu-west-1".into()),
            ],
            "nested `s3 =` settings are not the profile's endpoint"
        );
    }

    #[test]
    fn a_named_profile_reads_both_files() {
        let (_d, mut env) = files(CREDENTIALS, CONFIG);
        env.push(("AWS_PROFILE", "work".into()));
        let got = settings(&env_of(&env)).unwrap();
        assert_eq!(
            got,
            [
                ("aws_access_key_id", "AKWORK".to_string()),
                ("aws_secret_access_key", "secret-work".into()),
                ("aws_session_token", "token-work".into()),
                ("aws_region", "us-east-2".into()),
                ("aws_endpoint", "http://127.0.0.1:5000".into()),
            ]
        );
        // keys may sit in the config file too
        env.pop();
        env.push(("AWS_PROFILE", "keys-in-config".into()));
        let got = settings(&env_of(&env)).unwrap();
        assert_eq!(got[0], ("aws_access_key_id", "AKCONFIG".to_string()));
    }

    #[test]
    fn the_environment_wins_and_keys_are_never_mixed() {
        let (_d, mut env) = files(CREDENTIALS, CONFIG);
        env.push(("AWS_PROFILE", "work".into()));
        env.push(("AWS_ACCESS_KEY_ID", "AKENV".into()));
        env.push(("AWS_REGION", "ap-south-1".into()));
        let got = settings(&env_of(&env)).unwrap();
        assert_eq!(got, [("aws_endpoint", "http://127.0.0.1:5000".to_string())]);
    }

    #[test]
    fn a_named_profile_that_does_not_exist_is_an_error_the_default_is_not() {
        let (_d, mut env) = files(CREDENTIALS, CONFIG);
        env.push(("AWS_PROFILE", "nope".into()));
        let e = settings(&env_of(&env)).unwrap_err().to_string();
        assert!(
            e.contains("AWS_PROFILE=\"nope\"") && e.contains("no such profile"),
            "{e}"
        );
        // no files, no home: nothing to add
        assert!(settings(&env_of(&[])).unwrap().is_empty());
        let (_d, env) = files("", "");
        assert!(settings(&env_of(&env)).unwrap().is_empty());
    }

    #[test]
    fn a_profile_that_fetches_its_keys_another_way_says_how_to_export_them() {
        let (_d, mut env) = files(CREDENTIALS, CONFIG);
        env.push(("AWS_PROFILE", "sso".into()));
        let e = settings(&env_of(&env)).unwrap_err().to_string();
        assert!(
            e.contains("\"sso\"")
                && e.contains("`sso_session`")
                && e.contains("export-credentials"),
            "{e}"
        );
        // keys from the environment make the profile's way irrelevant
        env.push(("AWS_ACCESS_KEY_ID", "AKENV".into()));
        assert_eq!(
            settings(&env_of(&env)).unwrap(),
            [("aws_region", "eu-west-1".to_string())]
        );
    }
}
