//! A container engine and images for the container runtime's tests, with no
//! registry: each image is built here as a `docker save` archive (one layer
//! tar, its config JSON and `manifest.json`) and loaded through the engine's
//! API. The root file system is Debian's statically linked busybox
//! (`busybox-static`), which serves HTTP and CGI scripts with nothing else.

use std::sync::Arc;

use pilotlight::cli::images::{BUSYBOX, ImageBuilder};
use pilotlight::serving::runtime::container::engine::{Engine, EngineConnector};

/// What a test runs: an HTTP server on `$PORT` serving `/www`, whose
/// `/cgi-bin/env` prints the environment and `/cgi-bin/cat?<path>` a file.
pub const SERVE: &str = "exec httpd -f -p $PORT -h /www";

/// The engine the tests use: `PILOTLIGHT_CONTAINER_ENGINE`, else
/// `DOCKER_HOST`, else the usual sockets, found as pilotlight finds it.
/// Under `CI=true` no engine fails the test; elsewhere the test is skipped
/// after saying how to start one.
pub async fn engine() -> Option<Arc<Engine>> {
    let configured = std::env::var("PILOTLIGHT_CONTAINER_ENGINE").ok();
    let connector = EngineConnector::new(configured, "pilotlight-tests-find-only".into());
    let message = match connector.engine().await {
        Ok(engine) if std::path::Path::new(BUSYBOX).exists() => return Some(engine),
        Ok(_) => format!(
            "{BUSYBOX} is missing; the test images are built from it: apt-get install busybox-static"
        ),
        Err(why) => format!(
            "{why}. For the tests: `.ci/start-docker` starts dockerd (apt-get install docker.io)"
        ),
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("skipping: {message}");
    None
}

/// An image to build: extra files on top of busybox, and its command.
pub struct Image<'a> {
    /// Such as `localhost/pilotlight-test/web:1`.
    pub tag: &'a str,
    /// (path without the leading '/', contents, mode).
    pub files: &'a [(&'a str, &'a [u8], u32)],
    /// The image's CMD, run by `/bin/sh -c`.
    pub cmd: &'a str,
}

const ENV_CGI: &[u8] = b"#!/bin/sh\necho 'Content-Type: text/plain'\necho\nenv\n";
const CAT_CGI: &[u8] =
    b"#!/bin/sh\necho 'Content-Type: text/plain'\necho\ncat \"/$QUERY_STRING\"\n";
const ID_CGI: &[u8] = b"#!/bin/sh\necho 'Content-Type: text/plain'\necho\nid -u\n";

impl Image<'_> {
    /// Builds the image (busybox, a web root with CGI scripts, the files)
    /// and loads it into the engine.
    pub async fn load(&self, engine: &Engine) {
        let mut image = ImageBuilder::new(self.tag)
            .busybox()
            .expect("busybox-static is installed")
            .file("www/index.html", "hello from a container\n", 0o644)
            .file("www/cgi-bin/env", ENV_CGI, 0o755)
            .file("www/cgi-bin/cat", CAT_CGI, 0o755)
            .file("www/cgi-bin/id", ID_CGI, 0o755)
            .file("etc/passwd", "root:x:0:0:root:/:/bin/sh\n", 0o644)
            .cmd(&["/bin/sh", "-c", self.cmd]);
        for (path, contents, mode) in self.files {
            image = image.file(path, *contents, *mode);
        }
        image
            .load(&engine.docker)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// How many containers of `revision` exist on the engine (running or not).
pub async fn containers_of(engine: &Engine, revision: &str) -> usize {
    let options = bollard::query_parameters::ListContainersOptions {
        all: true,
        filters: Some(
            [(
                "label".to_owned(),
                vec![format!("serving.knative.dev/revision={revision}")],
            )]
            .into(),
        ),
        ..Default::default()
    };
    engine
        .docker
        .list_containers(Some(options))
        .await
        .expect("list containers")
        .len()
}
