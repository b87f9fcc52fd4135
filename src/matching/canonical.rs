//! The canonical bytes of a JSON body, as the match key hashes them: object keys sorted,
//! no insignificant whitespace, numbers that are whole and exactly representable written
//! as integers.
//!
//! Written from [`Borrowed`], a document whose strings stay slices of the text it was
//! parsed from: a lookup needs the key and nothing else, and parsing into a
//! `serde_json::Value` cost a `String` per key and value and a map per object. A
//! `Value` (a body the rules edited) is seen through the same type, so there is one
//! canonical writer and stored keys stay what they were.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

/// A JSON document that borrows its strings where it can. Object members are kept
/// sorted by key, so writing it needs no further sort.
#[derive(Debug)]
pub(super) enum Borrowed<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Borrowed<'a>>),
    Object(Vec<(Cow<'a, str>, Borrowed<'a>)>),
}

impl<'a> Borrowed<'a> {
    /// A `Value` seen as a document, for bodies the rules edited (and record's key).
    pub(super) fn of_value(value: &'a Value) -> Self {
        match value {
            Value::Null => Self::Null,
            Value::Bool(b) => Self::Bool(*b),
            Value::Number(n) => Self::Number(n.clone()),
            Value::String(s) => Self::String(Cow::Borrowed(s)),
            Value::Array(items) => Self::Array(items.iter().map(Self::of_value).collect()),
            Value::Object(map) => Self::object(
                map.iter()
                    .map(|(k, v)| (Cow::Borrowed(k.as_str()), Self::of_value(v)))
                    .collect(),
            ),
        }
    }

    fn object(mut members: Vec<(Cow<'a, str>, Borrowed<'a>)>) -> Self {
        members.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Self::Object(members)
    }

    pub(super) fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::Null => out.extend_from_slice(b"null"),
            Self::Bool(true) => out.extend_from_slice(b"true"),
            Self::Bool(false) => out.extend_from_slice(b"false"),
            Self::String(text) => write_json_string(text, out),
            Self::Number(number) => write_number(number, out),
            Self::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write(out);
                }
                out.push(b']');
            }
            Self::Object(members) => {
                out.push(b'{');
                for (i, (name, item)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_json_string(name, out);
                    out.push(b':');
                    item.write(out);
                }
                out.push(b'}');
            }
        }
    }
}

fn write_json_string(text: &str, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

fn write_number(number: &Number, out: &mut Vec<u8>) {
    use std::io::Write as _;
    if let Some(n) = number.as_i64() {
        let _ = write!(out, "{n}");
    } else if let Some(n) = number.as_u64() {
        let _ = write!(out, "{n}");
    } else if let Some(f) = number.as_f64() {
        // 2^53: beyond it not every integer is representable, so keep the float spelling.
        if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
            let _ = write!(out, "{}", f as i64);
        } else {
            let _ = write!(out, "{number}");
        }
    }
}

impl<'de> Deserialize<'de> for Borrowed<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DocumentVisitor)
    }
}

/// Reads what `serde_json::Value` reads, the same way (a float that is not finite
/// becomes null, as there), keeping escape-free strings borrowed.
struct DocumentVisitor;

impl<'de> Visitor<'de> for DocumentVisitor {
    type Value = Borrowed<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Borrowed::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Borrowed::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Borrowed::Number(n.into()))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Self::Value, E> {
        Ok(Number::from_f64(f).map_or(Borrowed::Null, Borrowed::Number))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Borrowed::String(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Borrowed::String(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(Borrowed::String(Cow::Owned(s)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Borrowed::Null)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Borrowed::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Borrowed::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some(MemberName(name)) = map.next_key()? {
            members.push((name, map.next_value()?));
        }
        Ok(Borrowed::object(members))
    }
}

/// An object key, borrowed when it has no escapes (serde's `Cow<str>` always copies).
struct MemberName<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for MemberName<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = MemberName<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }

            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(MemberName(Cow::Borrowed(s)))
            }

            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(MemberName(Cow::Owned(s.to_owned())))
            }

            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(MemberName(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(text: &str) -> (Vec<u8>, Vec<u8>) {
        let value: Value = serde_json::from_str(text).expect("test JSON parses");
        let mut from_value = Vec::new();
        Borrowed::of_value(&value).write(&mut from_value);
        let mut parsed = Vec::new();
        serde_json::from_str::<Borrowed>(text)
            .expect("test JSON parses")
            .write(&mut parsed);
        (from_value, parsed)
    }

    #[test]
    fn parsing_borrowed_writes_the_bytes_a_value_does() {
        for text in [
            r#"{"b":1,"a":{"d":[3,2,{"z":null,"y":true}],"c":"x"}}"#,
            r#"{"esc\u0061ped":"tab\there \"quoted\" \u00e9 \ud83d\ude00","plain":"é"}"#,
            r#"[1.0, 1e2, -0, -0.0, 0.5, 1.5e-7, 18446744073709551615, -9223372036854775808]"#,
            r#"[9007199254740993.0, 1e300, 123456789012345678901234567890]"#,
            r#"{"":"","\/":"/","a\u0000b":false}"#,
            r#"  [ ]  "#,
            r#"{}"#,
            r#""just a string""#,
            r#"{"status":"compliant","id":"id","deviceDisplayName":"name","lastReportedDateTime":"2017-01-01T00:00:56.8321556-08:00"}"#,
        ] {
            let (from_value, parsed) = both(text);
            assert_eq!(
                String::from_utf8_lossy(&parsed),
                String::from_utf8_lossy(&from_value),
                "{text}"
            );
        }
    }

    #[test]
    fn escaped_strings_are_owned_and_plain_ones_borrowed() {
        let text = br#"{"plain":"a","esc\u0061ped":"b\n"}"#;
        let Ok(Borrowed::Object(members)) = serde_json::from_slice::<Borrowed>(text) else {
            panic!("an object");
        };
        let kinds: Vec<(&str, bool, bool)> = members
            .iter()
            .map(|(name, value)| {
                let value_borrowed = matches!(value, Borrowed::String(Cow::Borrowed(_)));
                (
                    name.as_ref(),
                    matches!(name, Cow::Borrowed(_)),
                    value_borrowed,
                )
            })
            .collect();
        assert_eq!(
            kinds,
            vec![("escaped", false, false), ("plain", true, true)]
        );
    }

    #[test]
    fn what_serde_json_refuses_does_not_parse() {
        let parse = |text: &[u8]| serde_json::from_slice::<Borrowed>(text).is_ok();
        assert!(!parse(b"{\"a\":"));
        assert!(!parse(&[b'['; 200]));
        assert!(!parse(b"\"\xff\""));
    }
}
