//! The cluster CA, node certificates, and the rustls/quinn configurations.
//!
//! # What lives here
//!
//! - [`ClusterCa`]: a cluster's certificate authority (a self-signed ECDSA P-256 CA made with
//!   rcgen), which issues node certificates ([`ClusterCa::issue`]) and reads/writes its PEM
//!   files (`ca.pem`, `ca-key.pem`). The `crl-node cert` subcommand is built on it.
//! - [`NodeIdentity`]: one node's certificate, private key and the CA certificate it trusts;
//!   it builds the quinn [`server_config`](NodeIdentity::server_config) and
//!   [`client_config`](NodeIdentity::client_config), and reads/writes `node-<id>.pem` and
//!   `node-<id>-key.pem`.
//! - [`verify_peer`]: after a handshake, checks that the peer's certificate names the node id
//!   the peer claims.
//!
//! # Trust model
//!
//! - One CA per cluster. Every node trusts exactly that CA and nothing else (no system roots).
//! - A node certificate carries the DNS subject alternative name `n<id>.crl`
//!   ([`node_dns_name`]) naming its node id, and the extended key usages serverAuth and
//!   clientAuth: every node is both a TLS server and a TLS client.
//! - Both sides authenticate (mutual TLS 1.3): the server requires a client certificate that
//!   chains to the CA; the client requires the server's certificate to chain to the CA and to
//!   name the node it dialled (clients connect with server name `node_dns_name(peer)`).
//! - The client's certificate proves *some* node id; the id a peer claims in its first (hello)
//!   message must match it, which the transport checks with [`verify_peer`]. A peer failing
//!   either check is refused and logged.
//! - With quinn (TLS 1.3), a client's `connect` can complete before the server has rejected
//!   the client's certificate; only the authenticated hello exchange counts as "connected".
//!
//! # ALPN
//!
//! Both sides offer and require the single protocol [`ALPN`] (`crl/1`); a peer speaking
//! anything else fails the handshake.
//!
//! # Crypto provider
//!
//! rustls is compiled with `ring` only and every configuration is built with
//! `builder_with_provider`, so no process-wide default provider is needed (or installed).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crl_core::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// The ALPN protocol identifier every crl connection negotiates.
pub const ALPN: &[u8] = b"crl/1";

/// How long a connection may be silent before quinn closes it.
const IDLE_TIMEOUT_MS: u32 = 30_000;
/// How often an otherwise idle connection sends a keep-alive.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Validity of a CA certificate, in years from the start of the current year.
const CA_VALID_YEARS: i32 = 30;
/// Validity of a node certificate, in years from the start of the current year.
const NODE_VALID_YEARS: i32 = 10;

/// The DNS name a node's certificate carries: `n<id>.crl` (e.g. `n3.crl`).
pub fn node_dns_name(node: NodeId) -> String {
    format!("n{}.crl", node.0)
}

/// Errors from certificate generation, PEM handling and TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen failed to generate a key pair or a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM input could not be parsed or held no item of the expected kind.
    #[error("bad pem ({what}): {detail}")]
    Pem {
        /// What was being read (e.g. "ca certificate").
        what: &'static str,
        /// Why it was refused.
        detail: String,
    },
    /// Reading or writing a file failed.
    #[error("io error on {}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// rustls refused a configuration (e.g. an unusable key).
    #[error("rustls configuration error: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built.
    #[error("client verifier configuration error: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The rustls configuration offers no cipher suite QUIC can use for initial packets.
    #[error("quic crypto configuration error: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// A certificate could not be parsed or is not a valid certificate.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(webpki::Error),
    /// A certificate does not chain to the cluster CA.
    #[error("certificate not issued by the cluster ca: {0}")]
    NotIssuedByCa(webpki::Error),
    /// The private key does not belong to the certificate.
    #[error("private key does not match the certificate")]
    KeyMismatch,
    /// The CA certificate's subject could not be reproduced for signing with it.
    #[error("unsupported ca certificate: {0}")]
    UnsupportedCa(String),
    /// The connection carries no peer certificate (it should not happen with mutual TLS).
    #[error("no peer certificate")]
    NoPeerCertificate,
    /// The peer's (or a loaded) certificate does not name the node id it was claimed for.
    #[error("certificate not for claimed node {claimed}")]
    NotForNode {
        /// The node id that was claimed.
        claimed: NodeId,
    },
}

