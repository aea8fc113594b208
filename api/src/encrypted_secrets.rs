//! Secrets committed to Git encrypted with [age](https://age-encryption.org),
//! decrypted only in memory by the reconciler.
//!
//! # The format
//!
//! Encryption is per value, as SOPS does it, so that a reviewer still sees
//! which keys a Secret holds and which of them a commit changes. In a
//! `kind: Secret` manifest, each value under `data` and under `stringData`
//! may be the string
//!
//! ```text
//! ENC[age,<standard base64, no line breaks, of the binary age ciphertext>]
//! ```
//!
//! The ciphertext is an ordinary binary age file (not armored) encrypted to
//! one or more X25519 recipients (`age1…`); any one of the matching
//! identities (`AGE-SECRET-KEY-1…`) decrypts it. The plaintext of a `data`
//! value is the raw bytes (after decryption they are base64-encoded back
//! into `data`, as Kubernetes stores them); the plaintext of a `stringData`
//! value is a UTF-8 string (after decryption it is merged into `data`, as
//! the API server merges `stringData`).
//!
//! Any value that starts with `ENC[` is taken as encrypted: one that is not
//! a well-formed `ENC[age,…]` (a truncated paste, a SOPS `ENC[AES256_GCM,…]`
//! value) is an error, never stored as the secret's value by mistake.
//!
//! A Secret with at least one encrypted value carries the annotation
//! `commitd.io/encrypted: age` ([`ANNOTATION`]); `commitd secret encrypt`
//! adds it. It tells a reader of the repository that the Secret needs the
//! reconciler's identity. On load, an encrypted value without the
//! annotation is still decrypted, with a warning. The annotation is removed
//! from the decrypted object (even from a Secret with no encrypted value
//! left), so it never reaches the cluster: the object in etcd is exactly the
//! one a plain Secret with the same values would give.
//!
//! # Where it happens
//!
//! [`manifest::load_files`](crate::manifest::load_files) validates an
//! encrypted Secret like a plain one (keys, metadata) and checks that each
//! encrypted value is a well-formed age file, but keeps the `ENC[…]` strings:
//! encrypted `data` values stay in `data`, encrypted `stringData` values
//! stay in a `stringData` section of the loaded object. The reconciler then
//! calls [`decrypt_manifests`] with its identities; any error there rejects
//! the whole commit, as every error diagnostic does. Plaintext exists only
//! in the reconciler's memory and in the Secret it writes to etcd.
//!
//! Identities are made with `age-keygen` (or any age tool, or
//! `commitd secret keygen`); values are encrypted with
//! `commitd secret encrypt` ([`encrypt_text`]).

use std::collections::BTreeSet;
use std::fmt;
use std::io::{Read, Write};
use std::path::Path;
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use age::x25519::{Identity, Recipient};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use crate::diagnostic::Diagnostic;
use crate::field_path::FieldPath;
use crate::kinds::Kind;
use crate::manifest::Manifest;
use crate::yaml_position;

/// The annotation that marks a Secret holding encrypted values, so a reader
/// of the repository knows it needs the reconciler's identity.
pub const ANNOTATION: &str = "commitd.io/encrypted";
/// The only value of [`ANNOTATION`]: the encryption used.
pub const ANNOTATION_VALUE: &str = "age";

/// What every encrypted-looking value starts with.
const MARKER: &str = "ENC[";
/// What an age-encrypted value starts with.
const AGE_PREFIX: &str = "ENC[age,";
/// The sections of a Secret whose values may be encrypted.
const SECTIONS: [&str; 2] = ["data", "stringData"];

/// Whether a Secret value is (or claims to be) encrypted: it starts with
/// `ENC[`. Used to tell what to decrypt, and what `encrypt` leaves alone;
/// whether the value is well formed is checked when it is used.
pub fn is_encrypted(value: &str) -> bool {
    value.starts_with(MARKER)
}

/// The age ciphertext inside an `ENC[age,…]` value, checked to be an age
/// file (its header parses), so a damaged value is named before any key
/// is needed. The error is a message without the value itself.
fn ciphertext(value: &str) -> Result<Vec<u8>, String> {
    let Some(rest) = value.strip_prefix(AGE_PREFIX) else {
        let method = value
            .strip_prefix(MARKER)
            .and_then(|r| r.split([',', ']']).next())
            .unwrap_or_default();
        return Err(format!(
            "malformed encrypted value: expected ENC[age,<base64>], found method \"{}\" (only age is supported)",
            method.chars().take(40).collect::<String>()
        ));
    };
    let Some(b64) = rest.strip_suffix(']') else {
        return Err("malformed encrypted value: missing the closing \"]\" of ENC[age,…]".into());
    };
    let bytes = STANDARD.decode(b64).map_err(|e| {
        format!("malformed encrypted value: the ciphertext is not valid base64 ({e})")
    })?;
    age::Decryptor::new_buffered(&bytes[..]).map_err(|e| {
        format!("malformed encrypted value: the ciphertext is not an age file ({e})")
    })?;
    Ok(bytes)
}

/// Encrypts `plaintext` to every recipient and wraps it as `ENC[age,…]`.
fn seal(plaintext: &[u8], recipients: &[Recipient]) -> Result<String, String> {
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| format!("cannot encrypt: {e}"))?;
    let mut out = Vec::with_capacity(plaintext.len() + 256);
    let mut writer = encryptor
        .wrap_output(&mut out)
        .map_err(|e| format!("cannot encrypt: {e}"))?;
    writer
        .write_all(plaintext)
        .and_then(|()| writer.finish().map(|_| ()))
        .map_err(|e| format!("cannot encrypt: {e}"))?;
    Ok(format!("{AGE_PREFIX}{}]", STANDARD.encode(out)))
}

/// Why an age file would not decrypt, in words for the commit's author.
enum OpenError {
    NoMatch,
    Other(String),
}

