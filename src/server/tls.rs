//! TLS for the API port, with rustls; the handshake itself runs in `listeners::tls_handshakes`.

use std::{path::Path, sync::Arc};

use tokio_rustls::rustls;

/// TLS for the API port: rustls, set up as tonic sets it up (ALPN `h2`; with a client CA, a client
/// certificate signed by it is required). The gateway runs the handshake itself, under the
/// handshake timeout and with the HTTP/2 preface timed after it, and puts the `:authority`
/// mender above it on a Unix socket.
#[derive(Clone)]
pub struct TlsConfig(pub(super) Arc<rustls::ServerConfig>);

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

/// Reads the PEM files of `--tls-cert`, `--tls-key` and `--tls-client-ca`; an error names the
/// file, or says what in them rustls refused.
pub fn tls_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> std::io::Result<TlsConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}: {e}"))
    };
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    };
    let certs = |path: &Path| -> std::io::Result<Vec<CertificateDer<'static>>> {
        CertificateDer::pem_slice_iter(&read(path)?)
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(&path.display().to_string(), &e))
    };
    let chain = certs(cert)?;
    let private_key =
        PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| invalid(&key.display().to_string(), &e))?;
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(certs(ca)?);
            let verifier = rustls::server::WebPkiClientVerifier::builder(roots.into())
                .build()
                .map_err(|e| invalid(&ca.display().to_string(), &e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, private_key)
        .map_err(|e| invalid(&cert.display().to_string(), &e))?;
    config.alpn_protocols.push(b"h2".to_vec());
    Ok(TlsConfig(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn tls_files_are_read_as_tonic_reads_them_and_a_refused_one_is_named() {
        let dir = std::env::temp_dir().join(format!("chime-gw-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k, bad) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("bad.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        std::fs::write(
            &bad,
            "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let plain = tls_config(&c, &k, None).unwrap();
        assert_eq!(plain.0.alpn_protocols, [b"h2".to_vec()]);
        // Whether a client certificate is required is tests/operations.rs's (mTLS).
        tls_config(&c, &k, Some(&c)).unwrap();
        for (cert, key, ca, named) in [
            (&bad, &k, None, &bad),
            (&c, &bad, None, &bad),
            (&c, &c, None, &c),
            (&c, &k, Some(&bad), &bad),
        ] {
            let error = tls_config(cert, key, ca.map(|p: &PathBuf| p.as_path())).unwrap_err();
            assert!(
                error.to_string().contains(&named.display().to_string()),
                "{error}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
