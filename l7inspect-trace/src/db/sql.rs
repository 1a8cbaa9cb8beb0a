//! What the SQL parsers (PostgreSQL, MySQL) share: a statement's
//! operation (its first keyword), its table when certain
//! ([`collection`]), and its sanitized text ([`sanitize`]).
//!
//! All three run once per query on the proxy's path, over the statement's
//! first bytes as the client sent them: they are hand-written scans over
//! bytes (no regex, no parser), linear in the input, and allocate nothing
//! but [`sanitize`]'s one output string. They share one lexer, so that
//! what [`sanitize`] takes for a literal, [`collection`] never takes for a
//! table name, and a keyword inside a string never counts.
//!
//! `#[doc(hidden)] pub` (not `pub(crate)`) only so that the fuzz target and
//! the criterion bench can call these functions; they are not an API.

/// The keywords a statement may start with that get an operation name of
/// their own; any other first word is `_OTHER`, so that the operation stays
/// a bounded metric label whatever the client sends.
pub const KEYWORDS: &[&str] = &[
    "ALTER",
    "ANALYZE",
    "BEGIN",
    "CALL",
    "CHECKPOINT",
    "CLOSE",
    "CLUSTER",
    "COMMENT",
    "COMMIT",
    "COPY",
    "CREATE",
    "DEALLOCATE",
    "DECLARE",
    "DELETE",
    "DESCRIBE",
    "DISCARD",
    "DO",
    "DROP",
    "END",
    "EXECUTE",
    "EXPLAIN",
    "FETCH",
    "GRANT",
    "HANDLER",
    "INSERT",
    "KILL",
    "LISTEN",
    "LOAD",
    "LOCK",
    "MERGE",
    "MOVE",
    "NOTIFY",
    "OPTIMIZE",
    "PREPARE",
    "REFRESH",
    "REINDEX",
    "RELEASE",
    "RENAME",
    "REPAIR",
    "REPLACE",
    "RESET",
    "REVOKE",
    "ROLLBACK",
    "SAVEPOINT",
    "SELECT",
    "SET",
    "SHOW",
    "START",
    "TABLE",
    "TRUNCATE",
    "UNLISTEN",
    "UPDATE",
    "USE",
    "VACUUM",
    "VALUES",
    "WITH",
    "XA",
];

/// The operation of any statement whose first word is not a known keyword.
pub const OTHER: &str = "_OTHER";

/// The longest table name [`collection`] gives (schema and quotes
/// included): longer ones are not names a person reads in a trace, and a
/// bound keeps a hostile client from making every span carry kilobytes.
pub const MAX_COLLECTION: usize = 128;

/// The SQL dialect a statement is lexed in. The two disagree on what a
/// double quote opens (an identifier in PostgreSQL, a string in MySQL),
/// on backslashes in `'...'` (an escape in MySQL and in PostgreSQL's
/// `E'...'` only), and on comments (`#` and `-- ` in MySQL, nested
/// `/* */` in PostgreSQL); a sanitizer that guessed would let literals
/// through in one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL: `"identifiers"`, `$1` placeholders, `$tag$...$tag$`
    /// strings, `E'\''` escapes, nested block comments.
    Postgres,
    /// MySQL and MariaDB: `` `identifiers` ``, `"strings"` and `'strings'`
    /// with backslash escapes, `?` placeholders, `#` and `-- ` comments
    /// (`--` opens one only before whitespace: `5--1` is a subtraction;
    /// MySQL also takes a control character there, which is read here as
    /// SQL, its strings still hidden).
    Mysql,
}

/// Words after which a statement may name another table (a subquery, a
/// join, a set operation, `TABLE t`): [`collection`] gives none.
const ANOTHER_TABLE: [&str; 6] = ["SELECT", "JOIN", "UNION", "INTERSECT", "EXCEPT", "TABLE"];

/// `db.operation.name` of a statement: its first keyword, upper case
/// (`select * from t` → `SELECT`), after whitespace, comments (`-- ...`,
/// `/* ... */`) and opening parentheses; `_OTHER` for anything else.
pub fn operation(query: &[u8]) -> &'static str {
    let rest = skip_space_and_comments(query);
    let word_len = rest
        .iter()
        .position(|b| !b.is_ascii_alphanumeric() && *b != b'_')
        .unwrap_or(rest.len());
    let word = &rest[..word_len];
    KEYWORDS
        .iter()
        .find(|k| k.as_bytes().eq_ignore_ascii_case(word))
        .copied()
        .unwrap_or(OTHER)
}

/// `query` after leading whitespace, comments and `(`.
pub(crate) fn skip_space_and_comments(mut query: &[u8]) -> &[u8] {
    loop {
        match query {
            [b, rest @ ..] if b.is_ascii_whitespace() || *b == b'(' => query = rest,
            [b'-', b'-', rest @ ..] => {
                query = match rest.iter().position(|b| *b == b'\n') {
                    Some(i) => &rest[i + 1..],
                    None => &[],
                }
            }
            [b'/', b'*', rest @ ..] => {
                query = match rest.windows(2).position(|w| w == b"*/") {
                    Some(i) => &rest[i + 2..],
                    None => &[],
                }
            }
            _ => return query,
        }
    }
}

