//! loadgen: load generator (`client`) and minimal mio floor server (`floor`) for
//! ferroloop's server benchmarks (see ../README.md).
//!
//! Everything is single-threaded and non-blocking (mio, edge-triggered).
//!
//! Protocol with the driver on stdout (client): after the warm-up `START`, at the end of the
//! measured window `END <requests completed in the window>`; the idle mode prints `READY` once
//! all its connections are established (and answered one echo), then holds them.
//! The floor server prints `READY` once it listens.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::exit;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream};
use mio::{event::Source, Events, Interest, Poll, Registry, Token};

mod tls;

/// The fixed HTTP response; servers.py sends the very same bytes.
pub const HTTP_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, World!";
const HTTP_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
const CHURN_SIZE: usize = 64;

// ---------------------------------------------------------------------------------------------
// arguments

#[derive(Clone, Debug)]
pub enum Addr {
    Inet(SocketAddr),
    Unix(PathBuf),
}

pub struct Args {
    pub mode: String,
    pub addr: Addr,
    pub conns: usize,
    pub size: usize,
    pub warmup: f64,
    pub duration: f64,
    pub hold: f64,
    pub tls: bool,
    pub cert: String,
    pub key: String,
}

fn die(msg: impl std::fmt::Display) -> ! {
    eprintln!("loadgen: {msg}");
    exit(2)
}

fn usage() -> ! {
    eprintln!(
        "usage:\n  loadgen client --mode {{tcp,unix,udp,churn,http,idle}} --addr HOST:PORT|/path \
         [--conns 8] [--size 1024] [--warmup 1.0] [--duration 3.0] [--hold 300] [--tls]\n  \
         loadgen floor --mode {{tcp,unix,udp,http}} --addr HOST:PORT|/path [--tls --cert C.pem --key K.pem]"
    );
    exit(2)
}

fn parse_addr(s: &str) -> Addr {
    if s.contains('/') {
        return Addr::Unix(PathBuf::from(s));
    }
    match s.to_socket_addrs().ok().and_then(|mut it| it.next()) {
        Some(a) => Addr::Inet(a),
        None => die(format!("bad address {s:?}")),
    }
}

fn parse_args(it: impl Iterator<Item = String>) -> Args {
    let mut a = Args {
        mode: String::new(),
        addr: Addr::Unix(PathBuf::new()),
        conns: 8,
        size: 1024,
        warmup: 1.0,
        duration: 3.0,
        hold: 300.0,
        tls: false,
        cert: String::new(),
        key: String::new(),
    };
    let mut have_addr = false;
    let mut it = it.peekable();
    while let Some(k) = it.next() {
        if k == "--tls" {
            a.tls = true;
            continue;
        }
        let v = it.next().unwrap_or_else(|| usage());
        let num = |v: &str| -> f64 { v.parse().unwrap_or_else(|_| die(format!("bad number {v:?}"))) };
        match k.as_str() {
            "--mode" => a.mode = v,
            "--addr" => {
                a.addr = parse_addr(&v);
                have_addr = true
            }
            "--conns" => a.conns = num(&v) as usize,
            "--size" => a.size = num(&v) as usize,
            "--warmup" => a.warmup = num(&v),
            "--duration" => a.duration = num(&v),
            "--hold" => a.hold = num(&v),
            "--cert" => a.cert = v,
            "--key" => a.key = v,
            _ => usage(),
        }
    }
    if a.mode.is_empty() || !have_addr || a.conns == 0 {
        usage()
    }
    a
}

fn main() {
    let mut argv = std::env::args().skip(1);
    let cmd = argv.next().unwrap_or_else(|| usage());
    let args = parse_args(argv);
    raise_nofile();
    match cmd.as_str() {
        "client" => client(&args),
        "floor" => floor(&args),
        _ => usage(),
    }
}

fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

// ---------------------------------------------------------------------------------------------
// a TCP or Unix stream

pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Blocking connect, then switched to non-blocking (the start-up is not measured).
    fn connect_blocking(addr: &Addr) -> io::Result<Stream> {
        Ok(match addr {
            Addr::Inet(a) => {
                let s = std::net::TcpStream::connect(a)?;
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                Stream::Tcp(TcpStream::from_std(s))
            }
            Addr::Unix(p) => {
                let s = std::os::unix::net::UnixStream::connect(p)?;
                s.set_nonblocking(true)?;
                Stream::Unix(UnixStream::from_std(s))
            }
        })
    }
}

