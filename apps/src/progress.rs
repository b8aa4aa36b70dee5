//! Progress of long work (downloads, the seL4 kernel's build) on a
//! terminal. A line on stderr says what starts, whatever stderr is; on a
//! terminal a status line then follows the work (the tool's own progress
//! meter, or the last line of its log) and is cleared when it ends, so
//! logs and pipes get no control characters.

use std::io::{self, IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether stderr is a terminal (the progress shows there).
pub fn on_terminal() -> bool {
    io::stderr().is_terminal()
}

/// Runs `cmd` with its stdout and stderr into the file `log`; on a
/// terminal the log's last line is shown as a status line (with the time
/// so far) while it runs. On failure: the end of the log.
pub fn run_logged(mut cmd: Command, log: &Path, what: &str) -> Result<(), String> {
    let file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = file
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("could not start {what}: {e}"))?;
    let start = Instant::now();
    let terminal = on_terminal();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(e) => return Err(format!("{what}: {e}")),
        }
        if terminal {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let last = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
            show(&format!("{what}, {} s: {last}", start.elapsed().as_secs()));
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    if terminal {
        show("");
    }
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(8).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!(
        "{what} failed ({status}); the end of {}:\n{}",
        log.display(),
        tail.join("\n")
    ))
}

/// Runs `cmd` and returns its stdout. On a terminal its stdout goes to
/// stderr instead, so that a tool that draws its own progress meter when
/// its output is a terminal (apt-get) draws it; `what` names the work in
/// an error, which carries the tool's last line of stderr when it was
/// captured.
pub fn run_showing(cmd: &mut Command, what: &str) -> Result<String, String> {
    if on_terminal() {
        let out = io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("{what}: {e}"))?;
        let status = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .status()
            .map_err(|e| format!("could not run {what}: {e} (is it installed?)"))?;
        return if status.success() {
            Ok(String::new())
        } else {
            Err(format!("{what} failed ({status}), its output is above"))
        };
    }
    run_captured(cmd, what)
}

/// Runs `cmd` without input and returns its stdout; an error names
/// `what` and carries the last line of its stderr.
pub fn run_captured(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run {what}: {e} (is it installed?)"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(format!("{what} failed ({}): {last}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Replaces the status line with `text`, cut to 100 characters (an empty
/// `text` clears it).
fn show(text: &str) {
    let cut: String = text.chars().take(100).collect();
    let mut err = io::stderr().lock();
    let _ = write!(err, "\r{cut}\x1b[K");
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn a_logged_failure_shows_the_end_of_its_log() {
        let log =
            std::env::temp_dir().join(format!("splitvisor-progress-{}.log", std::process::id()));
        assert_eq!(run_logged(sh("echo one"), &log, "one"), Ok(()));
        let e = run_logged(sh("echo out; echo why >&2; exit 3"), &log, "the step").unwrap_err();
        std::fs::remove_file(&log).ok();
        assert!(e.starts_with("the step failed (exit status: 3)"), "{e}");
        assert!(e.ends_with("out\nwhy"), "{e}");
    }

    #[test]
    fn a_shown_command_returns_its_output_off_a_terminal() {
        if on_terminal() {
            return; // its output went to the terminal
        }
        assert_eq!(run_showing(&mut sh("echo out"), "x"), Ok("out\n".into()));
        let e = run_showing(&mut sh("echo why >&2; exit 2"), "the tool").unwrap_err();
        assert_eq!(e, "the tool failed (exit status: 2): why");
    }
}
