//! TLS over real sockets: HTTPS ingress (HTTP/1.1 and h2 through ALPN)
//! with a CA made in the test, the transport-encryption levels, deliveries
//! to HTTPS subscribers with and without the right CA, and certificates
//! rotated under a client that keeps sending.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pilotlight::cloudevent::{Event, parse_http};
use pilotlight::server::TlsConfig;
use pilotlight::tls::{CertFiles, TransportEncryption};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::{Subscriber, TestServer, admin_list, broker, send, wait_accepted};
use tokio::net::TcpStream;

/// A CA made here, and leaf certificates it signs.
struct TestCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pem: String,
}

/// A leaf certificate and its key, in PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).expect("a CA certificate");
        TestCa {
            pem: cert.pem(),
            params,
            key,
        }
    }

    /// A certificate for `localhost` and 127.0.0.1.
    fn leaf(&self, name: &str) -> Leaf {
        let key = rcgen::KeyPair::generate().expect("a key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("a leaf certificate");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

impl Leaf {
    fn write(&self, dir: &Path) -> CertFiles {
        let files = CertFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            flags: "--tls-cert/--tls-key",
        };
        std::fs::write(&files.cert, &self.cert).expect("write cert");
        std::fs::write(&files.key, &self.key).expect("write key");
        files
    }

    /// Rewrites the pair the way a rotation does: each file replaced whole.
    fn replace(&self, files: &CertFiles) {
        for (path, text) in [(&files.cert, &self.cert), (&files.key, &self.key)] {
            let new = path.with_extension("new");
            std::fs::write(&new, text).expect("write");
            std::fs::rename(&new, path).expect("rename");
        }
    }

    fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert.as_bytes()).expect("pem")
    }
}

/// A TLS connection to `addr` that trusts `cas`, offering `alpn`.
async fn connect(
    addr: SocketAddr,
    cas: &[&TestCa],
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots
            .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).expect("pem"))
            .expect("a root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("a name");
    connector.connect(name, tcp).await
}

/// A binary-mode event posted to `path`.
fn event_request(path: &str, id: &str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "localhost")
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/tls-test")
        .header("ce-type", "demo")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("request")
}

/// An HTTP/1.1 connection over `stream`.
async fn http1(
    stream: tokio_rustls::client::TlsStream<TcpStream>,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("an HTTP/1.1 handshake");
    tokio::spawn(connection);
    sender
}

async fn body_text(response: http::Response<Incoming>) -> (StatusCode, String) {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Starts pilotlight with `level` and `leaf` as the main certificate.
async fn start_tls(
    files: &[(&str, &str)],
    level: TransportEncryption,
    leaf: &Leaf,
    dir: &Path,
) -> (TestServer, CertFiles) {
    let cert_files = leaf.write(dir);
    let main = cert_files.clone();
    let server = TestServer::start_with(files, move |config| {
        config.tls = TlsConfig {
            level,
            main: Some(main),
            ..TlsConfig::default()
        };
    })
    .await;
    (server, cert_files)
}

fn cert_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_owned();
    (dir, path)
}

/// The first broker's status, as the admin API shows it.
async fn broker_status(server: &TestServer) -> serde_json::Value {
    let brokers = admin_list(server.server.admin, "brokers").await;
    brokers[0]["status"].clone()
}

