//! Verification of SSH-signed commits and annotated tags against an
//! allowed-signers file, so the reconciler can refuse to apply a head that
//! nobody trusted signed (`--verify-commits ALLOWED_SIGNERS`).
//!
//! The rules follow what `git verify-commit` / `git verify-tag` do with
//! `gpg.format=ssh` and `gpg.ssh.allowedSignersFile`, so a repository whose
//! commits git accepts is accepted here too:
//!
//! * The allowed-signers file has git's (really `ssh-keygen`'s) format, see
//!   [`AllowedSigners`]. Principals are kept but, as in git, the signer need
//!   not match the committer: any listed key that is valid is trusted.
//! * A commit's signature is its `gpgsig` header and the signed payload is
//!   the commit object without that header; an annotated tag's signature is
//!   the armored block that ends its message and the payload is everything
//!   before it.
//! * Only SSH signatures (`-----BEGIN SSH SIGNATURE-----`, the SSHSIG
//!   format) made for the namespace `git` are accepted; OpenPGP and X.509
//!   signatures are reported as such, not verified.
//! * `valid-after` / `valid-before` are checked against the committer time
//!   of a commit and the tagger time of a tag (git passes these to
//!   `ssh-keygen -Y verify` as its verify time), not against the clock, so
//!   an old commit stays valid after its signer's key expired.
//!
//! Certificates are not supported: a `cert-authority` line is refused when
//! the file is loaded, so that a file meant to trust a CA does not silently
//! trust nothing.

use std::fmt;
use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository};
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use ssh_key::{HashAlg, PublicKey, SshSig};

/// The SSHSIG namespace git signs commits and tags in; a signature for any
/// other namespace (e.g. `file`) must not pass as a commit signature.
pub const GIT_NAMESPACE: &str = "git";

/// Key types an allowed-signers line may name, all of which the enabled
/// `ssh-key` features can verify.
const SUPPORTED_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Armor lines that start a signature, as git recognises them.
const SSH_ARMOR: &str = "-----BEGIN SSH SIGNATURE-----";
const OPENPGP_ARMORS: &[&str] = &[
    "-----BEGIN PGP SIGNATURE-----",
    "-----BEGIN PGP MESSAGE-----",
];
const X509_ARMOR: &str = "-----BEGIN SIGNED MESSAGE-----";

/// The keys trusted to sign commits, loaded from an allowed-signers file
/// (`man ssh-keygen`, section ALLOWED SIGNERS).
///
/// Each line is `principals [options] keytype base64key [comment]`:
/// principals are a comma-separated pattern list (`*`, `?`, `!negation`),
/// the options are `namespaces="…"`, `valid-after="YYYYMMDD[HHMM[SS]][Z]"`
/// and `valid-before="…"` (without `Z` the time is the machine's local
/// time, as in `ssh-keygen`). `cert-authority` is refused: certificates
/// are not supported. Blank lines and `#` comments are ignored.
#[derive(Debug, Clone)]
pub struct AllowedSigners {
    source: String,
    entries: Vec<AllowedSigner>,
}

/// One line of an allowed-signers file: a key and the limits on its use.
#[derive(Debug, Clone)]
pub struct AllowedSigner {
    line: usize,
    principals: Vec<String>,
    namespaces: Option<Vec<String>>,
    valid_after: Option<Timestamp>,
    valid_before: Option<Timestamp>,
    key: PublicKey,
    fingerprint: String,
}

/// Why an allowed-signers file could not be loaded; a misconfigured trust
/// root must stop the reconciler rather than be half-read.
#[derive(Debug, thiserror::Error)]
pub enum SignersError {
    /// The file could not be read (missing, unreadable).
    #[error("cannot read allowed signers file {}: {source}", path.display())]
    Read {
        /// The path given to [`AllowedSigners::load`].
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a valid allowed-signers entry.
    #[error("{source_name}:{line}: {message}")]
    Line {
        /// The file path (or the name given to [`AllowedSigners::parse`]).
        source_name: String,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
}

/// The trusted signer of a verified commit or tag, for the history record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The principals of every allowed-signers line that lists the key and
    /// was valid for the object (file order, without repeats).
    pub principals: Vec<String>,
    /// The key's fingerprint as `ssh-keygen -l` prints it (`SHA256:…`).
    pub fingerprint: String,
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.principals.join(","), self.fingerprint)
    }
}

/// A signature format git knows but that is not verified here, named in
/// [`Rejection::UnsupportedFormat`] so the user knows what to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureFormat {
    /// `gpg.format=openpgp` (`-----BEGIN PGP SIGNATURE-----`).
    OpenPgp,
    /// `gpg.format=x509` (`-----BEGIN SIGNED MESSAGE-----`).
    X509,
}

impl fmt::Display for SignatureFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SignatureFormat::OpenPgp => "OpenPGP",
            SignatureFormat::X509 => "X.509",
        })
    }
}

/// Why a commit or tag was not accepted as signed by an allowed key. The
/// messages name the object (`commit abc1234`, `tag v1 (abc1234)`) so they
/// read on their own in a history record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The object carries no signature at all.
    #[error("{object} is not signed")]
    Unsigned {
        /// The object, e.g. `commit abc1234`.
        object: String,
    },
    /// Signed, but in a format other than SSH.
    #[error("{object} is signed with {format}; only SSH signatures are verified")]
    UnsupportedFormat {
        /// The object, e.g. `commit abc1234`.
        object: String,
        /// The format found.
        format: SignatureFormat,
    },
    /// Signed by a key no allowed-signers line lists.
    #[error("{object} is signed with key {fingerprint} which is not in the allowed signers")]
    UnknownKey {
        /// The object, e.g. `commit abc1234`.
        object: String,
        /// The signing key's `SHA256:…` fingerprint.
        fingerprint: String,
    },
    /// The signature does not verify: the content was changed after
    /// signing, or the signature was made for another namespace.
    #[error("{object} has a bad signature by key {fingerprint}: {reason}")]
    BadSignature {
        /// The object, e.g. `commit abc1234`.
        object: String,
        /// The signing key's `SHA256:…` fingerprint.
        fingerprint: String,
        /// What failed.
        reason: String,
    },
    /// A good signature by a listed key that the allowed-signers file does
    /// not allow here: outside `valid-after`/`valid-before` or without the
    /// `git` namespace.
    #[error("{object} is signed with key {fingerprint} which is not valid for it: {reason}")]
    KeyNotValid {
        /// The object, e.g. `commit abc1234`.
        object: String,
        /// The signing key's `SHA256:…` fingerprint.
        fingerprint: String,
        /// Which limit was not met, with the allowed-signers line.
        reason: String,
    },
    /// The signature (or the object around it) cannot be decoded.
    #[error("{object} has a malformed signature: {reason}")]
    Malformed {
        /// The object, e.g. `commit abc1234`.
        object: String,
        /// What could not be decoded.
        reason: String,
    },
    /// The object could not be read from the repository (missing, wrong
    /// type, I/O error). Not a verdict on the object: it may be retried.
    #[error("cannot read {object}: {reason}")]
    Unreadable {
        /// The object, e.g. `commit abc1234`.
        object: String,
        /// What git said.
        reason: String,
    },
}

