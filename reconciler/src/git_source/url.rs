//! Where a repository is: a local path or a remote URL, told apart as
//! `git clone` does, and the remote URL parsed into its scheme, host,
//! port and user. Kept apart from the fetching so the CLI can check a
//! `--repo` value (and match on [`RepoUrlError`]) without touching git.
//! A URL that carries a password is refused here, so one that passed
//! can be logged as it is.

use std::fmt;
use std::path::PathBuf;

/// Where a repository is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoLocation {
    /// A path on this machine.
    Local(PathBuf),
    /// A repository fetched over the network.
    Remote(RemoteUrl),
}

impl RepoLocation {
    /// Tells a local path from a remote URL as `git clone` does: a
    /// `scheme://` prefix, or a colon before the first slash (scp-like
    /// `[user@]host:path`), means a URL; `file://` is a local path.
    pub fn parse(repo: &str) -> Result<RepoLocation, RepoUrlError> {
        if let Some(path) = repo.strip_prefix("file://") {
            return Ok(RepoLocation::Local(PathBuf::from(path)));
        }
        if repo.contains("://") || scp_like(repo).is_some() {
            return RemoteUrl::parse(repo).map(RepoLocation::Remote);
        }
        Ok(RepoLocation::Local(PathBuf::from(repo)))
    }
}

/// The transport of a remote URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// HTTPS (token or password authentication).
    Https,
    /// Plain HTTP: only meant for tests on loopback.
    Http,
    /// The unauthenticated git protocol (`git daemon`).
    Git,
    /// SSH (`ssh://` or scp-like), key authentication.
    Ssh,
}

/// A remote repository URL, known to carry no password (so it can be
/// logged and put in errors as it is).
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    url: String,
    scheme: Scheme,
    host: String,
    port: Option<u16>,
    user: Option<String>,
}

impl RemoteUrl {
    /// Parses a `scheme://` or scp-like URL; refuses passwords in it.
    pub fn parse(repo: &str) -> Result<RemoteUrl, RepoUrlError> {
        if let Some((scheme, _)) = repo.split_once("://") {
            let scheme = match scheme.to_ascii_lowercase().as_str() {
                "https" => Scheme::Https,
                "http" => Scheme::Http,
                "git" => Scheme::Git,
                "ssh" => Scheme::Ssh,
                other => {
                    return Err(RepoUrlError::UnsupportedScheme {
                        scheme: other.to_string(),
                    })
                }
            };
            let mut parsed = url::Url::parse(repo).map_err(|e| RepoUrlError::Invalid {
                reason: e.to_string(),
            })?;
            if parsed.password().is_some() {
                // Cannot fail for a URL with a host, which one with a
                // password has.
                let _ = parsed.set_password(None);
                return Err(RepoUrlError::PasswordInUrl {
                    url: parsed.to_string(),
                });
            }
            let host = parsed
                .host_str()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| RepoUrlError::Invalid {
                    reason: "no host".into(),
                })?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            if parsed.path().trim_matches('/').is_empty() {
                return Err(RepoUrlError::Invalid {
                    reason: format!("no repository path after the host {host}"),
                });
            }
            let user = Some(parsed.username())
                .filter(|u| !u.is_empty())
                .map(str::to_string);
            return Ok(RemoteUrl {
                url: parsed.to_string(),
                scheme,
                host,
                port: parsed.port(),
                user,
            });
        }
        let (user, host, _path) = scp_like(repo).ok_or_else(|| RepoUrlError::Invalid {
            reason: "neither scheme://host/path nor [user@]host:path".into(),
        })?;
        Ok(RemoteUrl {
            url: repo.to_string(),
            scheme: Scheme::Ssh,
            host: host.to_string(),
            port: None,
            user: user.map(str::to_string),
        })
    }

    /// The URL, as given to git (no password).
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The transport.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host name or address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port connected to (the scheme's default when none is given).
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.scheme {
            Scheme::Https => 443,
            Scheme::Http => 80,
            Scheme::Git => 9418,
            Scheme::Ssh => 22,
        })
    }

    /// The user name in the URL, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl fmt::Debug for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteUrl({})", self.url)
    }
}

