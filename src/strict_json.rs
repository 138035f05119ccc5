//! JSON parsing that refuses a repeated member name anywhere in the document. Signed tokens are
//! read this way: two `sub` (or `exp`, or `alg`) members would let a verifier and a later reader
//! see different values, and serde_json keeps the last one silently.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses `bytes` as JSON, refusing duplicate member names at any depth.
pub fn from_slice_unique(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Unique.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

struct Unique;

impl<'de> DeserializeSeed<'de> for Unique {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Unique)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format_args!("duplicate member `{key}`")));
            }
            let value = map.next_value_seed(Unique)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_duplicates_at_any_depth_and_keeps_the_rest() {
        let cases: &[(&str, &str, bool)] = &[
            ("plain object", r#"{"a":1,"b":[1,2,{"c":null}]}"#, true),
            ("top-level duplicate", r#"{"sub":"a","sub":"b"}"#, false),
            ("escaped duplicate", r#"{"sub":"a","s\u0075b":"b"}"#, false),
            ("nested duplicate", r#"{"x":{"k":1,"k":2}}"#, false),
            ("same name at other depths", r#"{"k":{"k":{"k":1}}}"#, true),
            ("trailing garbage", r#"{"a":1} x"#, false),
            ("number kinds", r#"{"i":-1,"u":18446744073709551615,"f":1.5}"#, true),
        ];
        for (name, input, ok) in cases {
            let got = from_slice_unique(input.as_bytes());
            assert_eq!(got.is_ok(), *ok, "{name}: {got:?}");
            if *ok {
                let plain: Value = serde_json::from_str(input).unwrap();
                assert_eq!(got.unwrap(), plain, "{name}");
            }
        }
    }
}
