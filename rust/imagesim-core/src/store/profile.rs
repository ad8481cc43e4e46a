//! AWS shared config profiles (`~/.aws/credentials`, `~/.aws/config`), which `object_store` does not
//! read itself: the profile's keys, session token and region become store options, unless the
//! environment already gives keys (environment first, as in the AWS CLI and SDKs).
use std::collections::HashMap;
use std::path::PathBuf;

/// `[section] key = value` INI text to sections of lowercase keys.
fn parse_ini(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut sections: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim().to_string());
            continue;
        }
        if let (Some(section), Some((k, v))) = (&current, line.split_once('=')) {
            sections
                .entry(section.clone())
                .or_default()
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    sections
}

fn home_file(var: &str, default: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(path) => Some(PathBuf::from(path)),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws").join(default)),
    }
}

/// Store options from the profile named by `AWS_PROFILE` (or `default`), given the options
/// already collected from the environment. Nothing when keys are already set or no file names
/// the profile.
pub fn options(env: &[(String, String)]) -> Vec<(String, String)> {
    let has = |k: &str| env.iter().any(|(key, _)| key.eq_ignore_ascii_case(k));
    if has("AWS_ACCESS_KEY_ID") || has("AWS_SKIP_SIGNATURE") {
        return Vec::new();
    }
    let profile = env
        .iter()
        .find(|(k, _)| k == "AWS_PROFILE")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "default".into());
    let read = |var: &str, default: &str| {
        home_file(var, default)
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| parse_ini(&t))
            .unwrap_or_default()
    };
    let credentials = read("AWS_SHARED_CREDENTIALS_FILE", "credentials");
    let config = read("AWS_CONFIG_FILE", "config");
    // What the environment sets (a region, an endpoint) stays as it is.
    let set_by_env = |k: &str| has(k) || (k == "aws_region" && has("AWS_DEFAULT_REGION"));
    from_files(&profile, &credentials, &config)
        .into_iter()
        .filter(|(k, _)| !set_by_env(k))
        .collect()
}

fn from_files(
    profile: &str,
    credentials: &HashMap<String, HashMap<String, String>>,
    config: &HashMap<String, HashMap<String, String>>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // The config file names profiles `[profile NAME]`, except `[default]`; it may hold keys too.
    let config_section = config.get(&format!("profile {profile}")).or_else(|| {
        (profile == "default")
            .then(|| config.get("default"))
            .flatten()
    });
    let keys = credentials.get(profile).or(config_section);
    if let Some(keys) = keys {
        for name in [
            "aws_access_key_id",
            "aws_secret_access_key",
            "aws_session_token",
        ] {
            if let Some(v) = keys.get(name) {
                out.push((name.to_string(), v.clone()));
            }
        }
    }
    if let Some(section) = config_section {
        if let Some(region) = section.get("region") {
            out.push(("aws_region".into(), region.clone()));
        }
        if let Some(endpoint) = section.get("endpoint_url") {
            out.push(("aws_endpoint".into(), endpoint.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_from_the_two_files() {
        let credentials = parse_ini(
            "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key=s1\n\n# comment\n[work]\nAWS_ACCESS_KEY_ID = AKIAWORK\naws_secret_access_key = s2\naws_session_token = tok\n",
        );
        let config = parse_ini("[default]\nregion = eu-west-1\n[profile work]\nregion = us-west-2\nendpoint_url = http://127.0.0.1:9000\n");
        let work = from_files("work", &credentials, &config);
        assert!(work.contains(&("aws_access_key_id".into(), "AKIAWORK".into())));
        assert!(work.contains(&("aws_session_token".into(), "tok".into())));
        assert!(work.contains(&("aws_region".into(), "us-west-2".into())));
        assert!(work.contains(&("aws_endpoint".into(), "http://127.0.0.1:9000".into())));
        let default = from_files("default", &credentials, &config);
        assert_eq!(
            default,
            vec![
                ("aws_access_key_id".to_string(), "AKIADEFAULT".to_string()),
                ("aws_secret_access_key".to_string(), "s1".to_string()),
                ("aws_region".to_string(), "eu-west-1".to_string())
            ]
        );
        assert!(from_files("absent", &credentials, &config).is_empty());
    }

    #[test]
    fn the_environment_wins() {
        let env = vec![("AWS_ACCESS_KEY_ID".to_string(), "AKIAENV".to_string())];
        assert!(options(&env).is_empty());
        let skip = vec![("AWS_SKIP_SIGNATURE".to_string(), "true".to_string())];
        assert!(options(&skip).is_empty());
    }
}
