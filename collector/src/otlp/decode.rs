//! Request bodies → OTLP messages: content type, gzip, size limits, protobuf or JSON.

use std::io::Read;

use bytes::Bytes;

use super::IngestError;

/// The body encoding of an OTLP/HTTP request; the response uses the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    pub fn from_content_type(content_type: Option<&str>) -> Result<Encoding, IngestError> {
        let essence = content_type
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
            "application/json" => Ok(Encoding::Json),
            "" => Err(IngestError::UnsupportedMediaType(
                "missing Content-Type: use application/x-protobuf or application/json".into(),
            )),
            other => Err(IngestError::UnsupportedMediaType(format!(
                "unsupported Content-Type {other:?}: use application/x-protobuf or application/json"
            ))),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// Undoes `Content-Encoding`, refusing output past `limit` bytes (gzip bombs).
pub fn decompress(
    body: Bytes,
    content_encoding: Option<&str>,
    limit: usize,
) -> Result<Bytes, IngestError> {
    match content_encoding
        .map(|e| e.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => Ok(body),
        Some("gzip") => {
            let mut out = Vec::with_capacity((body.len() * 4).min(limit));
            let mut reader = flate2::read::GzDecoder::new(&body[..]).take(limit as u64 + 1);
            reader
                .read_to_end(&mut out)
                .map_err(|e| IngestError::Malformed(format!("invalid gzip body: {e}")))?;
            if out.len() > limit {
                return Err(too_large("decompressed body", limit));
            }
            Ok(out.into())
        }
        Some(other) => Err(IngestError::UnsupportedMediaType(format!(
            "unsupported Content-Encoding {other:?}: use gzip or none"
        ))),
    }
}

pub fn too_large(what: &str, limit: usize) -> IngestError {
    IngestError::TooLarge(format!("{what} exceeds the limit of {limit} bytes"))
}

pub fn decode<M>(body: &[u8], encoding: Encoding) -> Result<M, IngestError>
where
    M: prost::Message + Default + serde::de::DeserializeOwned,
{
    match encoding {
        Encoding::Protobuf => M::decode(body)
            .map_err(|e| IngestError::Malformed(format!("invalid protobuf message: {e}"))),
        Encoding::Json => serde_json::from_slice(body)
            .map_err(|e| IngestError::Malformed(format!("invalid OTLP JSON: {e}"))),
    }
}

pub fn encode<M: prost::Message + serde::Serialize>(message: &M, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Protobuf => message.encode_to_vec(),
        // Serialising generated OTLP types to a Vec cannot fail.
        Encoding::Json => serde_json::to_vec(message).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap().into()
    }

    #[test]
    fn content_types() {
        assert_eq!(
            Encoding::from_content_type(Some("application/json; charset=utf-8")).unwrap(),
            Encoding::Json
        );
        assert_eq!(
            Encoding::from_content_type(Some("application/x-protobuf")).unwrap(),
            Encoding::Protobuf
        );
        let e = Encoding::from_content_type(Some("text/plain")).unwrap_err();
        assert_eq!(e.http_status(), 415);
        assert!(e.to_string().contains("text/plain"));
    }

    #[test]
    fn gzip_is_limited_after_inflation() {
        let bomb = gzip(&vec![0u8; 1 << 20]);
        assert!(bomb.len() < 10_000);
        let e = decompress(bomb.clone(), Some("gzip"), 1 << 19).unwrap_err();
        assert_eq!(e.http_status(), 413);
        assert_eq!(
            decompress(bomb, Some("gzip"), 1 << 20).unwrap().len(),
            1 << 20
        );
        let e = decompress(Bytes::from_static(b"not gzip"), Some("gzip"), 100).unwrap_err();
        assert_eq!(e.http_status(), 400);
        let e = decompress(Bytes::new(), Some("br"), 100).unwrap_err();
        assert_eq!(e.http_status(), 415);
    }
}