#[tokio::test]
async fn https_ingress_speaks_http1_and_h2_and_strict_refuses_plain_http() {
    let ca = TestCa::new("pilotlight test CA");
    let (_keep, dir) = cert_dir();
    let subscriber = Subscriber::accepting().await;
    // Broker a's trigger delivers to broker b by reference: in strict mode
    // that hop is HTTPS to pilotlight itself, trusted as its own certificate.
    let manifests = format!(
        "{}---\n{}---\n{}---\n{}",
        broker("a", ""),
        broker("b", ""),
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: to-b\nspec:\n  broker: a\n  subscriber:\n    ref:\n      apiVersion: eventing.knative.dev/v1\n      kind: Broker\n      name: b\n",
        support::trigger("out", "b", &subscriber.url("/"), ""),
    );
    let (server, _) = start_tls(
        &[("m.yaml", &manifests)],
        TransportEncryption::Strict,
        &ca.leaf("pilotlight"),
        &dir,
    )
    .await;
    let listen = server.server.listen;

    // HTTP/1.1 through ALPN.
    let stream = connect(listen, &[&ca], &[b"http/1.1"]).await.expect("TLS");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut h1 = http1(stream).await;
    let mut accepted = false;
    for attempt in 0..200 {
        let response = h1
            .send_request(event_request("/default/a", &format!("h1-{attempt}")))
            .await
            .expect("a response");
        if response.status() == StatusCode::ACCEPTED {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(accepted, "the broker never accepted over HTTPS");

    // HTTP/2 through ALPN.
    let stream = connect(listen, &[&ca], &[b"h2", b"http/1.1"])
        .await
        .expect("TLS");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("an h2 handshake");
    tokio::spawn(connection);
    let mut request = event_request("https://localhost/default/a", "h2-1");
    request.headers_mut().remove("host");
    let response = h2.send_request(request).await.expect("a response");
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    // Both events went a -> b (HTTPS, pilotlight's own certificate) -> out.
    let events = subscriber.wait_for(2, Duration::from_secs(20)).await;
    let mut ids: Vec<&str> = events.iter().map(Event::id).collect();
    ids.sort();
    assert_eq!(ids.last(), Some(&"h2-1"));

    // A client that does not trust the CA fails its handshake.
    let stranger = TestCa::new("someone else");
    let err = connect(listen, &[&stranger], &[b"http/1.1"])
        .await
        .expect_err("an unknown issuer");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    // Plain HTTP is refused with a message that says what to do.
    let reply = send(&format!("http://{listen}/default/a"), "plain", "demo").await;
    assert_eq!(reply.status, StatusCode::UPGRADE_REQUIRED);
    assert!(
        reply
            .body
            .contains("HTTPS only (transport-encryption: strict)")
            && reply.body.contains(&format!("https://{listen}/default/a")),
        "{}",
        reply.body
    );

    // Status shows the https address only.
    let status = broker_status(&server).await;
    let url = format!("https://{listen}/default/a");
    assert_eq!(status["address"]["url"], url.as_str(), "{status}");
    assert_eq!(status["address"]["name"], "https");
    assert_eq!(status["addresses"].as_array().map(Vec::len), Some(1));
    server.server.shutdown().await;
}

#[tokio::test]
async fn permissive_serves_http_and_https_on_one_port() {
    let ca = TestCa::new("pilotlight test CA");
    let (_keep, dir) = cert_dir();
    let (server, _) = start_tls(
        &[("b.yaml", &broker("default", ""))],
        TransportEncryption::Permissive,
        &ca.leaf("pilotlight"),
        &dir,
    )
    .await;
    let listen = server.server.listen;
    wait_accepted(
        &format!("http://{listen}/default/default"),
        "plain",
        Duration::from_secs(10),
    )
    .await;
    let mut h1 = http1(connect(listen, &[&ca], &[b"http/1.1"]).await.expect("TLS")).await;
    let response = h1
        .send_request(event_request("/default/default", "tls"))
        .await
        .expect("a response");
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    // Knative's permissive status: address http, addresses https then http.
    let status = broker_status(&server).await;
    let http = format!("http://{listen}/default/default");
    let https = format!("https://{listen}/default/default");
    assert_eq!(status["address"]["url"], http.as_str(), "{status}");
    let addresses: Vec<(String, String)> = status["addresses"]
        .as_array()
        .expect("addresses")
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap_or_default().to_owned(),
                a["url"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        addresses,
        vec![("https".to_owned(), https), ("http".to_owned(), http)]
    );
    server.server.shutdown().await;
}

/// An HTTPS subscriber serving `leaf`: the events it received.
struct HttpsSubscriber {
    addr: SocketAddr,
    events: Arc<Mutex<Vec<Event>>>,
}

impl HttpsSubscriber {
    async fn start(leaf: &Leaf) -> HttpsSubscriber {
        let chain = vec![leaf.der()];
        let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("a server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let events: Arc<Mutex<Vec<Event>>> = Arc::default();
        let kept = events.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let events = kept.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let events = events.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            if let Ok((_, mut parsed)) = parse_http(&parts.headers, body)
                                && let Some(event) = parsed.pop()
                            {
                                events.lock().expect("lock").push(event);
                            }
                            let mut response = http::Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = StatusCode::ACCEPTED;
                            Ok::<_, hyper::Error>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HttpsSubscriber { addr, events }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    fn ids(&self) -> Vec<String> {
        let events = self.events.lock().expect("lock");
        events.iter().map(|e| e.id().to_owned()).collect()
    }
}

/// A CA's PEM as a YAML block scalar indented by `indent` spaces.
fn yaml_block(pem: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    pem.lines().map(|line| format!("{pad}{line}\n")).collect()
}

#[tokio::test]
async fn https_deliveries_verify_the_subscriber_against_cacerts_and_trust_bundles() {
    let subscriber_ca = TestCa::new("subscriber CA");
    let https = HttpsSubscriber::start(&subscriber_ca.leaf("subscriber")).await;
    let dead_letters = Subscriber::accepting().await;
    let untrusted = format!(
        "{}---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: untrusted\nspec:\n  broker: untrusted\n  subscriber:\n    uri: {}\n{}",
        broker("untrusted", ""),
        https.url("/untrusted"),
        support::with_dead_letters(0, &dead_letters.url("/dls")),
    );
    let trusted = format!(
        "{}---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: trusted\nspec:\n  broker: trusted\n  subscriber:\n    uri: {}\n    CACerts: |\n{}",
        broker("trusted", ""),
        https.url("/trusted"),
        yaml_block(&subscriber_ca.pem, 6),
    );
    let server =
        TestServer::start(&[("untrusted.yaml", &untrusted), ("trusted.yaml", &trusted)]).await;
    let listen = server.server.listen;
    wait_accepted(
        &format!("http://{listen}/default/untrusted"),
        "u-1",
        Duration::from_secs(10),
    )
    .await;
    wait_accepted(
        &format!("http://{listen}/default/trusted"),
        "t-1",
        Duration::from_secs(10),
    )
    .await;

    // Without the CA: a delivery failure that names the certificate
    // problem, and the event in the dead-letter sink.
    let dead = dead_letters.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(dead[0].id(), "u-1");
    let data = base64::engine::general_purpose::STANDARD
        .decode(dead[0].attribute("knativeerrordata").expect("error data"))
        .expect("base64");
    let data = String::from_utf8_lossy(&data);
    assert!(
        data.contains("certificate verify failed: UnknownIssuer")
            && data.contains(&https.url("/untrusted")),
        "{data}"
    );
    // With CACerts: delivered.
    support::wait_until(
        "the trusted delivery",
        Duration::from_secs(20),
        async || https.ids().contains(&"t-1".to_owned()),
    )
    .await;
    assert!(!https.ids().contains(&"u-1".to_owned()));

    // A trust bundle makes the same CA trusted by every delivery.
    let bundle = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: subscriber-ca\n  labels:\n    networking.knative.dev/trust-bundle: \"true\"\ndata:\n  ca.crt: |\n{}",
        yaml_block(&subscriber_ca.pem, 4),
    );
    std::fs::write(server.manifests.join("bundle.yaml"), bundle).expect("write");
    server.reapply().await;
    wait_accepted(
        &format!("http://{listen}/default/untrusted"),
        "u-2",
        Duration::from_secs(10),
    )
    .await;
    support::wait_until(
        "delivery through the trust bundle",
        Duration::from_secs(20),
        async || https.ids().contains(&"u-2".to_owned()),
    )
    .await;
    server.server.shutdown().await;
}

#[tokio::test]
async fn bad_cacerts_and_trust_bundles_are_refused_where_they_are_written() {
    let bad_trigger = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: bad\nspec:\n  broker: default\n  subscriber:\n    uri: https://localhost:1/\n    CACerts: not a certificate\n";
    let bad_bundle = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bundle\n  labels:\n    networking.knative.dev/trust-bundle: \"true\"\ndata:\n  ca.crt: hello\n";
    let server = TestServer::start(&[
        ("b.yaml", &broker("default", "")),
        ("t.yaml", bad_trigger),
        ("c.yaml", bad_bundle),
    ])
    .await;
    let list = support::request(
        http::Method::GET,
        &server.admin_url("/api/v1/triggers"),
        &[],
        "",
    )
    .await;
    let body: serde_json::Value = serde_json::from_str(&list.body).expect("json");
    let text: Vec<String> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e.as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        text.iter()
            .any(|e| e.contains("field spec.subscriber.CACerts")
                && e.contains("no PEM certificate found")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|e| e.contains("field data.ca.crt")
            && e.contains("networking.knative.dev/trust-bundle")),
        "{text:?}"
    );
    server.server.shutdown().await;
}

#[tokio::test]
async fn certificates_rotate_while_a_client_keeps_sending() {
    let first_ca = TestCa::new("first CA");
    let second_ca = TestCa::new("second CA");
    let (_keep, dir) = cert_dir();
    let first = first_ca.leaf("first");
    let (server, files) = start_tls(
        &[("b.yaml", &broker("default", ""))],
        TransportEncryption::Strict,
        &first,
        &dir,
    )
    .await;
    let listen = server.server.listen;
    let both = [&first_ca, &second_ca];

    // One keep-alive connection that sends all along.
    let mut h1 = http1(connect(listen, &both, &[b"http/1.1"]).await.expect("TLS")).await;
    let mut sent = 0usize;
    let mut accepted_once = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !accepted_once {
        let response = h1
            .send_request(event_request("/default/default", &format!("warm-{sent}")))
            .await
            .expect("a response");
        accepted_once = response.status() == StatusCode::ACCEPTED;
        sent += 1;
        assert!(std::time::Instant::now() < deadline, "never accepted");
    }
    let sending = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for n in 0..400 {
            let response = h1
                .send_request(event_request("/default/default", &format!("k-{n}")))
                .await;
            statuses.push(response.map(|r| r.status()).map_err(|e| e.to_string()));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        statuses
    });

    // A half-done rotation (a key of another certificate) keeps the old one.
    let other = second_ca.leaf("other");
    std::fs::write(&files.key, &other.key).expect("write key");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let peer = |stream: &tokio_rustls::client::TlsStream<TcpStream>| {
        stream
            .get_ref()
            .1
            .peer_certificates()
            .expect("a peer certificate")[0]
            .clone()
    };
    let stream = connect(listen, &both, &[b"http/1.1"]).await.expect("TLS");
    assert_eq!(
        peer(&stream),
        first.der(),
        "the old certificate stays in service"
    );

    // The whole new pair: new connections get it.
    let second = second_ca.leaf("second");
    second.replace(&files);
    support::wait_until(
        "new connections see the new certificate",
        Duration::from_secs(10),
        async || {
            let stream = connect(listen, &both, &[b"http/1.1"]).await.expect("TLS");
            peer(&stream) == second.der()
        },
    )
    .await;
    // A new connection trusting only the new CA works.
    let mut fresh = http1(
        connect(listen, &[&second_ca], &[b"http/1.1"])
            .await
            .expect("TLS"),
    )
    .await;
    let (status, body) = body_text(
        fresh
            .send_request(event_request("/default/default", "after"))
            .await
            .expect("a response"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    let statuses = sending.await.expect("the sender");
    let failed: Vec<_> = statuses
        .iter()
        .filter(|s| !matches!(s, Ok(StatusCode::ACCEPTED)))
        .collect();
    assert!(
        failed.is_empty(),
        "requests failed during the rotation: {failed:?}"
    );
    server.server.shutdown().await;
}

#[tokio::test]
async fn a_level_other_than_disabled_needs_a_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = support::config(dir.path(), &dir.path().join("data"));
    config.tls.level = TransportEncryption::Strict;
    let err = pilotlight::server::Server::start(config)
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("--transport-encryption strict needs the main listener's certificate: give --tls-cert FILE and --tls-key FILE"),
        "{err}"
    );
    let mut config = support::config(dir.path(), &dir.path().join("data"));
    config.tls = TlsConfig {
        level: TransportEncryption::Permissive,
        main: Some(CertFiles {
            cert: dir.path().join("missing.crt"),
            key: dir.path().join("missing.key"),
            flags: "--tls-cert/--tls-key",
        }),
        ..TlsConfig::default()
    };
    let err = pilotlight::server::Server::start(config)
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .starts_with("cannot read the certificate file")
            && err
                .to_string()
                .contains("missing.crt (--tls-cert/--tls-key)"),
        "{err}"
    );
}

