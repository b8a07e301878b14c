//! The floor: what any controller pays at least. (a) etcd put → etcd-client watch event; (b) one
//! server-side apply of an EndpointSlice shaped like the bridge's → kube watch event.

use crate::Ctx;
use crate::changes::{Sink, converge, create_namespace, run_changes, slice_json, ssa};
use crate::etcd_watch::watch_puts;
use crate::harness::{Rng, progress, step};
use crate::model::{Model, reg_value};
use crate::stats::{Stats, r3};
use crate::tracker::Tracker;
use etcd_client::{Client as Etcd, WatchOptions};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch};
use serde_json::json;
use std::time::{Duration, Instant};

/// What the floor measured; its slice is used again at the isolated changes' spacing.
pub struct Floor {
    pub etcd: Stats,
    pub apply: Stats,
    pub slice: FloorSlice,
}

/// Both floors, back to back (right after the cold start, before the peer and the propagation).
pub async fn section(ctx: &mut Ctx) -> Floor {
    step(&format!(
        "floor: etcd put → watch event ({} puts at {}/s)",
        ctx.sz.floor_changes, ctx.sz.rate
    ));
    let (n, rate) = (ctx.sz.floor_changes, ctx.sz.rate);
    let floor_etcd = floor_etcd(&mut ctx.etcd, n, rate).await;
    progress(&format!("etcd put → watch: {}", floor_etcd.brief()));
    assert!(
        floor_etcd.missed == 0 && !floor_etcd.samples.is_empty(),
        "harness check failed: etcd watch events missing in the floor"
    );
    step(&format!(
        "floor: server-side apply of an EndpointSlice (10 endpoints) → watch event ({} applies at {}/s)",
        ctx.sz.floor_changes, ctx.sz.rate
    ));
    let cpu_floor = ctx.cpu.mark(None);
    let mut floor_slice = FloorSlice::create(ctx).await;
    let gap = Duration::from_secs_f64(1.0 / ctx.sz.rate);
    let (n, drain) = (ctx.sz.floor_changes, ctx.sz.drain);
    let floor_apply = floor_slice.run(&mut ctx.rng, (n, gap, drain)).await;
    assert!(
        floor_apply.missed == 0 && !floor_apply.samples.is_empty(),
        "harness check failed: the floor's EndpointSlice applies were not all seen by the watch"
    );
    let floor_cpu = ctx.cpu.since(&cpu_floor, None);
    let floor_sum = floor_etcd.p50().zip(floor_apply.p50()).map(|(a, b)| a + b);
    ctx.report.insert(
        "floor".into(),
        json!({
            "etcd_put_to_watch": floor_etcd.json(),
            "apply_to_watch": floor_apply.json(),
            "floor_p50_ms": r3(floor_sum),
            "apply_cpu": floor_cpu,
        }),
    );
    Floor {
        etcd: floor_etcd,
        apply: floor_apply,
        slice: floor_slice,
    }
}

/// etcd put → etcd-client watch event, at `rate`.
pub async fn floor_etcd(etcd: &mut Etcd, n: usize, rate: f64) -> Stats {
    let prefix = "/bench-floor/";
    let (seen, task) = watch_puts(etcd, prefix, WatchOptions::new().with_prefix())
        .await
        .expect("watch the floor prefix");
    let gap = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut sent = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until((start + gap * i as u32).into()).await;
        let key = format!("{prefix}{i}");
        let t = Instant::now();
        etcd.put(key.clone(), reg_value("floor", "10.0.0.1"), None)
            .await
            .expect("etcd put (floor)");
        sent.push((key, t));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    task.abort();
    let seen = seen.lock().unwrap();
    let mut samples = Vec::new();
    let mut missed = 0;
    for (k, t) in sent {
        match seen.get(&k) {
            Some((s, _, _)) => samples.push(s.saturating_duration_since(t).as_secs_f64() * 1000.0),
            None => missed += 1,
        }
    }
    Stats::new(samples, missed)
}

/// The floor's EndpointSlice: one service, one slice of 10 endpoints, like one of the bridge's.
pub struct FloorSlice {
    pub tracker: Tracker,
    pub model: Model,
    pub api: Api<EndpointSlice>,
}

impl FloorSlice {
    pub async fn create(ctx: &mut Ctx) -> FloorSlice {
        let ns = "bench-floor";
        create_namespace(&ctx.client, ns).await;
        let tracker = Tracker::start(ctx.client.clone(), ns, "bench=floor");
        tracker.synced().await;
        let model = Model::new("floor", 1, 10);
        let service = &model.names[0];
        let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
        // The first apply creates the slice; it is not timed.
        let first = slice_json("floor", service, &model.want[service]);
        api.patch("floor", &ssa(), &Patch::Apply(&first))
            .await
            .expect("create the floor EndpointSlice");
        converge(
            &tracker,
            &model.want,
            Instant::now(),
            Duration::from_secs(30),
            None,
            "floor slice",
        )
        .await;
        FloorSlice {
            tracker,
            model,
            api,
        }
    }

    /// `n` server-side applies, one every `gap`, each timed until the watch shows it.
    pub async fn run(
        &mut self,
        rng: &mut Rng,
        (n, gap, drain): (usize, Duration, Duration),
    ) -> Stats {
        let run = run_changes(
            &mut Sink::Slice(self.api.clone()),
            &self.tracker,
            &mut self.model,
            rng,
            (n, gap, drain),
            "floor: apply → watch",
        )
        .await;
        run.stats
    }
}
