//! The layering of `src/`, checked from the code's own `crate::` paths, so
//! that a cycle between the top modules cannot come back unnoticed:
//!
//! ```text
//! cli, server                 the commands; `pilotlight run` assembled
//! control                     manifests, reconciling both halves, status, admin API
//! eventing | serving          the two halves, never importing each other
//! auth                        OIDC tokens and EventPolicies (eventing's senders and ingress)
//! api, cloudevent, cesql      Knative's API; the CloudEvent and its filter language
//! backoff, kubeconfig, telemetry, tls, listener, http_util, desired, fault
//! ```

use std::path::{Path, PathBuf};

/// Every module above the small shared pieces at the bottom.
const ABOVE_THE_BOTTOM: &[&str] = &[
    "api",
    "auth",
    "cloudevent",
    "cesql",
    "eventing",
    "serving",
    "control",
    "server",
    "cli",
];

/// What each top module may not name, by `crate::<module>`.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "api",
        &["auth", "eventing", "serving", "control", "server", "cli"],
    ),
    (
        "cloudevent",
        &[
            "api", "auth", "eventing", "serving", "control", "server", "cli",
        ],
    ),
    (
        "cesql",
        &[
            "api", "auth", "eventing", "serving", "control", "server", "cli",
        ],
    ),
    // OIDC and EventPolicies: under eventing (its ingress and senders
    // use it), over api and cloudevent.
    ("auth", &["eventing", "serving", "control", "server", "cli"]),
    ("eventing", &["serving", "control", "server", "cli"]),
    ("serving", &["eventing", "control", "server", "cli"]),
    ("control", &["server", "cli"]),
    (
        "backoff.rs",
        &[
            "api", "auth", "eventing", "serving", "control", "server", "cli",
        ],
    ),
    (
        "desired.rs",
        &[
            "api", "auth", "eventing", "serving", "control", "server", "cli",
        ],
    ),
    (
        "http_util.rs",
        &[
            "api", "auth", "eventing", "serving", "control", "server", "cli",
        ],
    ),
    (
        "kubeconfig.rs",
        &[
            "api", "auth", "eventing", "serving", "control", "server", "cli",
        ],
    ),
    (
        "telemetry",
        &[
            "api", "auth", "eventing", "serving", "control", "server", "cli",
        ],
    ),
    // Fault points for the crash tests: named by the log, names nothing.
    ("fault.rs", ABOVE_THE_BOTTOM),
    // The HTTP listeners: on tls and http_util only.
    ("listener.rs", ABOVE_THE_BOTTOM),
    (
        "tls",
        &[
            "api",
            "cloudevent",
            "cesql",
            "eventing",
            "serving",
            "control",
            "server",
            "cli",
        ],
    ),
];

fn rust_files(path: &Path, files: &mut Vec<PathBuf>) {
    if path.is_file() {
        files.push(path.to_owned());
        return;
    }
    let entries = std::fs::read_dir(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() || path.extension().is_some_and(|x| x == "rs") {
            rust_files(&path, files);
        }
    }
}

#[test]
fn no_module_names_a_layer_above_it_or_beside_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for (module, forbidden) in FORBIDDEN {
        let mut files = Vec::new();
        rust_files(&src.join(module), &mut files);
        assert!(!files.is_empty(), "src/{module} has no Rust files");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("readable");
            for (number, line) in text.lines().enumerate() {
                for other in *forbidden {
                    let path = format!("crate::{other}::");
                    let whole = format!("crate::{other};");
                    if line.contains(&path) || line.contains(&whole) {
                        violations.push(format!(
                            "{}:{}: src/{module} names crate::{other}: {}",
                            file.strip_prefix(&src).unwrap_or(&file).display(),
                            number + 1,
                            line.trim()
                        ));
                    }
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering broken:\n{}",
        violations.join("\n")
    );
}
