//! The latency plot (SVG, written by hand), and `--replot`.

use crate::stats::Stats;
use serde_json::Value;
use std::path::Path;

/// The plot of the floor, the peer and the bridge.
pub fn plot(etcd: &Stats, apply: &Stats, peer: &Stats, bridge: &Stats) -> String {
    latency_svg(&[
        ("etcd put → watch (floor)", "#2ca02c", etcd),
        ("SSA EndpointSlice → watch (floor)", "#1f77b4", apply),
        ("mirroring controller (peer)", "#ff7f0e", peer),
        ("etcd-bridge: etcd → EndpointSlice", "#d62728", bridge),
    ])
}

/// `--replot FILE`: the plot again from a results.json, to `--out`/latency.svg.
pub fn replot(results: &Path, out: &Path) {
    let text = std::fs::read_to_string(results)
        .unwrap_or_else(|e| panic!("read {}: {e}", results.display()));
    let r: Value = serde_json::from_str(&text).expect("results JSON");
    let stats = |v: &Value| {
        Stats::new(
            v["samples_ms"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
                .unwrap_or_default(),
            v["missed"].as_u64().unwrap_or(0) as usize,
        )
    };
    let svg = plot(
        &stats(&r["floor"]["etcd_put_to_watch"]),
        &stats(&r["floor"]["apply_to_watch"]),
        &stats(&r["peer"]["latency"]),
        &stats(&r["propagation"]["latency"]),
    );
    let path = out.join("latency.svg");
    std::fs::create_dir_all(out).expect("create the output directory");
    std::fs::write(&path, svg).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    println!("wrote {}", path.display());
}

/// The latency distributions as CDFs on a log scale, written by hand.
pub fn latency_svg(series: &[(&str, &str, &Stats)]) -> String {
    let (w, h) = (760.0, 440.0);
    let (l, r, t, b) = (60.0, 20.0, 40.0, 150.0);
    let all: Vec<f64> = series
        .iter()
        .flat_map(|(_, _, s)| s.samples.iter().copied())
        .filter(|v| *v > 0.0)
        .collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min).max(0.01);
    let hi = all.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
    let (d0, d1) = (lo.log10().floor(), hi.log10().ceil());
    let x = |v: f64| l + (v.max(10f64.powf(d0)).log10() - d0) / (d1 - d0) * (w - l - r);
    // The percentile axis stretches the tail: 0, 0.5, 0.9, 0.99, 0.999 are equally spaced.
    let y = |p: f64| {
        let q = (-(1.0 - p).max(1e-3).log10()).clamp(0.0, 3.0);
        t + (1.0 - q / 3.0) * (h - t - b)
    };
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="{w}" height="{h}" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="14">Latency from write to watch event: the share of changes seen within a time</text>
"#,
        w / 2.0
    );
    let mut d = d0;
    while d <= d1 {
        let v = 10f64.powf(d);
        let xv = x(v);
        s += &format!(
            r##"<line x1="{xv:.1}" y1="{t}" x2="{xv:.1}" y2="{:.1}" stroke="#ddd"/><text x="{xv:.1}" y="{:.1}" text-anchor="middle">{}</text>
"##,
            h - b,
            h - b + 16.0,
            if v < 1.0 {
                format!("{v}")
            } else {
                format!("{v:.0}")
            }
        );
        d += 1.0;
    }
    for p in [0.0, 0.5, 0.9, 0.99, 0.999] {
        let yv = y(p);
        s += &format!(
            r##"<line x1="{l}" y1="{yv:.1}" x2="{:.1}" y2="{yv:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{p}</text>
"##,
            w - r,
            l - 6.0,
            yv + 4.0
        );
    }
    s += &format!(
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">milliseconds</text>
<text transform="translate(16,{:.1}) rotate(-90)" text-anchor="middle">share of changes seen</text>
"#,
        (l + w - r) / 2.0,
        h - b + 34.0,
        (t + h - b) / 2.0
    );
    for (i, (name, color, st)) in series.iter().enumerate() {
        let n = st.samples.len();
        if n > 0 {
            let mut pts = String::new();
            let mut prev_y = y(0.0);
            for (k, v) in st.samples.iter().enumerate() {
                let xv = x(*v);
                let yv = y((k + 1) as f64 / n as f64);
                pts += &format!("{xv:.1},{prev_y:.1} {xv:.1},{yv:.1} ");
                prev_y = yv;
            }
            s += &format!(
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{pts}"/>
"#
            );
        }
        let ly = h - b + 56.0 + i as f64 * 20.0;
        s += &format!(
            r#"<line x1="{l}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{name}: {}</text>
"#,
            ly - 4.0,
            l + 24.0,
            ly - 4.0,
            l + 32.0,
            ly,
            st.brief()
        );
    }
    s += "</svg>\n";
    s
}
