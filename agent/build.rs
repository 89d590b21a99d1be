//! Records the compiler version for the `process.runtime.*` resource attributes.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=RUSTC");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(output) = Command::new(rustc).arg("--version").output() else {
        return;
    };
    let description = String::from_utf8_lossy(&output.stdout).trim().to_string();
    // "rustc 1.91.0 (f8297e351 2025-10-28)"
    if let Some(version) = description.split_whitespace().nth(1) {
        println!("cargo:rustc-env=AGENT_RUSTC_VERSION={version}");
        println!("cargo:rustc-env=AGENT_RUSTC_DESCRIPTION={description}");
    }
}