/// Decrypts an age ciphertext with the first identity that matches.
fn open(ciphertext: &[u8], identities: &Identities) -> Result<Vec<u8>, OpenError> {
    let decryptor = age::Decryptor::new_buffered(ciphertext)
        .map_err(|e| OpenError::Other(format!("the ciphertext is not an age file ({e})")))?;
    let mut reader = decryptor
        .decrypt(identities.keys.iter().map(|k| k as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => OpenError::NoMatch,
            other => OpenError::Other(other.to_string()),
        })?;
    let mut plaintext = Vec::new();
    reader
        .read_to_end(&mut plaintext)
        .map_err(|e| OpenError::Other(format!("the ciphertext is damaged ({e})")))?;
    Ok(plaintext)
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

/// The reconciler's age identities (X25519 secret keys): what decrypts the
/// Secrets of a commit. Its `Debug` shows only how many there are, so it can
/// sit in options structs that get logged.
#[derive(Clone, Default)]
pub struct Identities {
    keys: Vec<Identity>,
}

impl Identities {
    /// Wraps identities made in code (tests, a key from elsewhere).
    pub fn new(keys: Vec<Identity>) -> Self {
        Identities { keys }
    }

    /// How many identities there are, for a startup log line.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there is none (a file of comments only is refused on load).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The public recipients of these identities, safe to log, so an
    /// operator can check which key the reconciler holds.
    pub fn recipients(&self) -> Vec<Recipient> {
        self.keys.iter().map(Identity::to_public).collect()
    }
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identities({} age keys)", self.keys.len())
    }
}

/// A key file (identities or recipients) that cannot be used. Messages name
/// the file and line, never the key material on it.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file cannot be read.
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    /// A line is not a key of the expected kind.
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: String,
        line: usize,
        message: String,
    },
    /// The file holds only comments and blank lines.
    #[error("{path}: no {what} in the file")]
    Empty { path: String, what: &'static str },
}

/// Reads an age identity file (one `AGE-SECRET-KEY-1…` per line, `#`
/// comments and blank lines allowed, as `age-keygen` writes it): the
/// reconciler's `--age-identity`.
pub fn load_identities(path: impl AsRef<Path>) -> Result<Identities, KeyFileError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|error| KeyFileError::Read {
        path: path.display().to_string(),
        error,
    })?;
    parse_identities(&text, &path.display().to_string())
}

/// Parses the text of an age identity file; `origin` names it in errors.
/// Public so identities can come from somewhere other than a file.
pub fn parse_identities(text: &str, origin: &str) -> Result<Identities, KeyFileError> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let invalid = |message: String| KeyFileError::Invalid {
            path: origin.to_string(),
            line: i + 1,
            message,
        };
        if line.starts_with("AGE-PLUGIN-") {
            return Err(invalid(
                "age plugin identities are not supported; use an X25519 identity (AGE-SECRET-KEY-1…)"
                    .into(),
            ));
        }
        // The parse error is a fixed phrase; the line itself is never shown.
        let key = Identity::from_str(line).map_err(|e| {
            invalid(format!(
                "not an age X25519 identity ({e}); expected AGE-SECRET-KEY-1… as age-keygen writes it"
            ))
        })?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(KeyFileError::Empty {
            path: origin.to_string(),
            what: "age identity (AGE-SECRET-KEY-1…)",
        });
    }
    Ok(Identities { keys })
}

/// A recipient that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid age recipient {shown}: {reason}")]
pub struct RecipientError {
    /// The value as given, or a placeholder when it is secret.
    shown: String,
    reason: String,
}

/// Parses an X25519 recipient (`age1…`, as `age-keygen -y` prints it), for
/// `commitd secret encrypt --recipient`.
pub fn parse_recipient(s: &str) -> Result<Recipient, RecipientError> {
    let s = s.trim();
    let fail = |reason: &str| RecipientError {
        shown: format!("\"{s}\""),
        reason: reason.to_string(),
    };
    if s.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
        // Never echo a secret key that was passed by mistake.
        return Err(RecipientError {
            shown: "(a secret key)".into(),
            reason: "this is an identity, not a recipient; pass its public key (age-keygen -y FILE prints it)".into(),
        });
    }
    if s.starts_with("ssh-") {
        return Err(fail(
            "SSH recipients are not supported; use an X25519 recipient (age1…)",
        ));
    }
    if s.is_empty() {
        return Err(fail("empty; expected an X25519 recipient (age1…)"));
    }
    Recipient::from_str(s).map_err(|e| {
        fail(&format!(
            "{e}; expected an X25519 recipient (age1…, as age-keygen -y prints it)"
        ))
    })
}

/// Reads a recipients file (one `age1…` per line, `#` comments and blank
/// lines allowed, as age's `-R` takes it), for `--recipients-file`.
pub fn load_recipients(path: impl AsRef<Path>) -> Result<Vec<Recipient>, KeyFileError> {
    let path = path.as_ref();
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| KeyFileError::Read {
        path: shown.clone(),
        error,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_recipient(line).map_err(|e| KeyFileError::Invalid {
            path: shown.clone(),
            line: i + 1,
            message: e.to_string(),
        })?);
    }
    if out.is_empty() {
        return Err(KeyFileError::Empty {
            path: shown,
            what: "age recipient (age1…)",
        });
    }
    Ok(out)
}

/// A new identity, ready to be written to a file, and its recipient.
pub struct GeneratedIdentity {
    /// The identity file's text (comments, then `AGE-SECRET-KEY-1…`), in
    /// the layout `age-keygen` uses. Secret: write it with mode 0600.
    pub file_text: String,
    /// The public `age1…` recipient to encrypt to.
    pub recipient: String,
}

impl fmt::Debug for GeneratedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GeneratedIdentity({})", self.recipient)
    }
}

/// Makes a new X25519 identity, for `commitd secret keygen`, so a first
/// setup needs no other tool.
pub fn generate_identity() -> GeneratedIdentity {
    let key = Identity::generate();
    let recipient = key.to_public().to_string();
    let secret = key.to_string();
    let file_text = format!(
        "# created: {}\n# public key: {recipient}\n{}\n",
        jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ"),
        secret.expose_secret()
    );
    GeneratedIdentity {
        file_text,
        recipient,
    }
}

// ---------------------------------------------------------------------------
// Loading and decrypting
// ---------------------------------------------------------------------------

/// The encrypted values of a Secret's JSON, as (section, key, value).
fn encrypted_values(json: &Value) -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    for section in SECTIONS {
        if let Some(map) = json.get(section).and_then(Value::as_object) {
            for (k, v) in map {
                if let Some(s) = v.as_str().filter(|s| is_encrypted(s)) {
                    out.push((section, k.clone(), s.to_string()));
                }
            }
        }
    }
    out
}

