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
//! - [`stream_lifecycle`]: their construction, end of file, `close` and `connection_lost`.
//! - [`stream_methods`]: `write` and `close` as C methods of their class.
//! - [`datagram`]: UDP and Unix datagram transports (reads).
//! - [`server`]: listening sockets: the accept loop and each accepted connection's set-up.

pub(crate) mod buffer;
pub(crate) mod datagram;
pub(crate) mod server;
pub(crate) mod sock_ops;
pub(crate) mod socket;
pub(crate) mod stream;
pub(crate) mod stream_lifecycle;
pub(crate) mod stream_methods;
pub(crate) mod transport;

pub(crate) use datagram::DatagramReader;
pub(crate) use server::Acceptor;
pub(crate) use stream::TransportReader;
pub(crate) use stream_lifecycle::{new_socket_transport, release_callbacks, Step};
pub(crate) use stream_methods::install_stream_methods;
