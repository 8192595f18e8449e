//! TLS settings: certificate chains and keys read from PEM files, the certificate chosen per
//! connection by the name the client asks for (SNI, RFC 6066 §3), and the rustls server
//! configuration built from them. Loading is all-or-nothing, so a bad new file on reload
//! leaves the running configuration as it was.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// The one application protocol spoken over TLS (RFC 7301): WebSocket upgrades and pages are
/// both HTTP/1.1 (RFC 8441's WebSocket over HTTP/2 is not spoken).
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// One `--tls-cert` / `--tls-key` pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a certificate or key file could not be used.
#[derive(Debug)]
pub enum TlsFileError {
    /// The file could not be read.
    Read(PathBuf, io::Error),
    /// No `CERTIFICATE` PEM section in the certificate file.
    NoCertificate(PathBuf),
    /// No private key PEM section (PKCS#8, PKCS#1 or SEC1) in the key file.
    NoKey(PathBuf),
    /// The key is of a type or form the crypto provider cannot sign with.
    UnusableKey(PathBuf, rustls::Error),
    /// The key is not the one the certificate was issued for.
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// Different numbers of `--tls-cert` and `--tls-key`.
    Unpaired { certs: usize, keys: usize },
}

impl fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use TlsFileError::*;
        match self {
            Read(p, e) => write!(f, "{}: {}", p.display(), crate::error::io_message(e)),
            NoCertificate(p) => write!(f, "{}: no PEM CERTIFICATE in it", p.display()),
            NoKey(p) => write!(f, "{}: no PEM private key in it", p.display()),
            UnusableKey(p, e) => write!(f, "{}: unusable private key: {e}", p.display()),
            KeyMismatch { cert, key } => {
                write!(f, "{} is not the key of {}", key.display(), cert.display())
            }
            Unpaired { certs, keys } => write!(
                f,
                "--tls-cert given {certs} times and --tls-key {keys} times: they go in pairs"
            ),
        }
    }
}

impl std::error::Error for TlsFileError {}

/// Pairs the flags in the order given.
pub fn pairs(certs: &[PathBuf], keys: &[PathBuf]) -> Result<Vec<CertFiles>, TlsFileError> {
    if certs.len() != keys.len() {
        return Err(TlsFileError::Unpaired {
            certs: certs.len(),
            keys: keys.len(),
        });
    }
    Ok(certs
        .iter()
        .zip(keys)
        .map(|(c, k)| CertFiles {
            cert: c.clone(),
            key: k.clone(),
        })
        .collect())
}

/// The crypto provider: aws-lc-rs (see `Cargo.toml` for why).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads one chain and its key.
pub fn load_pair(
    files: &CertFiles,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsFileError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| TlsFileError::Read(p.to_path_buf(), e));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&files.cert)?)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsFileError::NoCertificate(files.cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
        .map_err(|_| TlsFileError::NoKey(files.key.clone()))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsFileError::KeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        },
        e => TlsFileError::UnusableKey(files.key.clone(), e),
    })
}