/// The manifest loader's hook for Secrets: decodes, defaults and validates
/// the Secret with `decode` as if every encrypted value were empty, checks
/// each encrypted value is a well-formed age file, and puts the `ENC[…]`
/// strings back into the result (`data` ones in `data`, `stringData` ones in
/// `stringData`, where [`decrypt_manifests`] finds them). Without it an
/// encrypted `data` value would fail as invalid base64.
pub(crate) fn decode_secret<F>(json: &Value, decode: F) -> Result<Value, Vec<(FieldPath, String)>>
where
    F: FnOnce(&Value) -> Result<Value, Vec<(FieldPath, String)>>,
{
    let encrypted = encrypted_values(json);
    if encrypted.is_empty() {
        return decode(json);
    }
    let mut masked = json.clone();
    let mut errors = Vec::new();
    for (section, key, value) in &encrypted {
        let path = FieldPath::root().key(section).key(key);
        if let Err(msg) = ciphertext(value) {
            errors.push((path.clone(), msg));
        }
        if let Some(slot) = path.lookup_mut(&mut masked) {
            *slot = Value::String(String::new());
        }
    }
    let mut object = match decode(&masked) {
        Ok(v) if errors.is_empty() => v,
        Ok(_) => return Err(errors),
        Err(mut more) => {
            errors.append(&mut more);
            return Err(errors);
        }
    };
    // `stringData` wins over `data` for the same key, as on the API server.
    let from_string_data: BTreeSet<&str> = encrypted
        .iter()
        .filter(|(s, _, _)| *s == "stringData")
        .map(|(_, k, _)| k.as_str())
        .collect();
    let plain_string_data: BTreeSet<&str> = json
        .get("stringData")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(_, v)| !v.as_str().is_some_and(is_encrypted))
        .map(|(k, _)| k.as_str())
        .collect();
    let Some(obj) = object.as_object_mut() else {
        return Err(vec![(
            FieldPath::root(),
            "a Secret must be an object".into(),
        )]);
    };
    for (section, key, value) in &encrypted {
        match *section {
            "data" => {
                if from_string_data.contains(key.as_str())
                    || plain_string_data.contains(key.as_str())
                {
                    continue;
                }
                if let Some(data) = obj.get_mut("data").and_then(Value::as_object_mut) {
                    data.insert(key.clone(), Value::String(value.clone()));
                }
            }
            _ => {
                if let Some(data) = obj.get_mut("data").and_then(Value::as_object_mut) {
                    data.remove(key);
                }
                let sd = obj
                    .entry("stringData")
                    .or_insert_with(|| Value::Object(Default::default()));
                if let Some(sd) = sd.as_object_mut() {
                    sd.insert(key.clone(), Value::String(value.clone()));
                }
            }
        }
    }
    if obj
        .get("data")
        .and_then(Value::as_object)
        .is_some_and(|d| d.is_empty())
    {
        obj.remove("data");
    }
    Ok(object)
}

/// Replaces the encrypted values of every Secret among `manifests` by their
/// plaintext, in memory only: `data` values become the base64 of the
/// decrypted bytes, `stringData` values are checked to be UTF-8 and merged
/// into `data`. Removes the [`ANNOTATION`]. The reconciler calls this right
/// after loading a commit, also when it has no identity (then an encrypted
/// value is an error, never stored as ciphertext). Returns the errors (and
/// warnings); a Secret with an error is left unchanged.
pub fn decrypt_manifests(
    manifests: &mut [Manifest],
    identities: Option<&Identities>,
) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    for m in manifests.iter_mut().filter(|m| m.kind == Kind::Secret) {
        decrypt_secret(m, identities, &mut diags);
    }
    diags
}

fn annotation_path() -> FieldPath {
    FieldPath::root()
        .key("metadata")
        .key("annotations")
        .key(ANNOTATION)
}

fn decrypt_secret(m: &mut Manifest, identities: Option<&Identities>, diags: &mut Vec<Diagnostic>) {
    let encrypted = encrypted_values(&m.object);
    let annotation = annotation_path().lookup(&m.object).cloned();
    if encrypted.is_empty() {
        remove_annotation(&mut m.object);
        return;
    }
    let first = FieldPath::root().key(encrypted[0].0).key(&encrypted[0].1);
    let errors_before = diags.iter().filter(|d| d.is_error()).count();
    match annotation.as_ref().map(|v| v.as_str()) {
        None => diags.push(m.warning(
            &FieldPath::root().key("metadata").key("annotations"),
            format!(
                "{} holds encrypted values but not the annotation {ANNOTATION}: {ANNOTATION_VALUE} (commitd secret encrypt adds it); decrypting anyway",
                m.display_name()
            ),
        )),
        Some(Some(ANNOTATION_VALUE)) => {}
        Some(other) => diags.push(m.error(
            &annotation_path(),
            format!(
                "Unsupported value: {}: supported values: \"{ANNOTATION_VALUE}\"",
                other.map_or_else(|| "(not a string)".to_string(), |s| format!("\"{s}\""))
            ),
        )),
    }
    let Some(identities) = identities else {
        diags.push(m.error(
            &first,
            format!(
                "Secret {}/{} holds encrypted values but the reconciler has no --age-identity",
                m.namespace.as_deref().unwrap_or("default"),
                m.name
            ),
        ));
        return;
    };
    let mut plain = Vec::new();
    for (section, key, value) in &encrypted {
        let path = FieldPath::root().key(section).key(key);
        let bytes = match ciphertext(value) {
            Ok(b) => b,
            Err(msg) => {
                diags.push(m.error(&path, msg));
                continue;
            }
        };
        let plaintext = match open(&bytes, identities) {
            Ok(p) => p,
            Err(OpenError::NoMatch) => {
                diags.push(m.error(
                    &path,
                    format!("cannot decrypt {path}: no identity matches any recipient"),
                ));
                continue;
            }
            Err(OpenError::Other(msg)) => {
                diags.push(m.error(&path, format!("cannot decrypt {path}: {msg}")));
                continue;
            }
        };
        if *section == "stringData" && std::str::from_utf8(&plaintext).is_err() {
            diags.push(m.error(
                &path,
                format!("the decrypted value of {path} is not valid UTF-8; encrypt binary values under data"),
            ));
            continue;
        }
        plain.push((*section, key.clone(), plaintext));
    }
    if diags.iter().filter(|d| d.is_error()).count() > errors_before {
        return;
    }
    let Some(obj) = m.object.as_object_mut() else {
        return;
    };
    // Plain `stringData` keys (the loader merged those into `data`) win over
    // encrypted `data` values, as `stringData` wins on the API server.
    let plain_string_data: BTreeSet<String> = obj
        .get("stringData")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(_, v)| !v.as_str().is_some_and(is_encrypted))
        .map(|(k, _)| k.clone())
        .collect();
    // `data` first, so that `stringData` overwrites the same key.
    plain.sort_by_key(|(section, _, _)| *section != "data");
    for (section, key, plaintext) in plain {
        if section == "stringData" {
            if let Some(sd) = obj.get_mut("stringData").and_then(Value::as_object_mut) {
                sd.remove(&key);
            }
        } else if plain_string_data.contains(&key) {
            continue;
        }
        let data = obj
            .entry("data")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(data) = data.as_object_mut() {
            data.insert(key, Value::String(STANDARD.encode(plaintext)));
        }
    }
    if obj
        .get("stringData")
        .and_then(Value::as_object)
        .is_some_and(|sd| sd.is_empty())
    {
        obj.remove("stringData");
    }
    remove_annotation(&mut m.object);
}

