//! Matching SSH host keys against an OpenSSH known_hosts file: plain and
//! hashed (`|1|salt|hash`) host names, `[host]:port`, `*`/`?` patterns and
//! `!` negations, and `@revoked` keys (`@cert-authority` lines are
//! skipped: host certificates are not supported).
//!
//! Used by the SSH host-key check of [`super::credentials`]; kept apart
//! as it is a self-contained parser with its own tests.

use std::path::Path;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// What known_hosts says about a host's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Match,
    Unknown,
    Revoked,
    /// A key of the same type is listed for the host, but not this one.
    Changed,
    /// Only keys of other types are listed for the host.
    OtherTypes(Vec<String>),
}

impl Verdict {
    /// The error message for a refused key.
    pub(crate) fn explain(
        &self,
        host: &str,
        port: u16,
        key_type: &str,
        key: &[u8],
        path: &Path,
    ) -> String {
        let name = lookup_name(host, port);
        let fp = fingerprint(key);
        let file = path.display();
        match self {
            Verdict::Match => format!("{name} matches {file}"),
            Verdict::Unknown => format!(
                "the SSH host {name} is not in the known_hosts file {file}: check its key \
                 ({key_type} {fp}) and add it, e.g. with `ssh-keyscan -p {port} {host} >> {file}`"
            ),
            Verdict::Revoked => {
                format!("the SSH host key of {name} ({key_type} {fp}) is marked @revoked in {file}")
            }
            Verdict::Changed => format!(
                "the SSH host key of {name} ({key_type} {fp}) does not match the one in {file}: \
                 it was replaced, or someone is intercepting the connection; refusing to connect"
            ),
            Verdict::OtherTypes(types) => format!(
                "{file} lists {} keys for {name}, but the server offered {key_type} {fp}; \
                 add that key if its fingerprint is right",
                types.join(", ")
            ),
        }
    }
}

/// The name known_hosts lists a host under: `[host]:port` unless the
/// port is 22.
fn lookup_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_ascii_lowercase()
    } else {
        format!("[{}]:{port}", host.to_ascii_lowercase())
    }
}

/// OpenSSH's `SHA256:…` fingerprint of a key blob.
pub(crate) fn fingerprint(key: &[u8]) -> String {
    format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(key)))
}

/// The type name at the start of an SSH public key blob.
pub(crate) fn key_type(blob: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(blob.get(4..4usize.checked_add(len)?)?).ok()
}

/// Looks `key` (a raw SSH key blob of `key_type`) up for `host:port`.
pub(crate) fn check(contents: &str, host: &str, port: u16, key_type: &str, key: &[u8]) -> Verdict {
    let name = lookup_name(host, port);
    let (mut matched, mut changed) = (false, false);
    let mut other_types: Vec<String> = Vec::new();
    for line in contents.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let Some(mut first) = fields.next() else {
            continue;
        };
        let marker = if first.starts_with('@') {
            let m = first;
            let Some(next) = fields.next() else {
                continue;
            };
            first = next;
            Some(m)
        } else {
            None
        };
        let (Some(line_type), Some(line_key)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !hosts_match(first, &name) {
            continue;
        }
        let Ok(line_key) = STANDARD.decode(line_key) else {
            continue;
        };
        match marker {
            Some("@revoked") => {
                if line_key == key {
                    return Verdict::Revoked;
                }
            }
            Some(_) => {}
            None if line_type == key_type => {
                if line_key == key {
                    matched = true;
                } else {
                    changed = true;
                }
            }
            None => {
                if !other_types.iter().any(|t| t == line_type) {
                    other_types.push(line_type.to_string());
                }
            }
        }
    }
    if matched {
        Verdict::Match
    } else if changed {
        Verdict::Changed
    } else if !other_types.is_empty() {
        Verdict::OtherTypes(other_types)
    } else {
        Verdict::Unknown
    }
}

/// Whether a known_hosts host field names `name`.
fn hosts_match(field: &str, name: &str) -> bool {
    if let Some(hashed) = field.strip_prefix("|1|") {
        return hashed_match(hashed, name);
    }
    let mut matched = false;
    for pattern in field.split(',') {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        if glob(pattern.to_ascii_lowercase().as_bytes(), name.as_bytes()) {
            if negated {
                return false;
            }
            matched = true;
        }
    }
    matched
}

