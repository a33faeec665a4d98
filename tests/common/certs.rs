//! A test CA and certificates made with rcgen at run time, so that no private key is ever
//! committed. Used by the TLS tests and by `cargo run --example make_certs -- DIR`.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// The PEM files written by [`make`].
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A second CA, which signed nothing of the above.
    pub other_ca: PathBuf,
    /// A client certificate from `other_ca`.
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
}

fn write(path: &Path, text: &str, private: bool) {
    std::fs::write(path, text).expect("write a PEM file");
    let _ = private;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = if private { 0o600 } else { 0o644 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

fn ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("a key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("a self-signed CA");
    (cert, Issuer::new(params, key))
}

fn leaf(
    names: &[&str],
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'static, KeyPair>,
) -> (String, String) {
    let key = KeyPair::generate().expect("a key");
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params = CertificateParams::new(names).expect("leaf params");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    let cert = params
        .signed_by(&key, issuer)
        .expect("a signed certificate");
    (cert.pem(), key.serialize_pem())
}

/// Writes a CA, a server certificate for `localhost` and 127.0.0.1, and a client
/// certificate (CN=client-a) into `dir`; keys with mode 0600.
pub fn make(dir: &Path) -> Certs {
    std::fs::create_dir_all(dir).expect("create the certificate directory");
    let (ca_cert, ca_issuer) = ca("courier test CA");
    let (server_pem, server_key) = leaf(
        &["localhost", "127.0.0.1"],
        "localhost",
        ExtendedKeyUsagePurpose::ServerAuth,
        &ca_issuer,
    );
    let (client_pem, client_key) = leaf(
        &[],
        "client-a",
        ExtendedKeyUsagePurpose::ClientAuth,
        &ca_issuer,
    );
    let (other_cert, other_issuer) = ca("some other CA");
    let (stranger_pem, stranger_key) = leaf(
        &[],
        "stranger",
        ExtendedKeyUsagePurpose::ClientAuth,
        &other_issuer,
    );
    let certs = Certs {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
        other_ca: dir.join("other-ca.pem"),
        stranger_cert: dir.join("stranger.pem"),
        stranger_key: dir.join("stranger.key"),
    };
    write(&certs.ca, &ca_cert.pem(), false);
    write(&certs.server_cert, &server_pem, false);
    write(&certs.server_key, &server_key, true);
    write(&certs.client_cert, &client_pem, false);
    write(&certs.client_key, &client_key, true);
    write(&certs.other_ca, &other_cert.pem(), false);
    write(&certs.stranger_cert, &stranger_pem, false);
    write(&certs.stranger_key, &stranger_key, true);
    certs
}