impl Rejection {
    /// A stable CamelCase word for the kind of rejection, for tables and
    /// machine-readable records.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Unsigned { .. } => "Unsigned",
            Rejection::UnsupportedFormat { .. } => "UnsupportedFormat",
            Rejection::UnknownKey { .. } => "UnknownKey",
            Rejection::BadSignature { .. } => "BadSignature",
            Rejection::KeyNotValid { .. } => "KeyNotValid",
            Rejection::Malformed { .. } => "Malformed",
            Rejection::Unreadable { .. } => "Unreadable",
        }
    }

    /// Whether this is a verdict on the object (it will never verify as it
    /// is) rather than a failure to read it, which a caller may retry.
    pub fn is_verdict(&self) -> bool {
        !matches!(self, Rejection::Unreadable { .. })
    }
}

impl AllowedSigners {
    /// Reads and parses the allowed-signers file at `path`; errors name the
    /// path and, for a bad entry, the line.
    pub fn load(path: impl AsRef<Path>) -> Result<AllowedSigners, SignersError> {
        let path = path.as_ref();
        let source_name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| SignersError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..valid]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            SignersError::Line {
                source_name: source_name.clone(),
                line,
                message: "not valid UTF-8".to_string(),
            }
        })?;
        Self::parse(&text, &source_name)
    }

    /// Parses allowed-signers text; `source_name` is used in error messages
    /// (`source_name:LINE: what is wrong`). The first bad line fails the
    /// whole file.
    pub fn parse(text: &str, source_name: &str) -> Result<AllowedSigners, SignersError> {
        let mut entries = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let entry = parse_line(trimmed, line).map_err(|message| SignersError::Line {
                source_name: source_name.to_string(),
                line,
                message,
            })?;
            entries.push(entry);
        }
        Ok(AllowedSigners {
            source: source_name.to_string(),
            entries,
        })
    }

    /// The name errors and rejection reasons refer to the file by.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The entries in file order, e.g. to list the trusted keys.
    pub fn entries(&self) -> &[AllowedSigner] {
        &self.entries
    }

    /// How many keys are listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no key is listed, so nothing can verify; worth a warning.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl AllowedSigner {
    /// The 1-based line of the file this entry came from.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The principal patterns as written (comma-separated in the file).
    pub fn principals(&self) -> &[String] {
        &self.principals
    }

    /// Whether `name` matches the principal pattern list (`*`, `?`, and a
    /// leading `!` that excludes), for callers that want to tie signers to
    /// committers; verification itself does not require it, as in git.
    pub fn matches_principal(&self, name: &str) -> bool {
        match_pattern_list(name, &self.principals)
    }

    /// The `namespaces="…"` patterns, if the line limits them.
    pub fn namespaces(&self) -> Option<&[String]> {
        self.namespaces.as_deref()
    }

    /// `valid-after`: the key is not trusted for objects made before this.
    pub fn valid_after(&self) -> Option<Timestamp> {
        self.valid_after
    }

    /// `valid-before`: the key is not trusted for objects made after this.
    pub fn valid_before(&self) -> Option<Timestamp> {
        self.valid_before
    }

    /// The public key.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// The key's `SHA256:…` fingerprint, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Why this entry does not allow a signature in `namespace` at `time`,
    /// or `None` when it does.
    fn invalid_because(
        &self,
        namespace: &str,
        time: Timestamp,
        time_label: &str,
    ) -> Option<String> {
        if let Some(namespaces) = &self.namespaces {
            if !match_pattern_list(namespace, namespaces) {
                return Some(format!(
                    "the key may sign only namespaces=\"{}\", not \"{namespace}\"",
                    namespaces.join(",")
                ));
            }
        }
        if let Some(after) = self.valid_after {
            if time < after {
                return Some(format!(
                    "the key is valid only after {after} (valid-after) and the {time_label} is {time}"
                ));
            }
        }
        if let Some(before) = self.valid_before {
            if time > before {
                return Some(format!(
                    "the key is valid only before {before} (valid-before) and the {time_label} is {time}"
                ));
            }
        }
        None
    }
}

/// Verifies the SSH signature of commit `oid` (its `gpgsig` header) and
/// returns who signed it; the reconciler applies a head only if this
/// succeeds. Validity windows are checked at the committer time.
pub fn verify_commit(
    repo: &Repository,
    oid: Oid,
    signers: &AllowedSigners,
) -> Result<Signer, Rejection> {
    let object = format!("commit {}", short(oid));
    let commit = repo.find_commit(oid).map_err(|e| Rejection::Unreadable {
        object: object.clone(),
        reason: e.message().to_string(),
    })?;
    let seconds = commit.committer().when().seconds();
    let time = Timestamp::from_second(seconds).map_err(|_| Rejection::Malformed {
        object: object.clone(),
        reason: format!("the committer time {seconds} is out of range"),
    })?;
    let (signature, payload) = match repo.extract_signature(&oid, None) {
        Ok(found) => found,
        Err(e) if e.code() == git2::ErrorCode::NotFound => {
            return Err(Rejection::Unsigned { object });
        }
        Err(e) => {
            return Err(Rejection::Malformed {
                object,
                reason: e.message().to_string(),
            })
        }
    };
    verify_signature(
        &object,
        &signature,
        &payload,
        time,
        "committer time",
        signers,
    )
}