/// A `kubernetes.io/tls` Secret holding `leaf`.
fn tls_secret(leaf: &Leaf) -> serde_json::Value {
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "pilotlight-tls", "namespace": "pilotlight"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64(&leaf.cert), "tls.key": b64(&leaf.key)},
    })
}

#[tokio::test]
async fn kubernetes_mode_serves_the_tls_secret_and_follows_it() {
    let fake = support::apiserver::FakeApiServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("cluster CA");
    let first = ca.leaf("first");
    fake.create(tls_secret(&first));
    let mut config = fake.replica_config(dir.path(), "tls-0");
    config.tls = TlsConfig {
        level: TransportEncryption::Strict,
        main_secret: Some("pilotlight/pilotlight-tls".parse().expect("a secret")),
        ..TlsConfig::default()
    };
    let server = pilotlight::server::Server::start(config)
        .await
        .expect("pilotlight starts");
    let peer = |stream: &tokio_rustls::client::TlsStream<TcpStream>| {
        stream
            .get_ref()
            .1
            .peer_certificates()
            .expect("a peer certificate")[0]
            .clone()
    };
    let stream = connect(server.listen, &[&ca], &[b"http/1.1"])
        .await
        .expect("TLS");
    assert_eq!(peer(&stream), first.der());

    let second = ca.leaf("second");
    fake.put(tls_secret(&second));
    support::wait_until(
        "the Secret's new certificate is served",
        Duration::from_secs(10),
        async || {
            let stream = connect(server.listen, &[&ca], &[b"http/1.1"])
                .await
                .expect("TLS");
            peer(&stream) == second.der()
        },
    )
    .await;
    server.shutdown().await;

    // A missing Secret stops the start with what to do.
    let mut config = fake.replica_config(dir.path(), "tls-1");
    config.tls = TlsConfig {
        level: TransportEncryption::Strict,
        main_secret: Some("pilotlight/missing".parse().expect("a secret")),
        ..TlsConfig::default()
    };
    let err = pilotlight::server::Server::start(config)
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{err:#}").contains("cannot read the Secret pilotlight/missing (--tls-secret)"),
        "{err:#}"
    );
}