/// `db.collection.name` of a statement, only when it is certain: the
/// statement names exactly one table, in one of these forms, and nothing
/// after it could name another (no `JOIN`, no second `FROM` item, no
/// subquery, no `UNION`, no second statement):
///
/// - `SELECT ... FROM t [[AS] alias]` followed by nothing, `;`, or `WHERE`, `GROUP`,
///   `ORDER`, `LIMIT`, `HAVING`, `OFFSET`, `FETCH`, `FOR`, `WINDOW`;
/// - `INSERT [IGNORE] INTO t [AS alias]` (and MySQL's `REPLACE INTO t`), followed by
///   `(`, `VALUES`, `VALUE`, `DEFAULT`, `SET`, `OVERRIDING` or nothing;
/// - `UPDATE t [[AS] alias] SET ...` (no `FROM`: PostgreSQL's join);
/// - `DELETE FROM t [[AS] alias]` (no `USING`: a join in both dialects);
/// - `TRUNCATE [TABLE] t`;
/// - `COPY t` followed by `(`, `FROM` or `TO`.
///
/// The name is given as the statement writes it, as the semantic
/// conventions ask: schema-qualified (`public.orders`) and quoted
/// (`"My Table"`, `` `t` ``) names included, no case folding; at most
/// [`MAX_COLLECTION`] bytes of UTF-8. Anything else is `None`: a wrong
/// table in a trace is worse than none.
pub fn collection(query: &[u8], dialect: Dialect) -> Option<&str> {
    let mut tokens = Tokens {
        lexer: Lexer::new(query, dialect),
    };
    let first = tokens.next()?;
    let statement = match first.kind {
        Kind::Word => first.text(query),
        _ => return None,
    };
    let is = |t: &Token, w: &str| t.is_word(query, w);
    let (name, follow): (Token, &[&str]) = if statement.eq_ignore_ascii_case(b"SELECT") {
        // Up to the FROM of this SELECT (outside parentheses: the FROM of
        // `EXTRACT(YEAR FROM ts)` is not it).
        let mut depth = 0usize;
        loop {
            let t = tokens.next()?;
            match t.kind {
                Kind::Punct if t.text(query) == b"(" => depth += 1,
                Kind::Punct if t.text(query) == b")" => depth = depth.checked_sub(1)?,
                Kind::Punct if t.text(query) == b";" => return None,
                // A subquery in the select list, or `SELECT ... INTO t`
                // (a second table).
                Kind::Word if is(&t, "SELECT") || is(&t, "INTO") => return None,
                Kind::Word if depth == 0 && is(&t, "FROM") => break,
                _ => {}
            }
        }
        (
            tokens.name(query)?,
            &[
                "WHERE", "GROUP", "ORDER", "LIMIT", "HAVING", "OFFSET", "FETCH", "FOR", "WINDOW",
            ],
        )
    } else if statement.eq_ignore_ascii_case(b"INSERT")
        || statement.eq_ignore_ascii_case(b"REPLACE")
    {
        let mut t = tokens.next()?;
        if is(&t, "IGNORE") {
            t = tokens.next()?;
        }
        if !is(&t, "INTO") {
            return None;
        }
        (
            tokens.name(query)?,
            &["(", "VALUES", "VALUE", "DEFAULT", "SET", "OVERRIDING"],
        )
    } else if statement.eq_ignore_ascii_case(b"UPDATE") {
        (tokens.name(query)?, &["SET"])
    } else if statement.eq_ignore_ascii_case(b"DELETE") {
        if !is(&tokens.next()?, "FROM") {
            return None;
        }
        (
            tokens.name(query)?,
            &["WHERE", "RETURNING", "ORDER", "LIMIT"],
        )
    } else if statement.eq_ignore_ascii_case(b"TRUNCATE") {
        let mut peek = tokens;
        if peek.next().is_some_and(|t| is(&t, "TABLE")) {
            tokens = peek;
        }
        (
            tokens.name(query)?,
            &["RESTART", "CONTINUE", "CASCADE", "RESTRICT"],
        )
    } else if statement.eq_ignore_ascii_case(b"COPY") {
        (tokens.name(query)?, &["(", "FROM", "TO"])
    } else {
        return None;
    };
    // `FROM ONLY t`, `FROM LATERAL ...`: not a table's name.
    if ["ONLY", "LATERAL"].iter().any(|w| name.is_word(query, w)) {
        return None;
    }
    let is_follow = |t: &Token| {
        follow
            .iter()
            .any(|w| w.as_bytes().eq_ignore_ascii_case(t.text(query)))
    };
    // An alias (`FROM orders o`, `UPDATE t AS x SET`, as ORMs write them),
    // except after TRUNCATE and COPY, which take none. Whatever is not a
    // follower below is taken for one: a JOIN taken so is still refused,
    // as what comes after it (the joined table) follows nothing.
    let mut next = tokens.next();
    if !(statement.eq_ignore_ascii_case(b"TRUNCATE") || statement.eq_ignore_ascii_case(b"COPY")) {
        if next.is_some_and(|t| t.is_word(query, "AS")) {
            let alias = tokens.next()?;
            if !matches!(alias.kind, Kind::Word | Kind::Quoted) {
                return None;
            }
            next = tokens.next();
        } else if next.is_some_and(|t| {
            (t.kind == Kind::Word
                && !is_follow(&t)
                && !ANOTHER_TABLE.iter().any(|w| t.is_word(query, w)))
                || t.kind == Kind::Quoted
        }) {
            next = tokens.next();
        }
    }
    // What follows the name: the end, `;`, or one of the statement's
    // expected words; anything else (`JOIN`, `,`, a second alias) is a
    // form this does not claim to understand.
    let mut depth = 0usize;
    let mut ended = false;
    match next {
        None => {}
        Some(t) if t.text(query) == b";" => ended = true,
        Some(t) if t.text(query) == b"(" && follow.contains(&"(") => depth = 1,
        Some(t) if t.kind == Kind::Word && is_follow(&t) => {}
        Some(_) => return None,
    }
    // The rest of the statement must not name another table.
    while let Some(t) = tokens.next() {
        if ended {
            // A second statement.
            return None;
        }
        match t.kind {
            Kind::Punct if t.text(query) == b"(" => depth += 1,
            Kind::Punct if t.text(query) == b")" => depth = depth.checked_sub(1)?,
            Kind::Punct if t.text(query) == b";" => ended = true,
            Kind::Word if ANOTHER_TABLE.iter().any(|w| is(&t, w)) => {
                return None;
            }
            // PostgreSQL's `UPDATE ... FROM other`, and `DELETE ... USING
            // other` in both dialects.
            Kind::Word
                if depth == 0
                    && ((statement.eq_ignore_ascii_case(b"UPDATE") && is(&t, "FROM"))
                        || is(&t, "USING")) =>
            {
                return None;
            }
            _ => {}
        }
    }
    let text = &query[name.start..name.end];
    if text.len() > MAX_COLLECTION {
        return None;
    }
    std::str::from_utf8(text).ok()
}