fn pem_err(what: &'static str) -> impl FnOnce(rustls_pki_types::pem::Error) -> TlsError {
    move |e| TlsError::Pem {
        what,
        detail: e.to_string(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Approximately the current calendar year (good enough for validity bounds that start on
/// January 1st of the previous year).
fn current_year() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    1970 + (secs / 31_556_952) as i32
}

fn set_validity(params: &mut CertificateParams, years: i32) {
    let year = current_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years, 1, 1);
}

// ---------------------------------------------------------------------------------------------
// Cluster CA
// ---------------------------------------------------------------------------------------------

/// A cluster's certificate authority: its certificate (DER and PEM) and its key pair.
pub struct ClusterCa {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    /// Parameters reproducing the CA's subject, used as the issuer of node certificates.
    params: CertificateParams,
    key: KeyPair,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cert_der_len", &self.cert_der.len())
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Generates a new self-signed CA (ECDSA P-256, basic constraints CA with path length 0)
    /// whose subject names `cluster_name`.
    pub fn generate(cluster_name: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "crl");
        dn.push(DnType::CommonName, format!("crl cluster ca {cluster_name}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALID_YEARS);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            params,
            key,
        })
    }

    /// Loads a CA from its certificate and private key (PKCS#8) in PEM form. The key must
    /// belong to the certificate; this is checked by issuing and verifying a probe
    /// certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(pem_err("ca certificate"))?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| TlsError::Pem {
            what: "ca private key",
            detail: e.to_string(),
        })?;
        let anchor =
            webpki::anchor_from_trusted_cert(&cert_der).map_err(TlsError::InvalidCertificate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = parse_name(&anchor.subject)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = Self {
            cert_pem: pem_encode("CERTIFICATE", &cert_der),
            cert_der,
            params,
            key,
        };
        // Prove that certificates signed with this key and subject chain to the certificate:
        // this catches a key that is not the CA's and a subject we cannot reproduce.
        let probe = ca.issue(NodeId(0))?;
        match verify_chain(&probe.chain, &ca.cert_der) {
            Ok(()) => Ok(ca),
            Err(TlsError::NotIssuedByCa(webpki::Error::UnknownIssuer)) => {
                Err(TlsError::UnsupportedCa(
                    "certificates issued with this subject are not recognised as the ca's".into(),
                ))
            }
            Err(TlsError::NotIssuedByCa(_)) => Err(TlsError::KeyMismatch),
            Err(e) => Err(e),
        }
    }

    /// The CA certificate in PEM form (what every node trusts: `ca.pem`).
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA's private key in PEM (PKCS#8) form. Keep it secret.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The CA certificate in DER form.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Issues a certificate for `node`: a fresh ECDSA P-256 key, the DNS SAN
    /// [`node_dns_name`]`(node)`, usable as TLS client and server, signed by this CA.
    pub fn issue(&self, node: NodeId) -> Result<NodeIdentity, TlsError> {
        let name = node_dns_name(node);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.clone());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::DnsName(name.try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, NODE_VALID_YEARS);
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(NodeIdentity {
            node,
            chain: vec![cert.der().clone()],
            key: Arc::new(PrivateKeyDer::Pkcs8(key.serialize_der().into())),
            ca: self.cert_der.clone(),
        })
    }

    /// Writes `ca.pem` and `ca-key.pem` (mode 0600 on unix) into `dir`, creating it if needed.
    pub fn write_pem_files(&self, dir: &Path) -> Result<(), TlsError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        write_file(&dir.join("ca.pem"), &self.cert_pem, false)?;
        write_file(&dir.join("ca-key.pem"), &self.key_pem(), true)
    }

    /// Reads `ca.pem` and `ca-key.pem` from `dir`.
    pub fn read_pem_files(dir: &Path) -> Result<Self, TlsError> {
        let cert = read_file(&dir.join("ca.pem"))?;
        let key = read_file(&dir.join("ca-key.pem"))?;
        Self::from_pem(&cert, &key)
    }
}

