//! The end of a failed runner's container log, made safe to publish: bounded (the last
//! [`TAIL_LINES`] lines, at most [`TAIL_BYTES`] bytes, keeping the end) and with secrets
//! redacted, for the `RunnerFailedLogs` Event and `status.lastFailure` of its pool.
//!
//! The log is read just before the group is deleted, when the executor no longer knows the JIT
//! config or registration token the container was given, so redaction works by pattern:
//! - `NAME=value` / `NAME: value` where NAME contains TOKEN, JITCONFIG, SECRET, PASSWORD or KEY (covers `ACTIONS_RUNNER_INPUT_JITCONFIG=…`, `RUNNER_TOKEN=…`, `token: …`);
//! - the value after a `--token`, `--jitconfig` or `--pat` flag (what `config.sh`/`run.sh`
//!   echo under `set -x`);
//! - `Bearer …` / `Basic …` authorization values;
//! - JWT-shaped strings (`eyJ….….…`) and GitHub token prefixes (`ghp_`, `ghs_`, `github_pat_`, …);
//! - any run of 32 or more base64/base64url characters that mixes upper case, lower case and
//!   digits (an encoded JIT config, a key, an opaque token); hex digests and paths stay.
//!
//! Written with `regex` (already a dependency) since no kept library redacts free-form logs.
use std::sync::LazyLock;

use regex::Regex;

/// Lines asked of ACI and kept.
pub const TAIL_LINES: u32 = 50;
/// Bytes of the tail kept (its end).
pub const TAIL_BYTES: usize = 4096;
/// Bytes of the fetched log looked at before the line cut (bounds the redaction's work should
/// ACI send more than the lines asked for).
const SCAN_BYTES: usize = 64 * 1024;
/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

struct Patterns {
    assignment: Regex,
    flag: Regex,
    auth: Regex,
    jwt: Regex,
    github: Regex,
    opaque: Regex,
}

static PATTERNS: LazyLock<Option<Patterns>> = LazyLock::new(|| {
    let build = || -> Result<Patterns, regex::Error> {
        Ok(Patterns {
            assignment: Regex::new(
                r#"(?i)\b([A-Z0-9_.-]*(?:TOKEN|JITCONFIG|SECRET|PASSWORD|KEY)[A-Z0-9_.-]*)(\s*[=:]\s*)["']?[^\s"',;]+["']?"#,
            )?,
            flag: Regex::new(r#"(?i)(--(?:token|jitconfig|pat))(\s+|=)["']?[^\s"']+["']?"#)?,
            auth: Regex::new(r"(?i)\b(Bearer|Basic)\s+[A-Za-z0-9+/=._~-]+")?,
            jwt: Regex::new(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")?,
            github: Regex::new(r"\b(?:gh[pousr]|github_pat)_[A-Za-z0-9_]{16,}")?,
            opaque: Regex::new(r"[A-Za-z0-9+/_-]{32,}={0,2}")?,
        })
    };
    match build() {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(error = %e, "log redaction patterns do not compile; log tails are withheld");
            None
        }
    }
});

fn mixes_classes(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_uppercase())
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && s.bytes().any(|b| b.is_ascii_digit())
}

/// `text` with every secret-looking value replaced by [`REDACTED`]; `None` when the patterns
/// are unavailable (the text is then never published).
pub fn redact(text: &str) -> Option<String> {
    let p = PATTERNS.as_ref()?;
    let s = p.assignment.replace_all(text, format!("${{1}}${{2}}{REDACTED}"));
    let s = p.flag.replace_all(&s, format!("${{1}}${{2}}{REDACTED}"));
    let s = p.auth.replace_all(&s, format!("${{1}} {REDACTED}"));
    let s = p.jwt.replace_all(&s, REDACTED);
    let s = p.github.replace_all(&s, REDACTED);
    let s = p.opaque.replace_all(&s, |c: &regex::Captures<'_>| {
        let m = &c[0];
        if mixes_classes(m) { REDACTED.to_string() } else { m.to_string() }
    });
    Some(s.into_owned())
}

/// The last `max_bytes` bytes of `text`, starting after a line break when one is in that
/// window (else at a character boundary).
pub fn keep_end(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut start = text.len().saturating_sub(max_bytes);
    while !text.is_char_boundary(start) {
        start = start.saturating_add(1);
    }
    let window = &text[start..];
    match window.find('\n') {
        Some(i) if i.saturating_add(1) < window.len() => &window[i.saturating_add(1)..],
        _ => window,
    }
}