/// `[user@]host:path` with no slash before the colon, as git reads it.
fn scp_like(repo: &str) -> Option<(Option<&str>, &str, &str)> {
    let (left, path) = repo.split_once(':')?;
    if left.contains('/') || path.is_empty() || path.starts_with("//") {
        return None;
    }
    let (user, host) = match left.rsplit_once('@') {
        Some((u, h)) => (Some(u).filter(|u| !u.is_empty()), h),
        None => (None, left),
    };
    (!host.is_empty()).then_some((user, host, path))
}

/// Why a repository URL cannot be used; the CLI can match on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepoUrlError {
    /// A scheme git2 is not built for here.
    #[error("unsupported repository URL scheme {scheme}:// (use https, http, git or ssh)")]
    UnsupportedScheme { scheme: String },
    /// Credentials must come from files, so they never reach logs.
    #[error(
        "the repository URL {url} carries a password: put it in a token or password file instead"
    )]
    PasswordInUrl {
        /// The URL without its password.
        url: String,
    },
    /// Not a URL (the reason does not repeat it, in case it holds a secret).
    #[error("invalid repository URL: {reason}")]
    Invalid { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git_source::GitSourceConfig;

    fn remote(s: &str) -> RemoteUrl {
        match RepoLocation::parse(s) {
            Ok(RepoLocation::Remote(u)) => u,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn locations_are_told_apart_as_git_does() {
        for local in ["/srv/repo", "repo", "./a:b", "../x/y.git", ""] {
            assert_eq!(
                RepoLocation::parse(local),
                Ok(RepoLocation::Local(PathBuf::from(local))),
                "{local}"
            );
        }
        assert_eq!(
            RepoLocation::parse("file:///srv/repo"),
            Ok(RepoLocation::Local(PathBuf::from("/srv/repo")))
        );
        let u = remote("https://git.example.com/org/repo.git");
        assert_eq!(
            (u.scheme(), u.host(), u.port()),
            (Scheme::Https, "git.example.com", 443)
        );
        let u = remote("http://127.0.0.1:8080/repo");
        assert_eq!((u.scheme(), u.port()), (Scheme::Http, 8080));
        let u = remote("git://127.0.0.1/repo.git");
        assert_eq!((u.scheme(), u.port()), (Scheme::Git, 9418));
        let u = remote("ssh://deploy@[::1]:2222/srv/repo.git");
        assert_eq!(
            (u.scheme(), u.host(), u.port(), u.user()),
            (Scheme::Ssh, "::1", 2222, Some("deploy"))
        );
        let u = remote("git@github.com:org/repo.git");
        assert_eq!(
            (u.scheme(), u.host(), u.port(), u.user(), u.as_str()),
            (
                Scheme::Ssh,
                "github.com",
                22,
                Some("git"),
                "git@github.com:org/repo.git"
            )
        );
        let u = remote("host:repo");
        assert_eq!((u.host(), u.user()), ("host", None));
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_secrets() {
        let e = RepoLocation::parse("https://me:s3cret@git.example.com/r.git").unwrap_err();
        assert!(matches!(e, RepoUrlError::PasswordInUrl { .. }));
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert!(e.to_string().contains("git.example.com"), "{e}");
        assert!(matches!(
            RepoLocation::parse("ftp://example.com/r"),
            Err(RepoUrlError::UnsupportedScheme { .. })
        ));
        assert!(matches!(
            RepoLocation::parse("https://example.com/"),
            Err(RepoUrlError::Invalid { .. })
        ));
        let config = GitSourceConfig {
            repo: "https://me:s3cret@git.example.com/r.git".into(),
            ..Default::default()
        };
        assert!(!config.repo_display().contains("s3cret"));
    }
}