/// Verifies the SSH signature of annotated tag `tag_oid` (the armored block
/// at the end of its message) and returns who signed it, so a deploy can be
/// pinned to a signed release tag. Validity windows are checked at the
/// tagger time (the current time if the tag has no tagger).
pub fn verify_tag(
    repo: &Repository,
    tag_oid: Oid,
    signers: &AllowedSigners,
) -> Result<Signer, Rejection> {
    let mut object = format!("tag {}", short(tag_oid));
    let unreadable = |object: &str, e: git2::Error| Rejection::Unreadable {
        object: object.to_string(),
        reason: e.message().to_string(),
    };
    let odb = repo.odb().map_err(|e| unreadable(&object, e))?;
    let raw = odb.read(tag_oid).map_err(|e| unreadable(&object, e))?;
    if raw.kind() != ObjectType::Tag {
        return Err(Rejection::Unreadable {
            object,
            reason: format!("the object is a {}, not an annotated tag", raw.kind()),
        });
    }
    let tag = repo.find_tag(tag_oid).map_err(|e| unreadable(&object, e))?;
    object = format!(
        "tag {} ({})",
        String::from_utf8_lossy(tag.name_bytes()),
        short(tag_oid)
    );
    let (time, time_label) = match tag.tagger() {
        Some(tagger) => {
            let seconds = tagger.when().seconds();
            let time = Timestamp::from_second(seconds).map_err(|_| Rejection::Malformed {
                object: object.clone(),
                reason: format!("the tagger time {seconds} is out of range"),
            })?;
            (time, "tagger time")
        }
        None => (Timestamp::now(), "current time"),
    };
    let data = raw.data();
    let Some(start) = signature_start(data) else {
        return Err(Rejection::Unsigned { object });
    };
    let (payload, signature) = data.split_at(start);
    verify_signature(&object, signature, payload, time, time_label, signers)
}

/// The shared core: decodes `signature`, finds its key among `signers`,
/// checks it over `payload` and the key's limits at `time`.
fn verify_signature(
    object: &str,
    signature: &[u8],
    payload: &[u8],
    time: Timestamp,
    time_label: &str,
    signers: &AllowedSigners,
) -> Result<Signer, Rejection> {
    let malformed = |reason: String| Rejection::Malformed {
        object: object.to_string(),
        reason,
    };
    let text = std::str::from_utf8(signature)
        .map_err(|_| malformed("the signature is not text".to_string()))?
        .trim();
    if OPENPGP_ARMORS.iter().any(|a| text.starts_with(a)) {
        return Err(Rejection::UnsupportedFormat {
            object: object.to_string(),
            format: SignatureFormat::OpenPgp,
        });
    }
    if text.starts_with(X509_ARMOR) {
        return Err(Rejection::UnsupportedFormat {
            object: object.to_string(),
            format: SignatureFormat::X509,
        });
    }
    if !text.starts_with(SSH_ARMOR) {
        let first = text.lines().next().unwrap_or_default();
        return Err(malformed(format!(
            "unrecognised signature format (starts with {:?})",
            truncate(first, 40)
        )));
    }
    let sig = SshSig::from_pem(text)
        .map_err(|e| malformed(format!("cannot decode the SSH signature: {e}")))?;
    let fingerprint = sig.public_key().fingerprint(HashAlg::Sha256).to_string();
    let matching: Vec<&AllowedSigner> = signers
        .entries
        .iter()
        .filter(|e| e.key.key_data() == sig.public_key())
        .collect();
    let Some(first) = matching.first() else {
        return Err(Rejection::UnknownKey {
            object: object.to_string(),
            fingerprint,
        });
    };
    let bad = |reason: String| Rejection::BadSignature {
        object: object.to_string(),
        fingerprint: fingerprint.clone(),
        reason,
    };
    if sig.namespace() != GIT_NAMESPACE {
        return Err(bad(format!(
            "the signature was made for namespace {:?}, not \"{GIT_NAMESPACE}\"",
            sig.namespace()
        )));
    }
    first
        .key
        .verify(GIT_NAMESPACE, payload, &sig)
        .map_err(|e| match e {
            ssh_key::Error::Crypto => {
                bad("the signature does not match the signed content".to_string())
            }
            other => bad(other.to_string()),
        })?;
    let mut principals: Vec<String> = Vec::new();
    let mut reasons = Vec::new();
    for entry in &matching {
        match entry.invalid_because(GIT_NAMESPACE, time, time_label) {
            Some(reason) => reasons.push(format!("{}:{}: {reason}", signers.source, entry.line)),
            None => {
                for p in &entry.principals {
                    if !principals.contains(p) {
                        principals.push(p.clone());
                    }
                }
            }
        }
    }
    if principals.is_empty() {
        return Err(Rejection::KeyNotValid {
            object: object.to_string(),
            fingerprint,
            reason: reasons.join("; "),
        });
    }
    Ok(Signer {
        principals,
        fingerprint,
    })
}

/// Where the signature of a tag object starts: the last line that begins
/// a signature armor, as git finds it; `None` when unsigned.
fn signature_start(data: &[u8]) -> Option<usize> {
    let mut found = None;
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        let is_armor = rest.starts_with(SSH_ARMOR.as_bytes())
            || rest.starts_with(X509_ARMOR.as_bytes())
            || OPENPGP_ARMORS
                .iter()
                .any(|a| rest.starts_with(a.as_bytes()));
        if is_armor {
            found = Some(pos);
        }
        match rest.iter().position(|b| *b == b'\n') {
            Some(eol) => pos += eol + 1,
            None => break,
        }
    }
    found
}

/// The 7-character abbreviation used in messages.
fn short(oid: Oid) -> String {
    let full = oid.to_string();
    full.get(..7).unwrap_or(&full).to_string()
}

