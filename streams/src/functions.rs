//! Scalar functions every job has besides DataFusion's: JSON extraction from text columns
//! (`json_get(text, 'path')`), and the user's own UDFs registered through `JobOptions`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};

/// Longest JSON text `json_get` parses (longer values give NULL).
pub const JSON_GET_BYTES_MAX: usize = 1 << 20;

/// `json_get(text, 'a.b')`: the value at a dotted path of a JSON object held as text —
/// strings without their quotes, other values as JSON text, NULL when the text is not JSON
/// or the path is missing.
pub fn json_get() -> ScalarUDF {
    create_udf(
        "json_get",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let [json, path] = args else {
                return Err(DataFusionError::Plan("json_get takes (text, path)".into()));
            };
            let ColumnarValue::Scalar(ScalarValue::Utf8(Some(path))) = path else {
                return Err(DataFusionError::Plan("json_get: the path must be a text literal, e.g. 'user.id'".into()));
            };
            let path: Vec<&str> = path.split('.').collect();
            let extract = |text: Option<&str>| -> Option<String> {
                let text = text.filter(|t| t.len() <= JSON_GET_BYTES_MAX)?;
                let mut value: serde_json::Value = serde_json::from_str(text).ok()?;
                for part in &path {
                    value = value.get_mut(part)?.take();
                }
                match value {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(text) => Some(text),
                    other => Some(other.to_string()),
                }
            };
            Ok(match json {
                ColumnarValue::Scalar(ScalarValue::Utf8(text)) => {
                    ColumnarValue::Scalar(ScalarValue::Utf8(extract(text.as_deref())))
                }
                ColumnarValue::Array(array) => {
                    let texts = datafusion::arrow::array::as_string_array(array);
                    let values: StringArray =
                        (0..texts.len()).map(|row| extract(texts.is_valid(row).then(|| texts.value(row)))).collect();
                    ColumnarValue::Array(Arc::new(values) as ArrayRef)
                }
                other => return Err(DataFusionError::Plan(format!("json_get: unexpected argument {other:?}"))),
            })
        }),
    )
}

/// The functions a job gets on top of DataFusion's.
pub fn builtin() -> Vec<ScalarUDF> {
    vec![json_get()]
}
