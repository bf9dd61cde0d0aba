//! Container images built from files on this machine, for the container
//! benchmark and the container tests, which have no registry to pull from:
//! a `docker save` archive (one layer tar, its config JSON, `manifest.json`)
//! loaded through the engine's API (`POST /images/load`), which dockerd and
//! Podman both take.
//!
//! Two kinds of root file system are enough: Debian's statically linked
//! busybox (`busybox-static`), which serves HTTP and CGI scripts with
//! nothing else, and a dynamically linked binary of this machine with the
//! shared libraries `ldd` names (this very `pilotlight`, to run
//! `pilotlight hello` in a container).

use std::path::Path;

use anyhow::{Context as _, bail};
use bollard::Docker;
use bollard::query_parameters::ImportImageOptions;
use futures::StreamExt as _;
use sha2::Digest as _;

/// Where busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";
/// The busybox applets an image links, as `/bin/<applet>`.
const APPLETS: &[&str] = &[
    "sh", "httpd", "env", "cat", "echo", "sleep", "touch", "wget", "ls", "id", "mkdir",
];

/// An image to build.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    /// Such as `localhost/pilotlight-bench/hello:1`.
    tag: String,
    /// (path without the leading '/', what it is).
    entries: Vec<(String, Entry)>,
    cmd: Vec<String>,
    env: Vec<String>,
}

#[derive(Debug, Clone)]
enum Entry {
    File { contents: Vec<u8>, mode: u32 },
    Link { target: String },
    Directory { mode: u32 },
}

impl ImageBuilder {
    pub fn new(tag: &str) -> Self {
        ImageBuilder {
            tag: tag.to_owned(),
            entries: vec![
                ("tmp".into(), Entry::Directory { mode: 0o1777 }),
                ("etc".into(), Entry::Directory { mode: 0o755 }),
            ],
            cmd: Vec::new(),
            env: vec!["PATH=/bin:/usr/bin".into()],
        }
    }

    /// Adds busybox as `/bin/busybox` and its applets as links.
    pub fn busybox(mut self) -> anyhow::Result<Self> {
        let busybox = std::fs::read(BUSYBOX)
            .with_context(|| format!("cannot read {BUSYBOX}: apt-get install busybox-static"))?;
        self.entries
            .push(("bin".into(), Entry::Directory { mode: 0o755 }));
        self = self.file("bin/busybox", busybox, 0o755);
        for applet in APPLETS {
            self.entries.push((
                format!("bin/{applet}"),
                Entry::Link {
                    target: "busybox".into(),
                },
            ));
        }
        Ok(self)
    }

    /// Adds the binary at `host` as `at`, with the shared libraries it loads
    /// (at their own paths, as `ldd` lists them).
    pub fn host_binary(mut self, host: &Path, at: &str) -> anyhow::Result<Self> {
        let binary =
            std::fs::read(host).with_context(|| format!("cannot read {}", host.display()))?;
        self = self.file(at, binary, 0o755);
        for library in shared_libraries(host)? {
            let contents = std::fs::read(&library)
                .with_context(|| format!("cannot read {}", library.display()))?;
            let path = library.to_string_lossy();
            self = self.file(path.trim_start_matches('/'), contents, 0o755);
        }
        Ok(self)
    }

    pub fn file(mut self, path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.entries.push((
            path.trim_start_matches('/').to_owned(),
            Entry::File {
                contents: contents.into(),
                mode,
            },
        ));
        self
    }

