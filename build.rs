//! Links the `pilotlight` executable with packed relative relocations
//! (DT_RELR) where the linker and C library support them.
//!
//! A position-independent executable carries one relocation per pointer in
//! its read-only data (vtables, string tables...), and the dynamic loader
//! reads every one at start-up: in RELA form that table was the largest
//! part of an idle pilotlight's resident memory after its code (docs/
//! benchmarks.md, "Serving figures"). RELR packs the same relocations into
//! a bitmap about a hundredth of the size. The executable stays
//! position-independent (ASLR unchanged); it needs glibc 2.36 or later at
//! run time, as the build machine has when its linker accepts the flag.

use std::path::PathBuf;
use std::process::{Command, Stdio};

const PACK_RELATIVE_RELOCS: &str = "-Wl,-z,pack-relative-relocs";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if target_os == "linux" && target_env == "gnu" && linker_packs_relocations() {
        println!("cargo:rustc-link-arg-bins={PACK_RELATIVE_RELOCS}");
    }
}

/// Whether the C compiler driver rustc links with (`cc` unless told
/// otherwise) links a program with the flag: binutils 2.38+ or lld 15+, and
/// a glibc that defines `GLIBC_ABI_DT_RELR` (2.36+).
fn linker_packs_relocations() -> bool {
    let Some(out_dir) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        return false;
    };
    let linker = std::env::var("RUSTC_LINKER").unwrap_or_else(|_| "cc".to_owned());
    let probe = out_dir.join("relr-probe");
    let Ok(mut compiler) = Command::new(&linker)
        .args(["-x", "c", "-", "-pie", "-fPIE", PACK_RELATIVE_RELOCS, "-o"])
        .arg(&probe)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    if let Some(mut stdin) = compiler.stdin.take() {
        use std::io::Write as _;
        let _ = stdin
            .write_all(b"static const char *p = \"x\"; int main(void) { return p[0] != 'x'; }\n");
    }
    let linked = compiler.wait().is_ok_and(|status| status.success());
    // The probe must also run: the loader here understands DT_RELR.
    linked
        && Command::new(&probe)
            .status()
            .is_ok_and(|status| status.success())
}
