// The framework's code digest, shared by `build.rs` (which records it in the plugin
// fingerprint) and the framework's unit tests (`src/plugin/abi.rs`): FNV-1a over the code
// tokens of every source file, so that comments, doc comments, formatting and unit-test
// modules (`#[cfg(test)] mod … { … }`) do not change it, and any change to code does.

/// The code tokens of Rust source `src`: comments dropped, literals kept whole (a brace in a
/// string is not a brace), identifiers and numbers as runs, every other character alone.
pub fn code_tokens(src: &str) -> Vec<String> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if let Some(end) = raw_string_end(&c, i) {
            out.push(c[i..end].iter().collect());
            i = end;
        } else if ch == '"' || (ch == 'b' && c.get(i + 1) == Some(&'"')) {
            let start = i;
            i += if ch == 'b' { 2 } else { 1 };
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i = (i + 1).min(c.len());
            out.push(c[start..i].iter().collect());
        } else if ch == '\'' {
            // A char literal ('a', '\n', '\'', '"') or a lifetime ('a, 'static).
            let start = i;
            if c.get(i + 1) == Some(&'\\') {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i = (i + 1).min(c.len());
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
            out.push(c[start..i].iter().collect());
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(c[start..i].iter().collect());
        } else {
            out.push(ch.to_string());
            i += 1;
        }
    }
    strip_test_modules(out)
}

/// The end of a raw string literal (`r"…"`, `r#"…"#`, `br##"…"##`) starting at `i`, if one does.
fn raw_string_end(c: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if c.get(j) == Some(&'b') {
        j += 1;
    }
    if c.get(j) != Some(&'r') || (i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_')) {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while c.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    if c.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < c.len() {
        if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(c.len())
}

/// Drops `#[cfg(test)] mod name { … }` (unit tests are not part of what a plugin shares).
fn strip_test_modules(tokens: Vec<String>) -> Vec<String> {
    const HEAD: [&str; 7] = ["#", "[", "cfg", "(", "test", ")", "]"];
    let mut out = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        let is_head = tokens.len() >= i + 10
            && HEAD.iter().enumerate().all(|(k, t)| tokens[i + k] == *t)
            && tokens[i + 7] == "mod"
            && tokens[i + 9] == "{";
        if !is_head {
            out.push(tokens[i].clone());
            i += 1;
            continue;
        }
        let mut depth = 0;
        i += 9;
        while i < tokens.len() {
            if tokens[i] == "{" {
                depth += 1;
            } else if tokens[i] == "}" {
                depth -= 1;
                if depth == 0 {
                    i += 1;
                    break;
                }
            }
            i += 1;
        }
    }
    out
}

/// FNV-1a over `(path, code tokens)` of every file, in the order given.
pub fn code_digest<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (path, src) in files {
        eat(path.as_bytes());
        eat(&[0]);
        for t in code_tokens(src) {
            eat(t.as_bytes());
            eat(&[0]);
        }
        eat(&[0xff]);
    }
    h
}