#[tokio::test]
async fn knatives_config_features_sets_the_level_when_no_flag_does() {
    let ca = TestCa::new("pilotlight test CA");
    let (_keep, dir) = cert_dir();
    let features = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-features\n  namespace: knative-eventing\ndata:\n  transport-encryption: permissive\n";
    let cert_files = ca.leaf("pilotlight").write(&dir);
    let main = cert_files.clone();
    let server = TestServer::start_with(
        &[
            ("b.yaml", &broker("default", "")),
            ("features.yaml", features),
        ],
        move |config| {
            config.tls = TlsConfig {
                // What `run --tls-cert` without --transport-encryption asks.
                level: TransportEncryption::Strict,
                main: Some(main),
                level_from_features: true,
                ..TlsConfig::default()
            };
        },
    )
    .await;
    // Permissive, not strict: plain HTTP is served.
    let listen = server.server.listen;
    wait_accepted(
        &format!("http://{listen}/default/default"),
        "plain",
        Duration::from_secs(10),
    )
    .await;
    let status = broker_status(&server).await;
    assert_eq!(
        status["addresses"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    server.server.shutdown().await;

    // A level Knative does not know stops the start, naming the ConfigMap.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("features.yaml"),
        features.replace("permissive", "sometimes"),
    )
    .expect("write");
    let mut config = support::config(dir.path(), &dir.path().join("data"));
    config.tls.level_from_features = true;
    let err = pilotlight::server::Server::start(config)
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("ConfigMap knative-eventing/config-features: field data.transport-encryption: 'sometimes' is not a transport-encryption level: use disabled, permissive or strict"),
        "{err}"
    );
}

