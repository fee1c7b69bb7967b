//! The certificate the fake serves `discord.com` with, and the client that
//! trusts it.
//!
//! The certificate is made fresh for each `Loopback` and trusted by nothing
//! else. The client resolves `discord.com` to the fake, refuses to resolve any
//! other name and ignores the system's proxies and root certificates, so a
//! test can never reach the real Discord by mistake.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A self-signed certificate for `discord.com`, with its private key.
pub(crate) struct Identity {
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

/// Makes a fresh certificate for `discord.com`.
///
/// Panics if key generation fails, which only a broken crypto backend does.
pub(crate) fn make_identity() -> Identity {
    let made = rcgen::generate_simple_self_signed(vec!["discord.com".to_owned()])
        .expect("rcgen failed to make a self-signed certificate");
    Identity {
        cert_der: made.cert.der().to_vec(),
        key_der: made.key_pair.serialize_der(),
    }
}

/// The TLS acceptor for the REST listener.
///
/// The ring provider is named explicitly: with both rustls backends compiled
/// into the workspace, the process-wide default would be ambiguous and rustls
/// would panic on first use.
pub(crate) fn acceptor(identity: &Identity) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = CertificateDer::from(identity.cert_der.clone());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key_der.clone()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("rcgen's key matches its certificate");
    // reqwest would pick HTTP/2 if offered; the fake speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Refuses every name; only the `resolve` override for `discord.com` answers.
struct NoDns;

impl reqwest::dns::Resolve for NoDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let message = format!("the loopback client resolves only discord.com, not {name}");
            Err(message.into())
        })
    }
}

/// A reqwest client that reaches the fake as `https://discord.com`.
pub(crate) fn client(rest_addr: SocketAddr, cert_der: &[u8]) -> reqwest::Client {
    let cert = reqwest::Certificate::from_der(cert_der).expect("rcgen makes valid DER");
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert)
        .resolve("discord.com", rest_addr)
        .dns_resolver(Arc::new(NoDns))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("the loopback reqwest client builds")
}
