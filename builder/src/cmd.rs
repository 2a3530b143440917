// SPDX-License-Identifier: Apache-2.0
//! The only place that spawns external programs.
//!
//! Every command is logged as a copyable shell line, runs with stdin closed
//! and a minimal environment, and a non-zero exit becomes an error carrying
//! the command line and the tail of its stderr.

use std::ffi::OsStr;
use std::io::{Read, Seek, SeekFrom};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// How many bytes of a failed command's stderr end up in the error.
const STDERR_TAIL: u64 = 4096;

/// A program the build host lacks, with the Debian/Fedora package that has it.
pub(crate) fn require_tool(program: &str) -> Result<()> {
    if which(program).is_some() {
        return Ok(());
    }
    let package = match program {
        "mke2fs" | "e2fsck" | "resize2fs" | "debugfs" => "e2fsprogs",
        "qemu-img" => "qemu-utils (Debian) or qemu-img (Fedora)",
        "qemu-system-x86_64" => "qemu-system-x86 (Debian and Fedora)",
        "sgdisk" => "gdisk",
        "fsck.fat" => "dosfstools",
        _ => "the distribution package that provides it",
    };
    bail!("{program} was not found on PATH: install {package}")
}

/// Finds `program` on PATH (or as given, when it contains a slash).
pub(crate) fn which(program: &str) -> Option<std::path::PathBuf> {
    if program.contains('/') {
        let p = std::path::PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(Into::into))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Renders a command as a line that can be pasted into a shell.
pub(crate) fn shell_line(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            words.push(format!("{}={}", k.to_string_lossy(), quote(v)));
        }
    }
    words.push(quote(cmd.get_program()));
    words.extend(cmd.get_args().map(quote));
    words.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    shlex::try_quote(&s)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| format!("{s:?}"))
}

pub(crate) trait CommandRunExt {
    /// Runs to completion; a non-zero exit is an error with stderr's tail.
    fn run(&mut self) -> Result<()>;
    /// Runs and returns stdout as a string.
    fn run_get_string(&mut self) -> Result<String>;
}

impl CommandRunExt for Command {
    fn run(&mut self) -> Result<()> {
        self.stdout(Stdio::null());
        run_inner(self).map(|_| ())
    }

    fn run_get_string(&mut self) -> Result<String> {
        self.stdout(Stdio::piped());
        let out = run_inner(self)?;
        String::from_utf8(out).with_context(|| format!("reading output of {}", shell_line(self)))
    }
}

/// Starts a long-running program (a VM) whose output the caller streams.
/// stdin is closed; stdout and stderr are as the caller set them.
pub(crate) fn spawn_logged(cmd: &mut Command) -> Result<std::process::Child> {
    let line = shell_line(cmd);
    tracing::debug!("+ {line}");
    cmd.stdin(Stdio::null())
        .env("LANG", "C.UTF-8")
        .env("LC_ALL", "C.UTF-8");
    cmd.spawn().with_context(|| format!("starting {line}"))
}

fn run_inner(cmd: &mut Command) -> Result<Vec<u8>> {
    let line = shell_line(cmd);
    tracing::debug!("+ {line}");
    let mut errfile = tempfile::tempfile().context("creating a temporary file for stderr")?;
    cmd.stdin(Stdio::null())
        .stderr(errfile.try_clone().context("duplicating stderr file")?)
        .env("LANG", "C.UTF-8")
        .env("LC_ALL", "C.UTF-8");
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {line}"))?;
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {line}"))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let len = errfile.seek(SeekFrom::End(0)).unwrap_or(0);
    errfile
        .seek(SeekFrom::Start(len.saturating_sub(STDERR_TAIL)))
        .ok();
    let mut tail = String::new();
    errfile.read_to_string(&mut tail).ok();
    let tail = tail.trim();
    let status = out.status;
    if tail.is_empty() {
        bail!("command failed ({status}): {line}")
    }
    bail!("command failed ({status}): {line}\n{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_and_output() {
        Command::new("true").run().unwrap();
        let s = Command::new("echo").arg("hello world").run_get_string().unwrap();
        assert_eq!(s, "hello world\n");
    }

    #[test]
    fn failure_carries_command_and_stderr() {
        let err = Command::new("sh")
            .args(["-c", "echo 'disk on fire' >&2; exit 3"])
            .run()
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("disk on fire"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.contains("sh -c"), "{msg}");
    }

    #[test]
    fn missing_program_names_it() {
        let err = Command::new("airlock-no-such-tool").run().unwrap_err();
        assert!(format!("{err:#}").contains("airlock-no-such-tool"));
        let err = require_tool("airlock-no-such-tool").unwrap_err();
        assert!(format!("{err:#}").contains("not found on PATH"));
    }

    #[test]
    fn shell_line_quotes() {
        let mut c = Command::new("mke2fs");
        c.arg("-L").arg("my root").env("E2FSPROGS_FAKE_TIME", "1");
        assert_eq!(shell_line(&c), "E2FSPROGS_FAKE_TIME=1 mke2fs -L 'my root'");
    }
}
