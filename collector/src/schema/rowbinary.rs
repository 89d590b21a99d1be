//! ClickHouse RowBinary encoding of the Rust values our rows hold.
//!
//! Each Rust type also says which ClickHouse column types it can fill, so a unit test
//! proves that every row struct matches the column types of its table definition.

/// Attribute maps: written sorted by key, as the OpenTelemetry exporter does.
pub type Map = Vec<(String, String)>;

pub trait RowBinary {
    fn write(&self, out: &mut Vec<u8>);
    /// Whether this value may be written into a column of ClickHouse type `ty`.
    fn fits(ty: &str) -> bool;
}

pub fn write_varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

pub fn write_str(s: &str, out: &mut Vec<u8>) {
    write_varint(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

macro_rules! fixed {
    ($($t:ty => [$($ch:literal),+]),* $(,)?) => {$(
        impl RowBinary for $t {
            #[inline]
            fn write(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn fits(ty: &str) -> bool {
                [$($ch),+].iter().any(|c| ty == *c || (c.ends_with('(') && ty.starts_with(c)))
            }
        }
    )*};
}

fixed! {
    u8 => ["UInt8"],
    u32 => ["UInt32", "DateTime"],
    i32 => ["Int32"],
    u64 => ["UInt64"],
    // DateTime64(9) is nanoseconds since the epoch in an Int64.
    i64 => ["Int64", "DateTime64("],
    f64 => ["Float64"],
}

impl RowBinary for bool {
    fn write(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
    fn fits(ty: &str) -> bool {
        ty == "Bool"
    }
}

impl RowBinary for String {
    #[inline]
    fn write(&self, out: &mut Vec<u8>) {
        write_str(self, out);
    }
    fn fits(ty: &str) -> bool {
        ty == "String" || ty == "LowCardinality(String)"
    }
}

impl RowBinary for (String, String) {
    fn write(&self, out: &mut Vec<u8>) {
        write_str(&self.0, out);
        write_str(&self.1, out);
    }
    fn fits(_: &str) -> bool {
        false
    }
}

impl<T: RowBinary> RowBinary for Vec<T> {
    fn write(&self, out: &mut Vec<u8>) {
        write_varint(self.len() as u64, out);
        for item in self {
            item.write(out);
        }
    }
    fn fits(ty: &str) -> bool {
        if let Some(inner) = ty.strip_prefix("Array(").and_then(|t| t.strip_suffix(')')) {
            return T::fits(inner);
        }
        // Map(K, V) has the same RowBinary layout as an array of (K, V) pairs.
        std::any::type_name::<T>() == std::any::type_name::<(String, String)>()
            && matches!(
                ty,
                "Map(LowCardinality(String), String)" | "Map(String, String)"
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_matches_leb128() {
        let mut out = Vec::new();
        write_varint(300, &mut out);
        assert_eq!(out, [0xAC, 0x02]);
    }

    #[test]
    fn types_fit_their_columns() {
        assert!(i64::fits("DateTime64(9)"));
        assert!(u32::fits("DateTime"));
        assert!(!u32::fits("DateTime64(9)"));
        assert!(Map::fits("Map(LowCardinality(String), String)"));
        assert!(Vec::<Map>::fits(
            "Array(Map(LowCardinality(String), String))"
        ));
        assert!(!Vec::<String>::fits("Map(String, String)"));
        assert!(Vec::<u64>::fits("Array(UInt64)"));
        assert!(String::fits("LowCardinality(String)"));
    }
}
