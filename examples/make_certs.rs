//! Makes a test CA and certificates for trying courier's TLS:
//!
//! ```sh
//! cargo run --example make_certs -- /tmp/courier-certs
//! courier serve --tls-cert /tmp/courier-certs/server.pem --tls-key /tmp/courier-certs/server.key \
//!     --tls-client-ca /tmp/courier-certs/ca.pem
//! courier send --tls-ca /tmp/courier-certs/ca.pem --tls-cert /tmp/courier-certs/client.pem \
//!     --tls-key /tmp/courier-certs/client.key localhost:12345 --data hi
//! ```
//!
//! Writes ca.pem, server.pem/.key (for localhost and 127.0.0.1), client.pem/.key
//! (CN=client-a), and a second, unrelated CA with a client certificate of its own
//! (other-ca.pem, stranger.pem/.key) for trying a refusal. Keys get mode 0600. For tests
//! only: real deployments get certificates from their own CA.

#[path = "../tests/common/certs.rs"]
mod certs;

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: cargo run --example make_certs -- DIR");
        std::process::exit(2);
    };
    let made = certs::make(std::path::Path::new(&dir));
    for path in [
        &made.ca,
        &made.server_cert,
        &made.server_key,
        &made.client_cert,
        &made.client_key,
        &made.other_ca,
        &made.stranger_cert,
        &made.stranger_key,
    ] {
        println!("{}", path.display());
    }
}
