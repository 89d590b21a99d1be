//! The upstream exporter's DDL (checked in under
//! `collector/tests/fixtures/upstream/`, with the upstream commits it matches), as
//! statements a test or benchmark runs.

/// What the current upstream exporter creates; `{db}` stands for the database.
pub const CURRENT: &str = include_str!("../../collector/tests/fixtures/upstream/current.sql");
/// An earlier release: DateTime64(9) metric times, `MetricName String`, logs with
/// `TimestampTime`.
pub const OLDER: &str = include_str!("../../collector/tests/fixtures/upstream/older_e3bd2d1.sql");

/// The fixture's statements for `database` (which must exist), comments dropped.
pub fn statements(fixture: &str, database: &str) -> Vec<String> {
    let sql: String = fixture
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("{db}", &format!("`{database}`"));
    sql.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_name_the_database_and_drop_comments() {
        let s = statements(CURRENT, "up");
        assert!(s
            .iter()
            .any(|s| s.starts_with("CREATE TABLE IF NOT EXISTS `up`.otel_traces (")));
        assert!(s
            .iter()
            .all(|s| !s.contains("{db}") && !s.starts_with("--")));
        assert!(statements(OLDER, "old").len() > 5);
    }
}
