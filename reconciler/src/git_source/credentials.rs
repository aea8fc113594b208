//! What a fetch authenticates with and whom it trusts: the credentials
//! read from their files at each fetch (an HTTPS token or password, an SSH
//! key and passphrase; never from the URL, so they cannot leak into logs),
//! and the git2 callbacks of one fetch ([`CallbackContext`]) that offer
//! them a bounded number of times and check an SSH host key against
//! known_hosts ([`super::known_hosts`]).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use tracing::debug;

use super::known_hosts;
use super::url::{RemoteUrl, Scheme};
use super::RemoteOptions;

/// How often one fetch offers its credentials: each new connection of a
/// fetch (finding the default branch, then fetching) asks again, and a
/// refused credential is asked for again at once, so a bound is what
/// stops a wrong one.
const CREDENTIAL_TRIES: u32 = 3;

/// The HTTPS user name sent with a token when none is configured: GitHub,
/// Gitea and Forgejo accept any name with a token, GitHub documents this one.
const TOKEN_USERNAME: &str = "x-access-token";

/// Credentials read from their files for one fetch; `Debug` hides them.
struct Credentials {
    http: Option<HttpSecret>,
    ssh_key: Option<PathBuf>,
    ssh_passphrase: Option<String>,
}

enum HttpSecret {
    Token(String),
    Password(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("http", &self.http.as_ref().map(|_| "<redacted>"))
            .field("ssh_key", &self.ssh_key)
            .field(
                "ssh_passphrase",
                &self.ssh_passphrase.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Credentials {
    fn load(options: &RemoteOptions) -> anyhow::Result<Credentials> {
        let http = match (&options.token_file, &options.password_file) {
            (Some(_), Some(_)) => {
                bail!("configure a token file or a password file, not both")
            }
            (Some(t), None) => Some(HttpSecret::Token(read_secret(t, "token")?)),
            (None, Some(p)) => Some(HttpSecret::Password(read_secret(p, "password")?)),
            (None, None) => None,
        };
        if let Some(key) = &options.ssh_key_file {
            std::fs::metadata(key)
                .with_context(|| format!("reading the SSH key file {}", key.display()))?;
        }
        let ssh_passphrase = options
            .ssh_passphrase_file
            .as_deref()
            .map(|p| read_secret(p, "SSH passphrase"))
            .transpose()?;
        Ok(Credentials {
            http,
            ssh_key: options.ssh_key_file.clone(),
            ssh_passphrase,
        })
    }
}

/// A secret file's content without the trailing newline; the error names
/// the file, never the content.
fn read_secret(path: &Path, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the {what} file {}", path.display()))?;
    let secret = text.trim_end_matches(['\r', '\n']).to_string();
    if secret.is_empty() {
        bail!("the {what} file {} is empty", path.display());
    }
    Ok(secret)
}

/// What the git2 callbacks of one fetch share: credentials, the host key
/// check, the abort flag, and why a callback refused (libgit2's own
/// message for that is vague).
pub(super) struct CallbackContext<'a> {
    url: &'a RemoteUrl,
    options: &'a RemoteOptions,
    credentials: Credentials,
    abort: Arc<AtomicBool>,
    ssh_tries: Cell<u32>,
    password_tries: Cell<u32>,
    refusal: RefCell<Option<String>>,
}

impl<'a> CallbackContext<'a> {
    pub(super) fn new(
        url: &'a RemoteUrl,
        options: &'a RemoteOptions,
        abort: Arc<AtomicBool>,
    ) -> anyhow::Result<CallbackContext<'a>> {
        let credentials = Credentials::load(options)?;
        if url.scheme() == Scheme::Http && credentials.http.is_some() {
            debug!(url = %url, "credentials may be sent over plain HTTP");
        }
        Ok(CallbackContext {
            url,
            options,
            credentials,
            abort,
            ssh_tries: Cell::new(0),
            password_tries: Cell::new(0),
            refusal: RefCell::new(None),
        })
    }

    pub(super) fn callbacks(&self) -> git2::RemoteCallbacks<'_> {
        let mut cb = git2::RemoteCallbacks::new();
        cb.credentials(|_url, url_user, allowed| self.credential(url_user, allowed));
        cb.certificate_check(|cert, host| self.check_certificate(cert, host));
        cb.transfer_progress(|_| !self.abort.load(Ordering::Relaxed));
        cb.sideband_progress(|_| !self.abort.load(Ordering::Relaxed));
        cb
    }

    fn refuse(&self, message: String) -> git2::Error {
        let error = git2::Error::from_str(&message);
        *self.refusal.borrow_mut() = Some(message);
        error
    }

    /// The error of a failed git2 call: the callback's reason if one
    /// refused.
    pub(super) fn error(&self, e: git2::Error) -> anyhow::Error {
        match self.refusal.borrow_mut().take() {
            Some(reason) => anyhow!("{reason}"),
            None if self.abort.load(Ordering::Relaxed) => anyhow!("abandoned"),
            None => anyhow!("{}", e.message()),
        }
    }

