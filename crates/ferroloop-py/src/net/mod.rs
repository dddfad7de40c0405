//! Network code: what runs per socket operation, per connection and per datagram.
//!
//! One file per kind of object, as uvloop's `handles/`; the system calls themselves are in
//! `ferroloop_core::sys::net`.
//!
//! - [`socket`]: `socket.socket` objects (exact-type check, fd) and the non-blocking calls
//!   with Python's error conventions.
//! - [`buffer`]: the per-thread receive buffer and the buffer protocol.
//! - [`sock_ops`]: `loop.sock_recv`, `sock_recv_into`, `sock_sendall`.
//! - [`transport`]: what stream and datagram transports share.
//! - [`stream`]: TCP and Unix stream transports: the reader callback and `write`.
//! - [`drain`]: their writer callback, which sends what `write` had to buffer.
//! - [`stream_lifecycle`]: their construction, end of file, `close` and `connection_lost`.
//! - [`extra`]: their `extra` dict, made when first read.
//! - [`methods`]: C methods of ferroloop's subclasses of asyncio's transports and of
//!   `SSLProtocol` (the entry points into [`stream`], [`stream_lifecycle`] and [`tls`]).
//! - [`tls`]: the data path of asyncio's `SSLProtocol` once the handshake is done.
//! - [`datagram`]: UDP and Unix datagram transports (reads).
//! - [`server`]: listening sockets: the accept loop and each accepted connection's set-up.

pub(crate) mod buffer;
pub(crate) mod datagram;
pub(crate) mod drain;
pub(crate) mod extra;
pub(crate) mod methods;
pub(crate) mod server;
pub(crate) mod sock_ops;
pub(crate) mod socket;
pub(crate) mod stream;
pub(crate) mod stream_lifecycle;
pub(crate) mod tls;
pub(crate) mod transport;

pub(crate) use datagram::DatagramReader;
pub(crate) use drain::TransportWriter;
pub(crate) use extra::PendingExtra;
pub(crate) use methods::{install_stream_methods, install_tls_methods};
pub(crate) use server::Acceptor;
pub(crate) use stream::TransportReader;
pub(crate) use stream_lifecycle::{new_socket_transport, release_stream_callbacks, Step};
pub(crate) use tls::tls_constants;