// ---------------------------------------------------------------------------------------------
// Node identity
// ---------------------------------------------------------------------------------------------

/// One node's TLS identity: its node id, certificate chain (leaf first), private key and the
/// cluster CA certificate it trusts.
#[derive(Clone)]
pub struct NodeIdentity {
    node: NodeId,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    ca: CertificateDer<'static>,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node", &self.node)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// The node id this identity's certificate names.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Builds an identity from PEM text: the node's certificate (leaf first, optionally
    /// followed by intermediates), its private key (PKCS#8, SEC1 or PKCS#1) and the CA
    /// certificate. Fails unless the leaf chains to the CA (for both client and server use),
    /// names `node`, and matches the key.
    pub fn from_pem(
        node: NodeId,
        cert_pem: &str,
        key_pem: &str,
        ca_pem: &str,
    ) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_err("node certificate"))?;
        if chain.is_empty() {
            return Err(TlsError::Pem {
                what: "node certificate",
                detail: "no certificate found".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem_err("node key"))?;
        let ca =
            CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(pem_err("ca certificate"))?;
        verify_chain(&chain, &ca)?;
        check_names(&chain[0], node)?;
        rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider()).map_err(
            |e| match e {
                rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch,
                e => TlsError::Rustls(e),
            },
        )?;
        Ok(Self {
            node,
            chain,
            key: Arc::new(key),
            ca,
        })
    }

    /// Reads the certificate, key and CA PEM files and calls [`NodeIdentity::from_pem`].
    pub fn load(node: NodeId, cert: &Path, key: &Path, ca: &Path) -> Result<Self, TlsError> {
        Self::from_pem(node, &read_file(cert)?, &read_file(key)?, &read_file(ca)?)
    }

    /// The certificate chain (leaf first) in PEM form.
    pub fn cert_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect()
    }

    /// The private key in PEM form. Keep it secret.
    pub fn key_pem(&self) -> String {
        match &*self.key {
            PrivateKeyDer::Pkcs1(k) => pem_encode("RSA PRIVATE KEY", k.secret_pkcs1_der()),
            PrivateKeyDer::Sec1(k) => pem_encode("EC PRIVATE KEY", k.secret_sec1_der()),
            PrivateKeyDer::Pkcs8(k) => pem_encode("PRIVATE KEY", k.secret_pkcs8_der()),
            _ => String::new(),
        }
    }

    /// The trusted CA certificate in PEM form.
    pub fn ca_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.ca)
    }

    /// Writes `node-<id>.pem` and `node-<id>-key.pem` (mode 0600 on unix) into `dir`,
    /// creating it if needed. The CA certificate is not written (see
    /// [`ClusterCa::write_pem_files`]).
    pub fn write_pem_files(&self, dir: &Path) -> Result<(), TlsError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let id = self.node.0;
        write_file(&dir.join(format!("node-{id}.pem")), &self.cert_pem(), false)?;
        write_file(
            &dir.join(format!("node-{id}-key.pem")),
            &self.key_pem(),
            true,
        )
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }

    /// The quinn server configuration: TLS 1.3 only, this node's certificate, client
    /// certificates required and verified against the cluster CA, ALPN [`ALPN`], and the
    /// transport settings of [`transport_config`].
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone()).build()?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        config.transport_config(transport_config());
        Ok(config)
    }

    /// The quinn client configuration: TLS 1.3 only, the cluster CA as the only root, this
    /// node's certificate for client authentication, ALPN [`ALPN`], and the transport settings
    /// of [`transport_config`]. Connect with server name [`node_dns_name`]`(peer)`.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(transport_config());
        Ok(config)
    }
}

/// The transport settings shared by client and server: idle timeout 30 s, keep-alive every
/// 5 s (so a healthy but quiet link never idles out).
pub fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
        IDLE_TIMEOUT_MS,
    ))));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    Arc::new(t)
}

