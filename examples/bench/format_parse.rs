//! Issue 11: parse throughput per registry format. N registrations per format, shaped like the
//! golden fixtures (shapes.rs), read by `format::parse`, the entry the reconciler's snapshot
//! uses. The floor, timed in the same rounds: `serde_json::from_slice::<IgnoredAny>` over the same
//! value bytes (go-zero's plain `host:port` value: a scan of its bytes), so the ratio says what the
//! format layer (key shape, fields, address rules) adds to reading the JSON at all.

use crate::Ctx;
use crate::harness::{progress, step};
use crate::shapes::{SIX, corpus_ip, default_prefix, entry};
use etcd_bridge::format::{Format, parse};
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use std::hint::black_box;
use std::time::Instant;

/// Services per corpus: registrations are spread over them, 10 each at the full size.
const PER_SERVICE: usize = 10;

struct Corpus {
    format: Format,
    prefix: String,
    /// (key, value, the layout the value is in: the floor reads it as that)
    entries: Vec<(Vec<u8>, Vec<u8>, Format)>,
}

fn corpus(format: Format, n: usize) -> Corpus {
    let prefix = default_prefix(format).to_string();
    let entries = (0..n)
        .map(|i| {
            // `auto` reads all six layouts, in turn, under one prefix.
            let layout = if format == Format::Auto {
                SIX[i % SIX.len()]
            } else {
                format
            };
            // go-zero's services are named like `user.rpc`; the others like the fixtures.
            let service = match layout {
                Format::GoZero => format!("greeter-{}.rpc", i / PER_SERVICE),
                _ => format!("greeter-{}", i / PER_SERVICE),
            };
            let (k, v) = entry(layout, &prefix, &service, "v1", &corpus_ip(i), i);
            (k.into_bytes(), v.into_bytes(), layout)
        })
        .collect();
    Corpus {
        format,
        prefix,
        entries,
    }
}

/// One pass of `format::parse` over the corpus; the time it took. Panics on a refused entry: the
/// corpus is made of valid registrations, so that is the harness (or a parser) broken.
fn parse_pass(c: &Corpus) -> f64 {
    let t = Instant::now();
    for (k, v, _) in &c.entries {
        let r = parse(c.format, &c.prefix, black_box(k), black_box(v));
        match r {
            Ok(r) => {
                black_box(r);
            }
            Err(e) => panic!(
                "format {}: the bench's registration was refused ({}): {} = {}",
                c.format,
                e.label(),
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(v)
            ),
        }
    }
    t.elapsed().as_secs_f64()
}

/// One pass of the floor: the value's JSON read and thrown away (a byte scan for go-zero).
fn floor_pass(c: &Corpus) -> f64 {
    let t = Instant::now();
    for (_, v, layout) in &c.entries {
        if *layout == Format::GoZero {
            black_box(black_box(v).iter().rposition(|b| *b == b':'));
        } else {
            let r = serde_json::from_slice::<IgnoredAny>(black_box(v));
            assert!(r.is_ok(), "the floor's JSON did not parse");
        }
    }
    t.elapsed().as_secs_f64()
}

pub async fn section(ctx: &mut Ctx) -> Value {
    let n = ctx.sz.parse_registrations;
    let rounds = ctx.sz.parse_rounds;
    step(&format!(
        "formats: parse throughput, {n} registrations per format, {rounds} rounds, beside serde_json IgnoredAny"
    ));
    let mut rows = Vec::new();
    let mut formats: Vec<Format> = SIX.to_vec();
    formats.push(Format::Auto);
    for f in formats {
        let c = corpus(f, n);
        let bytes: usize = c.entries.iter().map(|(k, v, _)| k.len() + v.len()).sum();
        // Alternated, so both see the same moments of a busy machine; the best round of each
        // is the one least disturbed by other work.
        let (mut p, mut fl) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            p.push(parse_pass(&c));
            fl.push(floor_pass(&c));
        }
        let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let (pb, fb) = (best(&p), best(&fl));
        let (pm, fm) = (median(&mut p), median(&mut fl));
        let ns = |s: f64| (s / n as f64 * 1e9 * 10.0).round() / 10.0;
        let per_s = |s: f64| (n as f64 / s).round();
        progress(&format!(
            "{:<12} {:>8.0} ns/registration ({:.2} M/s); floor {:>6.0} ns ({:.2} M/s); {:.1} × floor",
            f.label(),
            ns(pb),
            per_s(pb) / 1e6,
            ns(fb),
            per_s(fb) / 1e6,
            pb / fb
        ));
        rows.push(json!({
            "format": f.label(),
            "registrations": n,
            "mean_entry_bytes": bytes / n.max(1),
            "ns_per_registration": ns(pb),
            "registrations_per_s": per_s(pb),
            "median_round_ns_per_registration": ns(pm),
            "floor_ns_per_registration": ns(fb),
            "floor_registrations_per_s": per_s(fb),
            "floor_median_round_ns_per_registration": ns(fm),
            "ratio_to_floor": ((pb / fb) * 100.0).round() / 100.0,
        }));
    }
    json!({
        "measured": true,
        "registrations_per_format": n,
        "rounds": rounds,
        "how": "best of the rounds (parse and floor alternated), one thread, release build",
        "floor": "serde_json::from_slice::<IgnoredAny> over the value bytes; go-zero: a byte scan for ':'",
        "formats": rows,
    })
}

/// The line of the results table.
pub fn brief(v: &Value) -> String {
    v["formats"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{} {} ns ({}× floor)",
                r["format"].as_str().unwrap_or_default(),
                r["ns_per_registration"],
                r["ratio_to_floor"]
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
