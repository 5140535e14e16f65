//! Runs the real `portcullis` binary against a temporary data dir: shared helpers.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

pub mod fake_smtp;
pub mod server;

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    /// Exit code 1 and exactly one `error:` line naming `needle`.
    pub fn fails_naming(self, needle: &str) -> Run {
        assert_eq!(
            self.code, 1,
            "expected exit 1\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(
            errors.len(),
            1,
            "expected one error line, stderr: {}",
            self.stderr
        );
        assert!(
            errors[0].contains(needle),
            "error line should name {needle:?}: {}",
            errors[0]
        );
        self
    }
}

pub fn command(data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for var in [
        "PORTCULLIS_DATA_DIR",
        "PORTCULLIS_CONFIG",
        "PORTCULLIS_SMTP",
        "PORTCULLIS_SUBMISSION",
        "PORTCULLIS_SUBMISSIONS",
        "RUST_LOG",
        "PORTCULLIS_SECRET_KEY",
    ] {
        cmd.env_remove(var);
    }
    cmd.arg("--data-dir").arg(data_dir);
    cmd
}

pub fn finish(output: Output) -> Run {
    Run {
        code: output.status.code().expect("exited normally"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

pub fn run(dir: &TempDir, args: &[&str]) -> Run {
    finish(
        command(dir.path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    )
}

pub fn run_stdin(dir: &TempDir, args: &[&str], stdin: &str) -> Run {
    let mut child = command(dir.path())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    finish(child.wait_with_output().unwrap())
}
