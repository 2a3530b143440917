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
    /// Runs with `input` (if any) streamed to stdin, handing every line the
    /// program prints on stdout or stderr to `echo` as it arrives. A
    /// non-zero exit, or a failure reading `input`, is an error carrying the
    /// command line and the last lines of stderr.
    fn run_streaming(
        &mut self,
        input: Option<&mut (dyn Read + Send)>,
        echo: &mut dyn FnMut(&str),
    ) -> Result<()>;
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

    fn run_streaming(
        &mut self,
        input: Option<&mut (dyn Read + Send)>,
        echo: &mut dyn FnMut(&str),
    ) -> Result<()> {
        streaming::run(self, input, echo)
    }
}

/// Programs running right now, so an interrupted airlock can stop them
/// instead of leaving mke2fs or QEMU running on their own.
static RUNNING: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Keeps a child in the list of running programs until dropped.
pub(crate) struct Tracked(u32);

pub(crate) fn track(child: &std::process::Child) -> Tracked {
    let pid = child.id();
    RUNNING.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
    Tracked(pid)
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let mut r = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        r.retain(|p| *p != self.0);
    }
}

/// What the command wants said if it is interrupted (e.g. where a build
/// left its temporary files).
static ON_INTERRUPT: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

pub(crate) fn on_interrupt_say(what: String) {
    *ON_INTERRUPT.lock().unwrap_or_else(|e| e.into_inner()) = Some(what);
}

/// On Ctrl-C or SIGTERM: kill the programs airlock started, then exit 130.
/// Temporary build folders left behind are removed by the next build.
pub fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        let pids = RUNNING.lock().map(|r| r.clone()).unwrap_or_default();
        for pid in pids {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::Kill);
            }
        }
        let note = ON_INTERRUPT.lock().ok().and_then(|n| n.clone());
        match note {
            Some(n) => eprintln!("\nairlock: interrupted; {n}"),
            None => eprintln!("\nairlock: interrupted"),
        }
        std::process::exit(130);
    });
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
    let child = cmd.spawn().with_context(|| format!("starting {line}"))?;
    let _running = track(&child);
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

mod streaming {
    use std::collections::VecDeque;
    use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
    use std::process::{Command, Stdio};
    use std::sync::mpsc;

    use anyhow::{bail, Context, Result};

    use super::shell_line;

    /// stderr lines kept for the error message.
    const TAIL_LINES: usize = 40;

    enum Fed {
        Done,
        /// The program exited (or closed stdin) before reading everything.
        Closed,
        ReadFailed(std::io::Error),
        WriteFailed(std::io::Error),
    }

    fn feed(input: &mut (dyn Read + Send), stdin: &mut dyn Write) -> Fed {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => return Fed::Done,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Fed::ReadFailed(e),
            };
            match stdin.write_all(&buf[..n]) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::BrokenPipe => return Fed::Closed,
                Err(e) => return Fed::WriteFailed(e),
            }
        }
    }

    pub(super) fn run(
        cmd: &mut Command,
        input: Option<&mut (dyn Read + Send)>,
        echo: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let line = shell_line(cmd);
        tracing::debug!("+ {line}");
        let stdin = if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        cmd.stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("LANG", "C.UTF-8")
            .env("LC_ALL", "C.UTF-8");
        let mut child = cmd.spawn().with_context(|| format!("starting {line}"))?;
        let _running = super::track(&child);
        let stdin = child.stdin.take();
        let pipes: [(bool, Box<dyn Read + Send>); 2] = [
            (false, Box::new(child.stdout.take().expect("piped stdout"))),
            (true, Box::new(child.stderr.take().expect("piped stderr"))),
        ];
        let mut tail = VecDeque::new();
        let (fed, status) = std::thread::scope(|s| {
            let feeder = s.spawn(move || match (input, stdin) {
                // Dropping stdin at the end gives the program end-of-file.
                (Some(input), Some(mut stdin)) => feed(input, &mut stdin),
                _ => Fed::Done,
            });
            let (tx, rx) = mpsc::channel::<(bool, String)>();
            for (is_stderr, pipe) in pipes {
                let tx = tx.clone();
                s.spawn(move || {
                    for l in BufReader::new(pipe).split(b'\n') {
                        let Ok(l) = l else { break };
                        let text = String::from_utf8_lossy(&l)
                            .trim_end_matches('\r')
                            .to_string();
                        if tx.send((is_stderr, text)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            for (is_stderr, text) in rx {
                echo(&text);
                if is_stderr {
                    tail.push_back(text);
                    if tail.len() > TAIL_LINES {
                        tail.pop_front();
                    }
                }
            }
            (feeder.join().unwrap_or(Fed::Done), child.wait())
        });
        let status = status.with_context(|| format!("waiting for {line}"))?;
        let tail = Vec::from(tail).join("\n");
        if !status.success() {
            let read = match &fed {
                Fed::ReadFailed(e) => format!(" (after reading its input failed: {e})"),
                _ => String::new(),
            };
            if tail.trim().is_empty() {
                bail!("command failed ({status}){read}: {line}")
            }
            bail!("command failed ({status}){read}: {line}\n{}", tail.trim())
        }
        match fed {
            // Tar readers stop at the end-of-archive blocks and may leave
            // padding unread; the exit status is what counts.
            Fed::Done | Fed::Closed => Ok(()),
            Fed::ReadFailed(e) => Err(e).with_context(|| format!("reading the input of {line}")),
            Fed::WriteFailed(e) => {
                Err(e).with_context(|| format!("writing to the input of {line}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_and_output() {
        Command::new("true").run().unwrap();
        let s = Command::new("echo")
            .arg("hello world")
            .run_get_string()
            .unwrap();
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
    fn streaming_feeds_stdin_and_echoes_both_streams() {
        let mut input: &[u8] = b"one\ntwo\n";
        let mut lines = Vec::new();
        Command::new("sh")
            .args([
                "-c",
                "while read l; do echo \"out $l\"; done; echo 'err line' >&2",
            ])
            .run_streaming(Some(&mut input), &mut |l| lines.push(l.to_string()))
            .unwrap();
        lines.sort();
        assert_eq!(lines, ["err line", "out one", "out two"]);
    }

    #[test]
    fn streaming_failures_carry_stderr_and_input_errors() {
        let err = Command::new("sh")
            .args(["-c", "cat >/dev/null; echo 'bad tar' >&2; exit 2"])
            .run_streaming(Some(&mut &b"data"[..]), &mut |_| {})
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("bad tar") && msg.contains("exit status: 2"),
            "{msg}"
        );

        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("corrupt deflate stream"))
            }
        }
        let err = Command::new("cat")
            .run_streaming(Some(&mut Broken), &mut |_| {})
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("reading the input of cat") && msg.contains("corrupt deflate"),
            "{msg}"
        );

        // A program that stops reading early but succeeds is fine.
        let big = vec![0u8; 4 << 20];
        Command::new("true")
            .run_streaming(Some(&mut &big[..]), &mut |_| {})
            .unwrap();
    }

    #[test]
    fn shell_line_quotes() {
        let mut c = Command::new("mke2fs");
        c.arg("-L").arg("my root").env("E2FSPROGS_FAKE_TIME", "1");
        assert_eq!(shell_line(&c), "E2FSPROGS_FAKE_TIME=1 mke2fs -L 'my root'");
    }
}
