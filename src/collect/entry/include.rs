//! Bounds for configuration readers that follow `include` lines (sshd's
//! `Include`, Redis's `include`): a file that includes itself, directly or
//! through others, is an error at the line that closes the loop, and the
//! files and bytes read for one configuration are capped, so a tree of
//! includes that never loops (each file including the next several times)
//! still ends. Measured before this existed: a `redis.conf` including itself
//! 16 times per level grew to 292 MB in 90 s; an `sshd_config` including
//! itself 3 times per level made 3^16 reads (issue 21).

use super::sshd::Source;

/// Most files read for one configuration, the top file included. Debian's
/// sshd has 2 to 5; a Redis with per-instance includes a handful.
pub const MAX_FILES: usize = 64;

/// Most bytes read for one configuration, all files together.
pub const MAX_BYTES: usize = 4 << 20;

/// Most bytes read of one file.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// Most include errors reported for one configuration; the rest are
/// counted ([`Includes::summary`]).
pub const MAX_ERRORS: usize = 8;

/// The files on the include chain being read, and what was read in all.
#[derive(Debug, Default)]
pub struct Includes {
    chain: Vec<String>,
    files: usize,
    bytes: usize,
    errors: usize,
}

impl Includes {
    /// Starts reading `file` (the top file, or one an include at `at`
    /// names, `col` the column of its argument). `Err` means the file is not
    /// read; it holds the message for the configuration's errors, with
    /// `file:line:col`, or `None` once [`MAX_ERRORS`] were given.
    pub fn enter(
        &mut self,
        file: &str,
        at: Option<(&Source, usize)>,
    ) -> Result<(), Option<String>> {
        self.check(file, at).map_err(|e| {
            self.errors += 1;
            (self.errors <= MAX_ERRORS).then_some(e)
        })
    }

    /// Counts another include error (one the reader finds itself, such as
    /// nesting too deep): `msg` back while fewer than [`MAX_ERRORS`] were
    /// given.
    pub fn error(&mut self, msg: String) -> Option<String> {
        self.errors += 1;
        (self.errors <= MAX_ERRORS).then_some(msg)
    }

    /// What [`Includes::enter`] did not report, as one more error line.
    pub fn summary(&self) -> Option<String> {
        (self.errors > MAX_ERRORS).then(|| {
            format!(
                "{} more include errors not listed",
                self.errors - MAX_ERRORS
            )
        })
    }

    fn check(&mut self, file: &str, at: Option<(&Source, usize)>) -> Result<(), String> {
        let here = |what: String| match at {
            Some((src, col)) => format!("{src}:{col}: {what}"),
            None => what,
        };
        if self.chain.iter().any(|f| f == file) {
            return Err(here(format!(
                "include of {} loops back to a file being read (chain: {}); not followed",
                crate::escape::escape_str(file),
                self.chain
                    .iter()
                    .map(|f| crate::escape::escape_str(f))
                    .collect::<Vec<_>>()
                    .join(" -> ")
            )));
        }
        if self.files >= MAX_FILES {
            return Err(here(format!(
                "include of {} not followed: {MAX_FILES} files already read for this configuration",
                crate::escape::escape_str(file)
            )));
        }
        if self.bytes >= MAX_BYTES {
            return Err(here(format!(
                "include of {} not followed: {} MiB already read for this configuration",
                crate::escape::escape_str(file),
                MAX_BYTES >> 20
            )));
        }
        self.files += 1;
        self.chain.push(file.to_string());
        Ok(())
    }

    /// How many bytes the next file may have (what is left of the budget).
    pub fn room(&self) -> usize {
        MAX_FILE_BYTES.min(MAX_BYTES.saturating_sub(self.bytes))
    }

    /// Counts `n` bytes read of the file on top of the chain.
    pub fn read(&mut self, n: usize) {
        self.bytes = self.bytes.saturating_add(n);
    }

    /// Ends the file on top of the chain.
    pub fn leave(&mut self) {
        self.chain.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(f: &str, l: usize) -> Source {
        Source {
            file: f.into(),
            line: l,
        }
    }

    #[test]
    fn a_loop_is_an_error_at_the_line_that_closes_it() {
        let mut i = Includes::default();
        i.enter("/a", None).unwrap();
        i.enter("/b", Some((&src("/a", 3), 9))).unwrap();
        let e = i
            .enter("/a", Some((&src("/b", 7), 9)))
            .unwrap_err()
            .unwrap();
        assert!(e.starts_with("/b:7:9: include of /a loops back"), "{e}");
        assert!(e.contains("/a -> /b"), "{e}");
        // The same file again after it ended is no loop.
        i.leave();
        i.enter("/b", Some((&src("/a", 4), 9))).unwrap();
    }

    #[test]
    fn files_and_bytes_are_capped() {
        let mut i = Includes::default();
        for n in 0..MAX_FILES {
            i.enter(&format!("/f{n}"), None).unwrap();
            i.leave();
        }
        let e = i.enter("/more", None).unwrap_err().unwrap();
        assert!(e.contains("64 files"), "{e}");
        let mut i = Includes::default();
        i.enter("/a", None).unwrap();
        i.read(MAX_BYTES);
        assert_eq!(i.room(), 0);
        let e = i.enter("/b", None).unwrap_err().unwrap();
        assert!(e.contains("4 MiB"), "{e}");
        for _ in 1..MAX_ERRORS {
            assert!(i.enter("/b", None).unwrap_err().is_some());
        }
        assert_eq!(i.enter("/b", None).unwrap_err(), None);
        assert_eq!(i.summary().unwrap(), "1 more include errors not listed");
    }
}