/// After a connection is established (either side), checks that the peer's certificate names
/// `claimed` (the DNS SAN [`node_dns_name`]`(claimed)`). The chain to the cluster CA was
/// already verified by rustls during the handshake. A failure is logged (warn) and returned.
pub fn verify_peer(conn: &quinn::Connection, claimed: NodeId) -> Result<(), TlsError> {
    let result = peer_leaf(conn).and_then(|leaf| check_names(&leaf, claimed));
    if let Err(e) = &result {
        tracing::warn!(
            remote = %conn.remote_address(),
            claimed = %claimed,
            error = %e,
            "refusing peer: certificate does not match claimed node id"
        );
    }
    result
}

fn peer_leaf(conn: &quinn::Connection) -> Result<CertificateDer<'static>, TlsError> {
    let identity = conn.peer_identity().ok_or(TlsError::NoPeerCertificate)?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsError::NoPeerCertificate)?;
    chain.into_iter().next().ok_or(TlsError::NoPeerCertificate)
}

/// Checks that `leaf` names `node`.
fn check_names(leaf: &CertificateDer<'_>, node: NodeId) -> Result<(), TlsError> {
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(TlsError::InvalidCertificate)?;
    let name = ServerName::try_from(node_dns_name(node))
        .map_err(|_| TlsError::NotForNode { claimed: node })?;
    cert.verify_is_valid_for_subject_name(&name)
        .map_err(|_| TlsError::NotForNode { claimed: node })
}

/// Checks that `chain[0]` chains (through `chain[1..]`) to `ca`, for both server and client
/// authentication, at the current time.
fn verify_chain(
    chain: &[CertificateDer<'static>],
    ca: &CertificateDer<'static>,
) -> Result<(), TlsError> {
    let leaf = chain.first().ok_or(TlsError::NoPeerCertificate)?;
    let anchor = webpki::anchor_from_trusted_cert(ca)
        .map_err(TlsError::InvalidCertificate)?
        .to_owned();
    let anchors = [anchor];
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(TlsError::InvalidCertificate)?;
    let now = UnixTime::now();
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &chain[1..],
            now,
            usage,
            None,
            None,
        )
        .map_err(TlsError::NotIssuedByCa)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Files, PEM and DER helpers
// ---------------------------------------------------------------------------------------------

fn read_file(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), TlsError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io_err(path))?;
    // `mode` applies only when the file is created: tighten an existing file too.
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(path))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    file.write_all(contents.as_bytes()).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // The base64 alphabet is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Reads one DER TLV from `input`: (tag, contents, rest).
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |l, &b| (l << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

fn decode_oid(bytes: &[u8]) -> Option<Vec<u64>> {
    let mut arcs = Vec::new();
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        value = value.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let (a, b) = if value < 80 {
                    (value / 40, value % 40)
                } else {
                    (2, value - 80)
                };
                arcs.extend([a, b]);
            } else {
                arcs.push(value);
            }
            value = 0;
        } else if i + 1 == bytes.len() {
            return None;
        }
    }
    (!arcs.is_empty()).then_some(arcs)
}

