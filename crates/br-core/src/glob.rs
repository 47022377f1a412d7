//! Globs as automata: a port of globset's glob parser (so the tokens are the ones globset builds
//! its regex from, including its context rules for `**`), compiled into a small automaton over
//! bytes whose product with another decides whether two lock paths could match a common path.
//! `lock.rs` explains the semantics; this module only computes them.

// ---------------------------------------------------------------------------------------------
// Parsing: a port of globset's parser (0.4), so that the tokens here are the ones globset builds
// its regex from, including its context rules for `**`.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    Literal(char),
    /// `?`: one byte except `/`.
    Any,
    /// `*`: any run of bytes except `/`.
    ZeroOrMore,
    /// `**/` at the start: nothing, `/`, or anything ending in `/`.
    RecursivePrefix,
    /// `/**` at the end: `/` and then anything.
    RecursiveSuffix,
    /// `/**/` in the middle: `/`, or `/` anything `/`.
    RecursiveZeroOrMore,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Alternates(Vec<Vec<Token>>),
}

#[derive(Debug)]
pub(crate) struct ParsedGlob {
    pub(crate) tokens: Vec<Token>,
    /// Byte offsets of the `/` characters that separate segments (not escaped, not in a class).
    pub(crate) separators: Vec<usize>,
}

/// Globset refuses deeper nesting; so do we, which also bounds every recursion below.
const MAX_ALTERNATES_DEPTH: usize = 100;

pub(crate) fn parse_glob(glob: &str) -> Result<ParsedGlob, &'static str> {
    let mut parser = Parser {
        chars: glob.char_indices().peekable(),
        prev: None,
        cur: None,
        cur_at: 0,
        alternates_stack: Vec::new(),
        branches: vec![Vec::new()],
        separators: Vec::new(),
    };
    parser.run()?;
    match <[Vec<Token>; 1]>::try_from(parser.branches) {
        Ok([tokens]) => Ok(ParsedGlob {
            tokens,
            separators: parser.separators,
        }),
        Err(_) => Err("unclosed alternate group; missing '}'"),
    }
}

struct Parser<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    prev: Option<char>,
    cur: Option<char>,
    cur_at: usize,
    alternates_stack: Vec<usize>,
    branches: Vec<Vec<Token>>,
    pub(crate) separators: Vec<usize>,
}

const UNOPENED_ALTERNATES: &str = "unopened alternate group; missing '{'";

