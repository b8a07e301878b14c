//! The demo's last act, on a real node (kubelet, containerd, kube-proxy, CoreDNS; see
//! testbed/src/node.rs): a gRPC server outside Kubernetes registers itself in etcd the way the
//! seed's `Register` does, the bridge imports it, and a pod calls it by its cluster DNS name, as a
//! user's gRPC client would (`dns:///NAME.NAMESPACE.svc.cluster.local:PORT`).
//!
//! The server runs in a network namespace of its own beside the node, on an address the test bed
//! assigns there: nothing is sent to an address this machine does not own.

use etcd_bridge_testbed::grpc_tools::{self, Call, GrpcTools, ToolsPod};
use etcd_bridge_testbed::outside::Outside;
use etcd_bridge_testbed::process::Proc;
use etcd_bridge_testbed::{Node, TestBed, node_images};
use std::path::Path;
use std::time::{Duration, Instant};

const SERVICE: &str = "hello";
const VERSION: &str = "v1";
const PORT: u16 = 50051;
const WAIT: Duration = Duration::from_secs(90);

/// Everything the act started; dropped in this order (the server and the outside namespace before
/// the node they are wired to).
pub struct DataPlane {
    pub pod: ToolsPod,
    pub target: String,
    _server: Proc,
    _outside: Outside,
    _node: Node,
}

/// Starts the node, the outside server and the client pod, and prints the pod's first successful
/// call. `step` prints a heading. Errors say which part failed and where its log is.
pub fn show(
    bed: &TestBed,
    bridge: &Path,
    namespace: &str,
    prefix: &str,
    step: fn(&str),
) -> Result<DataPlane, String> {
    step(
        "a real node: containerd, kubelet, kube-proxy and CoreDNS (seconds when its binaries are cached)",
    );
    let images = node_images::build(bridge)?;
    let node = Node::start(&bed.cluster, &bed.dir.join("node"), images)?;
    println!("    node Ready in {:.1}s", node.started_in.as_secs_f64());
    let tools: GrpcTools = grpc_tools::build()?;
    grpc_tools::import(&node, &tools.image)?;

    step(&format!(
        "a gRPC server outside the cluster registers itself in etcd as {SERVICE}/{VERSION}"
    ));
    let mut outside = Outside::start(&node, &bed.dir.join("outside"))?;
    let etcd = outside.expose(bed.registry.client_port)?;
    let addr = format!("{}:{PORT}", outside.plan.ip());
    let args = [
        format!("-listen={addr}"),
        format!("-endpoints=http://{etcd}"),
        format!("-root={prefix}"),
        format!("-name={SERVICE}"),
        format!("-version={VERSION}"),
        "-ttl=10".to_string(),
    ];
    let mut server = outside.spawn("server", &tools.server, &args)?;
    let deadline = Instant::now() + WAIT;
    while !server.full_log().contains("registered ") {
        if !server.is_running() || Instant::now() > deadline {
            return Err(format!(
                "the server did not register:\n{}",
                server.log_tail(20)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("    {}", last_line(&server.full_log(), "registered "));

    step("a pod calls it by its DNS name (grpc-go's dns resolver, through CoreDNS)");
    let pod = ToolsPod::start(
        &bed.cluster,
        namespace,
        "client",
        &tools.image,
        "app: demo-client",
        &[],
    )?;
    let target = format!("dns:///{SERVICE}-{VERSION}.{namespace}.svc.cluster.local:{PORT}");
    println!(
        "    kubectl exec client -- {} -target {target}",
        grpc_tools::CLIENT
    );
    let call = call_until_serving(&pod, &target)?;
    for line in call.output.lines() {
        println!("    {line}");
    }
    if call.peer.as_deref() != Some(addr.as_str()) {
        return Err(format!(
            "the call went to {:?}, not to the registered {addr}:\n{}",
            call.peer, call.output
        ));
    }
    Ok(DataPlane {
        pod,
        target,
        _server: server,
        _outside: outside,
        _node: node,
    })
}

fn call_until_serving(pod: &ToolsPod, target: &str) -> Result<Call, String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let call = pod.call(target);
        if call.serving {
            return Ok(call);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{target} did not answer SERVING within {WAIT:?}; the last call said:\n{}",
                call.output
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn last_line<'a>(log: &'a str, containing: &str) -> &'a str {
    log.lines()
        .rfind(|l| l.contains(containing))
        .unwrap_or_default()
        .trim()
}
