//! The labels and annotations that mark what etcd-bridge owns, and carry what the projection
//! knows about each object. Everything the bridge writes is found again through these.

/// The one field manager of every server-side apply the bridge makes.
pub const FIELD_MANAGER: &str = "etcd-bridge";

/// Recommended label: which tool manages the object.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "etcd-bridge";
/// Recommended label: the application the object belongs to (the registry service name, made a label value).
pub const APP_NAME: &str = "app.kubernetes.io/name";
/// Recommended label: the bridge's component.
pub const PART_OF: &str = "app.kubernetes.io/part-of";
pub const PART_OF_VALUE: &str = "etcd-bridge";

/// Which bridge owns the object, so that two bridges for two registries can share a cluster.
pub const INSTANCE: &str = "etcd-bridge.io/instance";
/// The source (registry) an imported object was projected from: `default` for the flags' one,
/// else the name of its EtcdSource.
pub const SOURCE: &str = "etcd-bridge.io/source";
/// The leader bucket whose holder writes the object (only with `--leader-buckets` above 1).
pub const BUCKET: &str = "etcd-bridge.io/bucket";
/// `aggregate` for the `{name}` Service, `version` for `{name}-{version}`.
pub const TARGET_KIND: &str = "etcd-bridge.io/target";

/// EndpointSlice labels that Kubernetes itself defines.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const SLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const SLICE_MANAGED_BY_VALUE: &str = "controller.etcd-bridge.io";
/// On the slices of a headless Service, as Kubernetes' own EndpointSlice controller sets it:
/// kube-proxy ignores slices with it, so a change to a headless import costs no proxy resync.
pub const HEADLESS: &str = "service.kubernetes.io/headless";

/// Annotations that keep the original, unsanitised identity of a target.
pub const ANNOTATION_NAME: &str = "etcd-bridge.io/name";
pub const ANNOTATION_VERSION: &str = "etcd-bridge.io/version";
pub const ANNOTATION_PREFIX: &str = "etcd-bridge.io/prefix";
/// The weight every endpoint of a slice was registered with.
pub const ANNOTATION_WEIGHT: &str = "etcd-bridge.io/weight";
/// The same weight as Cilium reads it, per EndpointSlice: 0 to 65535, where 0 drains.
pub const ANNOTATION_CILIUM_WEIGHT: &str = "service.cilium.io/weight";