impl Parser<'_> {
    fn run(&mut self) -> Result<(), &'static str> {
        while let Some(c) = self.bump() {
            match c {
                '?' => self.push(Token::Any)?,
                '*' => self.parse_star()?,
                '[' => self.parse_class()?,
                '{' => self.push_alternate()?,
                '}' => self.pop_alternate()?,
                ',' => self.parse_comma()?,
                '\\' => self.parse_backslash()?,
                '/' => {
                    self.separators.push(self.cur_at);
                    self.push(Token::Literal('/'))?;
                }
                c => self.push(Token::Literal(c))?,
            }
        }
        Ok(())
    }

    fn bump(&mut self) -> Option<char> {
        self.prev = self.cur;
        self.cur = match self.chars.next() {
            Some((at, c)) => {
                self.cur_at = at;
                Some(c)
            }
            None => None,
        };
        self.cur
    }

    /// Consumes the `/` (or end of input) that follows a recursive `**`.
    fn bump_separator(&mut self) {
        if self.bump() == Some('/') {
            self.separators.push(self.cur_at);
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.chars.peek().map(|&(_, c)| c)
    }

    fn push(&mut self, token: Token) -> Result<(), &'static str> {
        let branch = self.branches.last_mut().ok_or(UNOPENED_ALTERNATES)?;
        branch.push(token);
        Ok(())
    }

    fn pop(&mut self) -> Result<Token, &'static str> {
        self.branches
            .last_mut()
            .and_then(Vec::pop)
            .ok_or(UNOPENED_ALTERNATES)
    }

    fn have_tokens(&self) -> Result<bool, &'static str> {
        self.branches
            .last()
            .map(|branch| !branch.is_empty())
            .ok_or(UNOPENED_ALTERNATES)
    }

    fn push_alternate(&mut self) -> Result<(), &'static str> {
        if self.alternates_stack.len() >= MAX_ALTERNATES_DEPTH {
            return Err("too many nested alternate groups");
        }
        self.alternates_stack.push(self.branches.len());
        self.branches.push(Vec::new());
        Ok(())
    }

    fn pop_alternate(&mut self) -> Result<(), &'static str> {
        let start = self.alternates_stack.pop().ok_or(UNOPENED_ALTERNATES)?;
        if start > self.branches.len() {
            return Err(UNOPENED_ALTERNATES);
        }
        let alternates = self.branches.drain(start..).collect();
        self.push(Token::Alternates(alternates))
    }

    fn parse_comma(&mut self) -> Result<(), &'static str> {
        if self.alternates_stack.is_empty() {
            self.push(Token::Literal(','))
        } else {
            self.branches.push(Vec::new());
            Ok(())
        }
    }

    fn parse_backslash(&mut self) -> Result<(), &'static str> {
        match self.bump() {
            None => Err("dangling '\\'"),
            Some(c) => self.push(Token::Literal(c)),
        }
    }

    /// Globset's rules: `**` is recursive only as a whole segment (or a whole alternative that
    /// starts the pattern or follows a `/`); anywhere else it is two `*`.
    fn parse_star(&mut self) -> Result<(), &'static str> {
        let prev = self.prev;
        if self.peek() != Some('*') {
            return self.push(Token::ZeroOrMore);
        }
        self.bump();
        if !self.have_tokens()? {
            if self.peek().is_some_and(|c| c != '/') {
                self.push(Token::ZeroOrMore)?;
                return self.push(Token::ZeroOrMore);
            }
            self.push(Token::RecursivePrefix)?;
            self.bump_separator();
            return Ok(());
        }
        if prev != Some('/')
            && (self.branches.len() <= 1 || (prev != Some(',') && prev != Some('{')))
        {
            self.push(Token::ZeroOrMore)?;
            return self.push(Token::ZeroOrMore);
        }
        let is_suffix = match self.peek() {
            None => {
                self.bump();
                true
            }
            Some(',' | '}') if self.branches.len() >= 2 => true,
            Some('/') => {
                self.bump_separator();
                false
            }
            Some(_) => {
                self.push(Token::ZeroOrMore)?;
                return self.push(Token::ZeroOrMore);
            }
        };
        let token = match self.pop()? {
            Token::RecursivePrefix => Token::RecursivePrefix,
            Token::RecursiveSuffix => Token::RecursiveSuffix,
            _ if is_suffix => Token::RecursiveSuffix,
            _ => Token::RecursiveZeroOrMore,
        };
        self.push(token)
    }

    fn parse_class(&mut self) -> Result<(), &'static str> {
        fn extend_last(ranges: &mut [(char, char)], end: char) -> Result<(), &'static str> {
            let range = ranges.last_mut().ok_or("invalid character range")?;
            range.1 = end;
            if range.1 < range.0 {
                return Err("invalid character range");
            }
            Ok(())
        }
        let mut ranges = Vec::new();
        let negated = matches!(self.peek(), Some('!' | '^'));
        if negated {
            self.bump();
        }
        let mut first = true;
        let mut in_range = false;
        loop {
            let Some(c) = self.bump() else {
                return Err("unclosed character class; missing ']'");
            };
            match c {
                ']' if first => ranges.push((']', ']')),
                ']' => break,
                '-' if first => ranges.push(('-', '-')),
                '-' if in_range => {
                    extend_last(&mut ranges, '-')?;
                    in_range = false;
                }
                '-' => in_range = true,
                '[' if !in_range && self.peek() == Some(':') => {
                    match self.try_parse_posix_class() {
                        Some(class) => ranges.extend_from_slice(class),
                        None => ranges.push(('[', '[')),
                    }
                    in_range = false;
                }
                c => {
                    if in_range {
                        extend_last(&mut ranges, c)?;
                    } else {
                        ranges.push((c, c));
                    }
                    in_range = false;
                }
            }
            first = false;
        }
        if in_range {
            // A trailing `-` is literal.
            ranges.push(('-', '-'));
        }
        self.push(Token::Class { negated, ranges })
    }

    /// `[:name:]` inside a class. Like globset, a well-formed but unknown name is consumed and
    /// yields `None` (the `[` then counts as a literal); anything else rewinds.
    fn try_parse_posix_class(&mut self) -> Option<&'static [(char, char)]> {
        let saved = (self.chars.clone(), self.prev, self.cur, self.cur_at);
        let mut name = String::new();
        if self.bump() == Some(':') {
            loop {
                match self.bump() {
                    Some(':') if self.peek() == Some(']') => {
                        self.bump();
                        return posix_class_ranges(&name);
                    }
                    Some(c) if c.is_ascii_lowercase() && name.len() < 8 => name.push(c),
                    _ => break,
                }
            }
        }
        (self.chars, self.prev, self.cur, self.cur_at) = saved;
        None
    }
}

