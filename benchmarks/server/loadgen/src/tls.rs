//! TLS (rustls + ring) ping-pong client: `loadgen client --mode tcp --tls`, and the TLS floor
//! server: `loadgen floor --mode tcp --tls --cert cert.pem --key key.pem`.
//!
//! The client does not verify the server's certificate (a self-signed one made by run.py);
//! it still checks the handshake signatures.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, ServerConfig, ServerConnection, SignatureScheme};

use crate::{die, interrupted, say, would_block, Addr, Args, Window};

#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
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
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::other(e)
}

/// Write pending TLS records until the socket would block, read once; returns whether anything
/// moved. EOF from the peer is an error. Callers loop until nothing moves (edge-triggered).
fn pump<D>(conn: &mut rustls::ConnectionCommon<D>, s: &mut TcpStream) -> io::Result<bool> {
    let mut progress = false;
    while conn.wants_write() {
        match conn.write_tls(s) {
            Ok(_) => progress = true,
            Err(e) if would_block(&e) => break,
            Err(e) if interrupted(&e) => {}
            Err(e) => return Err(e),
        }
    }
    // one read only: the caller drains the plaintext before the next (rustls limits how much
    // received plaintext it buffers)
    match conn.read_tls(s) {
        Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed")),
        Ok(_) => {
            progress = true;
            conn.process_new_packets().map_err(tls_err)?;
        }
        Err(e) if would_block(&e) || interrupted(&e) => {}
        Err(e) => return Err(e),
    }
    // the reads may have produced records to send (handshake, key updates)
    while conn.wants_write() {
        match conn.write_tls(s) {
            Ok(_) => progress = true,
            Err(e) if would_block(&e) => break,
            Err(e) if interrupted(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(progress)
}

// ring: no post-quantum key exchange (aws-lc-rs would need cmake and a long C build here)
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn client(a: &Args) {
    let server = match &a.addr {
        Addr::Inet(x) => *x,
        Addr::Unix(_) => die("--tls needs HOST:PORT"),
    };
    if a.mode != "tcp" {
        die("--tls works with --mode tcp only");
    }
    let p = provider();
    let config = Arc::new(
        ClientConfig::builder_with_provider(p.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(p)))
            .with_no_client_auth(),
    );
    let name = ServerName::try_from("localhost").unwrap();
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(1024);
    let wbuf = vec![b't'; a.size];
    let mut rbuf = vec![0u8; 256 * 1024];
    struct T {
        s: TcpStream,
        c: ClientConnection,
        sent: usize,
        recvd: usize,
    }
    let mut conns = Vec::new();
    for i in 0..a.conns {
        let std_s = std::net::TcpStream::connect(server).unwrap_or_else(|e| die(format!("connect: {e}")));
        std_s.set_nodelay(true).unwrap();
        std_s.set_nonblocking(true).unwrap();
        let mut s = TcpStream::from_std(std_s);
        poll.registry().register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE).unwrap();
        let c = ClientConnection::new(config.clone(), name.clone()).unwrap();
        conns.push(T { s, c, sent: 0, recvd: 0 });
    }
    // the handshakes happen during the warm-up
    let mut w = Window::new(a);
    loop {
        let timeout = w.tick();
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if interrupted(&e) => continue,
            Err(e) => die(e),
        }
        for ev in events.iter() {
            let t = &mut conns[ev.token().0];
            let r: io::Result<()> = (|| loop {
                let mut progress = false;
                if t.sent < a.size {
                    let n = t.c.writer().write(&wbuf[t.sent..])?;
                    t.sent += n;
                    progress |= n > 0;
                }
                progress |= pump(&mut *t.c, &mut t.s)?;
                loop {
                    match t.c.reader().read(&mut rbuf) {
                        Ok(0) => return Err(io::Error::other("server closed the TLS session")),
                        Ok(n) => {
                            progress = true;
                            t.recvd += n;
                            if t.recvd > t.sent {
                                return Err(io::Error::other("received more than sent"));
                            }
                            if t.recvd == a.size {
                                w.done();
                                t.sent = 0;
                                t.recvd = 0;
                            }
                        }
                        Err(e) if would_block(&e) => break,
                        Err(e) => return Err(e),
                    }
                }
                if !progress {
                    return Ok(());
                }
            })();
            if let Err(e) = r {
                die(format!("tls connection {}: {e}", ev.token().0));
            }
        }
    }
}

/// TLS echo floor server (rustls, single-threaded mio).
pub fn floor(a: &Args, cert: &str, key: &str) {
    let addr = match &a.addr {
        Addr::Inet(x) => *x,
        Addr::Unix(_) => die("--tls needs HOST:PORT"),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap_or_else(|e| die(format!("{cert}: {e}")))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| die(format!("{cert}: {e}")));
    let key = PrivateKeyDer::from_pem_file(key).unwrap_or_else(|e| die(format!("{key}: {e}")));
    let config = Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap_or_else(|e| die(format!("certificate: {e}"))),
    );
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(1024);
    let mut l = TcpListener::bind(addr).unwrap_or_else(|e| die(format!("bind: {e}")));
    const LISTENER: Token = Token(usize::MAX);
    poll.registry().register(&mut l, LISTENER, Interest::READABLE).unwrap();
    say("READY");
    let mut conns: std::collections::HashMap<usize, (TcpStream, ServerConnection)> = Default::default();
    let mut next = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match poll.poll(&mut events, Some(Duration::from_secs(3600))) {
            Ok(()) => {}
            Err(e) if interrupted(&e) => continue,
            Err(e) => die(e),
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nodelay(true);
                            poll.registry().register(&mut s, Token(next), Interest::READABLE | Interest::WRITABLE).unwrap();
                            let mut c = ServerConnection::new(config.clone()).unwrap();
                            c.set_buffer_limit(None);
                            conns.insert(next, (s, c));
                            next += 1;
                        }
                        Err(e) if would_block(&e) => break,
                        Err(e) if interrupted(&e) => {}
                        Err(e) => {
                            eprintln!("loadgen floor: accept: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let Some((s, c)) = conns.get_mut(&ev.token().0) else { continue };
            let r: io::Result<()> = (|| loop {
                let mut progress = pump(&mut **c, s)?;
                loop {
                    match c.reader().read(&mut buf) {
                        Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed")),
                        Ok(n) => {
                            progress = true;
                            c.writer().write_all(&buf[..n])?; // rustls buffers what the socket can't take
                        }
                        Err(e) if would_block(&e) => break,
                        Err(e) => return Err(e),
                    }
                }
                if !progress {
                    return Ok(());
                }
            })();
            if r.is_err() {
                let (mut s, _) = conns.remove(&ev.token().0).unwrap();
                let _ = poll.registry().deregister(&mut s);
            }
        }
    }
}
