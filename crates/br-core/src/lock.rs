//! Lock paths: normalised repo-relative paths or globs, and the rule that decides whether two of
//! them could ever name a common file. The glob parser and the automata that decide it are
//! `glob.rs`'s.
//!
//! A lock covers every path its glob matches and everything under such a path, because a lock on a
//! directory must keep other tasks out of the files inside it. Two locks overlap when some path is
//! covered by both.
//!
//! Patterns mean exactly what they mean to `globset` with `literal_separator(true)`: `?` and `*`
//! never match `/`, `**` as a whole segment matches any number of segments, a `**` inside a segment
//! acts as `*`, and `*` matches a leading `.`. To decide overlap, each pattern is parsed the way
//! globset parses it and compiled into a small automaton over bytes for the same regular expression
//! globset would build (globset matches bytes, so `?` is one byte, not one character). After every
//! accepting state the automaton may read `/` and then anything, which is "everything under a
//! matched path". Two locks overlap when the product of their automata can reach a pair of accepting
//! states. Alternatives `{a,b}` are branches inside the automaton, so nothing is expanded and the
//! cost is bounded by the product of the two pattern sizes.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use serde::{Serialize, Serializer};

use crate::glob::{Nfa, Token, parse_glob};

/// Why a string cannot be a lock path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockPathError {
    #[error("empty path")]
    Empty,
    #[error("`{0}` is absolute: lock paths are relative to the repository root")]
    Absolute(String),
    #[error("`{0}` leaves the repository (`..`)")]
    Escapes(String),
    #[error("`{}` contains a control character", .0.escape_debug())]
    ControlCharacter(String),
    #[error("`{path}` is not a valid glob: {reason}")]
    InvalidGlob { path: String, reason: String },
}

/// A normalised, repo-relative path or glob (`src/api/**`, `Cargo.lock`, `docs`).
///
/// Equality, hashing, ordering, `Display` and serialisation all use the normalised text only; the
/// compiled automaton is derived from it.
#[derive(Clone)]
pub struct LockPath {
    text: String,
    /// The bytes every covered path starts with: the leading literal part of the pattern, with
    /// escapes resolved. For a literal lock this is the whole path.
    prefix: Vec<u8>,
    /// Whether the pattern is one literal path (possibly spelled with escapes).
    literal: bool,
    nfa: Nfa,
}

/// The characters globset reads as something other than themselves (`]` and `}` too, which
/// it refuses outside a class or an alternation).
const GLOB_SYNTAX: [char; 7] = ['*', '?', '[', ']', '{', '}', '\\'];

impl LockPath {
    /// Normalises and validates a lock path.
    ///
    /// Leading `./`, `.` segments, repeated `/` and a trailing `/` are dropped; a lone `.` means the
    /// whole repository and becomes `**`. Refused: an empty path, control characters, an absolute
    /// path, a `..` segment, and anything globset (with `literal_separator(true)`) refuses, plus a
    /// pattern that can match no path at all (such as `a/[/]`).
    pub fn parse(input: &str) -> Result<LockPath, LockPathError> {
        if input.is_empty() {
            return Err(LockPathError::Empty);
        }
        if input.chars().any(char::is_control) {
            return Err(LockPathError::ControlCharacter(input.to_string()));
        }
        if input.starts_with('/') {
            return Err(LockPathError::Absolute(input.to_string()));
        }
        let invalid = |reason: String| LockPathError::InvalidGlob {
            path: input.to_string(),
            reason,
        };
        // Segments are split where the glob parser sees a separator, so a `/` inside a class
        // (`[./]`) or escaped (`\/`) is not mistaken for one.
        let raw = parse_glob(input).map_err(|reason| invalid(globset_reason(input, reason)))?;
        let text = normalise(input, &raw.separators)?;
        if !text.contains(GLOB_SYNTAX) {
            // A plain path, as most are: globset reads every character of it as itself and
            // refuses none, and its automaton is the literal one (compiling it is most of what
            // parsing a plan of thousands of tasks costs).
            return Ok(LockPath {
                prefix: text.as_bytes().to_vec(),
                literal: true,
                nfa: Nfa::literal(text.as_bytes()),
                text,
            });
        }
        globset::GlobBuilder::new(&text)
            .literal_separator(true)
            .build()
            .map_err(|e| invalid(e.kind().to_string()))?;
        let tokens = parse_glob(&text)
            .map_err(|reason| invalid(reason.to_string()))?
            .tokens;
        let nfa =
            Nfa::compile(&tokens).ok_or_else(|| invalid("it can match no path".to_string()))?;
        let literal = tokens.iter().all(|t| matches!(t, Token::Literal(_)));
        let mut prefix = Vec::new();
        for token in &tokens {
            let Token::Literal(c) = token else { break };
            prefix.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        }
        Ok(LockPath {
            text,
            prefix,
            literal,
            nfa,
        })
    }

