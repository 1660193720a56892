//! TLS with certificates chosen by SNI (made here with rcgen), HTTP/2 over
//! TLS, h2c with prior knowledge, and a WebSocket tunnelled through.

mod util;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use util::*;

fn client_config(roots: &[Vec<u8>]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for der in roots {
        store.add(CertificateDer::from(der.clone())).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}

async fn h2_get(
    io: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    uri: &str,
) -> Got {
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(Request::get(uri).body(full("")).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let (parts, body) = resp.into_parts();
    Got {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_with_certificates_by_sni() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let a_der = make_cert(dir.path(), "a", &["a.test"]);
    let b_der = make_cert(dir.path(), "b", &["b.test"]);
    let routes = format!(
        r#"
tls:
  - {{ server_names: [a.test], certificate: a.pem, key: a.key }}
  - {{ server_names: [b.test], certificate: b.pem, key: b.key }}
upstreams:
  - name: a
    endpoints: ["{}"]
  - name: b
    endpoints: ["{}"]
routes:
  - name: a
    match: {{ host: a.test, path_prefix: "/" }}
    upstream: a
  - name: b
    match: {{ host: b.test, path_prefix: "/" }}
    upstream: b
"#,
        a.addr, b.addr
    );
    let p = Proxy::start_in(
        dir,
        "listen_tls: [\"127.0.0.1:0\"]\n",
        &[("routes.yaml", &routes)],
    );
    let tls_addr = p.https.unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(client_config(&[a_der.clone(), b_der.clone()]));
    for (name, der, backend) in [("a.test", &a_der, "a"), ("b.test", &b_der, "b")] {
        let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
        let tls = connector
            .connect(ServerName::try_from(name).unwrap().to_owned(), tcp)
            .await
            .unwrap();
        let (_, session) = tls.get_ref();
        assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(
            session.peer_certificates().unwrap()[0].as_ref(),
            der.as_slice()
        );
        let r = h2_get(tls, &format!("https://{name}/hello")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.backend().as_deref(), Some(backend));
        assert_eq!(r.json()["headers"]["x-forwarded-proto"][0], "https");
        assert_eq!(r.json()["headers"]["host"][0], name);
    }
    // An unknown name fails the handshake (tls_unknown_sni: reject).
    let tcp = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let res = connector
        .connect(ServerName::try_from("c.test").unwrap().to_owned(), tcp)
        .await;
    assert!(res.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_and_websocket_tunnel() {
    let a = Backend::start("a").await;
    let routes = format!(
        r#"
upstreams:
  - name: a
    endpoints: ["{}"]
routes:
  - name: r
    match: {{ path_prefix: "/" }}
    upstream: a
    websocket: true
"#,
        a.addr
    );
    let p = Proxy::start("", &routes);
    let tcp = tokio::net::TcpStream::connect(p.http).await.unwrap();
    let r = h2_get(tcp, &format!("http://{}/h2c", p.http)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/h2c");
    assert_eq!(r.json()["headers"]["via"][0], "2.0 aegis");

    let mut s = std::net::TcpStream::connect(p.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1);
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"));
    for msg in [&b"\x81\x05hello"[..], b"second frame, longer"] {
        s.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_swap_with_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let old = make_cert(dir.path(), "a", &["a.test"]);
    let routes = |cert: &str| {
        format!(
            r#"
tls:
  - {{ server_names: [a.test], certificate: {cert}.pem, key: {cert}.key, default: true }}
routes:
  - name: r
    match: {{ path_prefix: "/" }}
    respond: {{ body: "ok" }}
"#
        )
    };
    let p = Proxy::start_in(
        dir,
        "listen_tls: [\"127.0.0.1:0\"]\ntls_unknown_sni: default_certificate\n",
        &[("routes.yaml", &routes("a"))],
    );
    let new = make_cert(p.path(), "a2", &["a.test"]);
    let connector = tokio_rustls::TlsConnector::from(client_config(&[old.clone(), new.clone()]));
    let addr = p.https.unwrap();
    let leaf = |name: &'static str| {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let tls = connector
                .connect(ServerName::try_from(name).unwrap().to_owned(), tcp)
                .await;
            tls.map(|t| {
                t.get_ref().1.peer_certificates().unwrap()[0]
                    .as_ref()
                    .to_vec()
            })
        }
    };
    assert_eq!(leaf("a.test").await.unwrap(), old);
    p.write("routes.yaml", &routes("a2"));
    let pp = std::sync::Arc::new(p);
    let p2 = pp.clone();
    tokio::task::spawn_blocking(move || p2.reload())
        .await
        .unwrap();
    assert_eq!(leaf("a.test").await.unwrap(), new);
}