impl Stream {
    /// Non-blocking connect: what the churn client measures includes the set-up.
    fn connect(addr: &Addr) -> io::Result<Stream> {
        Ok(match addr {
            Addr::Inet(a) => Stream::Tcp(TcpStream::connect(*a)?),
            Addr::Unix(p) => Stream::Unix(UnixStream::connect(p)?),
        })
    }

    /// Whether a non-blocking connect has completed (`TCP_NODELAY` is set then): `Ok(false)`
    /// while it is under way.
    fn finish_connect(&mut self) -> io::Result<bool> {
        let error = match self {
            Stream::Tcp(s) => s.take_error()?,
            Stream::Unix(s) => s.take_error()?,
        };
        if let Some(error) = error {
            return Err(error);
        }
        let peer = match self {
            Stream::Tcp(s) => s.peer_addr().map(drop),
            Stream::Unix(s) => s.peer_addr().map(drop),
        };
        match peer {
            Ok(()) => {
                if let Stream::Tcp(s) = self {
                    let _ = s.set_nodelay(true);
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Unix(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(b),
            Stream::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Source for Stream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.register(r, t, i),
            Stream::Unix(s) => s.register(r, t, i),
        }
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.reregister(r, t, i),
            Stream::Unix(s) => s.reregister(r, t, i),
        }
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.deregister(r),
            Stream::Unix(s) => s.deregister(r),
        }
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

// ---------------------------------------------------------------------------------------------
// client: measurement window

struct Window {
    warm_end: Instant,
    end: Instant,
    started: bool,
    count: u64,
}

impl Window {
    fn new(a: &Args) -> Window {
        let now = Instant::now();
        let warm_end = now + Duration::from_secs_f64(a.warmup.max(0.0));
        Window { warm_end, end: warm_end + Duration::from_secs_f64(a.duration), started: false, count: 0 }
    }
    fn done(&mut self) {
        if self.started {
            self.count += 1;
        }
    }
    /// Prints START / END when due (exits after END); returns the poll timeout.
    fn tick(&mut self) -> Duration {
        let now = Instant::now();
        if !self.started && now >= self.warm_end {
            self.started = true;
            self.count = 0;
            say("START");
        }
        if self.started && now >= self.end {
            say(&format!("END {}", self.count));
            exit(0);
        }
        let next = if self.started { self.end } else { self.warm_end };
        (next - now).min(Duration::from_millis(50))
    }
}

fn client(a: &Args) {
    if a.tls {
        return tls::client(a);
    }
    match a.mode.as_str() {
        "tcp" | "unix" => client_pingpong(a),
        "udp" => client_udp(a),
        "churn" => client_churn(a),
        "http" => client_http(a),
        "idle" => client_idle(a),
        m => die(format!("unknown client mode {m}")),
    }
}

// ---------------------------------------------------------------------------------------------
// client: tcp / unix ping-pong

/// One ping-pong exchange of `size` bytes on a non-blocking stream: write all, read all echoed.
pub struct PingPong {
    pub sent: usize,
    pub recvd: usize,
}

impl PingPong {
    /// Drive the exchange until the socket would block. Returns the number of completed exchanges
    /// (each immediately followed by the next), or an error (EOF is an error).
    pub fn step<S: Read + Write>(&mut self, s: &mut S, wbuf: &[u8], rbuf: &mut [u8]) -> io::Result<u32> {
        let size = wbuf.len();
        let mut done = 0;
        loop {
            let mut progress = false;
            if self.sent < size {
                match s.write(&wbuf[self.sent..]) {
                    Ok(n) => {
                        self.sent += n;
                        progress = true
                    }
                    Err(e) if would_block(&e) || interrupted(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            match s.read(rbuf) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed")),
                Ok(n) => {
                    self.recvd += n;
                    progress = true;
                    if self.recvd > self.sent {
                        return Err(io::Error::other("received more than sent"));
                    }
                    if self.recvd == size {
                        done += 1;
                        self.sent = 0;
                        self.recvd = 0;
                    }
                }
                Err(e) if would_block(&e) || interrupted(&e) => {}
                Err(e) => return Err(e),
            }
            if !progress {
                return Ok(done);
            }
        }
    }
}

fn client_pingpong(a: &Args) {
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(1024);
    let wbuf = vec![b'x'; a.size];
    let mut rbuf = vec![0u8; 256 * 1024];
    let mut conns = Vec::new();
    for i in 0..a.conns {
        let mut s = Stream::connect_blocking(&a.addr).unwrap_or_else(|e| die(format!("connect: {e}")));
        poll.registry().register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE).unwrap();
        conns.push((s, PingPong { sent: 0, recvd: 0 }));
    }
    let mut w = Window::new(a);
    loop {
        let timeout = w.tick();
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if interrupted(&e) => continue,
            Err(e) => die(e),
        }
        for ev in events.iter() {
            let (s, pp) = &mut conns[ev.token().0];
            match pp.step(s, &wbuf, &mut rbuf) {
                Ok(n) => (0..n).for_each(|_| w.done()),
                Err(e) => die(format!("connection {}: {e}", ev.token().0)),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// client: udp

fn client_udp(a: &Args) {
    let server = match &a.addr {
        Addr::Inet(x) => *x,
        Addr::Unix(_) => die("udp needs HOST:PORT"),
    };
    let size = a.size.max(8);
    let bind: SocketAddr = if server.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" }.parse().unwrap();
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(1024);
    struct U {
        s: UdpSocket,
        seq: u64,
        last: Instant,
    }
    let mut socks = Vec::new();
    let mut wbuf = vec![b'u'; size];
    let mut rbuf = vec![0u8; 65536];
    for i in 0..a.conns {
        let mut s = UdpSocket::bind(bind).unwrap();
        s.connect(server).unwrap();
        poll.registry().register(&mut s, Token(i), Interest::READABLE).unwrap();
        socks.push(U { s, seq: 0, last: Instant::now() });
    }
    let send = |u: &mut U, wbuf: &mut [u8]| {
        wbuf[..8].copy_from_slice(&u.seq.to_le_bytes());
        let _ = u.s.send(wbuf); // a lost / refused datagram is resent on the timeout
        u.last = Instant::now();
    };
    for u in socks.iter_mut() {
        send(u, &mut wbuf);
    }
    let resend_after = Duration::from_millis(200);
    let mut resent: u64 = 0;
    let mut w = Window::new(a);
    let mut last_check = Instant::now();
    loop {
        let timeout = w.tick();
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if interrupted(&e) => continue,
            Err(e) => die(e),
        }
        for ev in events.iter() {
            let u = &mut socks[ev.token().0];
            loop {
                match u.s.recv(&mut rbuf) {
                    Ok(n) => {
                        if n == size && rbuf[..8] == u.seq.to_le_bytes() {
                            w.done();
                            u.seq += 1;
                            send(u, &mut wbuf);
                        }
                    }
                    Err(e) if would_block(&e) => break,
                    Err(_) => {} // ECONNREFUSED etc.: keep going, the timeout resends
                }
            }
        }
        let now = Instant::now();
        if now - last_check >= Duration::from_millis(20) {
            last_check = now;
            for u in socks.iter_mut() {
                if now - u.last >= resend_after {
                    resent += 1;
                    send(u, &mut wbuf);
                }
            }
            if w.started && now + Duration::from_millis(60) >= w.end && resent > 0 {
                eprintln!("loadgen: udp resends so far: {resent}");
                resent = 0;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// client: churn (connect, 64 B ping-pong, close; one request = one connection)

fn client_churn(a: &Args) {
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(1024);
    let wbuf = vec![b'c'; CHURN_SIZE];
    let mut rbuf = vec![0u8; 4096];
    struct C {
        s: Stream,
        connected: bool,
        pp: PingPong,
    }
    let open = |poll: &Poll, i: usize| -> C {
        let mut s = Stream::connect(&a.addr).unwrap_or_else(|e| die(format!("connect: {e}")));
        poll.registry().register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE).unwrap();
        C { s, connected: false, pp: PingPong { sent: 0, recvd: 0 } }
    };
    let mut conns: Vec<C> = (0..a.conns).map(|i| open(&poll, i)).collect();
    let mut errors = 0u64;
    let mut w = Window::new(a);
    loop {
        let timeout = w.tick();
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if interrupted(&e) => continue,
            Err(e) => die(e),
        }
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut conns[i];
            let mut failed = false;
            if !c.connected {
                match c.s.finish_connect() {
                    Ok(true) => c.connected = true,
                    Ok(false) => continue,
                    Err(_) => failed = true,
                }
            }
            if !failed {
                match c.pp.step(&mut c.s, &wbuf, &mut rbuf) {
                    Ok(0) => continue,
                    Ok(_) => w.done(),
                    Err(_) => failed = true,
                }
            }
            if failed {
                errors += 1;
                if errors > 1000 {
                    die("churn: more than 1000 connection errors");
                }
            }
            let _ = poll.registry().deregister(&mut c.s);
            conns[i] = open(&poll, i); // the old stream is dropped (closed) here
        }
        if errors > 0 && w.started && Instant::now() + Duration::from_millis(60) >= w.end {
            eprintln!("loadgen: churn connection errors: {errors}");
            errors = 0;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// client: http keep-alive

/// If `buf` holds a full response (headers + Content-Length body), its length.
pub fn http_response_len(buf: &[u8]) -> io::Result<Option<usize>> {
    let Some(hend) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..hend]).map_err(io::Error::other)?;
    let mut cl = None;
    for line in head.split("\r\n").skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                cl = Some(v.trim().parse::<usize>().map_err(io::Error::other)?);
            }
        }
    }
    let cl = cl.ok_or_else(|| io::Error::other("response without Content-Length"))?;
    let total = hend + 4 + cl;
    Ok(if buf.len() >= total { Some(total) } else { None })
}

fn client_http(a: &Args) {
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(1024);
    let mut tmp = vec![0u8; 65536];
    struct H {
        s: Stream,
        sent: usize,
        buf: Vec<u8>,
    }
    let mut conns = Vec::new();
    for i in 0..a.conns {
        let mut s = Stream::connect_blocking(&a.addr).unwrap_or_else(|e| die(format!("connect: {e}")));
        poll.registry().register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE).unwrap();
        conns.push(H { s, sent: 0, buf: Vec::with_capacity(4096) });
    }
    let mut w = Window::new(a);
    loop {
        let timeout = w.tick();
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if interrupted(&e) => continue,
            Err(e) => die(e),
        }
        for ev in events.iter() {
            let h = &mut conns[ev.token().0];
            let r: io::Result<()> = (|| loop {
                let mut progress = false;
                if h.sent < HTTP_REQUEST.len() {
                    match h.s.write(&HTTP_REQUEST[h.sent..]) {
                        Ok(n) => {
                            h.sent += n;
                            progress = true
                        }
                        Err(e) if would_block(&e) || interrupted(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
                match h.s.read(&mut tmp) {
                    Ok(0) => return Err(io::Error::other("server closed")),
                    Ok(n) => {
                        progress = true;
                        h.buf.extend_from_slice(&tmp[..n]);
                        if let Some(len) = http_response_len(&h.buf)? {
                            if len != h.buf.len() {
                                return Err(io::Error::other("unexpected bytes after the response"));
                            }
                            if h.sent < HTTP_REQUEST.len() {
                                return Err(io::Error::other("response before the full request"));
                            }
                            h.buf.clear();
                            h.sent = 0;
                            w.done();
                        }
                    }
                    Err(e) if would_block(&e) || interrupted(&e) => {}
                    Err(e) => return Err(e),
                }
                if !progress {
                    return Ok(());
                }
            })();
            if let Err(e) = r {
                die(format!("http connection {}: {e}", ev.token().0));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// client: idle connections

fn client_idle(a: &Args) {
    // Connect in batches of 64 (below the servers' listen backlog of 100) and make each
    // connection do one 1-byte echo, so that READY means: the server has accepted every
    // connection and set up its transport / protocol.
    trait Held: Read + Write {}
    impl Held for std::net::TcpStream {}
    impl Held for std::os::unix::net::UnixStream {}
    let mut held: Vec<Box<dyn Held>> = Vec::with_capacity(a.conns);
    let mut one = [0u8; 1];
    while held.len() < a.conns {
        let n = (a.conns - held.len()).min(64);
        let mut batch: Vec<Box<dyn Held>> = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Some(Duration::from_secs(10));
            let s: Box<dyn Held> = match &a.addr {
                Addr::Inet(x) => {
                    let s = std::net::TcpStream::connect(x).unwrap_or_else(|e| die(format!("connect: {e}")));
                    s.set_nodelay(true).unwrap();
                    s.set_read_timeout(t).unwrap();
                    Box::new(s)
                }
                Addr::Unix(p) => {
                    let s = std::os::unix::net::UnixStream::connect(p).unwrap_or_else(|e| die(format!("connect: {e}")));
                    s.set_read_timeout(t).unwrap();
                    Box::new(s)
                }
            };
            batch.push(s);
        }
        for s in batch.iter_mut() {
            s.write_all(b"i").unwrap_or_else(|e| die(format!("write: {e}")));
        }
        for s in batch.iter_mut() {
            s.read_exact(&mut one).unwrap_or_else(|e| die(format!("idle echo: {e}")));
        }
        held.extend(batch);
    }
    say("READY");
    std::thread::sleep(Duration::from_secs_f64(a.hold));
    eprintln!("loadgen: idle hold time ({} s) over, exiting", a.hold);
}

// ---------------------------------------------------------------------------------------------
// floor: the minimal single-threaded mio server

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

struct ServerConn {
    s: Stream,
    /// bytes waiting to be written (echo data or HTTP responses)
    out: Vec<u8>,
    /// http: request bytes not yet terminated by \r\n\r\n
    inbuf: Vec<u8>,
}

fn floor(a: &Args) {
    if a.tls {
        return tls::floor(a, &a.cert, &a.key);
    }
    match a.mode.as_str() {
        "tcp" | "unix" | "http" => floor_stream(a),
        "udp" => floor_udp(a),
        m => die(format!("unknown floor mode {m}")),
    }
}

const LISTENER: Token = Token(usize::MAX);

fn floor_stream(a: &Args) {
    let http = a.mode == "http";
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(1024);
    let mut listener = match &a.addr {
        Addr::Inet(x) => Listener::Tcp(TcpListener::bind(*x).unwrap_or_else(|e| die(format!("bind: {e}")))),
        Addr::Unix(p) => {
            let _ = std::fs::remove_file(p);
            Listener::Unix(UnixListener::bind(p).unwrap_or_else(|e| die(format!("bind: {e}"))))
        }
    };
    match &mut listener {
        Listener::Tcp(l) => poll.registry().register(l, LISTENER, Interest::READABLE),
        Listener::Unix(l) => poll.registry().register(l, LISTENER, Interest::READABLE),
    }
    .unwrap();
    say("READY");
    let mut conns: HashMap<usize, ServerConn> = HashMap::new();
    let mut next_token = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if interrupted(&e) => continue,
            Err(e) => die(e),
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    let r = match &listener {
                        Listener::Tcp(l) => l.accept().map(|(s, _)| {
                            let _ = s.set_nodelay(true);
                            Stream::Tcp(s)
                        }),
                        Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
                    };
                    match r {
                        Ok(mut s) => {
                            let t = next_token;
                            next_token += 1;
                            poll.registry().register(&mut s, Token(t), Interest::READABLE | Interest::WRITABLE).unwrap();
                            conns.insert(t, ServerConn { s, out: Vec::new(), inbuf: Vec::new() });
                        }
                        Err(e) if would_block(&e) => break,
                        Err(e) if interrupted(&e) => continue,
                        Err(e) => {
                            eprintln!("loadgen floor: accept: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let t = ev.token().0;
            let Some(c) = conns.get_mut(&t) else { continue };
            if !serve_conn(c, &mut buf, http) {
                let mut c = conns.remove(&t).unwrap();
                let _ = poll.registry().deregister(&mut c.s);
            }
        }
    }
}

/// Serve one connection until it would block; false = close it.
fn serve_conn(c: &mut ServerConn, buf: &mut [u8], http: bool) -> bool {
    loop {
        // flush pending output first; read more only once everything is written (back-pressure)
        while !c.out.is_empty() {
            match c.s.write(&c.out) {
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if would_block(&e) => return true,
                Err(e) if interrupted(&e) => {}
                Err(_) => return false,
            }
        }
        let n = match c.s.read(buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if would_block(&e) => return true,
            Err(e) if interrupted(&e) => continue,
            Err(_) => return false,
        };
        if !http {
            // echo: write straight from the read buffer, keep only the unwritten rest
            let mut off = 0;
            while off < n {
                match c.s.write(&buf[off..n]) {
                    Ok(w) => off += w,
                    Err(e) if would_block(&e) => break,
                    Err(e) if interrupted(&e) => {}
                    Err(_) => return false,
                }
            }
            if off < n {
                c.out.extend_from_slice(&buf[off..n]);
            }
        } else {
            c.inbuf.extend_from_slice(&buf[..n]);
            let mut consumed = 0;
            // a request ends at \r\n\r\n (GET requests without a body)
            while let Some(p) = c.inbuf[consumed..].windows(4).position(|w| w == b"\r\n\r\n") {
                consumed += p + 4;
                c.out.extend_from_slice(HTTP_RESPONSE);
            }
            c.inbuf.drain(..consumed);
        }
    }
}

fn floor_udp(a: &Args) {
    let addr = match &a.addr {
        Addr::Inet(x) => *x,
        Addr::Unix(_) => die("udp needs HOST:PORT"),
    };
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(64);
    let mut s = UdpSocket::bind(addr).unwrap_or_else(|e| die(format!("bind: {e}")));
    poll.registry().register(&mut s, Token(0), Interest::READABLE).unwrap();
    say("READY");
    let mut buf = vec![0u8; 65536];
    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if interrupted(&e) => continue,
            Err(e) => die(e),
        }
        loop {
            match s.recv_from(&mut buf) {
                Ok((n, peer)) => {
                    let _ = s.send_to(&buf[..n], peer); // a full send buffer drops it, as UDP does
                }
                Err(e) if would_block(&e) => break,
                Err(_) => {}
            }
        }
    }
}