    /// The normalised text, as stored and shown.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the text uses glob syntax (or escapes). When false, `as_str()` is exactly the one
    /// path this lock names, and the lock covers that path and everything under it.
    pub fn is_glob(&self) -> bool {
        self.text.contains(['*', '?', '[', '{', '\\'])
    }

    /// Whether some path is covered by both locks: equal paths, one under the other, or globs that
    /// can match a common path (or a path under the other's match). Symmetric.
    ///
    /// Exact for globset's semantics except in two conservative directions, which can only report
    /// a conflict that no real path has: the search runs over all byte strings rather than only
    /// well-formed paths (valid UTF-8, no empty segment, no leading or trailing `/`), and a pair of
    /// very large patterns (more than 16M pairs of automaton edges, far beyond any realistic path) is
    /// reported as overlapping unsearched.
    pub fn overlaps(&self, other: &LockPath) -> bool {
        if self.literal && other.literal {
            return literal_paths_overlap(&self.prefix, &other.prefix);
        }
        // Every covered path starts with the literal prefix, so prefixes that disagree rule out
        // most unrelated pairs without touching the automata.
        let n = self.prefix.len().min(other.prefix.len());
        if self.prefix[..n] != other.prefix[..n] {
            return false;
        }
        self.nfa.intersects(&other.nfa)
    }

    /// Whether a concrete repo-relative file path (as git reports it, e.g. `src/a b.rs`) is covered:
    /// equal to, under, or matched by this lock, or under a path the glob matches. The file is taken
    /// literally: `*` or `[` in it are ordinary characters.
    ///
    /// This is `overlaps` against the literal lock `file`, so a file that is an ancestor of what the
    /// lock names (`docs` for `docs/**`, e.g. a submodule or a directory replaced by a file) is also
    /// covered. That is safe for scope checks: any lock that covers such a file also overlaps this
    /// lock, so no task holding it could have been running alongside.
    pub fn covers_file(&self, file: &str) -> bool {
        let file = file.as_bytes();
        if self.literal {
            return literal_paths_overlap(&self.prefix, file);
        }
        let n = self.prefix.len().min(file.len());
        if self.prefix[..n] != file[..n] {
            return false;
        }
        self.nfa.intersects(&Nfa::literal(file))
    }
}

impl fmt::Debug for LockPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LockPath").field(&self.text).finish()
    }
}

impl fmt::Display for LockPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for LockPath {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for LockPath {}

impl Hash for LockPath {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl PartialOrd for LockPath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for LockPath {
    fn cmp(&self, other: &Self) -> Ordering {
        self.text.cmp(&other.text)
    }
}

impl Serialize for LockPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

/// Every pair `(wanted, held)` that overlaps.
pub fn overlapping<'a>(
    wanted: &'a [LockPath],
    held: &'a [LockPath],
) -> Vec<(&'a LockPath, &'a LockPath)> {
    let mut out = Vec::new();
    for w in wanted {
        for h in held {
            if w.overlaps(h) {
                out.push((w, h));
            }
        }
    }
    out
}

/// Two literal paths overlap when they are equal or one is a `/`-separated prefix of the other.
fn literal_paths_overlap(a: &[u8], b: &[u8]) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    long.starts_with(short) && (long.len() == short.len() || long[short.len()] == b'/')
}

/// Rebuilds the text from its segments, dropping empty and `.` segments and refusing `..`.
fn normalise(input: &str, separators: &[usize]) -> Result<String, LockPathError> {
    let mut out = String::with_capacity(input.len());
    let mut start = 0;
    let ends = separators
        .iter()
        .copied()
        .chain(std::iter::once(input.len()));
    for end in ends {
        let segment = input.get(start..end).unwrap_or_default();
        start = end + 1;
        match segment {
            "" | "." => {}
            ".." => return Err(LockPathError::Escapes(input.to_string())),
            segment => {
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(segment);
            }
        }
    }
    if out.is_empty() {
        // Only `.` segments: the whole repository.
        out.push_str("**");
    }
    Ok(out)
}