fn posix_class_ranges(name: &str) -> Option<&'static [(char, char)]> {
    Some(match name {
        "alnum" => &[('0', '9'), ('A', 'Z'), ('a', 'z')],
        "alpha" => &[('A', 'Z'), ('a', 'z')],
        "blank" => &[('\t', '\t'), (' ', ' ')],
        "cntrl" => &[('\x00', '\x1f'), ('\x7f', '\x7f')],
        "digit" => &[('0', '9')],
        "graph" => &[('!', '~')],
        "lower" => &[('a', 'z')],
        "print" => &[(' ', '~')],
        "punct" => &[('!', '/'), (':', '@'), ('[', '`'), ('{', '~')],
        "space" => &[('\t', '\r'), (' ', ' ')],
        "upper" => &[('A', 'Z')],
        "xdigit" => &[('0', '9'), ('A', 'F'), ('a', 'f')],
        _ => return None,
    })
}

/// Whether globset turns these tokens into an empty regex. It drops such alternatives, so
/// `{a,}` matches only `a`, and `{,}` matches the empty string.
fn regex_is_empty(tokens: &[Token]) -> bool {
    tokens.iter().all(|token| match token {
        Token::Alternates(alternates) => alternates.iter().all(|alt| regex_is_empty(alt)),
        _ => false,
    })
}

// ---------------------------------------------------------------------------------------------
// Automata over bytes.
// ---------------------------------------------------------------------------------------------

/// A set of bytes, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ByteSet([u64; 4]);

impl ByteSet {
    const EMPTY: ByteSet = ByteSet([0; 4]);
    const FULL: ByteSet = ByteSet([u64::MAX; 4]);

    fn single(byte: u8) -> ByteSet {
        let mut set = ByteSet::EMPTY;
        set.insert(byte);
        set
    }

    fn not_slash() -> ByteSet {
        ByteSet::single(b'/').complement()
    }

    fn insert(&mut self, byte: u8) {
        self.0[usize::from(byte >> 6)] |= 1 << (byte & 63);
    }

    fn insert_range(&mut self, lo: u8, hi: u8) {
        for byte in lo..=hi {
            self.insert(byte);
        }
    }

    fn complement(self) -> ByteSet {
        ByteSet(self.0.map(|word| !word))
    }

    fn union(self, other: ByteSet) -> ByteSet {
        let mut out = self;
        for (word, other) in out.0.iter_mut().zip(other.0) {
            *word |= other;
        }
        out
    }