/// At most `max` characters of `s`, for quoting untrusted text in errors.
fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Parses one non-blank, non-comment line into an entry; the error is the
/// message without the `file:line:` prefix.
fn parse_line(line: &str, line_no: usize) -> Result<AllowedSigner, String> {
    let (principals_field, rest) = next_token(line)?.ok_or("missing principals")?;
    let principals_text = if principals_field.starts_with('"') {
        dequote(principals_field).map_err(|e| format!("principals: {e}"))?
    } else {
        principals_field.to_string()
    };
    let principals: Vec<String> = principals_text.split(',').map(str::to_string).collect();
    if principals.iter().any(|p| p.is_empty()) {
        return Err(format!("empty principal in {principals_text:?}"));
    }

    let (second, after_second) =
        next_token(rest)?.ok_or("missing key type and key after the principals")?;
    let mut namespaces = None;
    let mut valid_after = None;
    let mut valid_before = None;
    let (key_type, after_type) = if looks_like_options(second, after_second)? {
        for option in split_options(second)? {
            let (name, value) = match option.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (option.as_str(), None),
            };
            let lower = name.to_ascii_lowercase();
            match (lower.as_str(), value) {
                ("cert-authority", None) => {
                    return Err("cert-authority entries are not supported; \
                         list the signing keys themselves"
                        .to_string())
                }
                ("namespaces", Some(v)) => {
                    if namespaces.is_some() {
                        return Err("namespaces given twice".to_string());
                    }
                    let v = dequote(v).map_err(|e| format!("namespaces: {e}"))?;
                    let list: Vec<String> = v.split(',').map(str::to_string).collect();
                    if list.iter().any(|n| n.is_empty()) {
                        return Err(format!("empty namespace in namespaces={v:?}"));
                    }
                    namespaces = Some(list);
                }
                ("valid-after", Some(v)) => {
                    if valid_after.is_some() {
                        return Err("valid-after given twice".to_string());
                    }
                    valid_after = Some(parse_time("valid-after", v)?);
                }
                ("valid-before", Some(v)) => {
                    if valid_before.is_some() {
                        return Err("valid-before given twice".to_string());
                    }
                    valid_before = Some(parse_time("valid-before", v)?);
                }
                ("cert-authority", Some(_)) => {
                    return Err("cert-authority takes no value".to_string())
                }
                ("namespaces" | "valid-after" | "valid-before", None) => {
                    return Err(format!("option {name} needs a quoted value"))
                }
                _ => return Err(format!("unknown option {:?}", truncate(&option, 60))),
            }
        }
        next_token(after_second)?.ok_or("missing key type after the options")?
    } else {
        (second, after_second)
    };

    if key_type.ends_with("-cert-v01@openssh.com") {
        return Err(format!(
            "key type {key_type:?} is a certificate; certificates are not supported"
        ));
    }
    if key_type == "ssh-dss" {
        return Err("key type \"ssh-dss\" (DSA) is not supported".to_string());
    }
    if !SUPPORTED_KEY_TYPES.contains(&key_type) {
        return Err(format!("unknown key type {:?}", truncate(key_type, 60)));
    }
    let (base64, _comment) =
        next_token(after_type)?.ok_or_else(|| format!("missing {key_type} key"))?;
    let key = PublicKey::from_openssh(&format!("{key_type} {base64}"))
        .map_err(|e| format!("invalid {key_type} key: {e}"))?;
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    Ok(AllowedSigner {
        line: line_no,
        principals,
        namespaces,
        valid_after,
        valid_before,
        key,
        fingerprint,
    })
}

/// Whether the field after the principals is an options list rather than
/// the key type: it has `=`, quotes or commas, is `cert-authority`, or an
/// unrecognised word followed by a key type (an unknown option).
fn looks_like_options(field: &str, rest: &str) -> Result<bool, String> {
    if SUPPORTED_KEY_TYPES.contains(&field) {
        return Ok(false);
    }
    if field.contains(['=', '"', ',']) || field.eq_ignore_ascii_case("cert-authority") {
        return Ok(true);
    }
    Ok(matches!(next_token(rest)?, Some((next, _)) if SUPPORTED_KEY_TYPES.contains(&next)))
}

/// Splits off the next whitespace-separated field of `s`; double quotes
/// (with `\"` escapes) may hold whitespace. `Ok(None)` at the end.
fn next_token(s: &str) -> Result<Option<(&str, &str)>, String> {
    let s = s.trim_start();
    if s.is_empty() {
        return Ok(None);
    }
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if in_quotes && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_quotes = !in_quotes;
        } else if !in_quotes && c.is_whitespace() {
            return Ok(Some((&s[..i], &s[i..])));
        }
    }
    if in_quotes {
        return Err("unterminated quote".to_string());
    }
    Ok(Some((s, "")))
}

/// Splits an options field at the commas outside quotes.
fn split_options(field: &str) -> Result<Vec<String>, String> {
    let mut options = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut escaped = false;
    for c in field.chars() {
        if escaped {
            escaped = false;
        } else if in_quotes && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_quotes = !in_quotes;
        } else if !in_quotes && c == ',' {
            if current.is_empty() {
                return Err(format!("empty option in {:?}", truncate(field, 60)));
            }
            options.push(std::mem::take(&mut current));
            continue;
        }
        current.push(c);
    }
    if in_quotes {
        return Err("unterminated quote".to_string());
    }
    if current.is_empty() {
        return Err(format!("empty option in {:?}", truncate(field, 60)));
    }
    options.push(current);
    Ok(options)
}