/// Rebuilds an rcgen [`DistinguishedName`] from the contents of an X.509 `Name`, so that
/// certificates rcgen issues carry exactly the CA's subject as their issuer.
fn parse_name(mut name: &[u8]) -> Result<DistinguishedName, TlsError> {
    let bad = |why: &str| TlsError::UnsupportedCa(format!("ca subject: {why}"));
    let mut dn = DistinguishedName::new();
    while !name.is_empty() {
        let (tag, set, rest) = der_next(name).ok_or_else(|| bad("bad der"))?;
        name = rest;
        if tag != 0x31 {
            return Err(bad("expected a set"));
        }
        let (tag, atv, rest) = der_next(set).ok_or_else(|| bad("bad der"))?;
        if tag != 0x30 || !rest.is_empty() {
            return Err(bad("multi-valued or malformed attribute"));
        }
        let (tag, oid, rest) = der_next(atv).ok_or_else(|| bad("bad der"))?;
        if tag != 0x06 {
            return Err(bad("expected an oid"));
        }
        let oid = decode_oid(oid).ok_or_else(|| bad("bad oid"))?;
        let (tag, value, rest) = der_next(rest).ok_or_else(|| bad("bad der"))?;
        if !rest.is_empty() {
            return Err(bad("trailing data in attribute"));
        }
        let text = std::str::from_utf8(value).map_err(|_| bad("attribute is not text"))?;
        let value = match tag {
            0x0c => DnValue::Utf8String(text.to_owned()),
            0x13 => DnValue::PrintableString(text.try_into()?),
            0x16 => DnValue::Ia5String(text.try_into()?),
            _ => return Err(bad("unsupported attribute string type")),
        };
        let ty = DnType::from_oid(&oid);
        if dn.get(&ty).is_some() {
            return Err(bad("repeated attribute type"));
        }
        dn.push(ty, value);
    }
    Ok(dn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::time::timeout;

    const WAIT: Duration = Duration::from_secs(5);

    fn temp_dir(tag: &str) -> PathBuf {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        std::env::temp_dir().join(format!("crl-tls-{tag}-{}-{nanos}-{n}", std::process::id()))
    }

    fn server(id: &NodeIdentity) -> (quinn::Endpoint, SocketAddr) {
        let ep =
            quinn::Endpoint::server(id.server_config().unwrap(), "127.0.0.1:0".parse().unwrap())
                .unwrap();
        let addr = ep.local_addr().unwrap();
        (ep, addr)
    }

    fn client(id: &NodeIdentity) -> quinn::Endpoint {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(id.client_config().unwrap());
        ep
    }

    /// An identity whose certificate comes from `cert_ca` but which trusts `trust_ca`
    /// (impossible through `from_pem`, which checks the chain).
    fn mixed(cert_ca: &ClusterCa, trust_ca: &ClusterCa, node: NodeId) -> NodeIdentity {
        let mut id = cert_ca.issue(node).unwrap();
        id.ca = trust_ca.cert_der().clone();
        id
    }

    #[test]
    fn dns_name() {
        assert_eq!(node_dns_name(NodeId(3)), "n3.crl");
    }

    #[test]
    fn issue_and_pem_round_trip() {
        let ca = ClusterCa::generate("test").unwrap();
        let id = ca.issue(NodeId(7)).unwrap();
        assert_eq!(id.node(), NodeId(7));
        let back =
            NodeIdentity::from_pem(NodeId(7), &id.cert_pem(), &id.key_pem(), &id.ca_pem()).unwrap();
        assert_eq!(back.cert_pem(), id.cert_pem());
        assert_eq!(back.key_pem(), id.key_pem());
        assert_eq!(back.ca_pem(), ca.cert_pem());

        // The CA itself round-trips and issues certificates that chain to the same cert.
        let ca2 = ClusterCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(ca2.cert_pem(), ca.cert_pem());
        let id2 = ca2.issue(NodeId(8)).unwrap();
        NodeIdentity::from_pem(NodeId(8), &id2.cert_pem(), &id2.key_pem(), &ca.cert_pem()).unwrap();
    }

    #[test]
    fn from_pem_rejects_foreign_ca_wrong_node_and_wrong_key() {
        let ca = ClusterCa::generate("a").unwrap();
        let other = ClusterCa::generate("b").unwrap();
        let foreign = other.issue(NodeId(1)).unwrap();
        let err = NodeIdentity::from_pem(
            NodeId(1),
            &foreign.cert_pem(),
            &foreign.key_pem(),
            &ca.cert_pem(),
        )
        .unwrap_err();
        assert!(matches!(err, TlsError::NotIssuedByCa(_)), "{err}");

        let id = ca.issue(NodeId(2)).unwrap();
        let err = NodeIdentity::from_pem(NodeId(1), &id.cert_pem(), &id.key_pem(), &ca.cert_pem())
            .unwrap_err();
        assert!(
            matches!(err, TlsError::NotForNode { claimed } if claimed == NodeId(1)),
            "{err}"
        );
        assert_eq!(err.to_string(), "certificate not for claimed node n1");

        let id3 = ca.issue(NodeId(2)).unwrap();
        let err = NodeIdentity::from_pem(NodeId(2), &id.cert_pem(), &id3.key_pem(), &ca.cert_pem())
            .unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch), "{err}");

        // A CA certificate with another CA's key is refused.
        let err = ClusterCa::from_pem(&ca.cert_pem(), &other.key_pem()).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch), "{err}");

        let err = NodeIdentity::from_pem(NodeId(2), "garbage", &id.key_pem(), &ca.cert_pem())
            .unwrap_err();
        assert!(matches!(err, TlsError::Pem { .. }), "{err}");
    }

    #[tokio::test]
    async fn handshake_same_ca_and_verify_peer() {
        let ca = ClusterCa::generate("test").unwrap();
        let a = ca.issue(NodeId(1)).unwrap();
        let b = ca.issue(NodeId(2)).unwrap();
        let (server_ep, addr) = server(&a);
        let client_ep = client(&b);

        let accept = tokio::spawn(async move {
            let incoming = timeout(WAIT, server_ep.accept()).await.unwrap().unwrap();
            let conn = timeout(WAIT, incoming).await.unwrap().unwrap();
            assert_eq!(
                conn.handshake_data()
                    .unwrap()
                    .downcast::<quinn::crypto::rustls::HandshakeData>()
                    .unwrap()
                    .protocol
                    .as_deref(),
                Some(ALPN)
            );
            verify_peer(&conn, NodeId(2)).unwrap();
            let err = verify_peer(&conn, NodeId(3)).unwrap_err();
            assert!(matches!(err, TlsError::NotForNode { .. }), "{err}");
            // Echo one stream to show the connection works.
            let (mut send, mut recv) = timeout(WAIT, conn.accept_bi()).await.unwrap().unwrap();
            let msg = timeout(WAIT, recv.read_to_end(64)).await.unwrap().unwrap();
            send.write_all(&msg).await.unwrap();
            send.finish().unwrap();
            timeout(WAIT, conn.closed()).await.unwrap();
            server_ep
        });

        let conn = timeout(
            WAIT,
            client_ep.connect(addr, &node_dns_name(NodeId(1))).unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
        verify_peer(&conn, NodeId(1)).unwrap();
        assert!(verify_peer(&conn, NodeId(2)).is_err());
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"hello").await.unwrap();
        send.finish().unwrap();
        let echo = timeout(WAIT, recv.read_to_end(64)).await.unwrap().unwrap();
        assert_eq!(echo, b"hello");
        conn.close(0u32.into(), b"done");
        let server_ep = timeout(WAIT, accept).await.unwrap().unwrap();
        server_ep.close(0u32.into(), b"");
        client_ep.wait_idle().await;
    }

    #[tokio::test]
    async fn client_with_foreign_certificate_is_refused() {
        let ca = ClusterCa::generate("a").unwrap();
        let other = ClusterCa::generate("b").unwrap();
        let srv = ca.issue(NodeId(1)).unwrap();
        // Trusts the cluster CA (so it accepts the server) but presents a foreign certificate.
        let intruder = mixed(&other, &ca, NodeId(2));
        let (server_ep, addr) = server(&srv);
        let client_ep = client(&intruder);

        let accept = tokio::spawn(async move {
            // The server must never yield a connection whose handshake completed.
            let outcome = match timeout(WAIT, server_ep.accept()).await {
                Err(_) | Ok(None) => None,
                Ok(Some(incoming)) => Some(timeout(WAIT, incoming).await),
            };
            (server_ep, outcome)
        });

        // With TLS 1.3 `connect` may complete on the client before the server refuses.
        let client_side = timeout(WAIT, async {
            let conn = client_ep
                .connect(addr, &node_dns_name(NodeId(1)))
                .unwrap()
                .await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(b"hello").await?;
            send.finish()?;
            let reply = recv.read_to_end(64).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(reply)
        })
        .await;
        assert!(
            !matches!(client_side, Ok(Ok(_))),
            "the intruder got a working stream"
        );

        let (server_ep, outcome) = timeout(WAIT * 2, accept).await.unwrap().unwrap();
        match outcome {
            None => panic!("the intruder's handshake never reached the server"),
            // The expected outcome: the handshake fails on the server (bad client cert).
            Some(Ok(Err(_))) => {}
            Some(Ok(Ok(conn))) => panic!(
                "server accepted a foreign client: {:?}",
                conn.remote_address()
            ),
            Some(Err(_)) => panic!("server handshake neither completed nor failed"),
        }
        server_ep.close(0u32.into(), b"");
        client_ep.close(0u32.into(), b"");
    }

    #[tokio::test]
    async fn server_with_foreign_certificate_is_refused() {
        let ca = ClusterCa::generate("a").unwrap();
        let other = ClusterCa::generate("b").unwrap();
        let impostor = other.issue(NodeId(1)).unwrap();
        let me = ca.issue(NodeId(2)).unwrap();
        let (server_ep, addr) = server(&impostor);
        let client_ep = client(&me);
        let accept = tokio::spawn(async move {
            if let Ok(Some(incoming)) = timeout(WAIT, server_ep.accept()).await {
                let _ = timeout(WAIT, incoming).await;
            }
            server_ep
        });
        let result = timeout(
            WAIT,
            client_ep.connect(addr, &node_dns_name(NodeId(1))).unwrap(),
        )
        .await
        .unwrap();
        assert!(result.is_err(), "client accepted a foreign server");

        // A server of the right CA but the wrong node id is refused too.
        // (quinn only answers a handshake once the server accepts the incoming connection.)
        let wrong = ca.issue(NodeId(3)).unwrap();
        let (wrong_ep, wrong_addr) = server(&wrong);
        let wrong_accept = tokio::spawn(async move {
            if let Ok(Some(incoming)) = timeout(WAIT, wrong_ep.accept()).await {
                let _ = timeout(WAIT, incoming).await;
            }
            wrong_ep
        });
        let result = timeout(
            WAIT,
            client_ep
                .connect(wrong_addr, &node_dns_name(NodeId(1)))
                .unwrap(),
        )
        .await
        .unwrap();
        assert!(
            result.is_err(),
            "client accepted a server naming another node"
        );

        let server_ep = timeout(WAIT * 2, accept).await.unwrap().unwrap();
        let wrong_ep = timeout(WAIT * 2, wrong_accept).await.unwrap().unwrap();
        server_ep.close(0u32.into(), b"");
        wrong_ep.close(0u32.into(), b"");
        client_ep.close(0u32.into(), b"");
    }

    #[test]
    fn pem_files_round_trip() {
        let dir = temp_dir("files");
        let ca = ClusterCa::generate("files").unwrap();
        ca.write_pem_files(&dir).unwrap();
        let id = ca.issue(NodeId(4)).unwrap();
        id.write_pem_files(&dir).unwrap();

        let ca2 = ClusterCa::read_pem_files(&dir).unwrap();
        assert_eq!(ca2.cert_pem(), ca.cert_pem());
        assert_eq!(ca2.key_pem(), ca.key_pem());
        let id2 = NodeIdentity::load(
            NodeId(4),
            &dir.join("node-4.pem"),
            &dir.join("node-4-key.pem"),
            &dir.join("ca.pem"),
        )
        .unwrap();
        assert_eq!(id2.cert_pem(), id.cert_pem());
        assert_eq!(id2.key_pem(), id.key_pem());
        assert!(matches!(
            NodeIdentity::load(
                NodeId(5),
                &dir.join("node-4.pem"),
                &dir.join("node-4-key.pem"),
                &dir.join("ca.pem"),
            ),
            Err(TlsError::NotForNode { .. })
        ));
        let missing = NodeIdentity::load(
            NodeId(4),
            &dir.join("nope.pem"),
            &dir.join("node-4-key.pem"),
            &dir.join("ca.pem"),
        )
        .unwrap_err();
        assert!(missing.to_string().contains("nope.pem"), "{missing}");

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["ca-key.pem", "node-4-key.pem"] {
                let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