    fn intersects(&self, other: &ByteSet) -> bool {
        self.0.iter().zip(other.0).any(|(a, b)| a & b != 0)
    }

    fn is_empty(&self) -> bool {
        *self == ByteSet::EMPTY
    }

    /// The bytes a class matches, mirroring the regex globset writes for it: `/` is removed from
    /// the ranges, and each non-ASCII endpoint becomes its UTF-8 bytes, so in `[a-é]` the range
    /// runs from `a` to the first byte of `é` and the second byte stands alone.
    fn class(negated: bool, ranges: &[(char, char)]) -> ByteSet {
        let mut set = ByteSet::EMPTY;
        let mut add = |start: char, end: char| {
            let (mut sbuf, mut ebuf) = ([0; 4], [0; 4]);
            let sb = start.encode_utf8(&mut sbuf).as_bytes();
            let eb = end.encode_utf8(&mut ebuf).as_bytes();
            if start == end {
                sb.iter().for_each(|&b| set.insert(b));
            } else if let (Some((&last, head)), Some((&first, tail))) =
                (sb.split_last(), eb.split_first())
            {
                head.iter().for_each(|&b| set.insert(b));
                set.insert_range(last, first);
                tail.iter().for_each(|&b| set.insert(b));
            }
        };
        if negated {
            ranges.iter().for_each(|&(s, e)| add(s, e));
            set.insert(b'/');
            return set.complement();
        }
        for &(start, end) in ranges {
            if start > '/' || end < '/' {
                add(start, end);
            } else {
                if start < '/' {
                    add(start, '.');
                }
                if end > '/' {
                    add('0', end);
                }
            }
        }
        set
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Edge {
    bytes: ByteSet,
    to: usize,
}

/// An automaton without empty moves: state 0 starts, and the last state is "anything under a
/// covered path", entered by reading `/` after an accepting state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Nfa {
    /// `edges[offsets[s]..offsets[s + 1]]` leave state `s`.
    offsets: Vec<usize>,
    edges: Vec<Edge>,
    accepting: Vec<bool>,
}

/// Above this many pairs of edges, `intersects` answers `true` without searching. It bounds both
/// the search's time and its memory (a state has at least one edge, counting the "anything under"
/// loop), and no realistic pair of lock paths comes near it.
const MAX_EDGE_PAIRS: usize = 1 << 24;

impl Nfa {
    /// Compiles glob tokens; `None` when the pattern can match nothing.
    pub(crate) fn compile(tokens: &[Token]) -> Option<Nfa> {
        let mut thompson = Thompson::default();
        let start = thompson.state();
        let accept = if matches!(tokens, [Token::RecursivePrefix]) {
            // Globset special-cases a lone `**`: it matches everything.
            let all = thompson.state();
            thompson.empty_move(start, all);
            thompson.edge(all, ByteSet::FULL, all);
            all
        } else {
            thompson.sequence(tokens, start)
        };
        thompson.finish(start, accept)
    }

    /// The automaton of one literal path.
    pub(crate) fn literal(path: &[u8]) -> Nfa {
        let n = path.len();
        let mut nfa = Nfa {
            offsets: vec![0],
            edges: Vec::with_capacity(n + 2),
            accepting: Vec::with_capacity(n + 2),
        };
        for (i, &byte) in path.iter().enumerate() {
            nfa.edges.push(Edge {
                bytes: ByteSet::single(byte),
                to: i + 1,
            });
            nfa.offsets.push(nfa.edges.len());
            nfa.accepting.push(false);
        }
        nfa.edges.push(Edge {
            bytes: ByteSet::single(b'/'),
            to: n + 1,
        });
        nfa.offsets.push(nfa.edges.len());
        nfa.accepting.push(true);
        nfa.push_under_state();
        nfa
    }