/// The content of a `"…"` value, with `\"` unescaped; `ssh-keygen`
/// requires option values to be quoted, and so does this.
fn dequote(value: &str) -> Result<String, String> {
    let inner = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .filter(|_| value.len() >= 2)
        .ok_or_else(|| format!("value {:?} must be in double quotes", truncate(value, 60)))?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek() == Some(&'"') {
            out.push('"');
            chars.next();
        } else if c == '"' {
            return Err(format!("stray quote in {:?}", truncate(value, 60)));
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// Parses a `valid-after`/`valid-before` value: `"YYYYMMDD[HHMM[SS]][Z]"`,
/// UTC with `Z`, the machine's local time without (as `ssh-keygen`).
fn parse_time(option: &str, quoted: &str) -> Result<Timestamp, String> {
    let value = dequote(quoted).map_err(|e| format!("{option}: {e}"))?;
    let bad = || {
        format!(
            "invalid {option} time {:?}: expected YYYYMMDD[HHMM[SS]][Z]",
            truncate(&value, 60)
        )
    };
    let (digits, utc) = match value.strip_suffix('Z') {
        Some(d) => (d, true),
        None => (value.as_str(), false),
    };
    if !matches!(digits.len(), 8 | 12 | 14) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let field = |range: std::ops::Range<usize>| -> Result<i16, String> {
        digits
            .get(range)
            .unwrap_or("0")
            .parse::<i16>()
            .map_err(|_| bad())
    };
    let year = field(0..4)?;
    let month = i8::try_from(field(4..6)?).map_err(|_| bad())?;
    let day = i8::try_from(field(6..8)?).map_err(|_| bad())?;
    let (hour, minute, second) = if digits.len() >= 12 {
        let s = if digits.len() == 14 {
            field(12..14)?
        } else {
            0
        };
        (field(8..10)?, field(10..12)?, s)
    } else {
        (0, 0, 0)
    };
    let small = |v: i16| i8::try_from(v).map_err(|_| bad());
    let civil = DateTime::new(
        year,
        month,
        day,
        small(hour)?,
        small(minute)?,
        small(second)?,
        0,
    )
    .map_err(|_| bad())?;
    let tz = if utc {
        TimeZone::UTC
    } else {
        TimeZone::system()
    };
    civil.to_zoned(tz).map(|z| z.timestamp()).map_err(|_| bad())
}

/// `ssh`'s pattern-list match: true when some pattern matches `name` and
/// no `!`-negated pattern does.
fn match_pattern_list(name: &str, patterns: &[String]) -> bool {
    let mut matched = false;
    for pattern in patterns {
        match pattern.strip_prefix('!') {
            Some(negated) if glob_match(negated, name) => return false,
            Some(_) => {}
            None if glob_match(pattern, name) => matched = true,
            None => {}
        }
    }
    matched
}

/// `*` (any run) and `?` (any one character) wildcard match, iterative so
/// a hostile pattern cannot recurse deeply.
fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use tempfile::TempDir;

    /// A temporary repository plus keys, driven through the real `git` and
    /// `ssh-keygen` with a clean environment (no user or system config).
    struct Fixture {
        dir: TempDir,
    }

    /// A key pair made by `ssh-keygen`.
    struct Key {
        private: PathBuf,
        public_line: String,
        fingerprint: String,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().expect("tempdir");
            let f = Fixture { dir };
            std::fs::create_dir(f.repo_path()).expect("mkdir repo");
            f.git(&["init", "-q", "-b", "main"]);
            f
        }

        fn repo_path(&self) -> PathBuf {
            self.dir.path().join("repo")
        }

        fn command(&self, program: &str, date: Option<&str>) -> Command {
            let mut cmd = Command::new(program);
            cmd.env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", self.dir.path())
                .env("LANG", "C")
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_AUTHOR_NAME", "Alice")
                .env("GIT_AUTHOR_EMAIL", "alice@example.com")
                .env("GIT_COMMITTER_NAME", "Alice")
                .env("GIT_COMMITTER_EMAIL", "alice@example.com")
                .current_dir(self.repo_path());
            if let Some(date) = date {
                cmd.env("GIT_AUTHOR_DATE", date)
                    .env("GIT_COMMITTER_DATE", date);
            }
            cmd
        }

        fn run(mut cmd: Command) -> String {
            let out = cmd.output().expect("spawn");
            assert!(
                out.status.success(),
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout)
                .expect("utf8")
                .trim()
                .to_string()
        }

        fn git(&self, args: &[&str]) -> String {
            self.git_at(None, args)
        }

        fn git_at(&self, date: Option<&str>, args: &[&str]) -> String {
            let mut cmd = self.command("git", date);
            cmd.args(args);
            Self::run(cmd)
        }

        fn keygen(&self, name: &str, type_args: &[&str]) -> Key {
            let private = self.dir.path().join(name);
            let mut cmd = self.command("ssh-keygen", None);
            cmd.args(["-q", "-N", "", "-C", name, "-f"])
                .arg(&private)
                .args(type_args);
            Self::run(cmd);
            let public_line =
                std::fs::read_to_string(private.with_extension("pub")).expect("read .pub");
            let mut cmd = self.command("ssh-keygen", None);
            cmd.arg("-lf").arg(private.with_extension("pub"));
            let listed = Self::run(cmd);
            let fingerprint = listed
                .split_whitespace()
                .nth(1)
                .expect("fingerprint")
                .to_string();
            Key {
                private,
                public_line: public_line.trim().to_string(),
                fingerprint,
            }
        }

        fn ed25519(&self, name: &str) -> Key {
            self.keygen(name, &["-t", "ed25519"])
        }

        fn signing_args(key: &Key) -> Vec<String> {
            vec![
                "-c".into(),
                "gpg.format=ssh".into(),
                "-c".into(),
                format!("user.signingkey={}", key.private.display()),
            ]
        }

        /// Commits (empty) and returns the new head; signed with `key` if
        /// given, at `date` if given.
        fn commit(&self, key: Option<&Key>, date: Option<&str>, message: &str) -> Oid {
            let mut args: Vec<String> = key.map(Self::signing_args).unwrap_or_default();
            args.extend(["commit", "-q", "--allow-empty", "-m", message].map(String::from));
            if key.is_some() {
                args.push("-S".into());
            }
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            self.git_at(date, &refs);
            Oid::from_str(&self.git(&["rev-parse", "HEAD"])).expect("oid")
        }

        /// Makes an annotated tag on HEAD, signed with `key` if given.
        fn tag(&self, key: Option<&Key>, date: Option<&str>, name: &str) -> Oid {
            let mut args: Vec<String> = key.map(Self::signing_args).unwrap_or_default();
            args.extend(["tag", "-m", "release"].map(String::from));
            args.push(if key.is_some() { "-s" } else { "-a" }.into());
            args.push(name.into());
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            self.git_at(date, &refs);
            Oid::from_str(&self.git(&["rev-parse", &format!("refs/tags/{name}")])).expect("oid")
        }

        fn open(&self) -> Repository {
            Repository::open(self.repo_path()).expect("open repo")
        }

        fn signers(&self, text: &str) -> AllowedSigners {
            AllowedSigners::parse(text, "allowed_signers").expect("parse allowed signers")
        }

        /// Builds a commit whose payload is `content` and whose `gpgsig`
        /// is `signature`, as an attacker could.
        fn forge(&self, content: &str, signature: &str) -> Oid {
            self.open()
                .commit_signed(content, signature, None)
                .expect("commit_signed")
        }

        /// Signs `content` with `ssh-keygen -Y sign` in `namespace`.
        fn ssh_sign(&self, key: &Key, namespace: &str, content: &str) -> String {
            let file = self.dir.path().join("payload");
            std::fs::write(&file, content).expect("write payload");
            // ssh-keygen asks before overwriting an old signature.
            let _ = std::fs::remove_file(file.with_extension("sig"));
            let mut cmd = self.command("ssh-keygen", None);
            cmd.args(["-q", "-Y", "sign", "-n", namespace, "-f"])
                .arg(&key.private)
                .arg(&file);
            Self::run(cmd);
            std::fs::read_to_string(file.with_extension("sig")).expect("read sig")
        }
    }

    fn raw_object(repo: &Repository, oid: Oid) -> Vec<u8> {
        let odb = repo.odb().expect("odb");
        let raw = odb.read(oid).expect("read object");
        raw.data().to_vec()
    }

    fn line(principals: &str, options: &str, key: &Key) -> String {
        if options.is_empty() {
            format!("{principals} {}\n", key.public_line)
        } else {
            format!("{principals} {options} {}\n", key.public_line)
        }
    }

    #[test]
    fn allowed_ed25519_key_verifies_commit() {
        let f = Fixture::new();
        let key = f.ed25519("alice");
        let oid = f.commit(Some(&key), None, "signed");
        let signers = f.signers(&format!(
            "# team\n\n{}",
            line("alice@example.com", "", &key)
        ));
        let signer = verify_commit(&f.open(), oid, &signers).expect("verifies");
        assert_eq!(signer.principals, vec!["alice@example.com".to_string()]);
        assert_eq!(signer.fingerprint, key.fingerprint);
        assert!(signer.fingerprint.starts_with("SHA256:"));
    }

    #[test]
    fn ecdsa_and_rsa_keys_verify() {
        let f = Fixture::new();
        for (name, args) in [
            ("p256", &["-t", "ecdsa", "-b", "256"][..]),
            ("p384", &["-t", "ecdsa", "-b", "384"][..]),
            ("rsa", &["-t", "rsa", "-b", "2048"][..]),
        ] {
            let key = f.keygen(name, args);
            let oid = f.commit(Some(&key), None, name);
            let signers = f.signers(&line(name, "", &key));
            let signer =
                verify_commit(&f.open(), oid, &signers).unwrap_or_else(|r| panic!("{name}: {r}"));
            assert_eq!(signer.principals, vec![name.to_string()]);
            assert_eq!(signer.fingerprint, key.fingerprint, "{name}");
        }
    }

    #[test]
    fn all_valid_lines_for_the_key_give_principals() {
        let f = Fixture::new();
        let key = f.ed25519("shared");
        let other = f.ed25519("other");
        let oid = f.commit(Some(&key), None, "signed");
        let text = format!(
            "{}{}{}{}",
            line("ops@example.com,alice@example.com", "", &key),
            line("bob@example.com", "", &other),
            line("old@example.com", "valid-before=\"20000101Z\"", &key),
            line(
                "alice@example.com,ci@example.com",
                "namespaces=\"git\"",
                &key
            ),
        );
        let signer = verify_commit(&f.open(), oid, &f.signers(&text)).expect("verifies");
        assert_eq!(
            signer.principals,
            ["ops@example.com", "alice@example.com", "ci@example.com"]
        );
    }

    #[test]
    fn unknown_key_is_rejected() {
        let f = Fixture::new();
        let alice = f.ed25519("alice");
        let mallory = f.ed25519("mallory");
        let oid = f.commit(Some(&mallory), None, "signed");
        let err = verify_commit(&f.open(), oid, &f.signers(&line("alice", "", &alice)))
            .expect_err("rejected");
        assert_eq!(
            err,
            Rejection::UnknownKey {
                object: format!("commit {}", short(oid)),
                fingerprint: mallory.fingerprint.clone(),
            }
        );
        assert_eq!(err.reason(), "UnknownKey");
        assert!(err.is_verdict());
        assert_eq!(
            err.to_string(),
            format!(
                "commit {} is signed with key {} which is not in the allowed signers",
                short(oid),
                mallory.fingerprint
            )
        );
    }

    #[test]
    fn unsigned_commit_is_rejected() {
        let f = Fixture::new();
        let key = f.ed25519("alice");
        let oid = f.commit(None, None, "plain");
        let err = verify_commit(&f.open(), oid, &f.signers(&line("alice", "", &key)))
            .expect_err("rejected");
        assert_eq!(err.reason(), "Unsigned");
        assert_eq!(
            err.to_string(),
            format!("commit {} is not signed", short(oid))
        );
    }

    #[test]
    fn tampered_payload_is_a_bad_signature() {
        let f = Fixture::new();
        let key = f.ed25519("alice");
        let oid = f.commit(Some(&key), None, "deploy v1");
        let repo = f.open();
        let (sig, content) = repo.extract_signature(&oid, None).expect("signed");
        let content = content
            .as_str()
            .expect("utf8")
            .replace("deploy v1", "deploy evil");
        let forged = f.forge(&content, sig.as_str().expect("utf8"));
        let signers = f.signers(&line("alice", "", &key));
        match verify_commit(&repo, forged, &signers) {
            Err(Rejection::BadSignature {
                fingerprint,
                reason,
                ..
            }) => {
                assert_eq!(fingerprint, key.fingerprint);
                assert!(reason.contains("does not match"), "{reason}");
            }
            other => panic!("expected BadSignature, got {other:?}"),
        }
        // The untouched original still verifies.
        verify_commit(&repo, oid, &signers).expect("original verifies");
    }

    #[test]
    fn hand_made_git_namespace_signature_verifies_and_file_namespace_does_not() {
        let f = Fixture::new();
        let key = f.ed25519("alice");
        let base = f.commit(None, None, "base");
        let repo = f.open();
        // An unsigned commit's raw content is a valid payload.
        let content = String::from_utf8(raw_object(&repo, base))
            .expect("utf8")
            .replace("base", "hand made");
        let signers = f.signers(&line("alice", "", &key));

        let good = f.forge(&content, &f.ssh_sign(&key, "git", &content));
        assert!(verify_commit(&repo, good, &signers).is_ok());

        let wrong_ns = f.forge(&content, &f.ssh_sign(&key, "file", &content));
        let err = verify_commit(&repo, wrong_ns, &signers).expect_err("rejected");
        assert_eq!(err.reason(), "BadSignature");
        assert!(err.to_string().contains("namespace \"file\""), "{err}");
    }

    #[test]
    fn validity_window_uses_committer_time() {
        let f = Fixture::new();
        let key = f.ed25519("alice");
        let old = f.commit(Some(&key), Some("2020-06-01T12:00:00Z"), "old");
        let new = f.commit(Some(&key), None, "new");
        let repo = f.open();

        // Expired now, but valid when the old commit was made.
        let expired = f.signers(&line("alice", "valid-before=\"20210101Z\"", &key));
        assert!(verify_commit(&repo, old, &expired).is_ok());
        let err = verify_commit(&repo, new, &expired).expect_err("expired");
        assert_eq!(err.reason(), "KeyNotValid");
        let text = err.to_string();
        assert!(text.contains("allowed_signers:1"), "{text}");
        assert!(text.contains("valid-before"), "{text}");
        assert!(text.contains("committer time"), "{text}");

        let later = f.signers(&line("alice", "VALID-AFTER=\"202101011200Z\"", &key));
        assert!(verify_commit(&repo, new, &later).is_ok());
        let err = verify_commit(&repo, old, &later).expect_err("not yet valid");
        assert!(
            matches!(&err, Rejection::KeyNotValid { fingerprint, .. } if *fingerprint == key.fingerprint)
        );
        assert!(err.to_string().contains("valid-after"), "{err}");

        let past = f.signers(&line("alice", "valid-before=\"20000101\"", &key));
        assert_eq!(
            verify_commit(&repo, new, &past).map_err(|e| e.reason()),
            Err("KeyNotValid")
        );
    }

    #[test]
    fn namespaces_option_must_allow_git() {
        let f = Fixture::new();
        let key = f.ed25519("alice");
        let oid = f.commit(Some(&key), None, "signed");
        let repo = f.open();
        let file_only = f.signers(&line("alice", "namespaces=\"file\"", &key));
        let err = verify_commit(&repo, oid, &file_only).expect_err("rejected");
        assert_eq!(err.reason(), "KeyNotValid");
        assert!(err.to_string().contains("namespaces=\"file\""), "{err}");
        for ok in [
            "namespaces=\"file,git\"",
            "namespaces=\"g*\"",
            "namespaces=\"*,!file\"",
        ] {
            let signers = f.signers(&line("alice", ok, &key));
            assert!(verify_commit(&repo, oid, &signers).is_ok(), "{ok}");
        }
        let negated = f.signers(&line("alice", "namespaces=\"*,!git\"", &key));
        assert!(verify_commit(&repo, oid, &negated).is_err());
    }

    #[test]
    fn other_signature_formats() {
        let f = Fixture::new();
        let key = f.ed25519("alice");
        let base = f.commit(None, None, "base");
        let repo = f.open();
        let content = String::from_utf8(raw_object(&repo, base)).expect("utf8");
        let signers = f.signers(&line("alice", "", &key));

        let pgp = f.forge(
            &content,
            "-----BEGIN PGP SIGNATURE-----\n\niQEzBAABCAAdFiEE\n-----END PGP SIGNATURE-----\n",
        );
        let err = verify_commit(&repo, pgp, &signers).expect_err("pgp");
        assert_eq!(
            err.to_string(),
            format!(
                "commit {} is signed with OpenPGP; only SSH signatures are verified",
                short(pgp)
            )
        );
        assert_eq!(err.reason(), "UnsupportedFormat");

        let x509 = f.forge(
            &content,
            "-----BEGIN SIGNED MESSAGE-----\nMIAG\n-----END SIGNED MESSAGE-----\n",
        );
        assert!(matches!(
            verify_commit(&repo, x509, &signers),
            Err(Rejection::UnsupportedFormat {
                format: SignatureFormat::X509,
                ..
            })
        ));

        let garbage = f.forge(
            &content,
            "-----BEGIN SSH SIGNATURE-----\nU1NIU0lHAAAAAQ==\n-----END SSH SIGNATURE-----\n",
        );
        let err = verify_commit(&repo, garbage, &signers).expect_err("garbage");
        assert_eq!(err.reason(), "Malformed");

        let unknown = f.forge(&content, "hello\n");
        assert_eq!(
            verify_commit(&repo, unknown, &signers).map_err(|e| e.reason()),
            Err("Malformed")
        );
    }

    #[test]
    fn missing_object_is_unreadable_not_a_verdict() {
        let f = Fixture::new();
        let key = f.ed25519("alice");
        f.commit(None, None, "base");
        let repo = f.open();
        let missing = Oid::from_str("0123456789abcdef0123456789abcdef01234567").expect("oid");
        let err =
            verify_commit(&repo, missing, &f.signers(&line("a", "", &key))).expect_err("missing");
        assert_eq!(err.reason(), "Unreadable");
        assert!(!err.is_verdict());
        assert!(
            err.to_string().starts_with("cannot read commit 0123456"),
            "{err}"
        );
    }

    #[test]
    fn signed_tags() {
        let f = Fixture::new();
        let key = f.ed25519("alice");
        let mallory = f.ed25519("mallory");
        let head = f.commit(None, None, "base");
        let repo = f.open();
        let signers = f.signers(&line("alice@example.com", "", &key));

        let good = f.tag(Some(&key), None, "v1");
        let signer = verify_tag(&repo, good, &signers).expect("tag verifies");
        assert_eq!(signer.principals, ["alice@example.com"]);
        assert_eq!(signer.fingerprint, key.fingerprint);

        let plain = f.tag(None, None, "v2");
        let err = verify_tag(&repo, plain, &signers).expect_err("unsigned");
        assert_eq!(
            err.to_string(),
            format!("tag v2 ({}) is not signed", short(plain))
        );

        let foreign = f.tag(Some(&mallory), None, "v3");
        assert_eq!(
            verify_tag(&repo, foreign, &signers).map_err(|e| e.reason()),
            Err("UnknownKey")
        );

        // Tampered message, same signature.
        let text = String::from_utf8(raw_object(&repo, good)).expect("utf8");
        assert!(text.contains("release\n-----BEGIN SSH SIGNATURE-----"));
        let tampered = text.replacen("release\n", "evil release\n", 1);
        let forged = repo
            .odb()
            .expect("odb")
            .write(ObjectType::Tag, tampered.as_bytes())
            .expect("write tag");
        assert_eq!(
            verify_tag(&repo, forged, &signers).map_err(|e| e.reason()),
            Err("BadSignature")
        );

        // Validity is checked at the tagger time.
        let old = f.tag(Some(&key), Some("2020-06-01T12:00:00Z"), "v0");
        let expiring = f.signers(&line("alice", "valid-before=\"20210101Z\"", &key));
        assert!(verify_tag(&repo, old, &expiring).is_ok());
        let err = verify_tag(&repo, good, &expiring).expect_err("expired");
        assert_eq!(err.reason(), "KeyNotValid");
        assert!(err.to_string().contains("tagger time"), "{err}");

        // A commit is not a tag.
        assert_eq!(
            verify_tag(&repo, head, &signers).map_err(|e| e.reason()),
            Err("Unreadable")
        );
    }

    #[test]
    fn agrees_with_git_verify_commit() {
        let f = Fixture::new();
        let key = f.ed25519("alice");
        let other = f.ed25519("bob");
        let oid = f.commit(Some(&key), None, "signed");
        let repo = f.open();
        let cases = [
            (line("alice", "", &key), true),
            (line("bob", "", &other), false),
            (line("alice", "valid-before=\"20000101Z\"", &key), false),
            (line("alice", "namespaces=\"file\"", &key), false),
            (
                line("alice", "namespaces=\"git\",valid-after=\"20000101\"", &key),
                true,
            ),
        ];
        for (text, expected) in cases {
            let path = f.dir.path().join("allowed_signers");
            std::fs::write(&path, &text).expect("write");
            let signers = AllowedSigners::load(&path).expect("load");
            let ours = verify_commit(&repo, oid, &signers).is_ok();
            let mut cmd = f.command("git", None);
            cmd.arg("-c")
                .arg(format!("gpg.ssh.allowedSignersFile={}", path.display()))
                .args(["verify-commit", &oid.to_string()]);
            let git_ok = cmd.output().expect("spawn git").status.success();
            assert_eq!(ours, expected, "ours for {text}");
            assert_eq!(git_ok, expected, "git for {text}");
        }
    }

    #[test]
    fn parse_accepts_options_and_comments() {
        let f = Fixture::new();
        let key = f.ed25519("alice");
        let text = format!(
            "  # comment\n\n{}{}\"*@example.com,!eve@example.com\" {}   trailing comment\n",
            line(
                "alice@example.com",
                "namespaces=\"git,file\",valid-after=\"20200101\",valid-before=\"203001011230Z\"",
                &key
            ),
            line("ci-?", "Namespaces=\"git\"", &key),
            key.public_line,
        );
        let signers = f.signers(&text);
        assert_eq!(signers.len(), 3);
        assert_eq!(signers.source(), "allowed_signers");
        let first = &signers.entries()[0];
        assert_eq!(first.line(), 3);
        assert_eq!(
            first.namespaces(),
            Some(&["git".to_string(), "file".to_string()][..])
        );
        assert!(first.valid_after().is_some());
        assert_eq!(
            first.valid_before(),
            Some("2030-01-01T12:30:00Z".parse::<Timestamp>().expect("ts"))
        );
        assert_eq!(first.fingerprint(), key.fingerprint);
        assert!(signers.entries()[1].matches_principal("ci-1"));
        assert!(!signers.entries()[1].matches_principal("ci-12"));
        let third = &signers.entries()[2];
        assert_eq!(third.principals(), ["*@example.com", "!eve@example.com"]);
        assert!(third.matches_principal("alice@example.com"));
        assert!(!third.matches_principal("eve@example.com"));
        assert!(!third.matches_principal("alice@example.org"));
    }

    #[test]
    fn parse_errors_name_the_line() {
        let f = Fixture::new();
        let key = f.ed25519("alice");
        let good = line("alice", "", &key);
        let (_, b64) = key
            .public_line
            .split_once(' ')
            .map(|(t, rest)| (t, rest.split_whitespace().next().unwrap_or_default()))
            .expect("public line");
        let cases: Vec<(String, &str)> = vec![
            (
                format!("alice ssh-foo {b64}"),
                "unknown key type \"ssh-foo\"",
            ),
            (
                format!("alice ssh-ed25519 AAAA{b64}"),
                "invalid ssh-ed25519 key",
            ),
            (
                format!("alice ecdsa-sha2-nistp256 {b64}"),
                "invalid ecdsa-sha2-nistp256 key",
            ),
            ("alice ssh-ed25519".to_string(), "missing ssh-ed25519 key"),
            ("alice".to_string(), "missing key type"),
            (
                format!("alice frobnicate ssh-ed25519 {b64}"),
                "unknown option \"frobnicate\"",
            ),
            (
                format!("alice cert-authority ssh-ed25519 {b64}"),
                "cert-authority entries are not supported",
            ),
            (
                format!("alice valid-after=\"2020\" ssh-ed25519 {b64}"),
                "invalid valid-after time \"2020\"",
            ),
            (
                format!("alice valid-before=\"20201301\" ssh-ed25519 {b64}"),
                "invalid valid-before time",
            ),
            (
                format!("alice valid-before=20200101 ssh-ed25519 {b64}"),
                "must be in double quotes",
            ),
            (
                format!("alice namespaces=\"git ssh-ed25519 {b64}"),
                "unterminated quote",
            ),
            (
                format!("alice namespaces=\"git\",namespaces=\"file\" ssh-ed25519 {b64}"),
                "namespaces given twice",
            ),
            (format!("alice ssh-dss {b64}"), "not supported"),
            (
                format!("alice ssh-ed25519-cert-v01@openssh.com {b64}"),
                "certificate",
            ),
            (format!("alice,,bob ssh-ed25519 {b64}"), "empty principal"),
        ];
        for (bad, expected) in cases {
            let text = format!("# header\n{good}\n{bad}\n{good}");
            let err = AllowedSigners::parse(&text, "allowed_signers").expect_err(&bad);
            let msg = err.to_string();
            assert!(msg.starts_with("allowed_signers:4: "), "{bad}: {msg}");
            assert!(msg.contains(expected), "{bad}: {msg}");
        }
    }

    #[test]
    fn load_errors_name_the_path() {
        let f = Fixture::new();
        let path = f.dir.path().join("nope");
        let err = AllowedSigners::load(&path).expect_err("missing");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );

        let bad = f.dir.path().join("bad_signers");
        std::fs::write(&bad, "# ok\nalice ssh-foo AAAA\n").expect("write");
        let err = AllowedSigners::load(&bad).expect_err("bad");
        assert_eq!(
            err.to_string(),
            format!("{}:2: unknown key type \"ssh-foo\"", bad.display())
        );

        std::fs::write(&bad, b"# ok\n\xff\n").expect("write");
        let err = AllowedSigners::load(&bad).expect_err("not utf8");
        assert_eq!(
            err.to_string(),
            format!("{}:2: not valid UTF-8", bad.display())
        );

        std::fs::write(&bad, "\n# nobody\n").expect("write");
        assert!(AllowedSigners::load(&bad).expect("empty file").is_empty());
    }

    #[test]
    fn glob_patterns() {
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b?c", "axxxbyc"));
        assert!(!glob_match("a*b?c", "axxxbc"));
        assert!(glob_match("*@example.com", "a@example.com"));
        assert!(!glob_match("*@example.com", "a@example.org"));
        assert!(glob_match("**a**", "bab"));
        let list = |s: &str| s.split(',').map(String::from).collect::<Vec<_>>();
        assert!(match_pattern_list("git", &list("file,git")));
        assert!(!match_pattern_list("git", &list("!git,*")));
        assert!(!match_pattern_list("git", &list("!file")));
    }

    #[test]
    fn signature_start_finds_last_armor_line() {
        let data = b"object x\ntype commit\n\nmsg\n-----BEGIN PGP SIGNATURE-----\nx\n-----BEGIN SSH SIGNATURE-----\ny\n";
        let start = signature_start(data).expect("found");
        assert!(data[start..].starts_with(SSH_ARMOR.as_bytes()));
        assert_eq!(
            signature_start(b"object x\n\nno sig -----BEGIN SSH SIGNATURE-----\n"),
            None
        );
    }
}
