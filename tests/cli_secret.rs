//! `commitd secret` as a user runs it: the built binary makes an identity,
//! encrypts a Secret manifest to stdout and in place, and the result is
//! what the reconciler's loader and `decrypt_manifests` turn back into the
//! original values, and what `commitd validate` accepts.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use commitd_api::encrypted_secrets::{decrypt_manifests, load_identities};
use commitd_api::manifest::{load_files, Loaded};
use commitd_api::Kind;

const SECRET: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
# The database credentials.
apiVersion: v1
kind: Secret
metadata:
  name: db
  namespace: demo
type: Opaque
data:
  password: aHVudGVyMi1wYXNzd29yZA==
stringData:
  username: admin-user-42
";

/// The plaintexts that must never appear in an encrypted file.
const PLAINTEXTS: [&str; 3] = [
    "aHVudGVyMi1wYXNzd29yZA==",
    "hunter2-password",
    "admin-user-42",
];

fn commitd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_commitd"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run commitd")
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

fn load(path: &str, text: &str) -> Loaded {
    load_files([(path.to_string(), text.as_bytes().to_vec())])
}

/// Makes an identity with `commitd secret keygen`; returns its recipient.
fn keygen(path: &Path) -> String {
    let out = commitd(&["secret", "keygen", "-o", path_str(path)]);
    assert!(out.status.success(), "{}", describe(&out));
    let mode = std::fs::metadata(path)
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "identity file mode {mode:o}");
    let recipient = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(recipient.starts_with("age1"), "{}", describe(&out));
    recipient
}

#[test]
fn encrypts_to_stdout_and_in_place_and_decrypts_to_the_originals() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (key_a, key_b) = (dir.path().join("a.key"), dir.path().join("b.key"));
    let (recipient_a, recipient_b) = (keygen(&key_a), keygen(&key_b));
    let recipients_file = dir.path().join("recipients.txt");
    std::fs::write(
        &recipients_file,
        format!("# the second reconciler\n{recipient_b}\n"),
    )
    .expect("write recipients");
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).expect("repo folder");
    let file = repo.join("db.yaml");
    std::fs::write(&file, SECRET).expect("write the manifest");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");

    // To stdout: the file is left alone.
    let out = commitd(&[
        "secret",
        "encrypt",
        path_str(&file),
        "--recipient",
        &recipient_a,
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(printed.matches("ENC[age,").count(), 2, "{printed}");
    assert!(printed.contains("commitd.io/encrypted: age"), "{printed}");
    assert!(
        printed.starts_with("apiVersion: v1\nkind: Namespace\n"),
        "{printed}"
    );
    assert!(
        printed.contains("# The database credentials.\n"),
        "{printed}"
    );
    for p in PLAINTEXTS {
        assert!(!printed.contains(p), "{p} in\n{printed}");
    }
    assert_eq!(std::fs::read_to_string(&file).expect("read"), SECRET);

    // In place, to two recipients: the file is rewritten, its mode kept.
    let out = commitd(&[
        "secret",
        "encrypt",
        "-i",
        path_str(&file),
        "-r",
        &recipient_a,
        "--recipients-file",
        path_str(&recipients_file),
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    let rewritten = std::fs::read_to_string(&file).expect("read");
    assert_eq!(rewritten.matches("ENC[age,").count(), 2, "{rewritten}");
    for p in PLAINTEXTS {
        assert!(!rewritten.contains(p), "{p} in\n{rewritten}");
    }
    let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o640);
    let leftovers: Vec<_> = std::fs::read_dir(&repo)
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("db.yaml")]);

    // Running it again changes nothing.
    let out = commitd(&[
        "secret",
        "encrypt",
        "-i",
        path_str(&file),
        "-r",
        &recipient_a,
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(std::fs::read_to_string(&file).expect("read"), rewritten);

    // What the reconciler does: load, then decrypt with either identity.
    let plain = load("db.yaml", SECRET);
    let want = plain
        .manifests
        .iter()
        .find(|m| m.kind == Kind::Secret)
        .expect("the plain Secret")
        .object
        .clone();
    for key in [&key_a, &key_b] {
        let mut loaded = load("db.yaml", &rewritten);
        assert!(loaded.is_valid(), "{:?}", loaded.diagnostics);
        let identities = load_identities(key).expect("identity file");
        let diags = decrypt_manifests(&mut loaded.manifests, Some(&identities));
        assert!(diags.is_empty(), "{diags:?}");
        let got = &loaded.manifests[1].object;
        assert_eq!(got, &want);
        assert_eq!(got["data"]["password"], "aHVudGVyMi1wYXNzd29yZA==");
        assert_eq!(got["data"]["username"], "YWRtaW4tdXNlci00Mg==");
    }
    // The stdout result decrypts with the first identity only.
    let mut loaded = load("db.yaml", &printed);
    let identities = load_identities(&key_b).expect("identity file");
    let diags = decrypt_manifests(&mut loaded.manifests, Some(&identities));
    assert_eq!(diags.len(), 2, "{diags:?}");
    assert!(diags[0]
        .to_string()
        .contains("db.yaml:16: error: data.password: cannot decrypt data.password: no identity matches any recipient"));

    // `commitd validate` accepts the encrypted Secret without any key.
    let out = commitd(&["validate", path_str(&repo)]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 objects valid\n");
}

#[test]
fn errors_are_clear_and_exit_non_zero() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let recipient = keygen(&dir.path().join("k.key"));
    let file = dir.path().join("bad.yaml");
    let bad = SECRET.replace("aHVudGVyMi1wYXNzd29yZA==", "not base64!");
    std::fs::write(&file, &bad).expect("write");
    let f = path_str(&file);

    let out = commitd(&["secret", "encrypt", "-i", f, "-r", &recipient]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{f}:14: error: data.password: not valid base64")),
        "{}",
        describe(&out)
    );
    assert_eq!(std::fs::read_to_string(&file).expect("read"), bad);

    let out = commitd(&["secret", "encrypt", f, "-r", "age1nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error: invalid age recipient \"age1nope\"")
    );

    let out = commitd(&["secret", "encrypt", f]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no recipient"));

    // keygen never overwrites an identity.
    let out = commitd(&[
        "secret",
        "keygen",
        "-o",
        path_str(&dir.path().join("k.key")),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}
