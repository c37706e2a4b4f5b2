//! For the hostile-input tests: a small registry pushed through the real registry, copies of its
//! storage to damage, a snapshot that sees everything (symbolic links, names that are not UTF-8),
//! and a runner with a deadline (a collector that loops forever fails the test instead of hanging).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::client::Client;
use super::content::sha256_hex;
use super::model::Model;
use super::run::RunOutput;
use super::workload::{Format, Ref, Workload};

/// A small registry with every kind of object a collector decides on: schema2 and OCI images,
/// a referrer, an OCI index with its children, an untagged image, an orphan blob. Repositories:
/// `app` (tags `v1`, `v2`) and `multi` (tag `latest`, an index).
pub fn small_workload(client: &Client, v2_root: Option<&Path>) -> Model {
    let mut w = Workload::new(client, v2_root, "regsweep hostile input v1");
    let layers = w.layers("app", 2);
    w.image(
        "app",
        Format::Docker,
        &layers,
        "amd64",
        Ref::Tag("v1"),
        "v1",
    );
    let layers = w.layers("app", 1);
    let v2 = w.image("app", Format::Oci, &layers, "amd64", Ref::Tag("v2"), "v2");
    w.referrer("app", &v2, Ref::Digest, "signature of v2");
    let layers = w.layers("app", 1);
    w.image(
        "app",
        Format::Oci,
        &layers,
        "amd64",
        Ref::Digest,
        "untagged",
    );
    w.orphan("app");
    let amd = w.layers("multi", 1);
    let amd = w.image("multi", Format::Oci, &amd, "amd64", Ref::Digest, "amd64");
    let arm = w.layers("multi", 1);
    let arm = w.image("multi", Format::Oci, &arm, "arm64", Ref::Digest, "arm64");
    w.list(
        "multi",
        Format::Oci,
        &[(&amd, "amd64"), (&arm, "arm64")],
        Ref::Tag("latest"),
        true,
        "index",
    );
    w.model
}

/// What one path is, without following links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File {
        len: u64,
        sha256: String,
    },
    Symlink(PathBuf),
    /// A FIFO, socket or device (never read: that could block).
    Special,
}

/// Every path under a root (names as raw bytes, so names that are not UTF-8 are compared exactly),
/// but regsweep's own objects (`_regsweep/`: the run lock).
pub type Snapshot = BTreeMap<OsString, Entry>;

pub fn snapshot(root: &Path) -> Snapshot {
    fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
        let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("list {}: {e}", dir.display()));
            let path = entry.path();
            if path == root.join("_regsweep") {
                continue;
            }
            let rel = path.strip_prefix(root).unwrap().as_os_str().to_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            let node = if meta.file_type().is_symlink() {
                Entry::Symlink(fs::read_link(&path).unwrap())
            } else if meta.is_dir() {
                walk(root, &path, out);
                Entry::Dir
            } else if meta.is_file() {
                // The tests run as root: permissions do not keep them from reading.
                let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                Entry::File {
                    len: bytes.len() as u64,
                    sha256: sha256_hex(&bytes),
                }
            } else {
                Entry::Special
            };
            out.insert(rel, node);
        }
    }
    let mut out = Snapshot::new();
    walk(root, root, &mut out);
    out
}

/// The paths that differ, lossily printed (`- removed`, `+ added`, `~ changed`).
pub fn diff(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let show = |p: &OsString| String::from_utf8_lossy(p.as_bytes()).into_owned();
    let mut out = Vec::new();
    for (path, node) in before {
        match after.get(path) {
            None => out.push(format!("- {}", show(path))),
            Some(other) if other != node => out.push(format!("~ {}", show(path))),
            Some(_) => {}
        }
    }
    for path in after.keys().filter(|p| !before.contains_key(*p)) {
        out.push(format!("+ {}", show(path)));
    }
    out
}

/// The `sha256:<hex>` of every blob whose `data` file was removed.
pub fn removed_blobs(before: &Snapshot, after: &Snapshot) -> std::collections::BTreeSet<String> {
    before
        .keys()
        .filter(|p| !after.contains_key(*p))
        .filter_map(|p| {
            let p = p.to_str()?;
            let rest = p.strip_prefix("docker/registry/v2/blobs/sha256/")?;
            let (hex, data) = rest.get(3..)?.split_once('/')?;
            (data == "data").then(|| format!("sha256:{hex}"))
        })
        .collect()
}

/// Copies a tree exactly (`cp -a`).
pub fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// Runs `program args…` with output to files in `dir`, killing it after `deadline`: a run that
/// does not finish in time is a failure, reported as such.
pub fn run_with_deadline(
    dir: &Path,
    program: &Path,
    args: &[&str],
    deadline: Duration,
) -> RunOutput {
    let out_path = dir.join("run.stdout");
    let err_path = dir.join("run.stderr");
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .env_remove("REGSWEEP_LOG");
    for (key, _) in std::env::vars_os() {
        let text = key.to_string_lossy();
        if text.starts_with("REGISTRY_") || text.starts_with("AWS_") {
            command.env_remove(&key);
        }
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} {} did not finish within {deadline:?}",
                program.display(),
                args.join(" ")
            );
        }
        sleep(Duration::from_millis(20));
    };
    RunOutput {
        command: format!("{} {}", program.display(), args.join(" ")),
        status,
        stdout: String::from_utf8_lossy(&fs::read(&out_path).unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&fs::read(&err_path).unwrap()).into_owned(),
    }
}
