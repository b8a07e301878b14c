//! Registrations as the seed's Go `Register` writes them: the key `BuildRegPath` makes and the
//! JSON value of `json.Marshal(Server{...})`. The tests, the demo and the benchmarks all write
//! them, so there is one definition of the format.

/// The value the seed's Go `Register` writes: `json.Marshal(Server{...})`.
pub fn seed_value(name: &str, version: &str, addr: &str, weight: i64) -> String {
    format!(r#"{{"name":"{name}","addr":"{addr}","version":"{version}","weight":{weight}}}"#)
}

/// The key the seed's `BuildRegPath` makes, under `prefix`.
pub fn seed_key(prefix: &str, name: &str, version: &str, addr: &str) -> String {
    if version.is_empty() {
        format!("{prefix}{name}/{addr}")
    } else {
        format!("{prefix}{name}/{version}/{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_leave_the_version_out_when_there_is_none() {
        assert_eq!(seed_key("/p/", "a", "", "10.0.0.1:80"), "/p/a/10.0.0.1:80");
        assert_eq!(
            seed_key("/p/", "a", "v1", "10.0.0.1:80"),
            "/p/a/v1/10.0.0.1:80"
        );
    }

    #[test]
    fn the_value_is_the_seeds_json() {
        let v: serde_json::Value = serde_json::from_str(&seed_value("a", "v1", "h:1", 3)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"name": "a", "addr": "h:1", "version": "v1", "weight": 3})
        );
    }
}