/// `db.query.text`: the statement with its literals replaced by `?`, as the
/// semantic conventions describe, cut to at most `max` bytes (at a
/// character boundary).
///
/// Replaced: strings (`'it''s'`, `E'\''`, `B'01'`, `X'ff'`, `N'..'`, MySQL
/// `"..."` and backslash escapes), PostgreSQL `$$...$$` and
/// `$tag$...$tag$` bodies, numbers (`42`, `-1.5e-3`, `0xFF`, `1_000`; a
/// minus sign goes with the number where it cannot be a subtraction).
/// Kept: keywords, identifiers (PostgreSQL `"..."`, MySQL `` `...` ``),
/// operators, `TRUE`/`FALSE`/`NULL`, placeholders (`$1`, `?`). Comments
/// are dropped (a comment may hold anything, and keeping it would mean
/// sanitizing it), and each run of whitespace and comments becomes one
/// space. What cannot be read to its end (an unterminated string,
/// identifier or dollar quote, a statement cut by the parser's bound) is
/// replaced to the end: sanitizing errs towards hiding.
///
/// One server setting is assumed: PostgreSQL's `standard_conforming_strings`
/// on (the default since 9.1; with it off, a backslash in `'...'` escapes,
/// and a text after `'a\'` would be read as SQL and kept). MySQL's
/// `NO_BACKSLASH_ESCAPES` and `ANSI_QUOTES` only make it hide more.
///
/// Never panics; bytes that are not UTF-8 come out as U+FFFD. Allocates
/// the output only (its capacity is at most `max` plus 4: the input is
/// read only as far as the output needs). Sanitizing an uncut output again
/// gives it back unchanged.
pub fn sanitize(query: &[u8], dialect: Dialect, max: usize) -> String {
    // Read past `max` by a few bytes so that the cut falls at the same
    // character boundary as if the whole text had been sanitized.
    let limit = max.saturating_add(4);
    // The output is never longer than the input: every token is copied or
    // shortened (literals to `?`, whitespace and comments to one space).
    let mut out = Vec::with_capacity(query.len().min(limit));
    let mut lexer = Lexer::new(query, dialect);
    let mut space = false;
    // Whether the last token ends an operand: a `-` after it subtracts,
    // anywhere else it is the sign of the number that follows.
    let mut after_operand = false;
    while out.len() < limit {
        let Some(token) = lexer.next() else { break };
        let text = token.text(query);
        let (emit, operand): (&[u8], bool) = match token.kind {
            Kind::Space => {
                space = true;
                continue;
            }
            Kind::Str | Kind::Number => (b"?", true),
            Kind::Punct if text == b"-" && !after_operand && lexer.number_follows() => {
                lexer.next();
                (b"?", true)
            }
            Kind::Punct => (text, matches!(text, b")" | b"]" | b"?")),
            Kind::Word => (text, !is_operator_keyword(text)),
            Kind::Quoted | Kind::Param => (text, true),
        };
        // In MySQL, `--` and a space open a comment: a space that was a
        // comment between `--` and what follows is left out, or the output
        // would hide its own end.
        if space && !out.is_empty() && !(dialect == Dialect::Mysql && out.ends_with(b"--")) {
            out.push(b' ');
        }
        space = false;
        out.extend_from_slice(emit);
        after_operand = operand;
    }
    let mut text = match String::from_utf8(out) {
        Ok(text) => text,
        // Rare (the client sent bytes that are not UTF-8): a second string.
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// Keywords after which a `-` is a sign, not a subtraction
/// (`SELECT -1`, `WHERE a = 1 AND -2 < b`): the few where a number is
/// common.
fn is_operator_keyword(word: &[u8]) -> bool {
    [
        "SELECT", "WHERE", "AND", "OR", "NOT", "WHEN", "THEN", "ELSE", "LIMIT", "OFFSET",
        "BETWEEN", "IN", "IS", "LIKE", "RETURN", "VALUES", "SET", "BY",
    ]
    .iter()
    .any(|k| k.as_bytes().eq_ignore_ascii_case(word))
}

/// What a token of SQL is, as far as sanitizing and naming tables need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Whitespace and comments.
    Space,
    /// An unquoted identifier or keyword.
    Word,
    /// A quoted identifier, with its quotes (PostgreSQL `"..."`, MySQL
    /// `` `...` ``).
    Quoted,
    /// A string literal with its prefix, a dollar-quoted body, or anything
    /// unterminated (to the end of the input).
    Str,
    /// A numeric literal.
    Number,
    /// A PostgreSQL placeholder (`$1`).
    Param,
    /// Any other byte (operators, punctuation, MySQL's `?`).
    Punct,
}

/// One token: its kind and where it is in the statement.
#[derive(Clone, Copy, Debug)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

impl Token {
    /// The token's bytes.
    fn text<'a>(&self, query: &'a [u8]) -> &'a [u8] {
        &query[self.start..self.end]
    }

    /// Whether it is the unquoted word `word` (in any case).
    fn is_word(&self, query: &[u8], word: &str) -> bool {
        self.kind == Kind::Word && self.text(query).eq_ignore_ascii_case(word.as_bytes())
    }
}

/// The longest `$tag$` taken for a dollar quote. PostgreSQL's identifiers
/// are at most 63 bytes; a longer tag is read as an unterminated literal
/// (hidden to the end) rather than searched for, which would cost the
/// tag's length at every `$` of the body.
const MAX_DOLLAR_TAG: usize = 64;

