//! A discard ClickHouse: an HTTP endpoint that takes INSERTs as fast as they arrive,
//! reads and counts their bytes and throws them away — an infinitely fast ClickHouse.
//!
//! It also answers what a collector asks before writing, truthfully: `CREATE`
//! statements succeed and are remembered; the schema probe (`SELECT name, type FROM
//! system.columns WHERE database = … AND table = …`) is answered for the tables that
//! were created, with the columns our collector's own schema module declares (as
//! `system.columns` reports them, nested columns flattened). A query it does not
//! understand gets a ClickHouse error, never a made-up result.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use collector::schema::{ALL_ROLLUPS, ALL_TABLES};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// What the sink received for one table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TableStats {
    pub inserts: u64,
    /// Body bytes as they came over the wire (compressed, if the client compressed).
    pub wire_bytes: u64,
    /// Uncompressed bytes: from the native block headers under `decompress=1`, else
    /// the wire bytes.
    pub raw_bytes: u64,
}

#[derive(Default)]
pub struct Sink {
    state: Mutex<SinkState>,
    /// Answer INSERTs as an overloaded ClickHouse does (Code 252, too many parts).
    refuse_inserts: AtomicBool,
    log_queries: bool,
}

#[derive(Default)]
struct SinkState {
    created: BTreeSet<(String, String)>,
    /// Materialized views created here (database, name).
    views: BTreeSet<(String, String)>,
    tables: BTreeMap<String, TableStats>,
    refused_inserts: u64,
}

impl Sink {
    pub fn new(log_queries: bool) -> Arc<Sink> {
        Arc::new(Sink {
            log_queries,
            ..Default::default()
        })
    }

    pub fn set_refuse_inserts(&self, on: bool) {
        self.refuse_inserts.store(on, Ordering::Relaxed);
    }

    pub fn stats(&self) -> BTreeMap<String, TableStats> {
        self.state.lock().expect("not poisoned").tables.clone()
    }

    pub fn refused_inserts(&self) -> u64 {
        self.state.lock().expect("not poisoned").refused_inserts
    }

    /// Serves until the task is aborted.
    pub async fn serve(self: Arc<Sink>, listener: TcpListener) -> std::io::Result<()> {
        let app = Router::new().fallback(handle).with_state(self);
        axum::serve(listener, app).await
    }
}

async fn handle(
    State(sink): State<Arc<Sink>>,
    Query(params): Query<HashMap<String, String>>,
    method: http::Method,
    uri: http::Uri,
    body: Body,
) -> Response {
    if method == http::Method::GET && uri.path() == "/ping" {
        return "Ok.\n".into_response();
    }
    let query = params.get("query").map(String::as_str).unwrap_or("");
    if starts_with_keyword(query, "INSERT") {
        let native = params.get("decompress").is_some_and(|v| v == "1");
        return insert(&sink, query, native, body).await;
    }
    // Otherwise the statement is the `query` parameter and/or the body.
    let mut sql = query.to_string();
    match axum::body::to_bytes(body, 1 << 20).await {
        Ok(b) if !b.is_empty() => {
            if !sql.is_empty() {
                sql.push('\n');
            }
            sql.push_str(&String::from_utf8_lossy(&b));
        }
        Ok(_) => {}
        Err(e) => return error(400, 33, &format!("cannot read the query: {e}")),
    }
    if sink.log_queries {
        eprintln!("discard-sink: {}", sql.trim());
    }
    let format = params
        .get("default_format")
        .map(String::as_str)
        .unwrap_or("TabSeparated");
    statement(&sink, sql.trim(), format)
}

async fn insert(sink: &Sink, query: &str, native: bool, body: Body) -> Response {
    let table = insert_table(query).unwrap_or_default();
    let mut stream = body.into_data_stream();
    let mut stats = TableStats::default();
    let mut blocks = BlockSizes::default();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return error(400, 33, &format!("cannot read the INSERT body: {e}")),
        };
        stats.wire_bytes += chunk.len() as u64;
        if native {
            blocks.feed(&chunk);
        }
    }
    stats.raw_bytes = if native { blocks.raw } else { stats.wire_bytes };
    stats.inserts = 1;
    let mut state = sink.state.lock().expect("not poisoned");
    if sink.refuse_inserts.load(Ordering::Relaxed) {
        state.refused_inserts += 1;
        return error(
            500,
            252,
            "Too many parts (the discard sink was told to behave as an overloaded server)",
        );
    }
    let t = state.tables.entry(table).or_default();
    t.inserts += 1;
    t.wire_bytes += stats.wire_bytes;
    t.raw_bytes += stats.raw_bytes;
    StatusCode::OK.into_response()
}