    fn credential(
        &self,
        url_user: Option<&str>,
        allowed: git2::CredentialType,
    ) -> Result<git2::Cred, git2::Error> {
        let configured_user = self.options.username.as_deref();
        if allowed.contains(git2::CredentialType::SSH_KEY) {
            let tries = self.ssh_tries.get() + 1;
            self.ssh_tries.set(tries);
            if tries > CREDENTIAL_TRIES {
                return Err(self.refuse(format!("{} refused the SSH key", self.url)));
            }
            let Some(key) = &self.credentials.ssh_key else {
                return Err(self.refuse(format!(
                    "{} asks for an SSH key; configure an SSH key file",
                    self.url
                )));
            };
            let user = configured_user.or(url_user).unwrap_or("git");
            return git2::Cred::ssh_key(
                user,
                None,
                key,
                self.credentials.ssh_passphrase.as_deref(),
            );
        }
        if allowed.contains(git2::CredentialType::USERNAME) {
            return git2::Cred::username(configured_user.or(url_user).unwrap_or("git"));
        }
        if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT) {
            let tries = self.password_tries.get() + 1;
            self.password_tries.set(tries);
            if tries > CREDENTIAL_TRIES {
                return Err(self.refuse(format!("{} refused the credentials", self.url)));
            }
            let user = configured_user.or(url_user).or(self.url.user());
            return match &self.credentials.http {
                Some(HttpSecret::Token(token)) => {
                    git2::Cred::userpass_plaintext(user.unwrap_or(TOKEN_USERNAME), token)
                }
                Some(HttpSecret::Password(password)) => match user {
                    Some(user) => git2::Cred::userpass_plaintext(user, password),
                    None => Err(self.refuse(format!(
                        "a password for {} needs a user name (in the URL or configured)",
                        self.url
                    ))),
                },
                None => Err(self.refuse(format!(
                    "{} asks for credentials; configure a token file or a password file",
                    self.url
                ))),
            };
        }
        Err(self.refuse(format!(
            "{} asks for an unsupported kind of credentials ({allowed:?})",
            self.url
        )))
    }

    fn check_certificate(
        &self,
        cert: &git2::cert::Cert<'_>,
        host: &str,
    ) -> Result<git2::CertificateCheckStatus, git2::Error> {
        let Some(hostkey) = cert.as_hostkey() else {
            // TLS: OpenSSL's verification against the system's CAs decides.
            return Ok(git2::CertificateCheckStatus::CertificatePassthrough);
        };
        let Some(key) = hostkey.hostkey() else {
            return Err(self.refuse(format!("the SSH server {host} gave no host key to check")));
        };
        let key_type = known_hosts::key_type(key)
            .map(str::to_string)
            .or_else(|| hostkey.hostkey_type().map(|t| t.name().to_string()))
            .unwrap_or_else(|| "unknown".into());
        let path = match &self.options.known_hosts_file {
            Some(p) => p.clone(),
            None => match std::env::var_os("HOME") {
                Some(home) => Path::new(&home).join(".ssh/known_hosts"),
                None => {
                    return Err(self.refuse(
                        "no known_hosts file configured and no HOME to find ~/.ssh/known_hosts"
                            .into(),
                    ))
                }
            },
        };
        let contents = match std::fs::read_to_string(&path) {
            Ok(c) => c,
            Err(e) => {
                return Err(self.refuse(format!(
                    "cannot check the host key of {host}: reading known_hosts {}: {e}",
                    path.display()
                )))
            }
        };
        let port = self.url.port();
        match known_hosts::check(&contents, host, port, &key_type, key) {
            known_hosts::Verdict::Match => {
                debug!(host, key_type, "SSH host key matches known_hosts");
                Ok(git2::CertificateCheckStatus::CertificateOk)
            }
            verdict => Err(self.refuse(verdict.explain(host, port, &key_type, key, &path))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_need_exactly_one_http_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "abc\n").expect("write");
        let options = RemoteOptions {
            token_file: Some(token.clone()),
            ..Default::default()
        };
        let c = Credentials::load(&options).expect("loads");
        assert!(matches!(c.http, Some(HttpSecret::Token(ref t)) if t == "abc"));
        assert!(!format!("{c:?}").contains("abc"));
        let both = RemoteOptions {
            token_file: Some(token.clone()),
            password_file: Some(token),
            ..Default::default()
        };
        assert!(Credentials::load(&both).is_err());
        let missing = RemoteOptions {
            token_file: Some(dir.path().join("nope")),
            ..Default::default()
        };
        let e = Credentials::load(&missing).unwrap_err();
        assert!(format!("{e:#}").contains("nope"), "{e:#}");
    }
}