/// Drops [`ANNOTATION`] (and `annotations` if it was the only one), so the
/// object stored is the one a plain Secret would give.
fn remove_annotation(object: &mut Value) {
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let now_empty = match meta.get_mut("annotations").and_then(Value::as_object_mut) {
        Some(a) => {
            a.remove(ANNOTATION);
            a.is_empty()
        }
        None => false,
    };
    if now_empty {
        meta.remove("annotations");
    }
}

// ---------------------------------------------------------------------------
// Encrypting
// ---------------------------------------------------------------------------

/// Why a manifest file could not be encrypted: one diagnostic (file, line,
/// field) per problem, so all of them can be fixed in one go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptError(pub Vec<Diagnostic>);

impl fmt::Display for EncryptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for EncryptError {}

/// Encrypts every plain value of `data` (decoded from base64 first) and
/// `stringData` of every Secret in a (possibly multi-document) YAML text to
/// all `recipients`, keeps values that are already encrypted as they are,
/// and adds the [`ANNOTATION`]; for `commitd secret encrypt`. `file` names
/// the text in errors.
///
/// Other documents, and Secrets with nothing to encrypt, are kept byte for
/// byte; a text with nothing to encrypt comes back unchanged. A changed
/// Secret document is written anew from its parsed value: key order is
/// kept (serde_yaml's mapping preserves it) and so are the comments before
/// and after it, but comments inside it are lost. (If the document
/// separators are unusual, e.g. `--- {…}` or `...`, every document is
/// rewritten and all comments are lost.)
pub fn encrypt_text(
    yaml: &str,
    file: &str,
    recipients: &[Recipient],
) -> Result<String, EncryptError> {
    if recipients.is_empty() {
        return Err(EncryptError(vec![Diagnostic::error(
            file,
            1,
            None,
            "no age recipient given",
        )]));
    }
    let index = yaml_position::index(yaml);
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        match serde_yaml::Value::deserialize(doc) {
            Ok(v) => docs.push(v),
            Err(e) => {
                let line = e.location().map_or(1, |l| l.line());
                return Err(EncryptError(vec![Diagnostic::error(
                    file,
                    line,
                    None,
                    format!("invalid YAML: {e}"),
                )]));
            }
        }
    }
    let originals = docs.clone();
    let mut changed = vec![false; docs.len()];
    let mut errors = Vec::new();
    for (i, doc) in docs.iter_mut().enumerate() {
        let positions = index.get(i).cloned().unwrap_or_default();
        changed[i] = encrypt_document(doc, file, &positions, recipients, &mut errors);
    }
    if !errors.is_empty() {
        return Err(EncryptError(errors));
    }
    if !changed.contains(&true) {
        return Ok(yaml.to_string());
    }
    // Documents that are only comments (null) are not documents to rewrite.
    let old_docs: Vec<&serde_yaml::Value> = originals.iter().filter(|d| !d.is_null()).collect();
    let new_docs: Vec<(&serde_yaml::Value, bool)> = docs
        .iter()
        .zip(changed.iter().copied())
        .zip(&originals)
        .filter(|(_, old)| !old.is_null())
        .map(|(new, _)| new)
        .collect();
    let rewritten = match rewrite_changed(yaml, &old_docs, &new_docs) {
        // The cut was right only if the result reads back as the new documents.
        Some(Ok(text)) if reads_as(&text, &new_docs) => Ok(text),
        Some(Err(msg)) => Err(msg),
        _ => rewrite_all(&new_docs),
    };
    rewritten.map_err(|msg| EncryptError(vec![Diagnostic::error(file, 1, None, msg)]))
}

/// Encrypts the plain values of one document if it is a Secret; whether it
/// changed. Problems go to `errors` with their line.
fn encrypt_document(
    doc: &mut serde_yaml::Value,
    file: &str,
    positions: &yaml_position::DocumentIndex,
    recipients: &[Recipient],
    errors: &mut Vec<Diagnostic>,
) -> bool {
    use serde_yaml::Value as Y;
    let is_secret = doc.get("kind").and_then(Y::as_str) == Some("Secret")
        && doc.get("apiVersion").and_then(Y::as_str) == Some("v1");
    if !is_secret {
        return false;
    }
    let mut changed = false;
    let mut encrypted = 0;
    for section in SECTIONS {
        let Some(map) = doc.get_mut(section).and_then(Y::as_mapping_mut) else {
            continue;
        };
        for (k, v) in map.iter_mut() {
            let key = match k {
                Y::String(s) => s.clone(),
                other => serde_yaml::to_string(other)
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            };
            let path = FieldPath::root().key(section).key(&key);
            let err = |msg: String| {
                Diagnostic::error(file, positions.line_of(&path), Some(path.to_string()), msg)
            };
            let plaintext = match v {
                Y::Null => continue,
                Y::String(s) if is_encrypted(s) => {
                    match ciphertext(s) {
                        Ok(_) => encrypted += 1,
                        Err(msg) => errors.push(err(msg)),
                    }
                    continue;
                }
                Y::String(s) if section == "data" => match STANDARD.decode(s.as_bytes()) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        errors.push(err(format!(
                            "not valid base64 ({e}): data values are base64-encoded; put plain text under stringData"
                        )));
                        continue;
                    }
                },
                Y::String(s) => s.as_bytes().to_vec(),
                _ => {
                    errors.push(err(
                        "expected a string value; quote it to encrypt it".to_string()
                    ));
                    continue;
                }
            };
            match seal(&plaintext, recipients) {
                Ok(sealed) => {
                    *v = Y::String(sealed);
                    encrypted += 1;
                    changed = true;
                }
                Err(msg) => errors.push(err(msg)),
            }
        }
    }
    if encrypted > 0 {
        changed |= set_annotation(doc);
    }
    changed
}