fn statement(sink: &Sink, sql: &str, format: &str) -> Response {
    if starts_with_keyword(sql, "CREATE") {
        if let Some((db, table)) = created_table(sql) {
            sink.state
                .lock()
                .expect("not poisoned")
                .created
                .insert((db, table));
        } else if let Some((db, view)) = created_view(sql) {
            sink.state
                .lock()
                .expect("not poisoned")
                .views
                .insert((db, view));
        }
        return StatusCode::OK.into_response();
    }
    // The views that exist, or (the RED migration's look for staging tables) the
    // tables whose name starts with a prefix: only what was created here.
    let views = sql.contains("'MaterializedView'");
    let prefix = literal_after(sql, "startsWith(name, ");
    if starts_with_keyword(sql, "SELECT")
        && sql.contains("system.tables")
        && (views || prefix.is_some())
    {
        let Some(db) = literal_after(sql, "database = ") else {
            return error(
                501,
                48,
                "the discard sink answers system.tables only by database",
            );
        };
        let state = sink.state.lock().expect("not poisoned");
        let names: Vec<String> = if views { &state.views } else { &state.created }
            .iter()
            .filter(|(d, name)| *d == db && prefix.as_ref().is_none_or(|p| name.starts_with(p)))
            .map(|(_, name)| name.clone())
            .collect();
        drop(state);
        let mut out = Vec::new();
        if explicit_format(sql).unwrap_or(format) == "RowBinaryWithNamesAndTypes" {
            varint(1, &mut out);
            string("name", &mut out);
            string("String", &mut out);
        }
        for name in &names {
            string(name, &mut out);
        }
        return binary(out);
    }
    // The deduplication-window probe: the sink keeps no blocks, so it lists no
    // tables and there is no window to report on.
    if starts_with_keyword(sql, "SELECT")
        && sql.contains("system.tables")
        && sql.contains("create_table_query")
    {
        let mut out = Vec::new();
        if explicit_format(sql).unwrap_or(format) == "RowBinaryWithNamesAndTypes" {
            varint(3, &mut out);
            for name in ["name", "engine", "create_table_query"] {
                string(name, &mut out);
            }
            for _ in 0..3 {
                string("String", &mut out);
            }
        }
        return binary(out);
    }
    if starts_with_keyword(sql, "SELECT") && sql.contains("system.columns") {
        let (Some(db), Some(table)) = (
            literal_after(sql, "database = "),
            literal_after(sql, "table = "),
        ) else {
            return error(
                501,
                48,
                "the discard sink answers system.columns only by database and table",
            );
        };
        let format = explicit_format(sql).unwrap_or(format);
        let created = sink
            .state
            .lock()
            .expect("not poisoned")
            .created
            .contains(&(db.clone(), table.clone()));
        // Only a table created here exists here; its columns are the declaration.
        let rollups: Vec<(&str, Vec<collector::schema::Column>)> = ALL_ROLLUPS
            .iter()
            .map(|r| (r.name, r.table_columns()))
            .collect();
        let columns: Vec<(&str, &str)> = ALL_TABLES
            .iter()
            .map(|t| (t.name, t.columns))
            .chain(rollups.iter().map(|(n, c)| (*n, c.as_slice())))
            .filter(|(name, _)| created && *name == table)
            .flat_map(|(_, cols)| cols.iter().map(|c| (c.name, c.ty)))
            .collect();
        return match format {
            "RowBinaryWithNamesAndTypes" => binary(columns_result(&columns, true)),
            "RowBinary" => binary(columns_result(&columns, false)),
            other => error(
                501,
                48,
                &format!("the discard sink does not write format {other}"),
            ),
        };
    }
    eprintln!("discard-sink: unsupported query: {}", sql);
    error(
        501,
        48,
        "the discard sink supports INSERT, CREATE and the system.columns probe only",
    )
}

/// `name String, type String` rows, with the RowBinaryWithNamesAndTypes header if asked.
fn columns_result(columns: &[(&str, &str)], header: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if header {
        varint(2, &mut out);
        for s in ["name", "type", "String", "String"] {
            string(s, &mut out);
        }
    }
    for (name, ty) in columns {
        string(name, &mut out);
        string(ty, &mut out);
    }
    out
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn string(s: &str, out: &mut Vec<u8>) {
    varint(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

fn binary(data: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/octet-stream")],
        data,
    )
        .into_response()
}

fn error(status: u16, code: u32, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [("x-clickhouse-exception-code", code.to_string())],
        format!("Code: {code}. DB::Exception: {message}\n"),
    )
        .into_response()
}

fn starts_with_keyword(sql: &str, keyword: &str) -> bool {
    sql.trim_start()
        .get(..keyword.len())
        .is_some_and(|w| w.eq_ignore_ascii_case(keyword))
}

/// `otel_traces` from `INSERT INTO `otel`.`otel_traces` (…) FORMAT RowBinary`.
fn insert_table(query: &str) -> Option<String> {
    let rest = query.trim_start().get("INSERT INTO".len()..)?.trim_start();
    let name: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '(')
        .collect();
    let last = name.rsplit('.').next()?;
    Some(last.trim_matches(|c| c == '`' || c == '"').to_string())
}

