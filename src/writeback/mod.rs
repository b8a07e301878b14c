//! Write-back: `EtcdRegistration` objects become seed-format keys in etcd, under an etcd lease
//! the bridge owns.

pub mod crd;
