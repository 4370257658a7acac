//! Escaping of hostile strings.
//!
//! Process names, command lines, paths and link targets are chosen by whoever
//! started the process — possibly the attacker. Printed raw, an ANSI escape
//! sequence could recolour or erase a line of the report, a newline could forge
//! a whole finding, and invalid UTF-8 could break a JSON consumer. [`escape`]
//! makes any byte string safe to print on one line and loses nothing: the
//! original bytes can be recovered from the output.
//!
//! Rules: printable ASCII and printable non-ASCII characters pass through;
//! backslash becomes `\\`; `\n`, `\r`, `\t` become their C escapes; every other
//! control byte (including ESC and DEL) and every byte of invalid UTF-8 becomes
//! `\xNN`; Unicode format and control characters that reorder or hide text
//! (bidi overrides, zero-width characters, C1 controls) become `\u{NNNN}`.

/// Escapes a byte string for printing on one line.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                push_str(&mut out, s);
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                // SAFETY-free: valid_up_to guarantees `good` is UTF-8.
                push_str(&mut out, std::str::from_utf8(good).unwrap_or_default());
                let n = e.error_len().unwrap_or(bad.len()).max(1);
                for b in &bad[..n] {
                    out.push_str(&format!("\\x{b:02x}"));
                }
                rest = &bad[n..];
            }
        }
    }
    out
}

/// Escapes a string that is already UTF-8 but may still hold control characters.
pub fn escape_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_str(&mut out, s);
    out
}

/// Joins command-line arguments with spaces, escaping each; arguments that are
/// empty or contain spaces are quoted so argument boundaries stay visible.
pub fn escape_args(args: &[Vec<u8>]) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let e = escape(a);
        if a.is_empty() || a.contains(&b' ') || a.contains(&b'\'') {
            out.push('\'');
            out.push_str(&e.replace('\'', "\\'"));
            out.push('\'');
        } else {
            out.push_str(&e);
        }
    }
    out
}

fn push_str(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\x7f' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if is_dangerous_unicode(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
}

/// Characters that are invisible or reorder text on a terminal.
fn is_dangerous_unicode(c: char) -> bool {
    let u = c as u32;
    (0x80..=0x9f).contains(&u) // C1 controls (0x9b is a one-byte CSI on some terminals)
        || (0x200b..=0x200f).contains(&u) // zero-width and direction marks
        || (0x202a..=0x202e).contains(&u) // bidi embedding and overrides
        || (0x2066..=0x2069).contains(&u) // bidi isolates
        || u == 0x2028 || u == 0x2029 // line and paragraph separators
        || u == 0xfeff // zero-width no-break space
        || (0xfff9..=0xfffb).contains(&u) // interlinear annotations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_passes() {
        assert_eq!(
            escape(b"/usr/bin/python3 -m http.server"),
            "/usr/bin/python3 -m http.server"
        );
        assert_eq!(escape("naïve café".as_bytes()), "naïve café");
    }

    #[test]
    fn control_and_ansi_are_escaped() {
        let e = escape(b"x\x1b[31mred\nHIGH  fake finding\r\x07");
        assert_eq!(e, "x\\x1b[31mred\\nHIGH  fake finding\\r\\x07");
        assert!(!e.contains('\x1b') && !e.contains('\n'));
    }

    #[test]
    fn invalid_utf8_is_escaped_bytewise() {
        assert_eq!(escape(b"ab\xff\xfecd"), "ab\\xff\\xfecd");
        assert_eq!(escape(b"\xe2\x82"), "\\xe2\\x82");
        assert_eq!(escape(b"\\x41"), "\\\\x41");
    }

    #[test]
    fn bidi_and_c1_are_escaped() {
        assert_eq!(escape("a\u{202e}b".as_bytes()), "a\\u{202e}b");
        assert_eq!(escape("a\u{9b}31m".as_bytes()), "a\\u{009b}31m");
    }

    #[test]
    fn args_keep_boundaries() {
        let args = vec![
            b"sh".to_vec(),
            b"-c".to_vec(),
            b"echo hi".to_vec(),
            Vec::new(),
        ];
        assert_eq!(escape_args(&args), "sh -c 'echo hi' ''");
    }
}
