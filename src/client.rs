//! A small mutual-TLS HTTP/1.1 client of the appliance's API, for `hcert-signer keys`, the load
//! tool and the integration tests: one connection, requests in sequence, JSON in and out.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::{Error, Result};

/// TLS settings of a client: the CA that signed the server, and the client's own certificate.
#[derive(Clone)]
pub struct ClientTls(Arc<rustls::ClientConfig>);

impl ClientTls {
    /// Reads the server CA and the client certificate and key (PEM files).
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<ClientTls> {
        let mut roots = rustls::RootCertStore::empty();
        for c in crate::api::tls::load_certs(ca)? {
            roots.add(c).map_err(|e| Error::Config(format!("{}: {e}", ca.display())))?;
        }
        let chain = crate::api::tls::load_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| Error::Config(format!("{}: {e}", key.display())))?;
        Self::build(roots, Some((chain, key)))
    }

    /// The rustls configuration, for tests that speak raw TLS.
    pub fn rustls_config(&self) -> Arc<rustls::ClientConfig> {
        self.0.clone()
    }

    /// A client that presents no certificate (to test that the server refuses it).
    pub fn anonymous(ca: &Path) -> Result<ClientTls> {
        let mut roots = rustls::RootCertStore::empty();
        for c in crate::api::tls::load_certs(ca)? {
            roots.add(c).map_err(|e| Error::Config(format!("{}: {e}", ca.display())))?;
        }
        Self::build(roots, None)
    }

    fn build(
        roots: rustls::RootCertStore,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<ClientTls> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::Config(format!("client certificate: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ClientTls(Arc::new(config)))
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::Io(std::io::Error::other(format!("response is not JSON: {e}"))))
    }
}

/// One open connection to the API.
pub struct ApiClient {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl ApiClient {
    /// Connects to `addr`, checking the server's certificate for `server_name`.
    pub async fn connect(addr: SocketAddr, server_name: &str, tls: &ClientTls) -> Result<ApiClient> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        Self::over(tcp, addr, server_name, tls).await
    }

    /// Like [`connect`](Self::connect), from the local address `source` (a test's clients on
    /// distinct loopback addresses, as distinct hosts behind one balancer).
    pub async fn connect_from(
        source: std::net::IpAddr,
        addr: SocketAddr,
        server_name: &str,
        tls: &ClientTls,
    ) -> Result<ApiClient> {
        let socket = if source.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(source, 0))?;
        let tcp = socket.connect(addr).await?;
        Self::over(tcp, addr, server_name, tls).await
    }

    async fn over(
        tcp: tokio::net::TcpStream,
        addr: SocketAddr,
        server_name: &str,
        tls: &ClientTls,
    ) -> Result<ApiClient> {
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| Error::Config(format!("server name: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(tls.0.clone()).connect(name, tcp).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(ApiClient { sender, host: addr.to_string() })
    }

    /// Sends a request with an optional JSON body and reads the whole response. A 429 (rate
    /// limited) is retried after the server's `Retry-After`, a few times, as a polite client does
    /// — unless the server closes the connection with it (too many connections: this one is
    /// gone, and the caller must decide).
    pub async fn request(&mut self, method: Method, path: &str, json: Option<Vec<u8>>) -> Result<Reply> {
        let body = Bytes::from(json.unwrap_or_default());
        let is_json = !body.is_empty();
        let mut attempt = 0;
        loop {
            let reply = self.send(method.clone(), path, is_json, body.clone()).await?;
            attempt += 1;
            let closing = reply.headers.get(header::CONNECTION).is_some_and(|v| v.as_bytes() == b"close");
            if reply.status != StatusCode::TOO_MANY_REQUESTS || attempt >= 5 || closing {
                return Ok(reply);
            }
            let wait = reply
                .headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(1)
                .min(30);
            tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
        }
    }

    /// Sends a body of another type (a PEM certificate) and reads the whole response.
    pub async fn request_typed(
        &mut self,
        method: Method,
        path: &str,
        content_type: &'static str,
        body: Vec<u8>,
    ) -> Result<Reply> {
        self.send_typed(method, path, Some(content_type), Bytes::from(body)).await
    }

    async fn send(&mut self, method: Method, path: &str, is_json: bool, body: Bytes) -> Result<Reply> {
        self.send_typed(method, path, is_json.then_some("application/json"), body).await
    }

    async fn send_typed(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&'static str>,
        body: Bytes,
    ) -> Result<Reply> {
        let mut req = Request::builder().method(method).uri(path).header(header::HOST, &self.host);
        if let Some(t) = content_type {
            req = req.header(header::CONTENT_TYPE, t);
        }
        let req = req.body(Full::new(body)).map_err(|e| Error::Io(std::io::Error::other(e)))?;
        self.sender.ready().await.map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let resp = self.sender.send_request(req).await.map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| Error::Io(std::io::Error::other(e)))?.to_bytes();
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    }

    /// GET.
    pub async fn get(&mut self, path: &str) -> Result<Reply> {
        self.request(Method::GET, path, None).await
    }

    /// POST a JSON value.
    pub async fn post(&mut self, path: &str, body: &serde_json::Value) -> Result<Reply> {
        self.request(Method::POST, path, Some(serde_json::to_vec(body).unwrap_or_default())).await
    }

    /// DELETE.
    pub async fn delete(&mut self, path: &str) -> Result<Reply> {
        self.request(Method::DELETE, path, None).await
    }
}

