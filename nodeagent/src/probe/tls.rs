//! The TLS side of HTTPS probes and lifecycle hooks, made as the kubelet
//! makes it (`InsecureSkipVerify`): any certificate is accepted without
//! checking its chain, names or dates, because a pod's certificate is
//! seldom issued for the pod IP and a probe asks "is it up?", not "is it
//! who it claims to be?". The handshake itself is still verified with the
//! crypto provider, so the server must hold the key of the certificate it
//! shows. SNI carries the action's `host` when that is a name; an IP
//! address (the pod IP by default) sends none, as TLS requires.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{self, ring, WebPkiSupportedAlgorithms};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio_rustls::TlsConnector;

/// Go's message when an HTTPS request is answered in plain HTTP; the
/// kubelet reports it as is, and retries a lifecycle hook over HTTP on it.
pub const HTTP_RESPONSE_TO_HTTPS: &str = "http: server gave HTTP response to HTTPS client";

/// How many bytes Go looks at to recognise a plain-HTTP answer.
const HTTP_PREFIX: &[u8; 5] = b"HTTP/";

/// Runs the client handshake over `stream` (already connected to `addr`).
/// Errors are in the kubelet's words where Go has a distinct one.
pub async fn connect<S>(
    stream: S,
    host: Option<&str>,
    addr: SocketAddr,
) -> Result<impl AsyncRead + AsyncWrite + Unpin, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connector = TlsConnector::from(client_config()?);
    let name = server_name(host, addr);
    match connector
        .connect(name, Sniffed::new(stream))
        .into_fallible()
        .await
    {
        Ok(tls) => Ok(tls),
        Err((e, stream)) => Err(handshake_error(&e, stream.first())),
    }
}

/// The name the server is asked for: `host` when it is a DNS name, else
/// the address connected to (which rustls, like Go, does not send as SNI).
fn server_name(host: Option<&str>, addr: SocketAddr) -> ServerName<'static> {
    host.and_then(|h| ServerName::try_from(h).ok())
        .map(|n| n.to_owned())
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
}

/// What a failed handshake is reported as: Go's message for a server
/// that answered in plain HTTP, `EOF` for one that hung up, else the TLS
/// error.
fn handshake_error(e: &io::Error, first: &[u8]) -> String {
    if first == HTTP_PREFIX {
        return HTTP_RESPONSE_TO_HTTPS.to_string();
    }
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return "EOF".to_string();
    }
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(tls) => format!("tls: {tls}"),
        None => e.to_string(),
    }
}

/// The one client configuration, built on first use: the `ring`
/// provider, TLS 1.2 and 1.3, no client certificate, and the verifier
/// that skips certificate checks.
fn client_config() -> Result<Arc<ClientConfig>, String> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(config.clone());
    }
    let provider = Arc::new(ring::default_provider());
    let verifier = Arc::new(SkipCertificateChecks {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: building the client configuration: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // The request is HTTP/1.1; say so to servers that choose by ALPN.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(CONFIG.get_or_init(|| Arc::new(config)).clone())
}

/// Accepts every server certificate (the kubelet's `InsecureSkipVerify`)
/// but checks the handshake signatures against it, so only the holder of
/// the certificate's key completes the handshake.
#[derive(Debug)]
struct SkipCertificateChecks {
    /// The provider's signature algorithms.
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SkipCertificateChecks {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A stream that keeps the first bytes read from it, so that a failed
/// handshake can tell a plain-HTTP answer ("HTTP/…") from other garbage,
/// as Go does.
struct Sniffed<S> {
    inner: S,
    first: [u8; HTTP_PREFIX.len()],
    len: usize,
}

impl<S> Sniffed<S> {
    fn new(inner: S) -> Sniffed<S> {
        Sniffed {
            inner,
            first: [0; HTTP_PREFIX.len()],
            len: 0,
        }
    }

    /// The first bytes the peer sent (fewer if it sent fewer).
    fn first(&self) -> &[u8] {
        &self.first[..self.len]
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniffed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let new = &buf.filled()[before..];
            let take = (this.first.len() - this.len).min(new.len());
            this.first[this.len..this.len + take].copy_from_slice(&new[..take]);
            this.len += take;
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniffed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn sni_names_a_host_but_never_an_address() {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), 443);
        assert_eq!(
            server_name(Some("web.default.svc"), addr),
            ServerName::try_from("web.default.svc").expect("name")
        );
        assert!(matches!(
            server_name(Some("fd00::1"), addr),
            ServerName::IpAddress(_)
        ));
        assert_eq!(
            server_name(None, addr),
            ServerName::IpAddress(addr.ip().into())
        );
    }

    #[test]
    fn handshake_errors_read_like_go() {
        let corrupt = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        assert_eq!(handshake_error(&corrupt, b"HTTP/"), HTTP_RESPONSE_TO_HTTPS);
        let tls = handshake_error(&corrupt, b"SSH-2");
        assert!(tls.starts_with("tls: "), "{tls}");
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof");
        assert_eq!(handshake_error(&eof, b""), "EOF");
    }
}
