//! `splitvisor loc`: how much privileged code there is.
//!
//! Counts the non-blank lines of Rust under `kernel-stub/src` that hold
//! something besides comments, and the `unsafe { ... }` blocks in them;
//! unit-test modules (`#[cfg(test)] mod ...`) are left out.
//! A small lexer skips comments (nested block comments included), string
//! and character literals, so `"unsafe {"` in a string or `// unsafe {` in a
//! comment count for nothing.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Counts for one file or a whole tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Rust files.
    pub files: usize,
    /// Lines with code on them.
    pub code_lines: usize,
    /// `unsafe { ... }` blocks.
    pub unsafe_blocks: usize,
    /// `unsafe fn`, `unsafe impl`, `unsafe trait`, `unsafe extern`.
    pub unsafe_items: usize,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.files += o.files;
        self.code_lines += o.code_lines;
        self.unsafe_blocks += o.unsafe_blocks;
        self.unsafe_items += o.unsafe_items;
    }
}

/// A file under the counted folder could not be read.
#[derive(Debug)]
pub struct LocError {
    /// The file or folder.
    pub path: PathBuf,
    /// What went wrong.
    pub source: io::Error,
}

impl fmt::Display for LocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot read {}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for LocError {}

/// Counts one file's source text, up to its unit tests: a `#[cfg(test)]`
/// module at the end of a file runs on the host, never in ring 0.
pub fn count_source(src: &str) -> Counts {
    let code = strip_comments_and_literals(src);
    let code = match code.find("#[cfg(test)]\nmod ") {
        Some(i) => &code[..i],
        None => &code[..],
    };
    let code_lines = code.lines().filter(|l| !l.trim().is_empty()).count();
    let (unsafe_blocks, unsafe_items) = count_unsafe(code);
    Counts {
        files: 1,
        code_lines,
        unsafe_blocks,
        unsafe_items,
    }
}

