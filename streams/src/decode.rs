//! Messages → Arrow rows of a table's declared schema (JSON, through arrow-json). A bad
//! message (not JSON, not one object, a value of the wrong type) is set aside with its reason
//! instead of failing the batch; the rest decode together. Batches of flat objects over
//! scalar columns take `flat`, a faster reader that gives the same result.

mod flat;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::Result;

/// A message that did not decode, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRow {
    /// Index of the message in the decoded slice.
    pub index: usize,
    pub reason: String,
}

/// Decoded rows (one per good body, in order) and the bad ones. `kept[i]` is the index of
/// the body row `i` came from.
#[derive(Debug)]
pub struct Decoded {
    pub batch: RecordBatch,
    pub kept: Vec<usize>,
    pub bad: Vec<BadRow>,
}

/// Decodes JSON object bodies into one batch of `schema`; fields not in the schema are
/// ignored, missing ones are null.
pub fn decode_json(schema: &SchemaRef, bodies: &[&[u8]]) -> Result<Decoded> {
    if let Some(batch) = flat::decode(schema, bodies) {
        return Ok(Decoded { batch, kept: (0..bodies.len()).collect(), bad: Vec::new() });
    }
    // arrow-json on every body at once. Every body opening an object and as many rows as
    // bodies means one row per body (a body with two values cannot hide behind an empty one).
    let all_objects = bodies.iter().all(|body| body.trim_ascii_start().starts_with(b"{"));
    if all_objects
        && let Ok(batch) = decode_all(schema, bodies)
        && batch.num_rows() == bodies.len()
    {
        return Ok(Decoded { batch, kept: (0..bodies.len()).collect(), bad: Vec::new() });
    }
    // Something is bad: find which, one body at a time, then decode the good ones together.
    let mut good = Vec::with_capacity(bodies.len());
    let mut kept = Vec::with_capacity(bodies.len());
    let mut bad = Vec::new();
    for (index, body) in bodies.iter().enumerate() {
        let trimmed = body.trim_ascii();
        let problem = if !trimmed.starts_with(b"{") {
            Some("not a JSON object".to_string())
        } else {
            match decode_all(schema, &[body]) {
                Ok(batch) if batch.num_rows() == 1 => None,
                Ok(batch) => Some(format!("{} JSON values in one message; expected one object", batch.num_rows())),
                Err(error) => Some(error.to_string()),
            }
        };
        match problem {
            Some(reason) => bad.push(BadRow { index, reason }),
            None => {
                good.push(*body);
                kept.push(index);
            }
        }
    }
    let batch = decode_all(schema, &good)?;
    Ok(Decoded { batch, kept, bad })
}

fn decode_all(schema: &SchemaRef, bodies: &[&[u8]]) -> Result<RecordBatch> {
    // Room for one value more than there are bodies, so a body holding two shows up as a
    // row too many instead of hiding behind a full batch.
    let mut decoder = ReaderBuilder::new(schema.clone()).with_batch_size(bodies.len() + 1).build_decoder()?;
    for body in bodies {
        let mut rest: &[u8] = body;
        while !rest.is_empty() {
            let read = decoder.decode(rest)?;
            if read == 0 {
                return Err(
                    datafusion::arrow::error::ArrowError::JsonError("more JSON values than messages".into()).into()
                );
            }
            rest = &rest[read..];
        }
        // Bodies are separate values even without a newline between them.
        decoder.decode(b"\n")?;
    }
    Ok(decoder.flush()?.unwrap_or_else(|| RecordBatch::new_empty(schema.clone())))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn bad_rows_are_set_aside_with_their_reason() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        let bodies: Vec<&[u8]> = vec![
            br#"{"name":"a","n":1,"extra":true}"#,
            b"not json",
            br#"{"name":"b","n":"two"}"#,
            br#"{"name":"c"}"#,
            br#"{"name":"d","n":4} {"name":"e","n":5}"#,
        ];
        let decoded = decode_json(&schema, &bodies).unwrap();
        assert_eq!(decoded.kept, vec![0, 3]);
        let bad: Vec<usize> = decoded.bad.iter().map(|b| b.index).collect();
        assert_eq!(bad, vec![1, 2, 4]);
        assert!(decoded.bad[2].reason.contains("2 JSON values"), "{:?}", decoded.bad);
        let names = decoded.batch.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((names.value(0), names.value(1)), ("a", "c"));
        let n = decoded.batch.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        assert!(n.is_null(1));
    }
}
