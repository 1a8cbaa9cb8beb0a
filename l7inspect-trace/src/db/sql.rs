//! What the SQL parsers (PostgreSQL, MySQL) share: a statement's
//! operation (its first keyword), and, later in this module, its table when
//! certain and its sanitized text.

/// The keywords a statement may start with that get an operation name of
/// their own; any other first word is `_OTHER`, so that the operation stays
/// a bounded metric label whatever the client sends.
const KEYWORDS: &[&str] = &[
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
pub(crate) const OTHER: &str = "_OTHER";

/// `db.operation.name` of a statement: its first keyword, upper case
/// (`select * from t` → `SELECT`), after whitespace, comments (`-- ...`,
/// `/* ... */`) and opening parentheses; `_OTHER` for anything else.
pub(crate) fn operation(query: &[u8]) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
