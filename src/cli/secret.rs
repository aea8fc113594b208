//! `commitd secret`: encrypting the values of Secret manifests to age
//! recipients before they are committed, so the repository can be shared
//! while only the reconciler (which holds the identity) reads them. The
//! format is described in `commitd_api::encrypted_secrets`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use commitd_api::encrypted_secrets::{
    encrypt_text, generate_identity, load_recipients, parse_recipient,
};

use super::output;

/// `commitd secret …`.
#[derive(Args, Debug)]
pub struct SecretArgs {
    #[command(subcommand)]
    pub command: SecretCommand,
}

/// The `secret` subcommands.
#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Encrypt every plain data/stringData value of the Secrets in a manifest file (ENC[age,…]).
    Encrypt(EncryptArgs),
    /// Make a new age identity for the reconciler (age-keygen makes the same).
    Keygen(KeygenArgs),
}

/// `commitd secret encrypt`.
#[derive(Args, Debug)]
pub struct EncryptArgs {
    /// The manifest file (YAML, one or more documents).
    pub file: PathBuf,
    /// An age recipient (age1…) to encrypt to; repeat for several (any one of their identities decrypts).
    #[arg(short = 'r', long = "recipient", value_name = "AGE1…")]
    pub recipients: Vec<String>,
    /// A file of age recipients, one per line (# comments allowed); may be repeated.
    #[arg(short = 'R', long = "recipients-file", value_name = "FILE")]
    pub recipients_files: Vec<PathBuf>,
    /// Rewrite FILE in place instead of printing the result.
    #[arg(short = 'i', long)]
    pub in_place: bool,
}

/// `commitd secret keygen`.
#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Write the identity to FILE (created with mode 0600; must not exist) and print its recipient; without it, print the identity.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Runs a `secret` subcommand. Exit 1 when the file has values that cannot
/// be encrypted (each named by file, line and field); other failures are
/// `Err` (exit 2).
pub fn run(args: SecretArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        SecretCommand::Encrypt(a) => encrypt(a),
        SecretCommand::Keygen(a) => keygen(a),
    }
}

fn encrypt(args: EncryptArgs) -> anyhow::Result<ExitCode> {
    let mut recipients = Vec::new();
    for r in &args.recipients {
        recipients.push(parse_recipient(r)?);
    }
    for f in &args.recipients_files {
        recipients.extend(load_recipients(f)?);
    }
    if recipients.is_empty() {
        bail!("no recipient: pass --recipient age1… or --recipients-file FILE");
    }
    let shown = args.file.display().to_string();
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {shown}"))?;
    let encrypted = match encrypt_text(&text, &shown, &recipients) {
        Ok(t) => t,
        Err(e) => {
            for d in &e.0 {
                eprintln!("{d}");
            }
            eprintln!("{shown}: not encrypted");
            return Ok(ExitCode::from(1));
        }
    };
    if !args.in_place {
        output::emit(&encrypted)?;
    } else if encrypted == text {
        eprintln!("{shown}: nothing to encrypt");
    } else {
        replace_file(&args.file, &encrypted)?;
        eprintln!("{shown}: encrypted");
    }
    Ok(ExitCode::SUCCESS)
}

/// Replaces a file's content atomically: a temporary file in the same
/// directory, given the file's mode, renamed over it. A symbolic link is
/// followed, so the link stays a link.
fn replace_file(path: &Path, content: &str) -> anyhow::Result<()> {
    let target =
        std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
    let permissions = std::fs::metadata(&target)
        .with_context(|| format!("reading {}", target.display()))?
        .permissions();
    let dir = target
        .parent()
        .with_context(|| format!("{} has no parent directory", target.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".commitd-secret-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(content.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    std::fs::set_permissions(tmp.path(), permissions)
        .with_context(|| format!("setting the mode of {}", tmp.path().display()))?;
    tmp.persist(&target)
        .with_context(|| format!("replacing {}", target.display()))?;
    Ok(())
}

fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let generated = generate_identity();
    let Some(path) = args.output else {
        output::emit(&generated.file_text)?;
        eprintln!("Public key: {}", generated.recipient);
        return Ok(ExitCode::SUCCESS);
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(generated.file_text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    output::emit(&format!("{}\n", generated.recipient))?;
    Ok(ExitCode::SUCCESS)
}