/// Sets [`ANNOTATION`] on a Secret document; whether it had to change.
fn set_annotation(doc: &mut serde_yaml::Value) -> bool {
    use serde_yaml::{Mapping, Value as Y};
    let Some(root) = doc.as_mapping_mut() else {
        return false;
    };
    let meta = root
        .entry(Y::from("metadata"))
        .or_insert_with(|| Y::Mapping(Mapping::new()));
    if meta.is_null() {
        *meta = Y::Mapping(Mapping::new());
    }
    let Some(meta) = meta.as_mapping_mut() else {
        return false;
    };
    let annotations = meta
        .entry(Y::from("annotations"))
        .or_insert_with(|| Y::Mapping(Mapping::new()));
    if annotations.is_null() {
        *annotations = Y::Mapping(Mapping::new());
    }
    let Some(annotations) = annotations.as_mapping_mut() else {
        return false;
    };
    if annotations.get(ANNOTATION).and_then(Y::as_str) == Some(ANNOTATION_VALUE) {
        return false;
    }
    annotations.insert(Y::from(ANNOTATION), Y::from(ANNOTATION_VALUE));
    true
}

/// Whether a line is a plain document separator (`---`, maybe followed by
/// a comment); `None` if it is a separator or end marker with more on it,
/// which the chunked rewrite does not handle.
fn separator(line: &str) -> Option<bool> {
    let l = line.trim_end();
    if l == "---" {
        return Some(true);
    }
    if let Some(rest) = l.strip_prefix("---") {
        if rest.starts_with([' ', '\t']) {
            return rest.trim_start().starts_with('#').then_some(true);
        }
        return Some(false);
    }
    if l == "..." || l.starts_with("... ") || l.starts_with("...\t") {
        return None;
    }
    Some(false)
}

/// Rewrites only the changed documents, keeping the text of the others and
/// the comments around the changed ones. `None` when the text cannot be cut
/// into documents with certainty (then everything is rewritten).
fn rewrite_changed(
    yaml: &str,
    old_docs: &[&serde_yaml::Value],
    new_docs: &[(&serde_yaml::Value, bool)],
) -> Option<Result<String, String>> {
    // Cut the text at its separator lines; each chunk starts with its
    // separator (except the first).
    let mut chunks: Vec<Vec<&str>> = vec![Vec::new()];
    for line in yaml.split_inclusive('\n') {
        if separator(line)? {
            chunks.push(Vec::new());
        }
        chunks.last_mut()?.push(line);
    }
    // Each chunk must hold at most one document, and the chunks' documents
    // must be exactly those of the whole text.
    let mut chunk_docs = Vec::with_capacity(chunks.len());
    for chunk in &chunks {
        let text: String = chunk.concat();
        let mut values = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            values.push(serde_yaml::Value::deserialize(doc).ok()?);
        }
        values.retain(|v| !v.is_null());
        if values.len() > 1 {
            return None;
        }
        chunk_docs.push(values.pop());
    }
    let found: Vec<&serde_yaml::Value> = chunk_docs.iter().flatten().collect();
    if found != old_docs {
        return None;
    }
    let mut out = String::with_capacity(yaml.len() * 2);
    let mut next = 0;
    for (chunk, doc) in chunks.iter().zip(&chunk_docs) {
        let Some((new_value, changed)) = doc.as_ref().and_then(|_| new_docs.get(next)) else {
            out.extend(chunk.iter().copied());
            continue;
        };
        next += 1;
        if !changed {
            out.extend(chunk.iter().copied());
            continue;
        }
        let is_blank_or_comment = |l: &str| l.trim().is_empty() || l.starts_with('#');
        let mut body = &chunk[..];
        if let Some(first) = body.first() {
            if separator(first) == Some(true) {
                out.push_str(first);
                body = &body[1..];
            }
        }
        let lead = body.iter().take_while(|l| is_blank_or_comment(l)).count();
        let trail = body[lead..]
            .iter()
            .rev()
            .take_while(|l| is_blank_or_comment(l))
            .count();
        out.extend(body[..lead].iter().copied());
        let text = match serde_yaml::to_string(new_value) {
            Ok(t) => t,
            Err(e) => return Some(Err(format!("cannot write the YAML: {e}"))),
        };
        out.push_str(&text);
        // Trailing comments only: blank lines after a kept-chomped block
        // scalar would change its value.
        out.extend(
            body[body.len() - trail..]
                .iter()
                .filter(|l| l.starts_with('#'))
                .copied(),
        );
    }
    Some(Ok(out))
}

/// Whether `text` parses to exactly the documents `docs` (comments aside).
fn reads_as(text: &str, docs: &[(&serde_yaml::Value, bool)]) -> bool {
    let mut values = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        match serde_yaml::Value::deserialize(doc) {
            Ok(v) if v.is_null() => {}
            Ok(v) => values.push(v),
            Err(_) => return false,
        }
    }
    values.len() == docs.len() && values.iter().zip(docs).all(|(a, (b, _))| a == *b)
}