/// A lexer over a statement's bytes: every byte belongs to exactly one
/// token, in order, and it never looks back.
#[derive(Clone, Copy, Debug)]
struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    dialect: Dialect,
}

// === impl Lexer ===

impl<'a> Lexer<'a> {
    /// A lexer at the start of `src`.
    fn new(src: &'a [u8], dialect: Dialect) -> Self {
        Self {
            src,
            pos: 0,
            dialect,
        }
    }

    /// The byte at `i`, if any.
    fn at(&self, i: usize) -> Option<u8> {
        self.src.get(i).copied()
    }

    /// Whether a number starts at the current position (`5`, `.5`).
    fn number_follows(&self) -> bool {
        match self.at(self.pos) {
            Some(b) if b.is_ascii_digit() => true,
            Some(b'.') => self.at(self.pos + 1).is_some_and(|b| b.is_ascii_digit()),
            _ => false,
        }
    }

    /// The next token, or `None` at the end.
    fn next(&mut self) -> Option<Token> {
        let start = self.pos;
        let b = self.at(start)?;
        let next = self.at(start + 1);
        let mysql = self.dialect == Dialect::Mysql;
        let (kind, end) = match b {
            _ if b.is_ascii_whitespace() => (
                Kind::Space,
                self.skip_while(start, |b| b.is_ascii_whitespace()),
            ),
            b'-' if next == Some(b'-')
                && (!mysql || self.at(start + 2).is_some_and(|b| b.is_ascii_whitespace())) =>
            {
                (Kind::Space, self.line_end(start))
            }
            b'#' if mysql => (Kind::Space, self.line_end(start)),
            b'/' if next == Some(b'*') => (Kind::Space, self.comment_end(start + 2)),
            b'\'' => (Kind::Str, self.string_end(start + 1, b'\'', mysql)),
            b'"' if mysql => (Kind::Str, self.string_end(start + 1, b'"', true)),
            b'"' => self.quoted(start, b'"'),
            b'`' if mysql => self.quoted(start, b'`'),
            b'$' if !mysql && next.is_some_and(|b| b.is_ascii_digit()) => (
                Kind::Param,
                self.skip_while(start + 1, |b| b.is_ascii_digit()),
            ),
            b'$' if !mysql => match self.dollar_quote(start) {
                Some(end) => (Kind::Str, end),
                None => (Kind::Punct, start + 1),
            },
            _ if b.is_ascii_digit() => (Kind::Number, self.number_end(start)),
            b'.' if next.is_some_and(|b| b.is_ascii_digit()) => {
                (Kind::Number, self.number_end(start))
            }
            _ if is_word_start(b) => {
                let end = self.skip_while(start, is_word_byte);
                // A one-letter prefix glued to a string is part of it:
                // E'..' (escapes), B'..', X'..', N'..'.
                let prefix = end == start + 1
                    && self.at(end) == Some(b'\'')
                    && match b.to_ascii_uppercase() {
                        b'E' => !mysql,
                        b'B' | b'X' | b'N' => true,
                        _ => false,
                    };
                if prefix {
                    let escapes = mysql || b.eq_ignore_ascii_case(&b'E');
                    (Kind::Str, self.string_end(end + 1, b'\'', escapes))
                } else {
                    (Kind::Word, end)
                }
            }
            _ => (Kind::Punct, start + 1),
        };
        self.pos = end;
        Some(Token { kind, start, end })
    }

    /// The first position from `i` whose byte fails `keep` (or the end).
    fn skip_while(&self, i: usize, keep: impl Fn(u8) -> bool) -> usize {
        self.src[i.min(self.src.len())..]
            .iter()
            .position(|b| !keep(*b))
            .map_or(self.src.len(), |n| i + n)
    }

    /// The end of a line comment starting at `i` (after its newline).
    fn line_end(&self, i: usize) -> usize {
        self.src[i..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(self.src.len(), |n| i + n + 1)
    }

    /// The end of a block comment whose body starts at `i`. PostgreSQL's
    /// nest (`/* a /* b */ c */` is one comment), MySQL's do not.
    fn comment_end(&self, mut i: usize) -> usize {
        let nests = self.dialect == Dialect::Postgres;
        let mut depth = 1usize;
        while i < self.src.len() {
            match (self.src[i], self.at(i + 1)) {
                (b'*', Some(b'/')) => {
                    i += 2;
                    depth -= 1;
                    if depth == 0 {
                        return i;
                    }
                }
                (b'/', Some(b'*')) if nests => {
                    i += 2;
                    depth += 1;
                }
                _ => i += 1,
            }
        }
        self.src.len()
    }

    /// The end of a string whose body starts at `i`, closed by `quote`
    /// (doubled, it is one quote inside); with `escapes`, a backslash
    /// escapes the byte after it. Unterminated, it runs to the end.
    fn string_end(&self, i: usize, quote: u8, escapes: bool) -> usize {
        self.closing(i, quote, escapes).unwrap_or(self.src.len())
    }

    /// The end of a quoted text whose body starts at `i` (after its
    /// closing quote), or `None` when it is not closed.
    fn closing(&self, mut i: usize, quote: u8, escapes: bool) -> Option<usize> {
        while i < self.src.len() {
            let b = self.src[i];
            if b == b'\\' && escapes {
                i += 2;
            } else if b == quote {
                if self.at(i + 1) == Some(quote) {
                    i += 2;
                } else {
                    return Some(i + 1);
                }
            } else {
                i += 1;
            }
        }
        None
    }

    /// A quoted identifier at `start`; unterminated, it is hidden as a
    /// literal (it runs to the end of the input, over whatever follows).
    fn quoted(&self, start: usize, quote: u8) -> (Kind, usize) {
        match self.closing(start + 1, quote, false) {
            Some(end) => (Kind::Quoted, end),
            None => (Kind::Str, self.src.len()),
        }
    }

    /// The end of a dollar-quoted string at `start` (`$$...$$`,
    /// `$tag$...$tag$`), or `None` when the `$` opens none.
    fn dollar_quote(&self, start: usize) -> Option<usize> {
        let tag_end = match self.at(start + 1)? {
            b'$' => start + 2,
            b if is_word_start(b) => {
                let end = self.skip_while(start + 1, |b| is_word_byte(b) && b != b'$');
                if self.at(end) != Some(b'$') {
                    return None;
                }
                end + 1
            }
            _ => return None,
        };
        let tag = &self.src[start..tag_end];
        if tag.len() > MAX_DOLLAR_TAG {
            return Some(self.src.len());
        }
        let body = &self.src[tag_end..];
        let mut i = 0;
        while let Some(n) = body[i..].iter().position(|b| *b == b'$') {
            if body[i + n..].starts_with(tag) {
                return Some(tag_end + i + n + tag.len());
            }
            i += n + 1;
        }
        Some(self.src.len())
    }

    /// The end of a number at `start`: digits, `.`, letters (exponents,
    /// hex, and whatever a malformed number glues on), `_`, and a sign
    /// right after a decimal exponent's `e`.
    fn number_end(&self, start: usize) -> usize {
        let hex = self.src[start..].len() > 1
            && self.src[start] == b'0'
            && self.src[start + 1].eq_ignore_ascii_case(&b'x');
        let mut i = start;
        while let Some(b) = self.at(i) {
            let sign = (b == b'+' || b == b'-')
                && !hex
                && i > start
                && self.src[i - 1].eq_ignore_ascii_case(&b'e');
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || sign {
                i += 1;
            } else {
                break;
            }
        }
        i
    }
}

/// A byte that starts an unquoted identifier: a letter, `_`, or any byte
/// of a non-ASCII character (both dialects allow them).
fn is_word_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// A byte inside an unquoted identifier (`$` too: both dialects allow it).
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// The tokens of a statement, without whitespace and comments.
#[derive(Clone, Copy, Debug)]
struct Tokens<'a> {
    lexer: Lexer<'a>,
}