/// The last `lines` lines of `text`.
fn last_lines(text: &str, lines: usize) -> &str {
    let trimmed = text.trim_end_matches(['\n', '\r']);
    match trimmed.rmatch_indices('\n').nth(lines.saturating_sub(1)) {
        Some((i, _)) if lines > 0 => &trimmed[i.saturating_add(1)..],
        _ if lines == 0 => "",
        _ => trimmed,
    }
}

/// The publishable tail of a fetched container log: the last [`TAIL_LINES`] whole lines,
/// redacted, then at most [`TAIL_BYTES`] bytes of its end. The byte cut comes after the
/// redaction, so it can never leave the visible half of a secret. `None` when the log is empty
/// or cannot be redacted.
pub fn publishable_tail(log: &str) -> Option<String> {
    let scanned = keep_end(log, SCAN_BYTES);
    let lines = last_lines(scanned, TAIL_LINES as usize);
    if lines.trim().is_empty() {
        return None;
    }
    let redacted = redact(lines)?;
    Some(keep_end(&redacted, TAIL_BYTES).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const JIT: &str = "eyJydW5uZXIiOnsiaWQiOjQyfSwic2VjcmV0IjoiUzNjcjN0VmFsdWVGb3JUZXN0cyJ9Cg==";

    #[test]
    fn secrets_are_redacted_by_pattern() {
        let token = "AABF3JGZDX3P5PMEXLND6TS6FCWO6";
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJydW5uZXIifQ.c2lnbmF0dXJlX3ZhbHVl";
        let log = format!(
            "+ ./run.sh --jitconfig {JIT}\n\
             ACTIONS_RUNNER_INPUT_JITCONFIG={JIT}\n\
             + ./config.sh --url https://github.com/acme --token {token} --unattended\n\
             RUNNER_TOKEN=\"{token}\"\n\
             Authorization: Bearer {jwt}\n\
             using ghs_abcdefghijklmnopqrstuvwxyz0123 for git\n\
             blob {JIT}\n\
             commit 3f786850e387550fdab836ed7e6dc881de23001b at /home/runner/actions-runner/_work/_temp/x\n"
        );
        let out = redact(&log).unwrap();
        for secret in [JIT, token, jwt, "ghs_abcdefghijklmnopqrstuvwxyz0123", "S3cr3tValue"] {
            assert!(!out.contains(secret), "{secret} left in:\n{out}");
        }
        assert!(out.contains("--jitconfig [REDACTED]"), "{out}");
        assert!(out.contains("--token [REDACTED]"), "{out}");
        assert!(out.contains("RUNNER_TOKEN=[REDACTED]"), "{out}");
        // What is not secret-shaped stays readable.
        assert!(out.contains("--url https://github.com/acme"), "{out}");
        assert!(out.contains("3f786850e387550fdab836ed7e6dc881de23001b"), "{out}");
        assert!(out.contains("/home/runner/actions-runner/_work/_temp/x"), "{out}");
    }

    #[test]
    fn the_tail_keeps_the_last_lines_and_bytes() {
        let log: String = (0..200).map(|i| format!("line {i}\n")).collect();
        let tail = publishable_tail(&log).unwrap();
        let lines: Vec<&str> = tail.lines().collect();
        assert_eq!(lines.len(), TAIL_LINES as usize);
        assert_eq!(lines.first(), Some(&"line 150"));
        assert_eq!(lines.last(), Some(&"line 199"));

        // Long lines: the byte bound wins, the end is kept, the cut starts at a line.
        let long: String = (0..50).map(|i| format!("{i:03} {}\n", "é".repeat(100))).collect();
        let tail = publishable_tail(&long).unwrap();
        assert!(tail.len() <= TAIL_BYTES, "{}", tail.len());
        assert!(tail.ends_with(&format!("049 {}", "é".repeat(100))), "{tail}");
        assert!(tail.starts_with(char::is_numeric), "{tail}");

        // One huge line (no break in the window): cut at a character boundary, end kept.
        let huge = format!("start {} end", "ü".repeat(100_000));
        let tail = publishable_tail(&huge).unwrap();
        assert!(tail.len() <= TAIL_BYTES && tail.ends_with(" end"), "{}", tail.len());

        // A secret split by the byte bound is redacted before the cut.
        let secret_line = format!("pad {}\nACTIONS_RUNNER_INPUT_JITCONFIG={JIT}\n", "x".repeat(TAIL_BYTES));
        let tail = publishable_tail(&secret_line).unwrap();
        assert!(!tail.contains(&JIT[10..]), "{tail}");

        assert_eq!(publishable_tail("\n\n"), None);
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(keep_end("abc", 10), "abc");
    }
}