    /// The image's CMD.
    pub fn cmd(mut self, cmd: &[&str]) -> Self {
        self.cmd = cmd.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Builds the archive and loads it into the engine.
    pub async fn load(&self, docker: &Docker) -> anyhow::Result<()> {
        let archive = self.archive()?;
        let mut stream = docker.import_image(
            ImportImageOptions {
                quiet: true,
                ..Default::default()
            },
            bollard::body_full(archive.into()),
            None,
        );
        while let Some(item) = stream.next().await {
            let info = item.with_context(|| format!("loading image {}", self.tag))?;
            if let Some(error) = info.error_detail.and_then(|e| e.message) {
                bail!("loading image {}: {error}", self.tag);
            }
        }
        Ok(())
    }

    /// A `docker save` archive of the image.
    pub(crate) fn archive(&self) -> anyhow::Result<Vec<u8>> {
        let layer = self.layer()?;
        let diff_id = format!("{:x}", sha2::Sha256::digest(&layer));
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": self.env,
                "Cmd": self.cmd,
                "ExposedPorts": {"8080/tcp": {}},
            },
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
        })
        .to_string();
        let config_name = format!("{:x}.json", sha2::Sha256::digest(config.as_bytes()));
        let manifest = serde_json::json!([{
            "Config": config_name,
            "RepoTags": [self.tag],
            "Layers": ["layer.tar"],
        }])
        .to_string();
        let mut archive = tar::Builder::new(Vec::new());
        append_file(&mut archive, "layer.tar", &layer, 0o644)?;
        append_file(&mut archive, &config_name, config.as_bytes(), 0o644)?;
        append_file(&mut archive, "manifest.json", manifest.as_bytes(), 0o644)?;
        Ok(archive.into_inner()?)
    }

    /// The root file system, with every parent folder listed before what is
    /// in it.
    fn layer(&self) -> anyhow::Result<Vec<u8>> {
        let mut layer = tar::Builder::new(Vec::new());
        let mut folders = std::collections::BTreeSet::new();
        for (path, entry) in &self.entries {
            let mut parent = Path::new(path).parent();
            let mut missing = Vec::new();
            while let Some(folder) = parent.filter(|p| !p.as_os_str().is_empty()) {
                if folders.insert(folder.to_path_buf()) {
                    missing.push(folder.to_path_buf());
                }
                parent = folder.parent();
            }
            for folder in missing.iter().rev() {
                let explicit = self
                    .entries
                    .iter()
                    .any(|(p, e)| Path::new(p) == folder && matches!(e, Entry::Directory { .. }));
                if !explicit {
                    append_directory(&mut layer, &folder.to_string_lossy(), 0o755)?;
                }
            }
            match entry {
                Entry::File { contents, mode } => append_file(&mut layer, path, contents, *mode)?,
                Entry::Link { target } => {
                    let mut header = tar::Header::new_gnu();
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    header.set_mode(0o777);
                    layer.append_link(&mut header, path, target)?;
                }
                Entry::Directory { mode } => {
                    if folders.insert(path.into()) {
                        append_directory(&mut layer, path, *mode)?;
                    }
                }
            }
        }
        Ok(layer.into_inner()?)
    }
}

fn append_file(
    archive: &mut tar::Builder<Vec<u8>>,
    path: &str,
    contents: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(contents.len() as u64);
    header.set_mode(mode);
    header.set_cksum();
    archive.append_data(&mut header, path, contents)
}

fn append_directory(
    archive: &mut tar::Builder<Vec<u8>>,
    path: &str,
    mode: u32,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_size(0);
    header.set_mode(mode);
    header.set_cksum();
    archive.append_data(&mut header, path, std::io::empty())
}

/// The shared libraries `binary` loads, with the dynamic loader, as `ldd`
/// resolves them on this machine.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let output = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd (from libc-bin) to list the binary's libraries")?;
    if !output.status.success() {
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            // `libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)` or
            // `/lib64/ld-linux-x86-64.so.2 (0x...)`.
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/')
                .then(|| std::path::PathBuf::from(path))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_lists_its_layer_config_and_manifest() {
        let image = ImageBuilder::new("localhost/test:1")
            .file("www/index.html", "hi", 0o644)
            .cmd(&["/bin/sh"]);
        let archive = image.archive().expect("archive");
        let mut names = Vec::new();
        let mut manifest = String::new();
        for entry in tar::Archive::new(&archive[..]).entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let name = entry.path().expect("path").to_string_lossy().into_owned();
            if name == "manifest.json" {
                std::io::Read::read_to_string(&mut entry, &mut manifest).expect("read");
            }
            names.push(name);
        }
        assert_eq!(names.len(), 3);
        assert!(names.contains(&"layer.tar".to_owned()));
        let manifest: serde_json::Value = serde_json::from_str(&manifest).expect("json");
        assert_eq!(manifest[0]["RepoTags"][0], "localhost/test:1");
        assert_eq!(manifest[0]["Layers"][0], "layer.tar");
    }

    #[test]
    fn the_libraries_of_a_dynamic_binary_are_found() {
        let libraries = shared_libraries(Path::new("/bin/sh")).expect("ldd");
        assert!(
            libraries
                .iter()
                .any(|l| l.to_string_lossy().contains("libc.so")),
            "{libraries:?}"
        );
    }
}