/// TLS and OIDC together: a trigger's dead letter goes to another broker of
/// the same pilotlight over its https address (permissive prefers https),
/// carrying the trigger's token for that broker's audience, which a policy
/// demands; and each of a broker's addresses names its audience.
#[tokio::test]
async fn with_authentication_an_https_dead_letter_carries_the_triggers_token() {
    use pilotlight::auth::{AuthConfig, AuthorizationMode};
    use support::oidc::TestIssuer;

    let issuer = TestIssuer::start().await;
    let failing = Subscriber::failing().await;
    let kept = Subscriber::accepting().await;
    let files = support::oidc::dead_letter_through_a_policy(&failing.url("/"), &kept.url("/"));
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let ca = TestCa::new("pilotlight test CA");
    let (_keep, dir) = cert_dir();
    let main = ca.leaf("pilotlight").write(&dir);
    let issuer_url = issuer.url.clone();
    let server = TestServer::start_with(&files, move |config| {
        config.tls = TlsConfig {
            level: TransportEncryption::Permissive,
            main: Some(main),
            ..TlsConfig::default()
        };
        config.auth = AuthConfig {
            enabled: true,
            issuers: vec![issuer_url],
            default_mode: AuthorizationMode::DenyAll,
            ..AuthConfig::default()
        };
    })
    .await;
    let listen = server.server.listen;

    let dlq = admin_list(server.server.admin, "brokers")
        .await
        .into_iter()
        .find(|b| b["metadata"]["name"] == "dlq")
        .expect("the dlq broker")["status"]
        .clone();
    let audience = "eventing.knative.dev/broker/default/dlq";
    assert_eq!(dlq["address"]["audience"], audience, "{dlq}");
    let addresses = dlq["addresses"].as_array().expect("addresses");
    assert_eq!(addresses.len(), 2, "{dlq}");
    assert!(addresses.iter().all(|a| a["audience"] == audience), "{dlq}");

    // The dead letter goes to the dlq broker's https address.
    let triggers = admin_list(server.server.admin, "triggers").await;
    let fails = triggers
        .iter()
        .find(|t| t["metadata"]["name"] == "fails")
        .expect("the failing trigger")["status"]
        .clone();
    assert_eq!(
        fails["deadLetterSinkUri"],
        format!("https://{listen}/default/dlq").as_str(),
        "{fails}"
    );

    let token = issuer.token("anyone", "eventing.knative.dev/broker/default/default");
    let bearer = format!("Bearer {token}");
    let url = format!("http://{listen}/default/default");
    let reply = support::request(
        http::Method::POST,
        &url,
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "dead-1"),
            ("ce-source", "/test"),
            ("ce-type", "t"),
            ("content-type", "application/json"),
            ("authorization", &bearer),
        ],
        "{}",
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let dead = kept.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(dead[0].id(), "dead-1");
    assert!(dead[0].attribute("knativeerrorcode").is_some());
    server.server.shutdown().await;
}