/// Writes every document anew (comments lost), separated by `---`.
fn rewrite_all(new_docs: &[(&serde_yaml::Value, bool)]) -> Result<String, String> {
    let mut out = String::new();
    for (i, (doc, _)) in new_docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(
            &serde_yaml::to_string(doc).map_err(|e| format!("cannot write the YAML: {e}"))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{load_files, Loaded};

    const FILE: &str = "secrets/db.yaml";

    /// base64("s3cr3t-password")
    const PASSWORD_B64: &str = "czNjcjN0LXBhc3N3b3Jk";

    const TEXT: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
# the database credentials
apiVersion: v1
kind: Secret
metadata:
  name: db
  namespace: demo
  labels: {app: db}
type: Opaque
data:
  password: czNjcjN0LXBhc3N3b3Jk
  binary: AAH/
stringData:
  username: admin-user
  config.yaml: |
    port: 5432
# after the secret
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web
  namespace: demo
data:
  password: not-a-secret   # a comment kept
";

    fn load(text: &str) -> Loaded {
        load_files([(FILE.to_string(), text.as_bytes().to_vec())])
    }

    fn messages(diags: &[Diagnostic]) -> Vec<String> {
        diags.iter().map(ToString::to_string).collect()
    }

    fn secret(l: &Loaded) -> &Manifest {
        l.manifests
            .iter()
            .find(|m| m.kind == Kind::Secret)
            .expect("a Secret")
    }

    fn line_of(text: &str, needle: &str) -> usize {
        text.lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
            .expect("needle in text")
    }

    /// Encrypts TEXT-like text to `recipients`, loads it, decrypts it.
    fn encrypt_load(text: &str, recipients: &[Recipient]) -> (String, Loaded) {
        let encrypted = encrypt_text(text, FILE, recipients).expect("encrypts");
        let loaded = load(&encrypted);
        assert!(
            loaded.is_valid(),
            "{:?}\n{encrypted}",
            messages(&loaded.diagnostics)
        );
        (encrypted, loaded)
    }

    #[test]
    fn round_trip_gives_the_object_a_plain_secret_gives() {
        let key = Identity::generate();
        let (encrypted, mut loaded) = encrypt_load(TEXT, &[key.to_public()]);
        for plain in [
            PASSWORD_B64,
            "s3cr3t-password",
            "admin-user",
            "port: 5432",
            "AAH/",
        ] {
            assert!(!encrypted.contains(plain), "{plain} leaked:\n{encrypted}");
        }
        assert_eq!(encrypted.matches("ENC[age,").count(), 4, "{encrypted}");
        assert!(
            encrypted.contains("commitd.io/encrypted: age"),
            "{encrypted}"
        );
        // Loaded but not decrypted yet: the ciphertexts are kept.
        let m = secret(&loaded);
        assert!(m.object["data"]["password"]
            .as_str()
            .is_some_and(is_encrypted));
        assert!(m.object["stringData"]["username"]
            .as_str()
            .is_some_and(is_encrypted));

        let ids = Identities::new(vec![key]);
        let diags = decrypt_manifests(&mut loaded.manifests, Some(&ids));
        assert!(diags.is_empty(), "{:?}", messages(&diags));
        let plain = load(TEXT);
        assert!(plain.is_valid());
        assert_eq!(secret(&loaded).object, secret(&plain).object);
        let data = &secret(&loaded).object["data"];
        assert_eq!(data["password"], PASSWORD_B64);
        assert_eq!(data["binary"], "AAH/");
        assert_eq!(data["username"], STANDARD.encode("admin-user"));
        assert_eq!(data["config.yaml"], STANDARD.encode("port: 5432\n"));
        assert!(secret(&loaded).object["metadata"]
            .get("annotations")
            .is_none());
        // The other documents are as they were.
        for (a, b) in loaded.manifests.iter().zip(&plain.manifests) {
            assert_eq!(a.object, b.object, "{}", a.display_name());
        }
    }

    #[test]
    fn either_of_two_recipients_decrypts() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let (_, loaded) = encrypt_load(TEXT, &[a.to_public(), b.to_public()]);
        let plain = load(TEXT);
        for key in [a, b] {
            let mut manifests = loaded.manifests.clone();
            let diags = decrypt_manifests(&mut manifests, Some(&Identities::new(vec![key])));
            assert!(diags.is_empty(), "{:?}", messages(&diags));
            assert_eq!(secret(&plain).object, manifests[1].object);
        }
    }

    #[test]
    fn wrong_identity_names_file_line_and_field() {
        let key = Identity::generate();
        let (encrypted, mut loaded) = encrypt_load(TEXT, &[key.to_public()]);
        let before = secret(&loaded).object.clone();
        let other = Identities::new(vec![Identity::generate()]);
        let diags = decrypt_manifests(&mut loaded.manifests, Some(&other));
        let line = |k: &str| line_of(&encrypted, &format!("  {k}: "));
        assert_eq!(
            messages(&diags),
            vec![
                format!("{FILE}:{}: error: data.binary: cannot decrypt data.binary: no identity matches any recipient", line("binary")),
                format!("{FILE}:{}: error: data.password: cannot decrypt data.password: no identity matches any recipient", line("password")),
                format!("{FILE}:{}: error: stringData[config.yaml]: cannot decrypt stringData[config.yaml]: no identity matches any recipient", line("config.yaml")),
                format!("{FILE}:{}: error: stringData.username: cannot decrypt stringData.username: no identity matches any recipient", line("username")),
            ]
        );
        // Nothing half-decrypted is left behind.
        assert_eq!(secret(&loaded).object, before);
    }

    #[test]
    fn no_identity_is_one_error_per_secret() {
        let (encrypted, mut loaded) = encrypt_load(TEXT, &[Identity::generate().to_public()]);
        let diags = decrypt_manifests(&mut loaded.manifests, None);
        assert_eq!(
            messages(&diags),
            vec![format!(
                "{FILE}:{}: error: data.binary: Secret demo/db holds encrypted values but the reconciler has no --age-identity",
                line_of(&encrypted, "  binary: ")
            )]
        );
        assert!(diags[0].is_error());
        assert!(secret(&loaded).object["data"]["password"]
            .as_str()
            .is_some_and(is_encrypted));
    }

    #[test]
    fn malformed_values_are_errors_on_load_and_on_decrypt() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata:\n  a: ENC[age,!!notbase64]\n  b: ENC[AES256_GCM,data:abc,type:str]\nstringData:\n  c: ENC[age,aGVsbG8=]\n  d: ENC[age,aGVsbG8=\n";
        let l = load(text);
        assert_eq!(
            messages(&l.diagnostics),
            vec![
                "secrets/db.yaml:5: error: data.a: malformed encrypted value: the ciphertext is not valid base64 (Invalid symbol 33, offset 0.)",
                "secrets/db.yaml:6: error: data.b: malformed encrypted value: expected ENC[age,<base64>], found method \"AES256_GCM\" (only age is supported)",
                "secrets/db.yaml:8: error: stringData.c: malformed encrypted value: the ciphertext is not an age file (Header is invalid)",
                "secrets/db.yaml:9: error: stringData.d: malformed encrypted value: missing the closing \"]\" of ENC[age,…]",
            ]
        );
        // A manifest that skipped the loader's check is caught on decrypt.
        let key = Identity::generate();
        let (encrypted, mut loaded) = encrypt_load(TEXT, &[key.to_public()]);
        loaded.manifests[1].object["data"]["password"] = Value::from("ENC[age,AAAA]");
        let diags = decrypt_manifests(&mut loaded.manifests, Some(&Identities::new(vec![key])));
        assert_eq!(
            messages(&diags),
            vec![format!(
                "{FILE}:{}: error: data.password: malformed encrypted value: the ciphertext is not an age file (Header is invalid)",
                line_of(&encrypted, "  password: ")
            )]
        );
    }

    #[test]
    fn plain_secrets_and_other_kinds_are_untouched() {
        let mut plain = load(TEXT);
        let before: Vec<Value> = plain.manifests.iter().map(|m| m.object.clone()).collect();
        let diags = decrypt_manifests(&mut plain.manifests, None);
        assert!(diags.is_empty());
        let after: Vec<Value> = plain.manifests.iter().map(|m| m.object.clone()).collect();
        assert_eq!(before, after);
        // Without a Secret to encrypt, the text comes back byte for byte.
        let recipient = Identity::generate().to_public();
        let no_secret = TEXT.replace("kind: Secret", "kind: ConfigMap");
        assert_eq!(
            encrypt_text(&no_secret, FILE, std::slice::from_ref(&recipient)).ok(),
            Some(no_secret)
        );
    }

    #[test]
    fn encrypt_keeps_other_documents_and_comments_around_secrets() {
        let recipient = Identity::generate().to_public();
        let encrypted = encrypt_text(TEXT, FILE, &[recipient]).expect("encrypts");
        let (head, _) = TEXT.split_once("# the database").expect("head");
        let (_, tail) = TEXT.split_once("# after the secret").expect("tail");
        assert!(encrypted.starts_with(&format!("{head}# the database credentials\n")));
        assert!(
            encrypted.ends_with(&format!("# after the secret{tail}")),
            "{encrypted}"
        );
        // Key order inside the Secret is kept.
        let order: Vec<usize> = [
            "apiVersion",
            "kind",
            "metadata",
            "type",
            "data",
            "stringData",
        ]
        .iter()
        .map(|k| {
            let secret_doc = line_of(&encrypted, "kind: Secret");
            let after = encrypted.lines().skip(secret_doc - 2);
            secret_doc - 2
                + after
                    .take_while(|l| !l.starts_with(&format!("{k}:")))
                    .count()
        })
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{encrypted}");
        let keys: Vec<usize> = ["password", "binary", "username", "config.yaml"]
            .iter()
            .map(|k| line_of(&encrypted, &format!("  {k}: ENC[age,")))
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{encrypted}");
    }

    #[test]
    fn encrypt_keeps_encrypted_values_as_they_are() {
        let key = Identity::generate();
        let once = encrypt_text(TEXT, FILE, &[key.to_public()]).expect("encrypts");
        // Nothing left to encrypt: the same text, byte for byte.
        let twice = encrypt_text(&once, FILE, &[key.to_public()]).expect("encrypts");
        assert_eq!(once, twice);
        // A new plain value is encrypted; the old ciphertexts stay.
        let added = once.replace("stringData:\n", "stringData:\n  token: abc123\n");
        let third = encrypt_text(&added, FILE, &[key.to_public()]).expect("encrypts");
        assert!(!third.contains("abc123"));
        let values = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| l.contains("ENC[age,"))
                .map(str::to_string)
                .collect()
        };
        let (old, new) = (values(&once), values(&third));
        assert_eq!(new.len(), old.len() + 1);
        assert!(old.iter().all(|v| new.contains(v)));
        let mut loaded = load(&third);
        let ids = Identities::new(vec![key]);
        assert!(decrypt_manifests(&mut loaded.manifests, Some(&ids)).is_empty());
        assert_eq!(
            secret(&loaded).object["data"]["token"],
            STANDARD.encode("abc123")
        );
    }

    #[test]
    fn annotation_is_added_required_value_and_removed() {
        let key = Identity::generate();
        let ids = Identities::new(vec![key.clone()]);
        let with_other = TEXT.replace(
            "  labels: {app: db}\n",
            "  labels: {app: db}\n  annotations: {owner: team-db}\n",
        );
        let (encrypted, mut loaded) = encrypt_load(&with_other, &[key.to_public()]);
        assert!(
            encrypted
                .contains("  annotations:\n    owner: team-db\n    commitd.io/encrypted: age\n"),
            "{encrypted}"
        );
        assert!(decrypt_manifests(&mut loaded.manifests, Some(&ids)).is_empty());
        assert_eq!(
            secret(&loaded).object["metadata"]["annotations"],
            serde_json::json!({"owner": "team-db"})
        );

        // Without the annotation: decrypted, with a warning.
        let (encrypted, _) = encrypt_load(TEXT, &[key.to_public()]);
        let bare = encrypted.replace("  annotations:\n    commitd.io/encrypted: age\n", "");
        assert_ne!(bare, encrypted);
        let mut loaded = load(&bare);
        let diags = decrypt_manifests(&mut loaded.manifests, Some(&ids));
        assert_eq!(
            messages(&diags),
            vec![format!("{FILE}:{}: warning: metadata.annotations: Secret demo/db holds encrypted values but not the annotation commitd.io/encrypted: age (commitd secret encrypt adds it); decrypting anyway", line_of(&bare, "  name: db") - 1)]
        );
        assert_eq!(secret(&loaded).object["data"]["password"], PASSWORD_B64);

        // Another value is an error.
        let sops = encrypted.replace("commitd.io/encrypted: age", "commitd.io/encrypted: sops");
        let mut loaded = load(&sops);
        let diags = decrypt_manifests(&mut loaded.manifests, Some(&ids));
        assert_eq!(
            messages(&diags),
            vec![format!("{FILE}:{}: error: metadata.annotations[commitd.io/encrypted]: Unsupported value: \"sops\": supported values: \"age\"", line_of(&sops, "commitd.io/encrypted"))]
        );

        // On a Secret with nothing encrypted, it is dropped silently.
        let plain = TEXT.replace(
            "  labels: {app: db}\n",
            "  annotations: {commitd.io/encrypted: age}\n",
        );
        let mut loaded = load(&plain);
        assert!(decrypt_manifests(&mut loaded.manifests, None).is_empty());
        assert!(secret(&loaded).object["metadata"]
            .get("annotations")
            .is_none());
    }

    #[test]
    fn string_data_must_decrypt_to_utf8_and_wins_over_data() {
        let key = Identity::generate();
        let binary = seal(&[0xff, 0xfe, 0x00], &[key.to_public()]).expect("seals");
        let text = format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  annotations: {{commitd.io/encrypted: age}}\nstringData:\n  bad: {binary}\n");
        let mut loaded = load(&text);
        assert!(loaded.is_valid(), "{:?}", messages(&loaded.diagnostics));
        let ids = Identities::new(vec![key.clone()]);
        assert_eq!(
            messages(&decrypt_manifests(&mut loaded.manifests, Some(&ids))),
            vec!["secrets/db.yaml:7: error: stringData.bad: the decrypted value of stringData.bad is not valid UTF-8; encrypt binary values under data"]
        );
        // The same bytes under data are fine.
        let mut loaded = load(&text.replace("stringData:", "data:"));
        assert!(decrypt_manifests(&mut loaded.manifests, Some(&ids)).is_empty());
        assert_eq!(secret(&loaded).object["data"]["bad"], "//4A");

        // stringData wins over data, encrypted or not, as on the API server.
        let both = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata:\n  a: ZGF0YQ==\n  b: ZGF0YQ==\nstringData:\n  a: from-string-data\n  b: from-string-data\n";
        let (_, mut loaded) = encrypt_load(both, &[key.to_public()]);
        assert!(decrypt_manifests(&mut loaded.manifests, Some(&ids)).is_empty());
        let plain = load(both);
        assert_eq!(secret(&loaded).object, secret(&plain).object);
        let half = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata:\n  a: ENC\nstringData:\n  a: plain-wins\n";
        let half = half.replace("ENC", &seal(b"data", &[key.to_public()]).expect("seals"));
        let mut loaded = load(&half);
        assert!(decrypt_manifests(&mut loaded.manifests, Some(&ids)).is_empty());
        assert_eq!(
            secret(&loaded).object["data"]["a"],
            STANDARD.encode("plain-wins")
        );
    }

    #[test]
    fn encrypt_errors_name_the_line() {
        let recipient = Identity::generate().to_public();
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata:\n  a: not base64!\nstringData:\n  port: 5432\n  ok: fine\n";
        let err = encrypt_text(text, FILE, std::slice::from_ref(&recipient)).expect_err("fails");
        assert_eq!(
            messages(&err.0),
            vec![
                "secrets/db.yaml:5: error: data.a: not valid base64 (Invalid symbol 32, offset 3.): data values are base64-encoded; put plain text under stringData",
                "secrets/db.yaml:7: error: stringData.port: expected a string value; quote it to encrypt it",
            ]
        );
        let err = encrypt_text("a: [\n", FILE, &[recipient]).expect_err("fails");
        assert!(err.to_string().starts_with("secrets/db.yaml:"), "{err}");
        assert!(encrypt_text(TEXT, FILE, &[]).is_err());
    }

    #[test]
    fn identity_files_and_recipients() {
        let generated = generate_identity();
        let file = format!("# a comment\n\n{}", generated.file_text);
        let ids = parse_identities(&file, "key.txt").expect("parses");
        assert_eq!(ids.len(), 1);
        assert_eq!(ids.recipients()[0].to_string(), generated.recipient);
        assert_eq!(format!("{ids:?}"), "Identities(1 age keys)");
        assert!(parse_recipient(&generated.recipient).is_ok());

        let secret_line = generated
            .file_text
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
            .expect("a key line");
        // A different last character (one changed character always breaks
        // the bech32 checksum; appending a fixed one would sometimes not
        // change the key at all).
        let (head, last) = secret_line.split_at(secret_line.len() - 1);
        let other = if last == "Q" { "P" } else { "Q" };
        let damaged = format!("# key\n{head}{other}\n");
        let err = parse_identities(&damaged, "key.txt").expect_err("fails");
        let msg = err.to_string();
        assert!(
            msg.starts_with("key.txt:2: not an age X25519 identity"),
            "{msg}"
        );
        assert!(!msg.contains(&secret_line[20..40]), "{msg}");
        assert_eq!(
            parse_identities("# nothing\n", "key.txt")
                .expect_err("fails")
                .to_string(),
            "key.txt: no age identity (AGE-SECRET-KEY-1…) in the file"
        );
        let missing = load_identities("/nonexistent/key.txt").expect_err("fails");
        assert!(missing
            .to_string()
            .starts_with("cannot read /nonexistent/key.txt: "));

        let err = parse_recipient(secret_line).expect_err("fails").to_string();
        assert!(!err.contains(&secret_line[20..40]), "{err}");
        assert!(
            err.contains("this is an identity, not a recipient"),
            "{err}"
        );
        assert_eq!(
            parse_recipient("age1xyz").expect_err("fails").to_string(),
            "invalid age recipient \"age1xyz\": invalid Bech32 encoding; expected an X25519 recipient (age1…, as age-keygen -y prints it)"
        );
        assert!(parse_recipient("ssh-ed25519 AAAA")
            .expect_err("fails")
            .to_string()
            .contains("SSH recipients are not supported"));
    }
}