/// Builds the server configuration: TLS 1.3 and 1.2, ALPN `http/1.1`, no client certificates,
/// the certificate chosen by SNI among `files` (the first one when none matches).
pub fn server_config(files: &[CertFiles]) -> Result<Arc<ServerConfig>, TlsFileError> {
    let provider = provider();
    let keys = files
        .iter()
        .map(|f| load_pair(f, &provider).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ByServerName { keys }));
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    // TLS 1.3 records are protected by `transport::records` once the handshake is done.
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// The files' modification times, to notice a renewed certificate (`--tls-reload`).
pub fn mtimes(files: &[CertFiles]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .flat_map(|f| [&f.cert, &f.key])
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Where the system's trusted roots are, when `--ca` is not given: `SSL_CERT_FILE`, then
/// the bundles of Debian/Ubuntu/Alpine and Fedora/RHEL (read as PEM; no extra crate).
const SYSTEM_ROOTS: [&str; 2] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// The client's configuration (`wsloop client wss://`): roots from `ca` (PEM) or the system
/// bundle; `insecure` accepts any certificate (handshake signatures are still checked), for
/// loopback tests with a throwaway certificate.
pub fn client_config(
    ca: Option<&Path>,
    insecure: bool,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
        let path = ca
            .map(Path::to_path_buf)
            .or(env)
            .or_else(|| SYSTEM_ROOTS.iter().map(PathBuf::from).find(|p| p.exists()))
            .ok_or("no trusted roots found: give --ca FILE (PEM), or --insecure")?;
        let pem = std::fs::read(&path)
            .map_err(|e| format!("{}: {}", path.display(), crate::error::io_message(&e)))?;
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots
            .add_parsable_certificates(CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok));
        if added == 0 {
            return Err(format!(
                "{}: no usable PEM CERTIFICATE in it",
                path.display()
            ));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    // TLS 1.3 records are protected by `transport::records` once the handshake is done.
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// `--insecure`: any certificate is taken, but the handshake's signatures are still verified.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Chooses the certificate whose names cover the SNI name (RFC 6066 §3); the first one
/// otherwise, and for clients that send no name (an IP address, old clients).
#[derive(Debug)]
struct ByServerName {
    keys: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ByServerName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if self.keys.len() > 1 {
            if let Some(name) = hello
                .server_name()
                .and_then(|n| ServerName::try_from(n).ok())
            {
                let found = self.keys.iter().find(|k| covers(k, &name));
                if found.is_some() {
                    return found.cloned();
                }
            }
        }
        self.keys.first().cloned()
    }
}

fn covers(key: &CertifiedKey, name: &ServerName<'_>) -> bool {
    key.cert.first().is_some_and(|der| {
        webpki::EndEntityCert::try_from(der)
            .is_ok_and(|c| c.verify_is_valid_for_subject_name(name).is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn write_pair(dir: &Path, name: &str, alg: &'static rcgen::SignatureAlgorithm) -> CertFiles {
        let key = if alg == &rcgen::PKCS_RSA_SHA256 {
            // rcgen does not make RSA keys; aws-lc-rs (rustls's provider) does.
            use aws_lc_rs::encoding::AsDer;
            let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
            let der = rsa.as_der().unwrap();
            let der = rustls::pki_types::PrivatePkcs8KeyDer::from(der.as_ref().to_vec());
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, alg).unwrap()
        } else {
            rcgen::KeyPair::generate_for(alg).unwrap()
        };
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let files = CertFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wsloop-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn der(files: &CertFiles) -> Vec<u8> {
        CertificateDer::from_pem_file(&files.cert).unwrap().to_vec()
    }

    /// A handshake in memory, then one message each way; returns the certificate the server
    /// presented.
    fn handshake(config: Arc<ServerConfig>, sni: &str, roots: &[&CertFiles]) -> Vec<u8> {
        let mut store = rustls::RootCertStore::empty();
        for f in roots {
            store.add(CertificateDer::from(der(f))).unwrap();
        }
        let mut cc = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
        cc.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(cc), name).unwrap();
        let mut server = rustls::ServerConnection::new(config).unwrap();
        let mut buf = Vec::new();
        while client.is_handshaking() || server.is_handshaking() || client.wants_write() {
            buf.clear();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut &buf[..]).unwrap();
            server.process_new_packets().unwrap();
            buf.clear();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut &buf[..]).unwrap();
            client.process_new_packets().unwrap();
        }
        assert_eq!(server.alpn_protocol(), Some(ALPN_HTTP11));
        client.writer().write_all(b"hello").unwrap();
        buf.clear();
        client.write_tls(&mut buf).unwrap();
        server.read_tls(&mut &buf[..]).unwrap();
        server.process_new_packets().unwrap();
        let mut got = [0u8; 5];
        server.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        client.peer_certificates().unwrap()[0].to_vec()
    }

    #[test]
    fn ecdsa_ed25519_and_rsa_keys_load_and_sni_chooses() {
        let dir = tempdir("sni");
        let a = write_pair(&dir, "a.test", &rcgen::PKCS_ECDSA_P256_SHA256);
        let b = write_pair(&dir, "b.test", &rcgen::PKCS_ED25519);
        let config = server_config(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(handshake(config.clone(), "a.test", &[&a, &b]), der(&a));
        assert_eq!(handshake(config.clone(), "b.test", &[&a, &b]), der(&b));
        // An RSA key (PKCS#8) loads too.
        let r = write_pair(&dir, "r.test", &rcgen::PKCS_RSA_SHA256);
        let config = server_config(std::slice::from_ref(&r)).unwrap();
        assert_eq!(handshake(config, "r.test", &[&r]), der(&r));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_files_name_what_is_wrong() {
        let dir = tempdir("bad");
        let a = write_pair(&dir, "a.test", &rcgen::PKCS_ECDSA_P256_SHA256);
        let b = write_pair(&dir, "b.test", &rcgen::PKCS_ECDSA_P256_SHA256);
        let missing = CertFiles {
            cert: dir.join("nope.crt"),
            key: a.key.clone(),
        };
        assert!(matches!(
            server_config(&[missing]),
            Err(TlsFileError::Read(..))
        ));
        let swapped = CertFiles {
            cert: a.cert.clone(),
            key: a.cert.clone(),
        };
        assert!(matches!(
            server_config(&[swapped]),
            Err(TlsFileError::NoKey(_))
        ));
        let no_cert = CertFiles {
            cert: a.key.clone(),
            key: a.key.clone(),
        };
        assert!(matches!(
            server_config(&[no_cert]),
            Err(TlsFileError::NoCertificate(_))
        ));
        let mismatch = CertFiles {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        let e = server_config(&[mismatch]).unwrap_err();
        assert!(matches!(e, TlsFileError::KeyMismatch { .. }), "{e}");
        assert!(matches!(
            pairs(std::slice::from_ref(&a.cert), &[]),
            Err(TlsFileError::Unpaired { certs: 1, keys: 0 })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