/// Prefers globset's wording for a pattern both parsers refuse.
fn globset_reason(glob: &str, ours: &str) -> String {
    match globset::GlobBuilder::new(glob)
        .literal_separator(true)
        .build()
    {
        Err(e) => e.kind().to_string(),
        Ok(_) => ours.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    fn lock(s: &str) -> LockPath {
        LockPath::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn parse_normalises() {
        let cases = [
            ("src", "src"),
            ("./src/", "src"),
            ("src//a", "src/a"),
            ("src/./a", "src/a"),
            ("./././x", "x"),
            ("a/b/", "a/b"),
            ("a///b//", "a/b"),
            (".", "**"),
            ("./", "**"),
            ("././/.", "**"),
            ("src/api/**", "src/api/**"),
            ("./**/*.rs", "**/*.rs"),
            ("src/a b.rs", "src/a b.rs"),
            (" src ", " src "),
            (".git", ".git"),
            ("...", "..."),
            ("..a/b..", "..a/b.."),
            ("{a,b}//c", "{a,b}/c"),
            // An escaped `/` and a `/` inside a class are not separators, so nothing is dropped.
            ("a\\/", "a\\/"),
            ("a[/.]b", "a[/.]b"),
            ("x/[a/./b]", "x/[a/./b]"),
            ("Cargo.lock", "Cargo.lock"),
        ];
        for (input, want) in cases {
            assert_eq!(lock(input).as_str(), want, "input {input:?}");
        }
    }

    #[test]
    fn parse_refuses() {
        use LockPathError::*;
        let invalid = |p: &str| InvalidGlob {
            path: p.to_string(),
            reason: String::new(),
        };
        let cases = [
            ("", Empty),
            ("/etc/passwd", Absolute("/etc/passwd".into())),
            ("/", Absolute("/".into())),
            ("//x", Absolute("//x".into())),
            ("../x", Escapes("../x".into())),
            ("a/../b", Escapes("a/../b".into())),
            ("a/..", Escapes("a/..".into())),
            ("./..", Escapes("./..".into())),
            ("a\0b", ControlCharacter("a\0b".into())),
            ("a\tb", ControlCharacter("a\tb".into())),
            ("a\nb", ControlCharacter("a\nb".into())),
            ("\u{7f}", ControlCharacter("\u{7f}".into())),
            ("\u{85}x", ControlCharacter("\u{85}x".into())),
            ("a/[b", invalid("a/[b")),
            ("a/{b", invalid("a/{b")),
            ("a}", invalid("a}")),
            ("a\\", invalid("a\\")),
            ("[z-a]", invalid("[z-a]")),
            // Valid to globset, but the class can never match: `/` separates segments.
            ("a/[/]", invalid("a/[/]")),
        ];
        for (input, want) in cases {
            let got = LockPath::parse(input).expect_err(input);
            match (&got, &want) {
                (
                    InvalidGlob { path, reason },
                    InvalidGlob {
                        path: want_path, ..
                    },
                ) => {
                    assert_eq!(path, want_path);
                    assert!(!reason.is_empty(), "{input:?}");
                }
                _ => assert_eq!(got, want, "input {input:?}"),
            }
        }
    }

    #[test]
    fn invalid_glob_reason_is_globsets() {
        let err = LockPath::parse("a/[b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "`a/[b` is not a valid glob: unclosed character class; missing ']'"
        );
    }

    #[test]
    fn control_character_message_is_escaped() {
        let err = LockPath::parse("a\nb").unwrap_err();
        assert_eq!(err.to_string(), "`a\\nb` contains a control character");
    }

    #[test]
    fn identity_is_the_normalised_text() {
        use std::collections::HashSet;
        assert_eq!(lock("./src/"), lock("src"));
        assert!(lock("a") < lock("b"));
        let set: HashSet<LockPath> = ["src", "./src", "src/", "docs"].map(lock).into();
        assert_eq!(set.len(), 2);
        assert_eq!(lock("./src//x").to_string(), "src/x");
        assert_eq!(format!("{:?}", lock("src")), "LockPath(\"src\")");
    }

    #[test]
    fn serialises_as_its_normalised_string() {
        let json = serde_json::to_string(&vec![lock("./src/"), lock(".")]).unwrap();
        assert_eq!(json, r#"["src","**"]"#);
    }

    #[test]
    fn is_glob_means_not_one_literal_path() {
        for s in ["src/*.rs", "a?", "[ab]", "{a,b}", "**", "a\\*b"] {
            assert!(lock(s).is_glob(), "{s}");
        }
        for s in ["src", "Cargo.lock", "a,b", "x]"] {
            assert!(!lock(s).is_glob(), "{s}");
        }
    }

    /// What `parse` makes of `input` the long way: globset's verdict and the automaton compiled
    /// from the tokens, as a plain path skips them.
    fn parsed_the_long_way(lock: &LockPath) -> (bool, Option<Nfa>, bool) {
        let globset_accepts = globset::GlobBuilder::new(lock.as_str())
            .literal_separator(true)
            .build()
            .is_ok();
        let tokens = parse_glob(lock.as_str())
            .map(|g| g.tokens)
            .unwrap_or_default();
        let literal = tokens.iter().all(|t| matches!(t, Token::Literal(_)));
        (globset_accepts, Nfa::compile(&tokens), literal)
    }

    #[test]
    fn a_plain_path_is_what_the_glob_machinery_makes_of_it() {
        for s in [
            "src",
            "Cargo.lock",
            "src/a b.rs",
            "a,b/c",
            "é/ü.rs",
            "..a/b..",
            " x ",
            "a!",
        ] {
            let plain = lock(s);
            let (globset_accepts, nfa, literal) = parsed_the_long_way(&plain);
            assert!(globset_accepts && literal && plain.literal, "{s}");
            assert_eq!(nfa.as_ref(), Some(&plain.nfa), "{s}");
            assert_eq!(plain.prefix, plain.as_str().as_bytes(), "{s}");
        }
    }

    proptest! {
        #[test]
        fn any_plain_path_is_what_the_glob_machinery_makes_of_it(
            s in "[a-c./ ,!é-]{1,10}"
        ) {
            // (`.` is the whole repository, `**`: not a plain path.)
            if let Some(plain) = LockPath::parse(&s)
                .ok()
                .filter(|l| !l.as_str().contains(GLOB_SYNTAX))
            {
                let (globset_accepts, nfa, literal) = parsed_the_long_way(&plain);
                prop_assert!(globset_accepts && literal && plain.literal);
                prop_assert_eq!(nfa.as_ref(), Some(&plain.nfa));
            }
        }
    }

    /// `(a, b, overlaps)`; every pair is checked both ways.
    const OVERLAPS: &[(&str, &str, bool)] = &[
        // Plain paths.
        ("src", "src", true),
        ("src", "src/app.py", true),
        ("src/a/b/c", "src", true),
        ("src", "srcs", false),
        ("src", "src.rs", false),
        ("src/a", "src/b", false),
        ("a/b", "a/bc", false),
        ("a b/c", "a b", true),
        // `**` and directories.
        ("src", "src/**", true),
        ("src/**", "src/a/b/c", true),
        ("src/**", "srcs/a", false),
        ("**", "x", true),
        ("**", "a/b/*.rs", true),
        ("**", "**", true),
        ("**", "{a,b}/[!c]?", true),
        ("docs", "docs/**/*.md", true),
        ("a/**", "b", false),
        ("a/b/c", "a/b/d/**", false),
        ("a/**/b", "c/**", false),
        ("a/**/**/b", "a/b", true),
        ("**/b/**", "a/b", true),
        ("**/x", "a/b/x", true),
        ("**/x", "x", true),
        ("**/*.rs", "src/x.rs", true),
        ("a/**/b", "a/b", true),
        // `a/c` may be a directory, and `a/**/b` matches `a/c/b` inside it.
        ("a/**/b", "a/c", true),
        // Same reason: `**/b` matches `a/c/b`.
        ("**/b", "a/c", true),
        // `x.py` may be a directory holding `x.py/y.rs`.
        ("**/*.rs", "x.py", true),
        ("*/*.rs", "x.py", true),
        ("src/**/test_*.py", "src/a/**", true),
        ("src/**/test_*.py", "docs/**", false),
        // A single `*` never crosses `/`.
        ("*.rs", "src/x.rs", false),
        ("*.rs", "x.py", false),
        ("*/x", "a/b/x", false),
        ("*/x", "a/x", true),
        // `*` matches a directory, which covers what is under it.
        ("*", "anything/deep", true),
        ("src/*", "src/a/b", true),
        ("src/*.rs", "src/foo.rs/bar", true),
        // `src/x.rs` may be a directory holding `src/x.rs/x.rs`.
        ("src/*/x.rs", "src/x.rs", true),
        ("a/*/b", "a/x/c", false),
        ("a/b", "a/*/c", true),
        // Globs against globs.
        ("src/*.rs", "src/*.py", false),
        ("a/*", "b/*", false),
        ("*.py", "*.rs", false),
        ("a*", "*b", true),
        ("src/a?c", "src/*c", true),
        ("?", "ab", false),
        ("?", "??", false),
        ("src/?.rs", "src/ab.rs", false),
        ("src/?", "src/x", true),
        ("*.lock", "Cargo.lock", true),
        ("Cargo.lock", "Cargo.*", true),
        // `*` matches a leading `.` and the empty string, as in globset.
        (".hidden", "*", true),
        ("src/*.rs", "src/.rs", true),
        // `**` that is not a whole segment is `*`.
        ("a**b", "axyb", true),
        ("a**b", "ax/yb", false),
        // Classes.
        ("src/[ab].rs", "src/c.rs", false),
        ("src/[ab].rs", "src/b.rs", true),
        ("src/[a-c].rs", "src/b.rs", true),
        ("src/[a-c].rs", "src/d.rs", false),
        ("src/[!a].rs", "src/b.rs", true),
        ("src/[^a].rs", "src/a.rs", false),
        ("src/[!a].rs", "src/[!b].rs", true),
        ("src/[ab].rs", "src/[bc].rs", true),
        ("src/[ab].rs", "src/[cd].rs", false),
        ("src/[ab].rs", "src/[!ab].rs", false),
        ("[[:digit:]]x", "1x", true),
        ("[[:digit:]]x", "ax", false),
        ("[ab]", "c/**", false),
        // `[a/b]` is `[ab]`: a class never matches `/`.
        ("[a/b]", "a", true),
        ("[a/b]", "a/b", true),
        // Alternatives.
        ("src/{a,b}.rs", "src/b.rs", true),
        ("src/{a,b}.rs", "src/c.rs", false),
        ("src/{api,web}/**", "src/web/x.rs", true),
        ("src/{api,web}/**", "src/cli/x.rs", false),
        ("{a,b}/x", "b", true),
        ("{a/x,b}", "a", true),
        ("{a/x,b}", "a/y", false),
        ("x/{**/y,z}", "x/q/y", true),
        // The `**/` opening an alternative is recursive, and `.*/` reaches `x/q/z/y`.
        ("x/{**/y,z}", "x/q/z", true),
        ("x/{**/y,z}", "w/y", false),
        ("{*.rs,*.py}", "{*.md,*.txt}", false),
        // Globset drops empty alternatives: `x{a,}` is only `xa`.
        ("x{a,}", "x", false),
        ("x{a,}", "xa", true),
        // Escapes are literal characters.
        ("src/a\\*b", "src/a*b", true),
        ("src/a\\*b", "src/axb", false),
        // `src/[x]` unescaped is a class: it matches `src/x`, not the file named `src/[x]`.
        ("src/\\[x\\]", "src/[x]", false),
        ("src/\\[x\\]", "src/?x?", true),
        // Globset matches bytes: `?` is one byte, and `é` is two.
        ("?.rs", "é.rs", false),
        ("??.rs", "é.rs", true),
        ("*.rs", "é.rs", true),
    ];

    #[test]
    fn overlap_table() {
        for &(a, b, want) in OVERLAPS {
            let (la, lb) = (lock(a), lock(b));
            assert_eq!(la.overlaps(&lb), want, "{a} vs {b}");
            assert_eq!(lb.overlaps(&la), want, "{b} vs {a}");
        }
    }

    /// Literal paths in the table are also checked through `covers_file`, which must agree with
    /// `overlaps` against the literal lock.
    #[test]
    fn covers_file_agrees_with_the_table() {
        for &(a, b, want) in OVERLAPS {
            for (glob, file) in [(a, b), (b, a)] {
                if !lock(file).is_glob() {
                    assert_eq!(lock(glob).covers_file(file), want, "{glob} covers {file}");
                }
            }
        }
    }

    #[test]
    fn covers_file_takes_the_file_literally() {
        let cases = [
            ("src", "src/a b.rs", true),
            ("src/*.rs", "src/a b.rs", true),
            ("src/*.rs", "src/a/b.rs", false),
            ("src/**", "src/deep/er/x", true),
            ("src/api/**", "src/web/x", false),
            // Covered as an ancestor of what the lock names: a submodule, or a directory that the
            // task replaced by a file. Any lock that covers it also overlaps this one.
            ("docs/**", "docs", true),
            // `[`, `*` in a real file name are plain characters.
            ("src/[ab].rs", "src/[ab].rs", false),
            ("src/[ab].rs", "src/a.rs", true),
            ("src/\\[ab\\].rs", "src/[ab].rs", true),
            ("src/a*", "src/a*", true),
            ("src", "src*", false),
            ("x/**/y", "x/y", true),
            ("x/**/y", "x/z", true),
            ("x/*/y", "x/z/w", false),
        ];
        for (glob, file, want) in cases {
            assert_eq!(lock(glob).covers_file(file), want, "{glob} covers {file}");
        }
    }

    #[test]
    fn overlapping_lists_every_pair() {
        let wanted = ["src/api/**", "Cargo.lock", "docs"].map(lock);
        let held = ["src/**/*.rs", "README.md", "*.lock", "docs/x"].map(lock);
        let pairs: Vec<(&str, &str)> = overlapping(&wanted, &held)
            .into_iter()
            .map(|(w, h)| (w.as_str(), h.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("src/api/**", "src/**/*.rs"),
                ("Cargo.lock", "*.lock"),
                ("docs", "docs/x"),
            ]
        );
        assert!(overlapping(&wanted, &[]).is_empty());
    }

    #[test]
    fn huge_patterns_do_not_panic() {
        let long = "a/".repeat(3000) + "*";
        let other = "*/".repeat(3000) + "b";
        let (a, b) = (lock(&long), lock(&other));
        assert!(a.overlaps(&b));
        assert!(a.overlaps(&a));
        let nested = "{".repeat(50) + "a" + &"}".repeat(50);
        assert!(lock(&nested).overlaps(&lock("a")));
    }

    // ---- property tests against globset -------------------------------------------------------

    const PATTERN_SEGMENTS: &[&str] = &["a", "b", "ab", "*", "?", "**", "[ab]", "a*"];
    const PATH_NAMES: &[&str] = &["a", "b", "ab"];
    /// Two patterns of `n` and `m` segments that overlap share a path of at most `n + m`
    /// segments over `PATH_NAMES`, so with patterns of up to 3 segments this universe holds a
    /// witness for every overlap.
    const MAX_PATH_DEPTH: usize = 6;

    fn pattern_of(max_segments: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(PATTERN_SEGMENTS), 1..=max_segments)
            .prop_map(|segments| segments.join("/"))
    }

    fn pattern() -> impl Strategy<Value = String> {
        pattern_of(4)
    }

    /// Whitespace-separated.
    const RICH_SEGMENTS: &str = r"a b ab * ? ** [ab] a* *b [!a] [^b]* a** **b ?*? {a,b} {a,*b} {a/b,*}
        {**/a,b} {a,} x{,} \* \a [*] {,a/**} [[:alpha:]] {{a,b},ab} [a-b]? [[:foo:]]";

    fn rich_pattern() -> impl Strategy<Value = String> {
        let segments: Vec<&str> = RICH_SEGMENTS.split_whitespace().collect();
        prop::collection::vec(prop::sample::select(segments), 1..=4)
            .prop_map(|segments| segments.join("/"))
    }

    const RICH_PATH_NAMES: &[&str] = &["a", "b", "ab", "*", "x"];
    const RICH_MAX_PATH_DEPTH: usize = 4;

    /// Every path of up to `depth` segments over `names`, each with the index of its parent
    /// (parents come first).
    type Universe = Vec<(String, Option<usize>)>;

    fn build_universe(names: &[&str], depth: usize) -> Universe {
        let mut paths: Universe = names.iter().map(|name| (name.to_string(), None)).collect();
        let mut level = 0..paths.len();
        for _ in 1..depth {
            let next_start = paths.len();
            for parent in level {
                for name in names {
                    let path = format!("{}/{name}", paths[parent].0);
                    paths.push((path, Some(parent)));
                }
            }
            level = next_start..paths.len();
        }
        paths
    }

    fn universe() -> &'static Universe {
        static UNIVERSE: std::sync::OnceLock<Universe> = std::sync::OnceLock::new();
        UNIVERSE.get_or_init(|| build_universe(PATH_NAMES, MAX_PATH_DEPTH))
    }

    fn rich_universe() -> &'static Universe {
        static UNIVERSE: std::sync::OnceLock<Universe> = std::sync::OnceLock::new();
        UNIVERSE.get_or_init(|| build_universe(RICH_PATH_NAMES, RICH_MAX_PATH_DEPTH))
    }

    /// Which universe paths the glob covers according to globset: the glob matches the path or
    /// one of its ancestors.
    fn covered_by_globset(pattern: &str, universe: &Universe) -> Vec<bool> {
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .unwrap()
            .compile_matcher();
        let mut covered: Vec<bool> = Vec::new();
        for (path, parent) in universe {
            let by_parent = parent.is_some_and(|p| covered[p]);
            covered.push(by_parent || glob.is_match(path));
        }
        covered
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Never a missed conflict: a path both globs cover means `overlaps` is true.
        #[test]
        fn overlap_never_misses_a_conflict(a in pattern(), b in pattern()) {
            let (ca, cb) = (covered_by_globset(&a, universe()), covered_by_globset(&b, universe()));
            if let Some(i) = (0..ca.len()).find(|&i| ca[i] && cb[i]) {
                let got = lock(&a).overlaps(&lock(&b));
                prop_assert!(got, "missed conflict: {} and {} both cover {}", a, b, universe()[i].0);
            }
        }

        /// Not needlessly conservative: on this alphabet every reported overlap has a witness.
        #[test]
        fn overlap_is_exact_on_a_small_alphabet(a in pattern_of(3), b in pattern_of(3)) {
            let (ca, cb) = (covered_by_globset(&a, universe()), covered_by_globset(&b, universe()));
            let witness = (0..ca.len()).any(|i| ca[i] && cb[i]);
            prop_assert_eq!(lock(&a).overlaps(&lock(&b)), witness, "{} vs {}", a, b);
        }

        /// The same with braces, negated classes, `**` inside a segment, escapes and names that
        /// contain glob characters.
        #[test]
        fn overlap_never_misses_a_conflict_with_richer_syntax(
            a in rich_pattern(),
            b in rich_pattern(),
        ) {
            let universe = rich_universe();
            let (ca, cb) = (covered_by_globset(&a, universe), covered_by_globset(&b, universe));
            if let Some(i) = (0..ca.len()).find(|&i| ca[i] && cb[i]) {
                let got = lock(&a).overlaps(&lock(&b));
                prop_assert!(got, "missed conflict: {} and {} both cover {}", a, b, universe[i].0);
            }
        }

        /// `covers_file` is globset matching the file or one of its ancestors, or the file being
        /// an ancestor of such a match.
        #[test]
        fn covers_file_agrees_with_globset(a in pattern_of(3)) {
            let covered = covered_by_globset(&a, universe());
            let la = lock(&a);
            for (i, (path, _)) in universe().iter().enumerate() {
                if covered[i] {
                    prop_assert!(la.covers_file(path), "{} should cover {}", a, path);
                } else if path.split('/').count() <= 3 {
                    // Deep enough in the universe for every descendant that matters.
                    let dir = format!("{path}/");
                    let above_a_match = universe()
                        .iter()
                        .zip(&covered)
                        .any(|((p, _), &c)| c && p.starts_with(&dir));
                    prop_assert_eq!(la.covers_file(path), above_a_match, "{} covers {}", a, path);
                }
            }
        }

        #[test]
        fn overlap_is_symmetric(a in pattern(), b in pattern()) {
            let (la, lb) = (lock(&a), lock(&b));
            prop_assert_eq!(la.overlaps(&lb), lb.overlaps(&la));
        }

        #[test]
        fn every_lock_overlaps_itself(a in pattern()) {
            let la = lock(&a);
            prop_assert!(la.overlaps(&la));
        }

        /// Arbitrary input never panics, and what parses overlaps itself and is stable under
        /// re-parsing its normalised text.
        #[test]
        fn parse_is_total_and_idempotent(s in r"[a-c./*?\[\]{},!^\\-]{0,12}") {
            if let Ok(l) = LockPath::parse(&s) {
                prop_assert!(l.overlaps(&l), "{:?}", l);
                let again = LockPath::parse(l.as_str());
                prop_assert_eq!(again.as_ref(), Ok(&l));
                let _ = l.covers_file(&s);
            }
        }
    }
}
