//! A record's top-level JSON object as a list of fields, with string values borrowed from the
//! record's bytes where they hold no escapes: what HSET and XADD write and key templates read,
//! without building a `serde_json::Value` tree (sorted maps, a string per key) per record.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value as Json;

use crate::template;

/// The fields of a JSON object, in document order.
pub struct FlatObject<'a> {
    pub fields: Vec<(Cow<'a, str>, FlatValue<'a>)>,
}

/// A field's value: text, or any other JSON value.
pub enum FlatValue<'a> {
    Text(Cow<'a, str>),
    Json(Json),
}

impl<'a> FlatObject<'a> {
    /// `bytes` parsed as a JSON object; `None` when they are not one.
    pub fn parse(bytes: &'a [u8]) -> Option<FlatObject<'a>> {
        serde_json::from_slice(bytes).ok()
    }

    /// The fields of an already parsed object (strings borrowed from it).
    pub fn from_map(map: &'a serde_json::Map<String, Json>) -> FlatObject<'a> {
        let fields = map
            .iter()
            .map(|(name, value)| {
                let value = match value {
                    Json::String(text) => FlatValue::Text(Cow::Borrowed(text.as_str())),
                    other => FlatValue::Json(other.clone()),
                };
                (Cow::Borrowed(name.as_str()), value)
            })
            .collect();
        FlatObject { fields }
    }

    /// A (dotted) field's text for a template: the last field of that name, as
    /// `template::render_record` would read it from the parsed value.
    pub fn lookup(&self, name: &str) -> Option<String> {
        let (first, rest) = match name.split_once('.') {
            Some((first, rest)) => (first, Some(rest)),
            None => (name, None),
        };
        let (_, value) = self.fields.iter().rev().find(|(field, _)| field == first)?;
        match (value, rest) {
            (FlatValue::Text(text), None) => Some(text.to_string()),
            (FlatValue::Text(_), Some(_)) => None,
            (FlatValue::Json(json), None) => template::text_of(json),
            (FlatValue::Json(json), Some(rest)) => {
                let mut value = json;
                for part in rest.split('.') {
                    value = value.get(part)?;
                }
                template::text_of(value)
            }
        }
    }
}

impl<'de> Deserialize<'de> for FlatObject<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = FlatObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::new();
                while let Some(key) = map.next_key::<FlatValue<'de>>()? {
                    let FlatValue::Text(name) = key else { unreachable!("JSON object keys are strings") };
                    fields.push((name, map.next_value()?));
                }
                Ok(FlatObject { fields })
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

impl<'de> Deserialize<'de> for FlatValue<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = FlatValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(FlatValue::Text(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(FlatValue::Text(Cow::Owned(text.to_string())))
            }
            fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
                Ok(FlatValue::Text(Cow::Owned(text)))
            }
            fn visit_bool<E>(self, value: bool) -> Result<Self::Value, E> {
                Ok(FlatValue::Json(Json::Bool(value)))
            }
            fn visit_i64<E>(self, value: i64) -> Result<Self::Value, E> {
                Ok(FlatValue::Json(Json::from(value)))
            }
            fn visit_u64<E>(self, value: u64) -> Result<Self::Value, E> {
                Ok(FlatValue::Json(Json::from(value)))
            }
            fn visit_f64<E>(self, value: f64) -> Result<Self::Value, E> {
                Ok(FlatValue::Json(Json::from(value)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(FlatValue::Json(Json::Null))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                Json::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(FlatValue::Json)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Json::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(FlatValue::Json)
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_flatten_and_look_up_like_json_values() {
        let text =
            br#"{"id": 7, "name": "a\"b", "plain": "x", "user": {"id": 9, "tags": [1]}, "gone": null, "f": 1.5}"#;
        let object = FlatObject::parse(text).unwrap();
        let json: Json = serde_json::from_slice(text).unwrap();
        for name in ["id", "name", "plain", "user", "user.id", "user.tags", "gone", "f", "missing", "plain.x"] {
            assert_eq!(object.lookup(name), crate::template::field(&json, name), "{name}");
        }
        let from_map = FlatObject::from_map(json.as_object().unwrap());
        for name in ["id", "name", "user.id", "gone", "missing"] {
            assert_eq!(from_map.lookup(name), object.lookup(name), "from_map {name}");
        }
        let names: Vec<&str> = object.fields.iter().map(|(name, _)| name.as_ref()).collect();
        assert_eq!(names, ["id", "name", "plain", "user", "gone", "f"], "document order");
        assert!(matches!(&object.fields[2].1, FlatValue::Text(Cow::Borrowed("x"))), "unescaped text is borrowed");
        for not_an_object in [&b"[1, 2]"[..], b"42", b"\"text\"", b"{broken"] {
            assert!(FlatObject::parse(not_an_object).is_none());
        }
    }
}
