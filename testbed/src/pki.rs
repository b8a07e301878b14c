//! Per-run certificates and keys: a CA, the apiserver's serving certificate, an admin client
//! certificate, and the service-account signing key. Generated in-process, never committed.

use crate::process::write_file;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

pub struct Pki {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
    ca: Issuer<'static, KeyPair>,
    dir: PathBuf,
}

fn err(e: rcgen::Error) -> String {
    format!("certificate generation: {e}")
}

impl Pki {
    pub fn generate(dir: &Path) -> Result<Pki, String> {
        let ca_key = KeyPair::generate().map_err(err)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "etcd-bridge test bed CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
        let ca_path = dir.join("ca.crt");
        write_file(&ca_path, ca_cert.pem().as_bytes())?;

        let sa_key = KeyPair::generate().map_err(err)?;
        let sa_path = dir.join("sa.key");
        write_file(&sa_path, sa_key.serialize_pem().as_bytes())?;
        // kube-apiserver reads the verifying key as a public key PEM.
        write_file(&dir.join("sa.pub"), sa_key.public_key_pem().as_bytes())?;

        let mut pki = Pki {
            ca_cert: ca_path,
            serving_cert: dir.join("serving.crt"),
            serving_key: dir.join("serving.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            sa_key: sa_path,
            sa_pub: dir.join("sa.pub"),
            ca: Issuer::new(ca_params, ca_key),
            dir: dir.to_path_buf(),
        };
        pki.issue(
            "serving",
            "kube-apiserver",
            None,
            // 10.0.0.1 and kubernetes.default.svc: how pods on the node (in-cluster config)
            // reach the apiserver, through the `kubernetes` Service.
            &[
                "localhost",
                "127.0.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "10.0.0.1",
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        pki.issue(
            "admin",
            "testbed-admin",
            Some("system:masters"),
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        Ok(pki)
    }

    /// Issues `{dir}/{file}.crt` and `.key`, signed by the CA. Also used for etcd TLS tests.
    pub fn issue(
        &mut self,
        file: &str,
        common_name: &str,
        organization: Option<&str>,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<(PathBuf, PathBuf), String> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .map_err(err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        if let Some(o) = organization {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.ca).map_err(err)?;
        let (crt, k) = (
            self.dir.join(format!("{file}.crt")),
            self.dir.join(format!("{file}.key")),
        );
        write_file(&crt, cert.pem().as_bytes())?;
        write_file(&k, key.serialize_pem().as_bytes())?;
        Ok((crt, k))
    }
}