    /// Appends the "anything under" state: accepting, looping on every byte.
    fn push_under_state(&mut self) {
        let under = self.accepting.len();
        self.edges.push(Edge {
            bytes: ByteSet::FULL,
            to: under,
        });
        self.offsets.push(self.edges.len());
        self.accepting.push(true);
    }

    fn len(&self) -> usize {
        self.accepting.len()
    }

    fn is_accepting(&self, state: usize) -> bool {
        self.accepting.get(state).copied().unwrap_or(false)
    }

    fn edges(&self, state: usize) -> &[Edge] {
        match (self.offsets.get(state), self.offsets.get(state + 1)) {
            (Some(&lo), Some(&hi)) => self.edges.get(lo..hi).unwrap_or_default(),
            _ => &[],
        }
    }

    /// Whether some byte string is accepted by both: a depth-first search of the product.
    pub(crate) fn intersects(&self, other: &Nfa) -> bool {
        match self.edges.len().checked_mul(other.edges.len()) {
            Some(pairs) if pairs <= MAX_EDGE_PAIRS => {}
            _ => return true,
        }
        let width = other.len();
        let total = self.len() * width;
        let mut seen = vec![0u64; total.div_ceil(64).max(1)];
        seen[0] = 1;
        let mut stack = vec![(0, 0)];
        while let Some((p, q)) = stack.pop() {
            if self.is_accepting(p) && other.is_accepting(q) {
                return true;
            }
            for a in self.edges(p) {
                for b in other.edges(q) {
                    if !a.bytes.intersects(&b.bytes) {
                        continue;
                    }
                    let id = a.to * width + b.to;
                    let bit = 1u64 << (id % 64);
                    if let Some(word) = seen.get_mut(id / 64)
                        && *word & bit == 0
                    {
                        *word |= bit;
                        stack.push((a.to, b.to));
                    }
                }
            }
        }
        false
    }
}

/// A Thompson automaton (with empty moves) for globset's regex, before they are removed.
#[derive(Debug, Default)]
struct Thompson {
    edges: Vec<Vec<(ByteSet, usize)>>,
    empty_moves: Vec<Vec<usize>>,
}

impl Thompson {
    fn state(&mut self) -> usize {
        self.edges.push(Vec::new());
        self.empty_moves.push(Vec::new());
        self.edges.len() - 1
    }

    fn edge(&mut self, from: usize, bytes: ByteSet, to: usize) {
        if !bytes.is_empty()
            && let Some(edges) = self.edges.get_mut(from)
        {
            edges.push((bytes, to));
        }
    }

    fn empty_move(&mut self, from: usize, to: usize) {
        if let Some(moves) = self.empty_moves.get_mut(from) {
            moves.push(to);
        }
    }

    fn sequence(&mut self, tokens: &[Token], start: usize) -> usize {
        tokens
            .iter()
            .fold(start, |cur, token| self.token(token, cur))
    }

