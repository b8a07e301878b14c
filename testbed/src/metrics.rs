//! Reading a bridge's `/metrics` (the Prometheus text format): the tests read one series, the
//! benchmarks sum a family.

/// The value of one exact series, e.g. `etcd_bridge_leader` or `name{kind="Service"}`.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.strip_prefix(series).is_some_and(|r| r.starts_with(' ')))
        .and_then(sample)
}

/// The sum of every series of a family (lines `name{...} value` or `name value`).
pub fn sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(sample)
        .fold(0.0, |a, b| a + b)
}

/// The sample value of a line: its last field.
fn sample(line: &str) -> Option<f64> {
    line.rsplit(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x_total help\n\
        x_total{kind=\"a\"} 2\n\
        x_total{kind=\"b\"} 3\n\
        x_total_other 100\n\
        leader 1\n";

    #[test]
    fn value_reads_one_exact_series() {
        assert_eq!(value(TEXT, "leader"), Some(1.0));
        assert_eq!(value(TEXT, r#"x_total{kind="b"}"#), Some(3.0));
        assert_eq!(value(TEXT, "x_total"), None, "a family is not a series");
        assert_eq!(value(TEXT, "lead"), None, "not a prefix of a name");
    }

    #[test]
    fn sum_adds_a_family_and_nothing_that_only_starts_like_it() {
        assert_eq!(sum(TEXT, "x_total"), 5.0);
        assert_eq!(sum(TEXT, "missing"), 0.0);
    }
}
