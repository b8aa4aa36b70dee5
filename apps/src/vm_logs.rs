//! `splitvisor run --log-dir DIR`: besides the console on stdout, one log
//! file per VM. With several VMs the stub starts each line a VM's servers
//! write with `[vmN] ` and its own lines about VM N with `[stub] vmN: `
//! (README, "Several VMs on one CPU"): `DIR/vmN.log` gets VM N's lines
//! without the prefix and the stub's lines about it as they are, and
//! `DIR/stub.log` the lines of no VM (the stub's start, the end table).
//! With one VM there is no prefix: every line is VM 0's.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Where one console line belongs: VM n's log (with the text to write) or
/// the stub's.
#[derive(Debug, PartialEq, Eq)]
pub enum Owner<'a> {
    /// VM n's, with the text for its log (the `[vmN] ` prefix taken off).
    Vm(usize, &'a [u8]),
    /// No VM's: the stub's own.
    Stub(&'a [u8]),
}

/// The owner of `line` (without its line end) in a run of `vms` VMs.
pub fn owner(line: &[u8], vms: usize) -> Owner<'_> {
    if vms <= 1 {
        return Owner::Vm(0, line);
    }
    let vm_number = |rest: &[u8], end: &[u8]| -> Option<usize> {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let n: usize = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
        (n < vms && rest[digits..].starts_with(end)).then_some(n)
    };
    if let Some(rest) = line.strip_prefix(b"[vm") {
        if let Some(n) = vm_number(rest, b"] ") {
            let text = &line[b"[vm".len() + n.to_string().len() + b"] ".len()..];
            return Owner::Vm(n, text);
        }
    }
    if let Some(rest) = line.strip_prefix(b"[stub] vm") {
        if let Some(n) = vm_number(rest, b": ") {
            return Owner::Vm(n, line);
        }
    }
    Owner::Stub(line)
}

struct Logs {
    inner: Box<dyn Write + Send>,
    vms: Vec<File>,
    stub: File,
    line: Vec<u8>,
}

impl Logs {
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let (file, text) = match owner(line, self.vms.len()) {
            Owner::Vm(n, text) => (&mut self.vms[n], text),
            Owner::Stub(text) => (&mut self.stub, text),
        };
        file.write_all(text)?;
        file.write_all(b"\n")
    }
}

/// The console writer of `--log-dir`: everything goes on to the wrapped
/// writer (stdout), and each whole line also into its owner's file.
/// Clones share the state; [`VmLogs::finish`] writes a last unended line.
#[derive(Clone)]
pub struct VmLogs(Arc<Mutex<Logs>>);

impl VmLogs {
    /// Creates (or empties) `dir/vm0.log` .. `dir/vm{vms-1}.log` and
    /// `dir/stub.log`, making `dir` if needed.
    pub fn create(dir: &Path, vms: usize, inner: Box<dyn Write + Send>) -> Result<Self, String> {
        let open = |name: String| {
            let path = dir.join(name);
            File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        let vms = (0..vms.max(1))
            .map(|n| open(format!("vm{n}.log")))
            .collect::<Result<_, _>>()?;
        Ok(Self(Arc::new(Mutex::new(Logs {
            inner,
            vms,
            stub: open("stub.log".into())?,
            line: Vec::new(),
        }))))
    }

    /// Writes a line the run left unended into its owner's file.
    pub fn finish(&self) -> io::Result<()> {
        let mut logs = self.lock()?;
        let line = std::mem::take(&mut logs.line);
        if line.is_empty() {
            return Ok(());
        }
        logs.write_line(&line)
    }

    fn lock(&self) -> io::Result<std::sync::MutexGuard<'_, Logs>> {
        self.0.lock().map_err(|_| io::Error::other("poisoned"))
    }
}

impl Write for VmLogs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut logs = self.lock()?;
        logs.inner.write_all(buf)?;
        for &b in buf {
            if b == b'\n' {
                let mut line = std::mem::take(&mut logs.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                logs.write_line(&line)?;
            } else {
                logs.line.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.lock()?.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_go_to_the_vm_their_prefix_names() {
        assert_eq!(owner(b"[vm1] hello", 2), Owner::Vm(1, b"hello"));
        assert_eq!(
            owner(b"[vm0] [vmm] exits: total=3", 2),
            Owner::Vm(0, b"[vmm] exits: total=3")
        );
        // A VM's text that looks like another's prefix stays its own.
        assert_eq!(
            owner(b"[vm1] [vm0] forged", 2),
            Owner::Vm(1, b"[vm0] forged")
        );
        assert_eq!(
            owner(b"[stub] vm1: vm stopped: guest status 0", 2),
            Owner::Vm(1, b"[stub] vm1: vm stopped: guest status 0")
        );
        assert_eq!(owner(b"[vm3] x", 4), Owner::Vm(3, b"x"));
    }

    #[test]
    fn other_lines_are_the_stubs_and_one_vm_owns_all() {
        for line in [
            &b"[stub] all 2 VMs ended:"[..],
            b"[stub] | vm0 | exits 89 | stopped",
            b"[vm2] a VM that is not there",
            b"[vm1]no space",
            b"[vm] x",
            b"[vm99999999999999999999999] x",
            b"[stub] vm1 no colon",
            b"hello",
        ] {
            assert_eq!(owner(line, 2), Owner::Stub(line), "{line:?}");
        }
        assert_eq!(owner(b"[stub] booting", 1), Owner::Vm(0, b"[stub] booting"));
    }

    #[test]
    fn the_console_passes_through_and_each_vm_gets_its_lines() {
        let dir = std::env::temp_dir().join(format!("splitvisor-vmlogs-{}", std::process::id()));
        let shown = crate::run::Capture::default();
        let mut logs = VmLogs::create(&dir, 2, Box::new(shown.clone())).unwrap();
        let text =
            "[stub] booting\r\n[vm0] a\n[vm1] b\n[vm0] c\n[stub] vm1: vm stopped\n[vm1] unended";
        // Split anywhere: the emulator's output comes in pieces.
        for piece in text.as_bytes().chunks(5) {
            logs.write_all(piece).unwrap();
        }
        logs.finish().unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(read("vm0.log"), "a\nc\n");
        assert_eq!(read("vm1.log"), "b\n[stub] vm1: vm stopped\nunended\n");
        assert_eq!(read("stub.log"), "[stub] booting\n");
        assert_eq!(shown.0.lock().unwrap().as_slice(), text.as_bytes());
        std::fs::remove_dir_all(&dir).ok();
    }
}
