//! `mxcred-operator verify`: a one-shot check for CI steps. Prints one line,
//! `<TokenValid status> <reason>: <message>`, and exits 0 (valid), 1 (rejected or deactivated)
//! or 2 (unknown, including unusable input). Never prints the credential.

use crate::domain::api::CredentialType;
use crate::domain::classify::{Outcome, TokenValid};
use crate::domain::credential::{ApiKeyPart, Credential};
use crate::domain::probe::ProbeTarget;
use crate::shell::cli::VerifyArgs;
use crate::shell::metrics::Metrics;
use crate::shell::platform::Platform;
use std::process::ExitCode;

/// Runs the check and returns the line to print and the exit code.
pub async fn run(args: &VerifyArgs) -> (String, ExitCode) {
    match check(args).await {
        Ok(outcome) => {
            let status = outcome.reason.status();
            let code = match status {
                TokenValid::True => 0,
                TokenValid::False => 1,
                TokenValid::Unknown => 2,
            };
            let line = format!(
                "{} {}: {}",
                status.as_str(),
                outcome.reason.as_str(),
                outcome.message
            );
            (line, ExitCode::from(code))
        }
        Err(problem) => (
            format!("Unknown InvalidInput: {problem}"),
            ExitCode::from(2),
        ),
    }
}

async fn check(args: &VerifyArgs) -> Result<Outcome, String> {
    let (credential_type, credential) = read_credential(args)?;
    let target = ProbeTarget::resolve(
        credential_type,
        args.platform_kind,
        args.base_url.as_deref(),
        args.probe.as_deref(),
    )
    .map_err(|e| e.to_string())?;
    let platform = Platform::new(args.platform.config(), Metrics::default().into())
        .map_err(|e| e.to_string())?;
    Ok(platform.check(&target, &credential).await)
}

fn read_credential(args: &VerifyArgs) -> Result<(CredentialType, Credential), String> {
    let token = read(&args.token_file, &args.token_env, "token", "--token-env")?;
    let username = read(
        &args.username_file,
        &args.username_env,
        "username",
        "--username-env",
    )?;
    let api_key = read(
        &args.api_key_file,
        &args.api_key_env,
        "API key",
        "--api-key-env",
    )?;
    match (token, username, api_key) {
        (Some(token), None, None) => Credential::personal_access_token(&token)
            .map(|c| (CredentialType::PersonalAccessToken, c))
            .map_err(|p| format!("the token {p}")),
        (None, Some(username), Some(api_key)) => Credential::api_key(&username, &api_key)
            .map(|c| (CredentialType::ApiKey, c))
            .map_err(|(part, p)| match part {
                ApiKeyPart::Username => format!("the username {p}"),
                ApiKeyPart::ApiKey => format!("the API key {p}"),
            }),
        _ => Err(
            "give a token (--token-file or --token-env), or a username and an API key \
             (--username-file/--username-env and --api-key-file/--api-key-env)"
                .into(),
        ),
    }
}

/// Reads a value from a file or an environment variable; errors name the source, not the value.
fn read(
    file: &Option<std::path::PathBuf>,
    env: &Option<String>,
    what: &str,
    flag: &str,
) -> Result<Option<Vec<u8>>, String> {
    match (file, env) {
        (Some(_), Some(_)) => Err(format!(
            "give the {what} from a file or a variable, not both"
        )),
        (Some(path), None) => std::fs::read(path)
            .map(Some)
            .map_err(|e| format!("cannot read the {what} file {}: {e}", path.display())),
        (None, Some(var)) => std::env::var_os(var)
            .map(|v| Some(v.into_encoded_bytes()))
            .ok_or_else(|| format!("the environment variable named by the {flag} option is not set (it holds the {what}); give the variable's name, not its value")),
        (None, None) => Ok(None),
    }
}