// === impl Tokens ===

impl Tokens<'_> {
    /// The next token that is not whitespace or a comment.
    fn next(&mut self) -> Option<Token> {
        loop {
            let t = self.lexer.next()?;
            if t.kind != Kind::Space {
                return Some(t);
            }
        }
    }

    /// A table name: one to three identifiers joined by `.`, with nothing
    /// between them; one token spanning them all.
    fn name(&mut self, query: &[u8]) -> Option<Token> {
        let first = self.next()?;
        if !matches!(first.kind, Kind::Word | Kind::Quoted) {
            return None;
        }
        let mut name = first;
        for _ in 0..2 {
            let mut peek = *self;
            let Some(dot) = peek.next() else { break };
            if dot.start != name.end || dot.text(query) != b"." {
                break;
            }
            let part = peek.next()?;
            if part.start != dot.end || !matches!(part.kind, Kind::Word | Kind::Quoted) {
                return None;
            }
            name.end = part.end;
            *self = peek;
        }
        Some(name)
    }
}

/// The trace context a [sqlcommenter](https://google.github.io/sqlcommenter/spec/)
/// comment carries: `traceparent='00-…-01'` among the `key='value'` pairs
/// of a `/* … */` comment that ends the statement (after whitespace and
/// `;`) or, as some frameworks put it, starts it. `None` without one, or
/// when its value is not a valid W3C `traceparent` (percent-encoding, which
/// the format allows, is decoded).
///
/// Applications (or their ORM) that write it tell which of their spans a
/// query belongs to: the query's span becomes a child of it, as an HTTP
/// call with a `traceparent` header would.
pub fn comment_context(query: &[u8]) -> Option<opentelemetry::trace::SpanContext> {
    let trimmed = query.trim_ascii_end();
    let trimmed = trimmed
        .strip_suffix(b";")
        .map_or(trimmed, <[u8]>::trim_ascii_end);
    let body = match trimmed.strip_suffix(b"*/") {
        Some(inner) => {
            let open = inner.windows(2).rposition(|w| w == b"/*")?;
            &inner[open + 2..]
        }
        None => {
            let inner = query.trim_ascii_start().strip_prefix(b"/*")?;
            &inner[..inner.windows(2).position(|w| w == b"*/")?]
        }
    };
    let value = body
        .split(|b| *b == b',')
        .find_map(|pair| pair.trim_ascii().strip_prefix(b"traceparent="))?;
    let value = value.strip_prefix(b"'")?.strip_suffix(b"'")?;
    // A traceparent is 55 characters (more only in a future version).
    let mut decoded = [0u8; 128];
    let mut n = 0;
    let mut i = 0;
    while i < value.len() {
        let b = match value[i] {
            b'%' => {
                let hex = std::str::from_utf8(value.get(i + 1..i + 3)?).ok()?;
                i += 2;
                u8::from_str_radix(hex, 16).ok()?
            }
            b => b,
        };
        *decoded.get_mut(n)? = b;
        n += 1;
        i += 1;
    }
    crate::propagation::remote_context(&decoded[..n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use Dialect::{Mysql, Postgres};

    fn pg(q: &str) -> String {
        sanitize(q.as_bytes(), Postgres, usize::MAX)
    }

    fn my(q: &str) -> String {
        sanitize(q.as_bytes(), Mysql, usize::MAX)
    }

    fn table(q: &str) -> Option<&str> {
        collection(q.as_bytes(), Postgres)
    }

    #[test]
    fn operation_is_the_first_keyword() {
        assert_eq!(operation(b"select * from t"), "SELECT");
        assert_eq!(operation(b"  \n\tInsert into t values (1)"), "INSERT");
        assert_eq!(operation(b"-- note\n/* x */ (SELECT 1)"), "SELECT");
        assert_eq!(operation(b"WITH x AS (SELECT 1) SELECT * FROM x"), "WITH");
        assert_eq!(operation(b"SELECT1"), OTHER);
        assert_eq!(operation(b"frobnicate"), OTHER);
        assert_eq!(operation(b""), OTHER);
        assert_eq!(operation(b"/* unterminated"), OTHER);
        assert_eq!(operation(b"begin;"), "BEGIN");
    }

    #[test]
    fn collection_of_simple_statements() {
        assert_eq!(table("SELECT * FROM orders"), Some("orders"));
        assert_eq!(
            table("select a, b from orders where id = $1"),
            Some("orders")
        );
        assert_eq!(table("SELECT count(*) FROM t GROUP BY a"), Some("t"));
        assert_eq!(table("SELECT EXTRACT(YEAR FROM ts) FROM t;"), Some("t"));
        assert_eq!(
            table("SELECT 'a from b' FROM t ORDER BY 1 LIMIT 5"),
            Some("t")
        );
        assert_eq!(table("SELECT * FROM public.orders"), Some("public.orders"));
        assert_eq!(table(r#"SELECT * FROM "My Table""#), Some(r#""My Table""#));
        assert_eq!(
            table(r#"SELECT * FROM s."a""b" WHERE x"#),
            Some(r#"s."a""b""#)
        );
        assert_eq!(table("SELECT * FROM db.s.t FOR UPDATE"), Some("db.s.t"));
        assert_eq!(table("INSERT INTO t (a, b) VALUES ($1, $2)"), Some("t"));
        assert_eq!(table("insert into t values (1) returning id"), Some("t"));
        assert_eq!(table("INSERT INTO t DEFAULT VALUES"), Some("t"));
        assert_eq!(table("INSERT INTO t"), Some("t"));
        assert_eq!(table("UPDATE t SET a = 1 WHERE b = 2"), Some("t"));
        assert_eq!(table("DELETE FROM t WHERE id = 1"), Some("t"));
        assert_eq!(table("DELETE FROM t"), Some("t"));
        assert_eq!(table("TRUNCATE TABLE t"), Some("t"));
        assert_eq!(table("TRUNCATE t CASCADE"), Some("t"));
        assert_eq!(table("COPY t FROM STDIN"), Some("t"));
        assert_eq!(
            table("COPY t (a, b) TO STDOUT WITH (FORMAT csv)"),
            Some("t")
        );
        assert_eq!(table("/* c */ SELECT * FROM t -- x"), Some("t"));
        assert_eq!(table("SELECT * FROM t;"), Some("t"));
        assert_eq!(
            collection(b"SELECT * FROM `my db`.`t` WHERE a = 'x'", Mysql),
            Some("`my db`.`t`")
        );
        assert_eq!(
            collection(b"INSERT IGNORE INTO t SET a = 1", Mysql),
            Some("t")
        );
        assert_eq!(collection(b"REPLACE INTO t VALUES (1)", Mysql), Some("t"));
        assert_eq!(table("SELECT * FROM tä"), Some("tä"));
        // Aliases, as ORMs write them.
        assert_eq!(table("SELECT * FROM a x"), Some("a"));
        assert_eq!(
            table("select u1_0.id, u1_0.name from users u1_0 where u1_0.id=$1"),
            Some("users")
        );
        assert_eq!(
            table(r#"SELECT * FROM a AS "X" WHERE "X".id = 1"#),
            Some("a")
        );
        assert_eq!(table("UPDATE t AS x SET a = 1"), Some("t"));
        assert_eq!(table("UPDATE t x SET a = 1"), Some("t"));
        assert_eq!(table("DELETE FROM t x WHERE x.a = 1"), Some("t"));
        assert_eq!(table("INSERT INTO t AS x VALUES (1)"), Some("t"));
    }

    #[test]
    fn no_collection_when_unsure() {
        for q in [
            "",
            "SELECT 1",
            "SELECT * FROM a JOIN b ON a.id = b.id",
            "SELECT * FROM a, b",
            "SELECT * FROM a x JOIN b y ON x.id = y.id",
            "SELECT * FROM a AS x, b",
            "SELECT * FROM a x y",
            "SELECT * FROM a AS (",
            "SELECT * FROM a LEFT JOIN b ON true",
            "SELECT * FROM a NATURAL JOIN b",
            "SELECT * FROM a TABLESAMPLE SYSTEM (10)",
            "DELETE FROM ONLY t WHERE a = 1",
            "COPY t x FROM STDIN",
            "TRUNCATE t x",
            "SELECT * FROM (SELECT 1) s",
            "SELECT (SELECT max(id) FROM b) FROM a",
            "SELECT * FROM a WHERE id IN (SELECT id FROM b)",
            "SELECT * FROM a UNION SELECT * FROM b",
            "SELECT * FROM a UNION ALL TABLE b",
            "SELECT * INTO b FROM a",
            "SELECT * FROM a; SELECT * FROM b",
            "SELECT * FROM a; DROP TABLE b",
            "SELECT * FROM generate_series(1, 10)",
            "SELECT * FROM ONLY a",
            "SELECT * FROM a.",
            "SELECT * FROM a.b.c.d",
            "SELECT * FROM a .b",
            "SELECT * FROM 'a'",
            "SELECT * FROM \"unterminated",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "(SELECT * FROM a)",
            "INSERT INTO t SELECT * FROM u",
            "INSERT INTO t SELECT",
            "SELECT * FROM a UNION",
            "INSERT INTO t (a) VALUES ((SELECT 1 FROM u))",
            "INSERT t VALUES (1)",
            "UPDATE t SET a = u.a FROM u WHERE t.id = u.id",
            "UPDATE a, b SET a.x = b.x",
            "UPDATE ONLY t SET a = 1",
            "DELETE FROM t USING u WHERE t.id = u.id",
            "DELETE t FROM t JOIN u",
            "TRUNCATE a, b",
            "COPY (SELECT * FROM t) TO STDOUT",
            "CREATE TABLE t (a int)",
            "DROP TABLE t",
            "SELECT * FROM a WHERE b = 1 ) (",
            "SELECT ) FROM t",
        ] {
            assert_eq!(table(q), None, "{q}");
        }
        let long = format!("SELECT * FROM {}", "t".repeat(MAX_COLLECTION + 1));
        assert_eq!(table(&long), None);
        let longest = format!("SELECT * FROM {}", "t".repeat(MAX_COLLECTION));
        assert_eq!(table(&longest).map(str::len), Some(MAX_COLLECTION));
        // Not UTF-8: no name, rather than a mangled one.
        assert_eq!(collection(b"SELECT * FROM t\xff", Postgres), None);
        // In MySQL, "..." is a string, not a name.
        assert_eq!(collection(b"SELECT * FROM \"t\"", Mysql), None);
    }

    #[test]
    fn sanitize_replaces_literals() {
        assert_eq!(
            pg("SELECT * FROM t WHERE a = 'x' AND b = 42"),
            "SELECT * FROM t WHERE a = ? AND b = ?"
        );
        assert_eq!(pg("SELECT 'it''s', E'a\\'b', 'c'"), "SELECT ?, ?, ?");
        assert_eq!(pg("SELECT 'a\\', 'secret'"), "SELECT ?, ?");
        assert_eq!(
            pg("SELECT B'0101', X'ff', N'x', e'\\\\'"),
            "SELECT ?, ?, ?, ?"
        );
        assert_eq!(pg("SELECT U&'d\\0061t'"), "SELECT U&?");
        assert_eq!(
            pg("SELECT 1.5, .5, 1e10, 1.5E-3, 0xFF, 1_000, 6e+2"),
            "SELECT ?, ?, ?, ?, ?, ?, ?"
        );
        assert_eq!(
            pg("SELECT -1, a-1, a - -2, (-3), x=-4"),
            "SELECT ?, a-?, a - ?, (?), x=?"
        );
        assert_eq!(pg("SELECT a FROM t LIMIT -1"), "SELECT a FROM t LIMIT ?");
        assert_eq!(pg("SELECT t1.c2 FROM t1"), "SELECT t1.c2 FROM t1");
        assert_eq!(
            pg("SELECT $1, $2::int FROM t WHERE a = $3"),
            "SELECT $1, $2::int FROM t WHERE a = $3"
        );
        assert_eq!(pg("SELECT TRUE, false, NULL"), "SELECT TRUE, false, NULL");
        assert_eq!(
            pg(r#"SELECT "a'b", "x""y" FROM "T""#),
            r#"SELECT "a'b", "x""y" FROM "T""#
        );
        assert_eq!(
            pg("SELECT $$it's$$, $f$ a $$ b $f$, $a$x$b$y$a$"),
            "SELECT ?, ?, ?"
        );
        assert_eq!(pg("SELECT a$b$ FROM t"), "SELECT a$b$ FROM t");
        assert_eq!(pg("SELECT 1 -- secret 2\n, 3"), "SELECT ? , ?");
        assert_eq!(pg("SELECT /* 'secret' /* nested */ 9 */ 1"), "SELECT ?");
        assert_eq!(pg("  SELECT\n\t1  \n"), "SELECT ?");
        assert_eq!(pg("SELECT a/**/-1"), "SELECT a -?");
        assert_eq!(
            pg("SELECT '{\"a\": 1}'::jsonb ? 'a'"),
            "SELECT ?::jsonb ? ?"
        );
        assert_eq!(
            pg("INSERT INTO t VALUES (1, 'a'), (2, 'b')"),
            "INSERT INTO t VALUES (?, ?), (?, ?)"
        );
        assert_eq!(pg("SELECT ARRAY[1,2][1]"), "SELECT ARRAY[?,?][?]");
    }

    #[test]
    fn sanitize_mysql() {
        assert_eq!(
            my(r#"SELECT * FROM `t` WHERE a = "x" AND b = 'y\'z' AND c = ?"#),
            "SELECT * FROM `t` WHERE a = ? AND b = ? AND c = ?"
        );
        assert_eq!(my(r#"SELECT "a\"b", 'c'"#), "SELECT ?, ?");
        assert_eq!(my("SELECT 1 # secret 2\n"), "SELECT ?");
        assert_eq!(my("SELECT 1 -- secret\n"), "SELECT ?");
        assert_eq!(my("SELECT 5--1"), "SELECT ?-?");
        assert_eq!(my("SELECT 5--/* c */1"), "SELECT ?--?");
        assert_eq!(my("SELECT 1 /* a /* b */ 2"), "SELECT ? ?");
        assert_eq!(
            my("SELECT x'ff', b'01', _utf8mb4'z'"),
            "SELECT ?, ?, _utf8mb4?"
        );
        assert_eq!(my("SELECT `a``b` FROM t"), "SELECT `a``b` FROM t");
        // No `$1` placeholders in MySQL: a `$` and a number.
        assert_eq!(my("SELECT $1"), "SELECT $?");
    }

    #[test]
    fn sanitize_hides_what_it_cannot_end() {
        assert_eq!(pg("SELECT 'unterminated secret"), "SELECT ?");
        assert_eq!(pg("SELECT E'a\\' secret"), "SELECT ?");
        assert_eq!(pg("SELECT \"unterminated 'secret'"), "SELECT ?");
        assert_eq!(pg("SELECT $x$ secret"), "SELECT ?");
        assert_eq!(pg("SELECT 1 /* unterminated 'secret'"), "SELECT ?");
        assert_eq!(pg("SELECT 1 /* /* */ 'secret' "), "SELECT ?");
        assert_eq!(my("SELECT 'a\\"), "SELECT ?");
        assert_eq!(my("SELECT `unterminated 'secret'"), "SELECT ?");
        let tag = "a".repeat(MAX_DOLLAR_TAG);
        assert_eq!(pg(&format!("SELECT ${tag}$ secret ${tag}$, 1")), "SELECT ?");
        assert_eq!(pg("'"), "?");
        assert_eq!(pg("$"), "$");
        assert_eq!(pg("-"), "-");
        assert_eq!(pg("E"), "E");
        assert_eq!(pg(""), "");
    }

    #[test]
    fn sanitize_cuts_at_a_character_boundary() {
        let q = "SELECT 'x' FROM tääää";
        let whole = pg(q);
        assert_eq!(whole, "SELECT ? FROM tääää");
        for max in 0..whole.len() + 2 {
            let cut = sanitize(q.as_bytes(), Postgres, max);
            assert!(cut.len() <= max, "{max}");
            assert!(whole.starts_with(&cut));
            assert!(cut.len() + 1 >= max.min(whole.len()), "{max}: {cut}");
        }
        // A huge statement is read only as far as the output needs.
        let huge = format!("SELECT {} FROM t", "a, ".repeat(1_000_000));
        let cut = sanitize(huge.as_bytes(), Postgres, 2048);
        assert_eq!(cut.len(), 2048);
        assert!(cut.capacity() <= 2048 + 4);
        assert!(pg(&huge).ends_with("a, a, FROM t"));
    }

    #[test]
    fn sanitize_never_panics_and_is_stable() {
        let cases: &[&[u8]] = &[
            b"\xff\xfe SELECT '\xff' \xc3",
            b"SELECT \xe2\x82",
            b"$",
            b"$$",
            b"$a",
            b"$1$",
            b"E",
            b"E'",
            b"E'\\",
            b"'\\",
            b"\"",
            b"\"\"",
            b"`",
            b"/*",
            b"/*/",
            b"--",
            b"-",
            b"-.",
            b"-.5",
            b"1e",
            b"1e-",
            b"0x",
            b".",
            b"#",
            b"/* /* */",
            b"a-- b\n-1",
            b"- -1",
            b"x = -(-1)",
            b"-/**/-1",
            b"1-- \n-1",
            // Found by the fuzz target: MySQL's `--` before the end, and
            // before a comment.
            b"SELECT a FROM t----------- x",
            b"SELECT 1--/**/x",
            b"SELECT 1--",
            b"x---/**/-\x0e",
        ];
        for q in cases {
            for dialect in [Postgres, Mysql] {
                let once = sanitize(q, dialect, usize::MAX);
                assert_eq!(
                    sanitize(once.as_bytes(), dialect, usize::MAX),
                    once,
                    "{q:?}"
                );
                let _ = collection(q, dialect);
                let _ = operation(q);
                for max in 0..q.len() + 1 {
                    assert!(sanitize(q, dialect, max).len() <= max);
                }
            }
        }
        assert_eq!(pg("SELECT '\u{e9}'"), "SELECT ?");
        assert_eq!(
            sanitize(b"SELECT \xff FROM t", Postgres, usize::MAX),
            "SELECT \u{fffd} FROM t"
        );
    }

    #[test]
    fn sanitize_is_idempotent_on_realistic_queries() {
        for q in [
            "SELECT * FROM t WHERE a = 'x' AND b = -4.5e3",
            "UPDATE t SET a = a - 1, b = $1 WHERE c IN (1, 2, 3)",
            "INSERT INTO t VALUES (E'\\n', $$x$$, -1)",
            "SELECT a -1, a--1\n FROM t",
            "SELECT $1, \"quoted id\" FROM t /* c */ WHERE x ~ '^a'",
        ] {
            let once = pg(q);
            assert_eq!(pg(&once), once, "{q}");
            let once = my(q);
            assert_eq!(my(&once), once, "{q}");
        }
    }

    #[test]
    fn a_sqlcommenter_comment_gives_its_context() {
        use opentelemetry::trace::{SpanId, TraceId};
        const TP: &str = "00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01";
        let ids = |q: &str| {
            comment_context(q.as_bytes()).map(|c| (c.trace_id(), c.span_id(), c.is_sampled()))
        };
        let want = Some((
            TraceId::from(0x5bd66ef5095369c7b0d1f8f4bd33716a_u128),
            SpanId::from(0xc532cb4098ac3dd2_u64),
            true,
        ));
        for q in [
            // As the spec's example writes it: sorted keys, encoded values.
            &format!(
                "SELECT * FROM FOO /*action='%2Fparam*d',controller='index',framework='spring',traceparent='{TP}',tracestate='congo%3Dt61rcWkgMzE%2Crojo%3D00f067aa0ba902b7'*/"
            ),
            &format!("UPDATE t SET a = 1 /*traceparent='{TP}'*/;\n"),
            &format!("/*traceparent='{TP}',application='shop'*/ SELECT 1"),
            &format!("SELECT 1 /*traceparent='{}'*/", TP.replace('-', "%2D")),
        ] {
            assert_eq!(ids(q), want, "{q}");
        }
        let unsampled = TP.replace("-01", "-00");
        assert_eq!(
            ids(&format!("SELECT 1 /*traceparent='{unsampled}'*/")).map(|i| i.2),
            Some(false)
        );
        for q in [
            "SELECT 1",
            "SELECT 1 /* a comment */",
            // Not the statement's last or first comment.
            &format!("SELECT /*traceparent='{TP}'*/ 1"),
            // Unquoted, malformed, all-zero ids.
            &format!("SELECT 1 /*traceparent={TP}*/"),
            "SELECT 1 /*traceparent='00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2'*/",
            "SELECT 1 /*traceparent='00-00000000000000000000000000000000-c532cb4098ac3dd2-01'*/",
            "SELECT 1 /*traceparent='%zz'*/",
            &format!("SELECT 1 /*traceparent='{}'*/", "0".repeat(200)),
            "*/",
            "/*",
        ] {
            assert_eq!(ids(q), None, "{q}");
        }
    }
}
