//! The request-response codec of Locus's agent-to-agent protocols (the
//! node's messages, and policy bundles by hash): one MessagePack value per
//! stream, behind a 4-byte big-endian length, in a versioned envelope. A
//! frame over the protocol's size cap, or one that does not decode, fails
//! that stream with an error saying so; the agent goes on.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The node protocol's name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/locus/rpc/1");
/// Largest node-protocol frame read or written, bytes.
pub const MAX_FRAME: usize = 1 << 20;
/// The envelope version written.
const VERSION: u8 = 1;

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    v: u8,
    body: T,
}

/// Encodes one value as a versioned MessagePack envelope.
pub fn encode<T: Serialize>(body: &T) -> io::Result<Vec<u8>> {
    rmp_serde::to_vec_named(&Envelope { v: VERSION, body })
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Decodes a versioned MessagePack envelope.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> io::Result<T> {
    let e: Envelope<T> = rmp_serde::from_slice(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("undecodable message: {e}")))?;
    if e.v != VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message version {} unsupported", e.v),
        ));
    }
    Ok(e.body)
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {len} bytes is over the {max}-byte limit"),
        ));
    }
    let mut buf = vec![0; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: Vec<u8>, max: usize) -> io::Result<()> {
    if bytes.len() > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "message over the size limit"));
    }
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(&bytes).await?;
    io.close().await
}

/// The codec of one protocol (`Req` asked, `Resp` answered, frames up to
/// `max` bytes); counts the messages it refuses (shared by its clones, one
/// per stream).
#[derive(Debug)]
pub struct Codec<Req, Resp> {
    /// Undecodable or oversized messages refused so far.
    pub rejected: Arc<AtomicU64>,
    max: usize,
    types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> Clone for Codec<Req, Resp> {
    fn clone(&self) -> Self {
        Codec { rejected: self.rejected.clone(), max: self.max, types: PhantomData }
    }
}

impl<Req, Resp> Codec<Req, Resp> {
    /// A codec whose frames are at most `max` bytes, counting refusals in `rejected`.
    pub fn new(max: usize, rejected: Arc<AtomicU64>) -> Self {
        Codec { rejected, max, types: PhantomData }
    }

    fn refused<T>(&self, r: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &r
            && e.kind() == io::ErrorKind::InvalidData
        {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = ?e.to_string(), "refused a protocol message");
        }
        r
    }
}

impl<Req, Resp> libp2p::request_response::Codec for Codec<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send + 'static,
    Resp: Serialize + DeserializeOwned + Send + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Req> {
        let r = match read_frame(io, self.max).await {
            Ok(bytes) => decode(&bytes),
            Err(e) => Err(e),
        };
        self.refused(r)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Resp> {
        let r = match read_frame(io, self.max).await {
            Ok(bytes) => decode(&bytes),
            Err(e) => Err(e),
        };
        self.refused(r)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Req,
    ) -> io::Result<()> {
        write_frame(io, encode(&req)?, self.max).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Resp,
    ) -> io::Result<()> {
        write_frame(io, encode(&res)?, self.max).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec as _;
    use locus_core::node::{PeerRequest, PeerResponse};

    fn codec() -> Codec<PeerRequest, PeerResponse> {
        Codec::new(MAX_FRAME, Arc::default())
    }

    #[test]
    fn frames_round_trip_and_bad_ones_are_refused() {
        futures::executor::block_on(async {
            let req = PeerRequest::Show("web".into());
            let mut buf = vec![];
            codec()
                .write_request(&PROTOCOL, &mut futures::io::Cursor::new(&mut buf), req.clone())
                .await
                .expect("write");
            let back =
                codec().read_request(&PROTOCOL, &mut futures::io::Cursor::new(&buf)).await.expect("read");
            assert_eq!(back, req);

            let mut huge = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
            huge.extend([0; 16]);
            let e = codec()
                .read_request(&PROTOCOL, &mut futures::io::Cursor::new(&huge))
                .await
                .expect_err("too big");
            assert!(e.to_string().contains("over the"), "{e}");

            let mut garbage = 5u32.to_be_bytes().to_vec();
            garbage.extend(b"\xc1\xc1\xc1\xc1\xc1");
            let e = codec()
                .read_request(&PROTOCOL, &mut futures::io::Cursor::new(&garbage))
                .await
                .expect_err("garbage");
            assert!(e.to_string().contains("undecodable"), "{e}");
        });
    }
}
