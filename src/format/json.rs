//! Reading Go-written JSON as Go's `json.Unmarshal` does: field names match case-insensitively.

use serde_json::{Map, Value};

/// The value as a JSON object, if it is one.
pub fn object(value: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(value).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// The field `name` of `obj`: an exact match, else one that matches ignoring ASCII case (as Go's
/// decoder does for struct fields).
pub fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// A string field; `Ok(None)` when absent or null, `Err` when of another type.
pub fn string<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, ()> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(()),
    }
}

/// A weight written as a number or a decimal string (metadata maps are string to string), if
/// present. `Err` when present but not an integer.
pub fn weight(v: Option<&Value>) -> Result<Option<i64>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or(()),
        Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| ()),
        Some(_) => Err(()),
    }
}

/// The `weight` entry of a metadata object, if it has one.
pub fn metadata_weight(metadata: Option<&Value>) -> Result<Option<i64>, ()> {
    match metadata {
        Some(Value::Object(m)) => weight(field(m, "weight")),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_match_like_go() {
        let o = object(r#"{"ADDR":"a","Op":0}"#).unwrap();
        assert_eq!(field(&o, "addr"), Some(&Value::from("a")));
        assert_eq!(field(&o, "op"), Some(&Value::from(0)));
        assert_eq!(string(&o, "addr"), Ok(Some("a")));
        assert_eq!(string(&o, "op"), Err(()));
        assert_eq!(string(&o, "x"), Ok(None));
        assert!(object("[1]").is_none());
    }

    #[test]
    fn weights_from_numbers_and_strings() {
        assert_eq!(weight(Some(&Value::from(7))), Ok(Some(7)));
        assert_eq!(weight(Some(&Value::from("12"))), Ok(Some(12)));
        assert_eq!(weight(Some(&Value::from("x"))), Err(()));
        assert_eq!(weight(Some(&Value::from(1.5))), Err(()));
        let m = object(r#"{"metadata":{"weight":"3"}}"#).unwrap();
        assert_eq!(metadata_weight(m.get("metadata")), Ok(Some(3)));
        assert_eq!(metadata_weight(None), Ok(None));
    }
}
