//! Table schemas from `information_schema`, and which tables are captured.

use std::collections::BTreeMap;
use std::sync::Arc;

use mysql_async::prelude::Queryable;

use super::value::Column;

/// Databases never captured.
pub const SYSTEM_DATABASES: [&str; 4] = ["mysql", "information_schema", "performance_schema", "sys"];

/// A captured table's columns, in ordinal order, and its primary key's column indexes.
#[derive(Clone, Debug)]
pub struct TableSchema {
    pub database: String,
    pub table: String,
    pub columns: Vec<Column>,
    pub key: Vec<usize>,
    /// `"name":` per column, JSON-escaped once for the envelope writer.
    pub field_prefixes: Vec<Vec<u8>>,
}

impl TableSchema {
    /// A table's schema from its columns in ordinal order.
    pub fn new(database: &str, table: &str, columns: Vec<Column>) -> TableSchema {
        let key = columns.iter().enumerate().filter(|(_, c)| c.primary_key).map(|(i, _)| i).collect();
        let field_prefixes = columns
            .iter()
            .map(|column| {
                let mut prefix = serde_json::to_vec(&column.name).expect("a string serialises");
                prefix.push(b':');
                prefix
            })
            .collect();
        TableSchema { database: database.into(), table: table.into(), columns, key, field_prefixes }
    }
}

/// Which tables the source captures: include/exclude regexes over `database.table`.
#[derive(Clone, Debug)]
pub struct TableFilter {
    include: Vec<regex::Regex>,
    exclude: Vec<regex::Regex>,
}

impl TableFilter {
    /// Compiles the patterns (anchored: a pattern matches the whole `database.table`).
    pub fn new(include: &[String], exclude: &[String]) -> Result<TableFilter, (&'static str, String)> {
        let compile = |field: &'static str, patterns: &[String]| {
            patterns
                .iter()
                .map(|pattern| {
                    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| (field, format!("{pattern:?}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(TableFilter { include: compile("include", include)?, exclude: compile("exclude", exclude)? })
    }

    pub fn captures(&self, database: &str, table: &str) -> bool {
        if SYSTEM_DATABASES.contains(&database) {
            return false;
        }
        let name = format!("{database}.{table}");
        (self.include.is_empty() || self.include.iter().any(|r| r.is_match(&name)))
            && !self.exclude.iter().any(|r| r.is_match(&name))
    }
}

/// Schemas by `(database, table)`, loaded on first use and dropped after DDL.
#[derive(Default)]
pub struct SchemaCache {
    tables: BTreeMap<(String, String), Arc<TableSchema>>,
}

impl SchemaCache {
    /// The table's schema (`None` when it does not exist now).
    pub async fn get(
        &mut self,
        conn: &mut mysql_async::Conn,
        database: &str,
        table: &str,
    ) -> Result<Option<Arc<TableSchema>>, mysql_async::Error> {
        let key = (database.to_string(), table.to_string());
        if let Some(schema) = self.tables.get(&key) {
            return Ok(Some(schema.clone()));
        }
        let rows: Vec<(String, String, String, String, Option<String>)> = conn
            .exec(
                "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, COLUMN_KEY, CHARACTER_SET_NAME FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (database, table),
            )
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let columns: Vec<Column> = rows
            .iter()
            .map(|(name, data_type, column_type, column_key, charset)| {
                Column::from_information_schema(name, data_type, column_type, column_key, charset.as_deref())
            })
            .collect();
        let schema = Arc::new(TableSchema::new(database, table, columns));
        self.tables.insert(key_of(database, table), schema.clone());
        Ok(Some(schema))
    }
}

fn key_of(database: &str, table: &str) -> (String, String) {
    (database.to_string(), table.to_string())
}

/// The captured base tables, in name order.
pub async fn captured_tables(
    conn: &mut mysql_async::Conn,
    filter: &TableFilter,
) -> Result<Vec<(String, String)>, mysql_async::Error> {
    let tables: Vec<(String, String)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE' \
             ORDER BY TABLE_SCHEMA, TABLE_NAME",
        )
        .await?;
    Ok(tables.into_iter().filter(|(db, table)| filter.captures(db, table)).collect())
}