/// `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`.
fn hashed_match(field: &str, name: &str) -> bool {
    let Some((salt, hash)) = field.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (STANDARD.decode(salt), STANDARD.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(name.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

/// `*` (any run) and `?` (one byte) patterns.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake key blob of `key_type`, as SSH encodes public keys.
    fn blob(key_type: &str, body: &[u8]) -> Vec<u8> {
        let mut b = (key_type.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(key_type.as_bytes());
        b.extend_from_slice(body);
        b
    }

    fn line(hosts: &str, key: &[u8]) -> String {
        format!(
            "{hosts} {} {}",
            key_type(key).expect("type"),
            STANDARD.encode(key)
        )
    }

    #[test]
    fn plain_ported_and_patterned_names_match() {
        let key = blob("ssh-ed25519", b"good");
        let file = [
            "# comment",
            "",
            &line("git.example.com,10.0.0.1", &key),
            &line("[git.example.com]:2222", &key),
            &line("*.corp.example,!bad.corp.example", &key),
        ]
        .join("\n");
        let check = |host, port| check(&file, host, port, "ssh-ed25519", &key);
        assert_eq!(check("git.example.com", 22), Verdict::Match);
        assert_eq!(check("GIT.example.com", 22), Verdict::Match);
        assert_eq!(check("10.0.0.1", 22), Verdict::Match);
        assert_eq!(check("git.example.com", 2222), Verdict::Match);
        assert_eq!(check("git.example.com", 2200), Verdict::Unknown);
        assert_eq!(check("a.corp.example", 22), Verdict::Match);
        assert_eq!(check("bad.corp.example", 22), Verdict::Unknown);
        assert_eq!(check("other.example.com", 22), Verdict::Unknown);
    }

    #[test]
    fn changed_revoked_and_other_types_are_refused() {
        let good = blob("ssh-ed25519", b"good");
        let evil = blob("ssh-ed25519", b"evil");
        let rsa = blob("ssh-rsa", b"rsa");
        let file = format!(
            "{}\n{}\n@revoked {}\n",
            line("a.example", &good),
            line("b.example", &rsa),
            line("*", &evil)
        );
        assert_eq!(
            check(&file, "a.example", 22, "ssh-ed25519", &evil),
            Verdict::Revoked
        );
        let other = blob("ssh-ed25519", b"other");
        assert_eq!(
            check(&file, "a.example", 22, "ssh-ed25519", &other),
            Verdict::Changed
        );
        assert_eq!(
            check(&file, "b.example", 22, "ssh-ed25519", &other),
            Verdict::OtherTypes(vec!["ssh-rsa".into()])
        );
        let message =
            Verdict::Changed.explain("a.example", 22, "ssh-ed25519", &other, Path::new("/kh"));
        assert!(message.contains("does not match"), "{message}");
        assert!(message.contains("SHA256:"), "{message}");
    }

    #[test]
    fn hashed_names_match() {
        let key = blob("ssh-ed25519", b"good");
        let salt = b"0123456789abcdefghij";
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(salt).expect("any key length");
        mac.update(b"[git.example.com]:2222");
        let hash = mac.finalize().into_bytes();
        let hosts = format!("|1|{}|{}", STANDARD.encode(salt), STANDARD.encode(hash));
        let file = line(&hosts, &key);
        assert_eq!(
            check(&file, "git.example.com", 2222, "ssh-ed25519", &key),
            Verdict::Match
        );
        assert_eq!(
            check(&file, "git.example.com", 22, "ssh-ed25519", &key),
            Verdict::Unknown
        );
    }

    #[test]
    fn globs() {
        assert!(glob(b"*", b"anything"));
        assert!(glob(b"a*c", b"abbbc"));
        assert!(glob(b"a?c", b"abc"));
        assert!(!glob(b"a?c", b"abbc"));
        assert!(glob(b"*.example", b"x.y.example"));
        assert!(!glob(b"*.example", b"example"));
    }

    #[test]
    fn key_type_reads_the_blob() {
        assert_eq!(key_type(&blob("ssh-rsa", b"x")), Some("ssh-rsa"));
        assert_eq!(key_type(b"\0\0\0\x09short"), None);
    }
}