/// An officer's (or any client's) connection profile, a small TOML file that `dev-init` writes
/// per officer: where the appliance is and which certificate to present.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The API address, `HOST:PORT`: a DNS name, an IPv4 address or a bracketed IPv6 address.
    pub address: String,
    /// The name the server certificate must carry (default: the address's DNS name, or
    /// `localhost` for an IP address).
    #[serde(default)]
    pub server_name: Option<String>,
    /// The CA that signed the server certificate, PEM.
    pub ca: std::path::PathBuf,
    /// This client's certificate, PEM.
    pub cert: std::path::PathBuf,
    /// This client's private key, PEM.
    pub key: std::path::PathBuf,
}

/// Splits `HOST:PORT` (`[v6]:PORT` for IPv6) into its host and port.
pub fn split_host_port(address: &str) -> Result<(&str, u16)> {
    let bad = |why: &str| {
        Error::Config(format!("address {address:?}: {why}; expected HOST:PORT, e.g. signer.example.org:8443"))
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port: u16 = port.parse().map_err(|_| bad("the port is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(bad("port 0"));
    }
    let host = match host.strip_prefix('[') {
        Some(v6) => {
            let v6 = v6.strip_suffix(']').ok_or_else(|| bad("an unclosed '['"))?;
            v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad("not an IPv6 address in brackets"))?;
            v6
        }
        None if host.contains(':') => return Err(bad("an IPv6 address needs brackets: [addr]:port")),
        None => host,
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((host, port))
}

impl Profile {
    /// Reads a profile; relative paths are taken from the file's folder.
    pub fn load(path: &Path) -> Result<Profile> {
        let text = std::fs::read_to_string(path).map_err(Error::file(path))?;
        let mut p: Profile =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        split_host_port(&p.address).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for f in [&mut p.ca, &mut p.cert, &mut p.key] {
            if f.is_relative() {
                *f = base.join(&*f);
            }
        }
        Ok(p)
    }

    /// The profile a command was given (`--profile`, or `HCERT_PROFILE` through clap).
    pub fn given(path: Option<&Path>) -> Result<Profile> {
        let path = path.ok_or_else(|| Error::Config("give --profile FILE (or set HCERT_PROFILE)".into()))?;
        Profile::load(path)
    }

    /// The name the server's certificate is checked for.
    pub fn server_name(&self) -> String {
        if let Some(name) = &self.server_name {
            return name.clone();
        }
        match split_host_port(&self.address) {
            Ok((host, _)) if host.parse::<std::net::IpAddr>().is_err() => host.to_owned(),
            _ => "localhost".into(),
        }
    }

    /// Connects with this profile's identity, to the first of the address's resolved
    /// addresses that answers.
    pub async fn connect(&self) -> Result<ApiClient> {
        let tls = ClientTls::from_files(&self.ca, &self.cert, &self.key)?;
        let (host, port) = split_host_port(&self.address)?;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            // Not a configuration error: a name that does not resolve now may later.
            .map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("cannot resolve {host:?}: {e}"))))?
            .collect();
        let mut last = None;
        for addr in addrs {
            match ApiClient::connect(addr, &self.server_name(), &tls).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .unwrap_or_else(|| Error::Io(std::io::Error::other(format!("{host:?} resolves to no address")))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_and_port_with_a_name_an_ipv4_or_a_bracketed_ipv6() {
        assert_eq!(split_host_port("signer.moh.gov.vn:8443").unwrap(), ("signer.moh.gov.vn", 8443));
        assert_eq!(split_host_port("127.0.0.1:8443").unwrap(), ("127.0.0.1", 8443));
        assert_eq!(split_host_port("[::1]:8443").unwrap(), ("::1", 8443));
        for (bad, why) in [
            ("signer.moh.gov.vn", "no port"),
            ("signer:http", "not a number"),
            ("signer:0", "port 0"),
            (":8443", "no host"),
            ("::1:8443", "needs brackets"),
            ("[::1:8443", "unclosed"),
            ("[nope]:8443", "not an IPv6"),
        ] {
            let e = split_host_port(bad).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("HOST:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_server_name_defaults_to_the_host_name_or_localhost_for_an_ip() {
        let profile = |address: &str, server_name: Option<&str>| Profile {
            address: address.into(),
            server_name: server_name.map(Into::into),
            ca: "ca.pem".into(),
            cert: "c.pem".into(),
            key: "c.key".into(),
        };
        assert_eq!(profile("signer.moh.gov.vn:8443", None).server_name(), "signer.moh.gov.vn");
        assert_eq!(profile("10.0.0.5:8443", None).server_name(), "localhost");
        assert_eq!(profile("10.0.0.5:8443", Some("signer.moh.gov.vn")).server_name(), "signer.moh.gov.vn");
    }
}