/// (database, table) of `CREATE TABLE [IF NOT EXISTS] db.table …`; None for others.
fn created_table(sql: &str) -> Option<(String, String)> {
    created_object(sql, &["TABLE"])
}

/// (database, view) of `CREATE MATERIALIZED VIEW [IF NOT EXISTS] db.view …`.
fn created_view(sql: &str) -> Option<(String, String)> {
    created_object(sql, &["MATERIALIZED", "VIEW"])
}

fn created_object(sql: &str, kind: &[&str]) -> Option<(String, String)> {
    let mut words = sql.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("CREATE") {
        return None;
    }
    for k in kind {
        if !words.next()?.eq_ignore_ascii_case(k) {
            return None;
        }
    }
    let mut name = words.next()?;
    if name.eq_ignore_ascii_case("IF") {
        words.next(); // NOT
        words.next(); // EXISTS
        name = words.next()?;
    }
    let unquote = |s: &str| s.trim_matches(|c| c == '`' || c == '"').to_string();
    let (db, table) = name.split_once('.')?;
    Some((unquote(db), unquote(table)))
}

/// The string literal after `key` (`table = 'otel_traces'` → `otel_traces`).
fn literal_after(sql: &str, key: &str) -> Option<String> {
    let rest = &sql[sql.find(key)? + key.len()..];
    let rest = rest.strip_prefix('\'')?;
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '\'' => return Some(out),
            c => out.push(c),
        }
    }
    None
}

fn explicit_format(sql: &str) -> Option<&str> {
    let i = sql.rfind(" FORMAT ")?;
    sql[i + 8..].split_whitespace().next()
}

/// Sums the uncompressed sizes of ClickHouse native compressed blocks as they stream
/// by: each block is a 16-byte checksum, a 9-byte header (method, compressed size
/// including the header, raw size) and the payload.
#[derive(Default)]
struct BlockSizes {
    header: [u8; 25],
    have: usize,
    skip: usize,
    raw: u64,
}

impl BlockSizes {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let n = (25 - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 25 {
                let le = |i: usize| {
                    u32::from_le_bytes(self.header[i..i + 4].try_into().expect("4 bytes"))
                };
                let compressed = le(17) as usize;
                self.raw += u64::from(le(21));
                self.skip = compressed.saturating_sub(9);
                self.have = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_collector_sends() {
        assert_eq!(
            insert_table("INSERT INTO `otel`.`otel_traces` (`Timestamp`) FORMAT RowBinary"),
            Some("otel_traces".into())
        );
        assert_eq!(
            insert_table("INSERT INTO otel.otel_traces FORMAT RowBinary"),
            Some("otel_traces".into())
        );
        assert_eq!(
            created_table("CREATE TABLE IF NOT EXISTS `otel`.`otel_logs` (\n `a` String)"),
            Some(("otel".into(), "otel_logs".into()))
        );
        assert_eq!(created_table("CREATE DATABASE IF NOT EXISTS `otel`"), None);
        let probe = "SELECT name, type FROM system.columns WHERE database = 'otel' AND table = 'otel_traces'";
        assert_eq!(literal_after(probe, "database = "), Some("otel".into()));
        assert_eq!(literal_after(probe, "table = "), Some("otel_traces".into()));
    }

    #[test]
    fn block_sizes_span_chunk_boundaries() {
        let mut body = Vec::new();
        for (payload, raw) in [(10usize, 100u32), (3, 7)] {
            body.extend_from_slice(&[0u8; 16]);
            body.push(0x82);
            body.extend_from_slice(&(9 + payload as u32).to_le_bytes());
            body.extend_from_slice(&raw.to_le_bytes());
            body.extend(std::iter::repeat_n(0xAA, payload));
        }
        for split in 1..body.len() {
            let mut b = BlockSizes::default();
            b.feed(&body[..split]);
            b.feed(&body[split..]);
            assert_eq!(b.raw, 107, "split at {split}");
        }
    }
}
