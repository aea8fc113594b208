//! `commitd validate`: the reconciler's verdict on a directory of manifests
//! before it is pushed, without a cluster — the same loader, the same
//! messages, so a clean `validate` means the commit will not be refused
//! (short of a Service address or node port that another Service in the
//! cluster holds, which only the cluster knows).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use commitd_api::manifest::{is_manifest_path, load_files};
use commitd_api::service_network::{allocate, ServiceNetwork};

use super::output::{self, plural};

/// Validates every `*.yaml`/`*.yml` under `path` (or the one file `path`
/// names). Prints each diagnostic and a summary; exit 1 if there is any
/// error, 0 otherwise. Failing to read the files at all is an `Err`.
pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let files = read_manifests(path)?;
    if files.is_empty() {
        eprintln!("warning: no *.yaml or *.yml files under {}", path.display());
    }
    let mut loaded = load_files(files);
    if loaded.is_valid() {
        // What allocation can tell without the cluster: explicit addresses
        // and node ports outside the default ranges or claimed twice.
        let errors = allocate(&mut loaded.manifests, &[], &ServiceNetwork::default());
        loaded.diagnostics.extend(errors);
    }
    // Set-level findings (duplicates) come last from the loader; reading
    // them in file and line order is easier than in discovery order.
    let mut diagnostics: Vec<_> = loaded.diagnostics.iter().collect();
    diagnostics.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    let mut text = String::new();
    for d in diagnostics {
        text += &format!("{d}\n");
    }
    let errors = loaded.errors().count();
    let warnings = loaded.warnings().count();
    let mut summary = if errors > 0 {
        plural(errors, "error", "errors")
    } else {
        format!(
            "{} valid",
            plural(loaded.manifests.len(), "object", "objects")
        )
    };
    if warnings > 0 {
        summary += &format!(", {}", plural(warnings, "warning", "warnings"));
    }
    text += &summary;
    text.push('\n');
    output::emit(&text)?;
    Ok(if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The manifest files under `root`, as (path relative to `root` with `/`
/// separators, content), sorted by path as the reconciler sorts a commit's
/// files. Hidden entries (`.git`) are skipped, and so are symbolic links to
/// directories, which Git would store as links rather than follow.
fn read_manifests(root: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let meta = std::fs::metadata(root).with_context(|| format!("reading {}", root.display()))?;
    if meta.is_file() {
        let bytes = std::fs::read(root).with_context(|| format!("reading {}", root.display()))?;
        return Ok(vec![(root.display().to_string(), bytes)]);
    }
    let mut paths = Vec::new();
    collect(root, &mut Vec::new(), &mut paths)?;
    paths.sort();
    paths
        .into_iter()
        .map(|(rel, full)| {
            std::fs::read(&full)
                .map(|bytes| (rel, bytes))
                .with_context(|| format!("reading {}", full.display()))
        })
        .collect()
}

fn collect(
    dir: &Path,
    rel: &mut Vec<String>,
    out: &mut Vec<(String, PathBuf)>,
) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let file_type = entry
            .file_type()
            .with_context(|| format!("reading {}", path.display()))?;
        let is_dir = file_type.is_dir();
        let is_file = file_type.is_file()
            || (file_type.is_symlink() && std::fs::metadata(&path).is_ok_and(|m| m.is_file()));
        rel.push(name);
        if is_dir {
            collect(&path, rel, out)?;
        } else if is_file && rel.last().is_some_and(|n| is_manifest_path(n)) {
            out.push((rel.join("/"), path));
        }
        rel.pop();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_manifests_recursively_sorted_and_relative() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("b/c"))?;
        std::fs::create_dir_all(dir.path().join(".git"))?;
        std::fs::write(dir.path().join("b/c/z.yml"), "a: 1\n")?;
        std::fs::write(dir.path().join("a.yaml"), "a: 1\n")?;
        std::fs::write(dir.path().join("README.md"), "hi\n")?;
        std::fs::write(dir.path().join(".git/x.yaml"), "a: 1\n")?;
        let files = read_manifests(dir.path())?;
        let names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["a.yaml", "b/c/z.yml"]);
        Ok(())
    }
}