/// Counts every `.rs` file under `dir`, recursively; returns the total and
/// each file's counts (paths sorted).
pub fn count_tree(dir: &Path) -> Result<(Counts, Vec<(PathBuf, Counts)>), LocError> {
    let mut files = Vec::new();
    collect_rs(dir, &mut files)?;
    files.sort();
    let mut total = Counts::default();
    let mut each = Vec::new();
    for f in files {
        let src = std::fs::read_to_string(&f).map_err(|source| LocError {
            path: f.clone(),
            source,
        })?;
        let c = count_source(&src);
        total += c;
        each.push((f, c));
    }
    Ok((total, each))
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LocError> {
    let err = |source| LocError {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let path = entry.map_err(err)?.path();
        if path.is_dir() {
            collect_rs(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The source with comments removed and the insides of string and char
/// literals replaced by `_` (newlines kept, so lines stay lines).
pub fn strip_comments_and_literals(src: &str) -> String {
    let s: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    // Keeps newlines of skipped text so that line numbers do not move.
    let blank = |out: &mut String, text: &[char]| {
        for &c in text {
            if c == '\n' {
                out.push('\n');
            }
        }
    };
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        let prev_ident = i > 0 && is_ident(s[i - 1]);
        if c == '/' && next == Some('/') {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let start = i;
            let mut depth = 0;
            while i < s.len() {
                if s[i] == '/' && s.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if s[i] == '*' && s.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            blank(&mut out, &s[start..i.min(s.len())]);
        } else if !prev_ident && (c == 'r' || (c == 'b' && next == Some('r'))) && {
            let j = if c == 'b' { i + 2 } else { i + 1 };
            let hashes = s[j.min(s.len())..]
                .iter()
                .take_while(|&&h| h == '#')
                .count();
            s.get(j + hashes) == Some(&'"')
        } {
            // Raw string: r"..." or r#"..."# (also br).
            let j = if c == 'b' { i + 2 } else { i + 1 };
            let hashes = s[j..].iter().take_while(|&&h| h == '#').count();
            out.push('"');
            let body = j + hashes + 1;
            let mut k = body;
            loop {
                if k >= s.len() {
                    break;
                }
                if s[k] == '"'
                    && s[k + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&h| h == '#')
                        .count()
                        == hashes
                {
                    break;
                }
                k += 1;
            }
            out.push('_');
            blank(&mut out, &s[body..k.min(s.len())]);
            out.push('"');
            i = (k + 1 + hashes).min(s.len());
        } else if c == '"' {
            out.push('"');
            let start = i + 1;
            i += 1;
            while i < s.len() && s[i] != '"' {
                if s[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            out.push('_');
            blank(&mut out, &s[start..i.min(s.len())]);
            out.push('"');
            i += 1;
        } else if c == '\'' {
            // A char literal ('a', '\n', '\u{..}') or a lifetime ('a).
            if next == Some('\\') {
                let mut k = i + 3;
                while k < s.len() && s[k] != '\'' && s[k] != '\n' {
                    k += 1;
                }
                out.push_str("'_'");
                i = k + 1;
            } else if s.get(i + 2) == Some(&'\'') {
                out.push_str("'_'");
                i += 3;
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Counts `unsafe` followed by `{` (blocks) and by anything else (items) in
/// code that has no comments or literals left.
fn count_unsafe(code: &str) -> (usize, usize) {
    let (mut blocks, mut items) = (0, 0);
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(pos) = code[from..].find("unsafe") {
        let at = from + pos;
        let end = at + "unsafe".len();
        from = end;
        let before_ok = at == 0 || !is_ident(bytes[at - 1] as char);
        let after_ok = end >= bytes.len() || !is_ident(bytes[end] as char);
        if !(before_ok && after_ok) {
            continue;
        }
        match code[end..].trim_start().chars().next() {
            Some('{') => blocks += 1,
            Some(_) => items += 1,
            None => {}
        }
    }
    (blocks, items)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r##"//! Module docs.
/// Item docs.
fn a() {
    // a comment
    let s = "unsafe { not code }"; // trailing comment

    /* block
       unsafe { still a comment }
       /* nested */ still comment */
    let r = r#"raw "unsafe {" string"#;
    let c = '{';
    let q = '\'';
    // SAFETY: the port is ours.
    unsafe { outb(0xF4, 0) };
    let x = unsafe
    {
        1
    };
}

unsafe fn b<'a>(x: &'a u8) -> u8 { *x }
unsafe impl Send for T {}
fn not_unsafe_block() { let unsafe_thing = 1; }
"##;

    #[test]
    fn unit_tests_at_the_end_are_not_privileged_code() {
        let c = count_source("fn a() {}\n#[cfg(test)]\nmod tests {\n    fn b() {}\n}\n");
        assert_eq!(c.code_lines, 1);
    }

    #[test]
    fn counts_code_lines_and_unsafe() {
        let c = count_source(SAMPLE);
        // Code lines: fn a, let s, let r, let c, let q, unsafe {..}, let x,
        // {, 1, };, }, unsafe fn, unsafe impl, fn not_unsafe_block.
        assert_eq!(c.code_lines, 14, "{}", strip_comments_and_literals(SAMPLE));
        assert_eq!(c.unsafe_blocks, 2);
        assert_eq!(c.unsafe_items, 2);
        assert_eq!(c.files, 1);
    }

    #[test]
    fn stripping_keeps_lines() {
        let stripped = strip_comments_and_literals(SAMPLE);
        assert_eq!(stripped.lines().count(), SAMPLE.lines().count());
        assert!(!stripped.contains("comment"));
        assert!(stripped.contains("'a"), "lifetimes stay");
    }

    #[test]
    fn empty_and_comment_only_files_count_nothing() {
        assert_eq!(count_source("").code_lines, 0);
        assert_eq!(count_source("// x\n\n/* y */\n").code_lines, 0);
    }

    #[test]
    fn counts_a_tree() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let (total, each) = count_tree(&dir).unwrap();
        assert!(total.files >= 3);
        assert_eq!(total.files, each.len());
        assert!(total.code_lines > 100);
        assert!(count_tree(Path::new("/no/such/dir")).is_err());
    }
}
