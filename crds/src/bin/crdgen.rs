//! Writes the CRDs generated from the Rust types to a directory (default manifests/crds/),
//! or with `--check` fails when the files there differ from what the types generate.

use std::path::PathBuf;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let mut check = false;
    let mut dir = weft_crds::repo_dir().join("manifests/crds");
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("usage: crdgen [--check] [DIR]   (DIR defaults to manifests/crds)");
                return Ok(());
            }
            _ => dir = PathBuf::from(arg),
        }
    }
    let mut stale = Vec::new();
    for (file, crd) in weft_crds::crds() {
        let yaml = weft_crds::crd_yaml(&crd).context("serializing CRD")?;
        let path = dir.join(file);
        if check {
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            if committed != yaml {
                stale.push(path.display().to_string());
            }
        } else {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    if !stale.is_empty() {
        bail!(
            "out of date (run `cargo run -p weft-crds --bin crdgen`): {}",
            stale.join(", ")
        );
    }
    Ok(())
}