    /// Adds `token` after state `cur` and returns the state where it ends.
    fn token(&mut self, token: &Token, cur: usize) -> usize {
        let slash = ByteSet::single(b'/');
        match token {
            Token::Literal(c) => c.encode_utf8(&mut [0; 4]).bytes().fold(cur, |cur, byte| {
                let next = self.state();
                self.edge(cur, ByteSet::single(byte), next);
                next
            }),
            Token::Any => {
                let next = self.state();
                self.edge(cur, ByteSet::not_slash(), next);
                next
            }
            Token::ZeroOrMore => {
                let spin = self.state();
                self.empty_move(cur, spin);
                self.edge(spin, ByteSet::not_slash(), spin);
                spin
            }
            Token::RecursivePrefix => {
                // (?:/?|.*/)
                let end = self.state();
                self.empty_move(cur, end);
                self.edge(cur, slash, end);
                let spin = self.state();
                self.empty_move(cur, spin);
                self.edge(spin, ByteSet::FULL, spin);
                self.edge(spin, slash, end);
                end
            }
            Token::RecursiveSuffix => {
                // /.*
                let spin = self.state();
                self.edge(cur, slash, spin);
                self.edge(spin, ByteSet::FULL, spin);
                spin
            }
            Token::RecursiveZeroOrMore => {
                // (?:/|/.*/)
                let end = self.state();
                self.edge(cur, slash, end);
                let spin = self.state();
                self.edge(cur, slash, spin);
                self.edge(spin, ByteSet::FULL, spin);
                self.edge(spin, slash, end);
                end
            }
            Token::Class { negated, ranges } => {
                let next = self.state();
                self.edge(cur, ByteSet::class(*negated, ranges), next);
                next
            }
            Token::Alternates(alternates) => {
                let mut live = alternates.iter().filter(|alt| !regex_is_empty(alt));
                let Some(first) = live.next() else {
                    return cur;
                };
                let end = self.state();
                for alternate in std::iter::once(first).chain(live) {
                    let branch = self.state();
                    self.empty_move(cur, branch);
                    let branch_end = self.sequence(alternate, branch);
                    self.empty_move(branch_end, end);
                }
                end
            }
        }
    }

    /// Removes empty moves, keeps the states reachable from `start` (renumbered so `start` is 0),
    /// merges parallel edges, and appends the "anything under" state. `None` when `accept` is
    /// unreachable.
    fn finish(self, start: usize, accept: usize) -> Option<Nfa> {
        let n = self.edges.len();
        let mut index = vec![usize::MAX; n];
        let mut order = vec![start];
        *index.get_mut(start)? = 0;
        let mut states: Vec<(bool, Vec<(ByteSet, usize)>)> = Vec::new();
        let mut closure = Vec::new();
        let mut in_closure = vec![false; n];
        let mut next = 0;
        while let Some(&state) = order.get(next) {
            next += 1;
            self.closure(state, &mut closure, &mut in_closure);
            let mut out: Vec<(ByteSet, usize)> = Vec::new();
            for &member in &closure {
                for &(bytes, to) in self.edges.get(member).map_or(&[][..], Vec::as_slice) {
                    match out.iter_mut().find(|(_, t)| *t == to) {
                        Some(edge) => edge.0 = edge.0.union(bytes),
                        None => out.push((bytes, to)),
                    }
                    if let Some(slot) = index.get_mut(to)
                        && *slot == usize::MAX
                    {
                        *slot = order.len();
                        order.push(to);
                    }
                }
            }
            states.push((closure.contains(&accept), out));
        }
        if !states.iter().any(|(accepting, _)| *accepting) {
            return None;
        }
        let under = states.len();
        let mut nfa = Nfa {
            offsets: vec![0],
            edges: Vec::new(),
            accepting: Vec::with_capacity(under + 1),
        };
        for (accepting, out) in states {
            for (bytes, to) in out {
                nfa.edges.push(Edge {
                    bytes,
                    to: index.get(to).copied()?,
                });
            }
            if accepting {
                nfa.edges.push(Edge {
                    bytes: ByteSet::single(b'/'),
                    to: under,
                });
            }
            nfa.offsets.push(nfa.edges.len());
            nfa.accepting.push(accepting);
        }
        nfa.push_under_state();
        Some(nfa)
    }

    /// The states reachable from `state` by empty moves, itself included, into `out`.
    fn closure(&self, state: usize, out: &mut Vec<usize>, marks: &mut [bool]) {
        for &member in out.iter() {
            if let Some(mark) = marks.get_mut(member) {
                *mark = false;
            }
        }
        out.clear();
        let mut stack = vec![state];
        while let Some(s) = stack.pop() {
            match marks.get_mut(s) {
                Some(mark) if !*mark => *mark = true,
                _ => continue,
            }
            out.push(s);
            if let Some(moves) = self.empty_moves.get(s) {
                stack.extend_from_slice(moves);
            }
        }
    }
}
