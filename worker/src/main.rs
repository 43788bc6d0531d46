//! `weft-worker`: the stream worker. Until the join engine lands (issue: the join engine and
//! local mode) it offers `validate`, the same check the worker runs on its configuration
//! before it starts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weft_crds::manifest::{Resource, read_file, validate_set};

#[derive(Parser)]
#[command(name = "weft-worker", version, about = "Weft stream worker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate ProcessDefinition and JoinPipeline files (or directories of *.yaml) the way the
    /// operator and the worker do; exits 1 and names every bad field when one is invalid.
    Validate {
        /// Files or directories.
        #[arg(short = 'f', long = "filename", required = true)]
        paths: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { paths } => validate(&paths),
    }
}

fn validate(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut files = Vec::new();
    for path in paths {
        collect_yaml(path, &mut files).with_context(|| format!("reading {}", path.display()))?;
    }
    let mut resources = Vec::new();
    for file in &files {
        resources.extend(read_file(file)?);
    }
    let failures = validate_set(&resources);
    for resource in &resources {
        let kind = match resource {
            Resource::ProcessDefinition(_) => "ProcessDefinition",
            Resource::JoinPipeline(_) => "JoinPipeline",
        };
        let id = format!("{kind}/{}", resource.name());
        match failures.iter().find(|(failed, _)| *failed == id) {
            None => println!("{id}: valid"),
            Some((_, errors)) => {
                for error in errors.iter() {
                    println!("{id}: invalid: {error}");
                }
            }
        }
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn collect_yaml(path: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for entry in entries {
            if entry.is_dir() || entry.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                collect_yaml(&entry, files)?;
            }
        }
    } else {
        files.push(path.to_path_buf());
    }
    Ok(())
}
