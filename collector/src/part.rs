//! The unit of data that flows from the receivers to the exporters.

use crate::schema::TableId;

/// The rows one request produced for one table, already encoded as RowBinary in the
/// table's insert column order. Encoding happens once, at the receiver; everything
/// downstream moves bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePart {
    pub table: TableId,
    pub rows: u32,
    pub data: Vec<u8>,
}
