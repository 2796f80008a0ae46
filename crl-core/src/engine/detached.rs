//! Decoding a big image away from the engine.
//!
//! Installing a region image received from a peer decodes it into the region's Rust type,
//! which takes about a millisecond per mebibyte. Done in [`Engine::handle_message`], that time
//! is spent holding the engine, so the node's driver handles nothing else meanwhile: a
//! 256 MiB region stalls every other region of the node for a quarter of a second.
//!
//! The driver may instead ask [`Engine::detached_decode`] for an [`ImageDecode`] of a
//! message carrying a big image, run it on another thread ([`ImageDecode::run`]: it needs
//! only the region's cell, not the engine), go on with other messages meanwhile, and hand
//! the result to [`Engine::handle_decoded`], which handles the message exactly as
//! `handle_message` would, installing the value decoded already. The driver must keep the
//! peer's order around the decode: a message from the same peer that arrives meanwhile may be
//! handled first only if it may pass the image ([`crate::wire::Lane::may_pass_image_of`]),
//! just as the session lets it pass the image's pieces on the link; everything else from that
//! peer waits until the decoded message has been handled.
//!
//! Nothing changes if the state moves while the decode runs: the engine checks the message
//! when it is handled, as always, and a value that no longer fits the region's cell (not of
//! its type) is dropped and the bytes decoded again.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use tracing::debug;

use super::access::{DetachedValue, ErasedCell, RawCell};
use super::{Engine, ProtocolViolation};
use crate::region::{CodecError, NodeId, RegionId};
use crate::wire::{Message, RegionImage};

/// The shortest image [`Engine::detached_decode`] offers to decode away from the engine:
/// below it, handing the work to another thread costs more than it saves.
pub const DETACHED_DECODE_MIN_BYTES: usize = 256 << 10;

/// The decode of one message's big image, to run on any thread
/// ([`Engine::detached_decode`]).
pub struct ImageDecode {
    region: RegionId,
    cell: Arc<dyn ErasedCell>,
}

impl std::fmt::Debug for ImageDecode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageDecode")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// A message whose image has been decoded ([`ImageDecode::run`]), for
/// [`Engine::handle_decoded`].
pub struct DecodedMessage {
    msg: Message,
    value: Option<DecodedImage>,
}

impl std::fmt::Debug for DecodedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodedMessage")
            .field("msg", &self.msg.kind_name())
            .field("region", &self.msg.region())
            .field("decoded", &self.value.is_some())
            .finish()
    }
}

/// A region image decoded away from the engine: the value (or the decode's error), installed
/// in place of decoding the image's bytes.
pub(crate) struct DecodedImage {
    pub(crate) region: RegionId,
    pub(crate) version: u64,
    pub(crate) value: Result<DetachedValue, CodecError>,
}

impl ImageDecode {
    /// The region whose image is decoded: messages of other regions may pass it.
    pub fn region(&self) -> RegionId {
        self.region
    }

    /// Decodes `msg`'s image (the message [`Engine::detached_decode`] was asked about) on
    /// the calling thread. A decode error (or a panic of the decode) is not reported here:
    /// [`Engine::handle_decoded`] treats it as a decode error of the install, as always.
    pub fn run(self, msg: Message) -> DecodedMessage {
        let value = image_of(&msg).and_then(|image| {
            // A decode that panics (a bug in the type's `decode_region`) is a decode error:
            // the message is refused, and nothing was touched (the decode only reads bytes).
            let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.cell.decode_detached(&image.bytes)
            }))
            .unwrap_or_else(|_| {
                Some(Err(CodecError::Invalid {
                    type_name: self.cell.type_name(),
                    reason: "the decode panicked".into(),
                }))
            })?;
            if let Err(e) = &decoded {
                debug!(region = %self.region, "detached decode failed: {e}");
            }
            Some(DecodedImage {
                region: self.region,
                version: image.version,
                value: decoded,
            })
        });
        DecodedMessage { msg, value }
    }
}

impl DecodedMessage {
    /// A message to handle as it is (no image decoded).
    pub fn undecoded(msg: Message) -> Self {
        DecodedMessage { msg, value: None }
    }
}

/// The image a protocol message carries, if any.
fn image_of(msg: &Message) -> Option<&RegionImage> {
    match msg {
        Message::Data { image, .. }
        | Message::RecallAck { image, .. }
        | Message::Flush { image, .. } => image.as_ref(),
        _ => None,
    }
}

impl Engine {
    /// Offers to decode `msg`'s image away from the engine (see the module docs): `Some` if
    /// the message carries an image of at least [`DETACHED_DECODE_MIN_BYTES`] for a region
    /// this node holds with a Rust type. Changes nothing; `msg` is then handed to
    /// [`ImageDecode::run`] and the result to [`handle_decoded`](Self::handle_decoded).
    pub fn detached_decode(&self, msg: &Message) -> Option<ImageDecode> {
        let image = image_of(msg)?;
        if image.bytes.len() < DETACHED_DECODE_MIN_BYTES {
            return None;
        }
        let region = msg.region()?;
        let cell = if region.home == self.node {
            self.homes.get(&region.seq)?.cell.clone()
        } else {
            self.cache.get(&region)?.cell.clone()
        };
        if cell.as_any().is::<RawCell>() {
            return None; // it keeps bytes: nothing to decode
        }
        Some(ImageDecode { region, cell })
    }

    /// Handles a message whose image [`ImageDecode::run`] decoded: exactly as
    /// [`handle_message`](Self::handle_message), except that installing the image installs
    /// the decoded value.
    pub fn handle_decoded(
        &mut self,
        from: NodeId,
        decoded: DecodedMessage,
    ) -> Result<(), ProtocolViolation> {
        self.decoded = decoded.value;
        let result = self.handle_message(from, decoded.msg);
        // Not installed (the message was refused, or carried no image): dropped here.
        self.decoded = None;
        result
    }
}

/// Installs `image` in `cell`: the value `decoded` holds if it was decoded for this image
/// and fits the cell (or its decode error), else the image's bytes decoded now.
pub(crate) fn install_image(
    cell: &dyn ErasedCell,
    image: &RegionImage,
    decoded: Option<DecodedImage>,
) -> Result<(), CodecError> {
    if let Some(d) = decoded.filter(|d| d.region == cell.id() && d.version == image.version) {
        match cell.install_decoded(d.value?, image.version) {
            Ok(()) => return Ok(()),
            Err(_) => {
                debug!(region = %cell.id(), "a value decoded away from the engine does not fit the cell: decoding again")
            }
        }
    }
    cell.install(&image.bytes, image.version)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::engine::{EngineConfig, Event, Progress, Start};
    use crate::region::Region;

    /// Bytes whose decodes are counted (per test, by the first byte of the value).
    #[derive(Debug, Clone, PartialEq)]
    struct Blob(Vec<u8>);

    static DECODES: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];

    /// The first byte of an image whose decode panics.
    const PANICS: u8 = 0xfe;

    fn decodes(tag: u8) -> usize {
        DECODES[tag as usize].load(Ordering::SeqCst)
    }

    impl Region for Blob {
        const TYPE_NAME: &'static str = "Blob";
        const FINGERPRINT: u64 = 0xb10b;
        fn encode_region(&self) -> Result<Vec<u8>, CodecError> {
            Ok(self.0.clone())
        }
        fn decode_region(bytes: &[u8]) -> Result<Self, CodecError> {
            match bytes.first() {
                Some(&PANICS) => panic!("a decode that panics"),
                Some(&tag) if (tag as usize) < DECODES.len() => {
                    DECODES[tag as usize].fetch_add(1, Ordering::SeqCst);
                    Ok(Blob(bytes.to_vec()))
                }
                _ => Err(CodecError::Invalid {
                    type_name: "Blob",
                    reason: "bad tag".into(),
                }),
            }
        }
    }

    fn blob(tag: u8, len: usize) -> Blob {
        let mut b = vec![7u8; len];
        b[0] = tag;
        Blob(b)
    }

    /// A home with one blob of `len` bytes and a cache that mapped it.
    fn pair(tag: u8, len: usize) -> (Engine, Engine, Arc<crate::engine::RegionCell<Blob>>) {
        let mut home = Engine::new(NodeId(0), EngineConfig::default());
        let mut cache = Engine::new(NodeId(1), EngineConfig::default());
        let id = home.create(blob(tag, len)).id();
        let (cell, progress) = cache.map::<Blob>(id, 1).expect("map");
        if progress == Progress::Pending {
            deliver_all(&mut cache, &mut home);
            deliver_all(&mut home, &mut cache);
            while cache.poll_event().is_some() {}
        }
        (home, cache, cell)
    }

    /// Hands every message `from` has to send to `to`.
    fn deliver_all(from: &mut Engine, to: &mut Engine) {
        while let Some(t) = from.poll_transmit() {
            to.handle_message(from.node(), t.msg).expect("no violation");
        }
    }

    /// The one message `from` has to send.
    fn only_transmit(from: &mut Engine) -> Message {
        let t = from.poll_transmit().expect("a message");
        assert!(from.poll_transmit().is_none(), "one message");
        t.msg
    }

    fn granted(e: &mut Engine, op: u64) -> crate::engine::Access {
        loop {
            match e.poll_event().expect("an event") {
                Event::Granted { op: o, access } if o == op => return access,
                Event::Granted { .. } | Event::Completed { .. } => panic!("not op {op}"),
                _ => {}
            }
        }
    }

    #[test]
    fn a_big_read_miss_installs_the_value_decoded_away_from_the_engine() {
        let len = DETACHED_DECODE_MIN_BYTES;
        let (mut home, mut cache, cell) = pair(1, len);
        assert!(matches!(cache.start_read(cell.id(), 2), Ok(Start::Queued)));
        deliver_all(&mut cache, &mut home);
        let data = only_transmit(&mut home);
        assert!(matches!(data, Message::Data { .. }));
        let decode = cache.detached_decode(&data).expect("offered");
        assert_eq!(decode.region(), cell.id());
        let before = decodes(1);
        let decoded = std::thread::spawn(move || decode.run(data))
            .join()
            .expect("decode thread");
        assert_eq!(decodes(1), before + 1, "decoded on the other thread");
        cache
            .handle_decoded(NodeId(0), decoded)
            .expect("no violation");
        assert_eq!(decodes(1), before + 1, "not decoded again");
        let access = granted(&mut cache, 2);
        assert_eq!(*access.read(&cell), blob(1, len));
    }

    #[test]
    fn a_small_image_is_decoded_by_the_engine() {
        let (mut home, mut cache, cell) = pair(0, DETACHED_DECODE_MIN_BYTES - 1);
        assert!(matches!(cache.start_read(cell.id(), 2), Ok(Start::Queued)));
        deliver_all(&mut cache, &mut home);
        let data = only_transmit(&mut home);
        assert!(cache.detached_decode(&data).is_none());
        // Nor a message without an image, nor one for a region this node does not hold.
        let get = Message::GetShared {
            region: cell.id(),
            fingerprint: Blob::FINGERPRINT,
            priority: crate::wire::PRIORITY_NONE,
        };
        assert!(home.detached_decode(&get).is_none());
        let Message::Data { grant, image, .. } = data else {
            unreachable!()
        };
        let mut image = image.expect("an image");
        image.bytes.resize(DETACHED_DECODE_MIN_BYTES, 0);
        let unknown = Message::Data {
            region: RegionId::new(NodeId(0), 99),
            grant,
            image: Some(image),
        };
        assert!(cache.detached_decode(&unknown).is_none());
    }

    #[test]
    fn a_value_decoded_for_another_image_is_not_installed() {
        let len = DETACHED_DECODE_MIN_BYTES;
        let (mut home, mut cache, cell) = pair(2, len);
        assert!(matches!(cache.start_read(cell.id(), 2), Ok(Start::Queued)));
        deliver_all(&mut cache, &mut home);
        let data = only_transmit(&mut home);
        let decode = cache.detached_decode(&data).expect("offered");
        let mut decoded = decode.run(data);
        // As if it were decoded for another version of the region: the bytes are decoded again.
        decoded.value.as_mut().expect("decoded").version += 1;
        let before = decodes(2);
        cache
            .handle_decoded(NodeId(0), decoded)
            .expect("no violation");
        assert_eq!(decodes(2), before + 1, "decoded again from the bytes");
        assert_eq!(*granted(&mut cache, 2).read(&cell), blob(2, len));
    }

    #[test]
    fn a_big_image_returned_to_its_home_is_decoded_away_from_the_engine() {
        let len = DETACHED_DECODE_MIN_BYTES + 1;
        let (mut home, mut cache, cell) = pair(3, len);
        assert!(matches!(cache.start_write(cell.id(), 2), Ok(Start::Queued)));
        deliver_all(&mut cache, &mut home);
        deliver_all(&mut home, &mut cache);
        {
            let mut w = granted(&mut cache, 2).write(&cell);
            w.0[1] = 42;
        }
        // The home reads: the writer's copy comes back with the recall's answer.
        let home_cell = home.map::<Blob>(cell.id(), 3).expect("home map").0;
        assert!(matches!(home.start_read(cell.id(), 4), Ok(Start::Queued)));
        deliver_all(&mut home, &mut cache);
        let ack = only_transmit(&mut cache);
        assert!(matches!(ack, Message::RecallAck { image: Some(_), .. }));
        let decode = home.detached_decode(&ack).expect("offered at the home");
        let before = decodes(3);
        let decoded = decode.run(ack);
        home.handle_decoded(NodeId(1), decoded)
            .expect("no violation");
        assert_eq!(decodes(3), before + 1, "decoded once");
        let access = granted(&mut home, 4);
        assert_eq!(access.read(&home_cell).0[1], 42);
    }

    #[test]
    fn an_image_that_does_not_decode_is_still_a_violation() {
        refused_when_the_first_byte_is(0xff);
    }

    #[test]
    fn a_decode_that_panics_is_a_decode_error() {
        refused_when_the_first_byte_is(PANICS);
    }

    /// A big image whose first byte is `first` is refused by the cache after a detached
    /// decode, and the read waiting for it fails (without a second decode: one that panics
    /// would panic here).
    fn refused_when_the_first_byte_is(first: u8) {
        let len = DETACHED_DECODE_MIN_BYTES;
        let (mut home, mut cache, cell) = pair(0, len);
        assert!(matches!(cache.start_read(cell.id(), 2), Ok(Start::Queued)));
        deliver_all(&mut cache, &mut home);
        let Message::Data {
            region,
            grant,
            image,
        } = only_transmit(&mut home)
        else {
            panic!("data");
        };
        let mut image = image.expect("an image");
        image.bytes[0] = first;
        let bad = Message::Data {
            region,
            grant,
            image: Some(image),
        };
        let decoded = cache.detached_decode(&bad).expect("offered").run(bad);
        assert!(matches!(
            decoded.value,
            Some(DecodedImage { value: Err(_), .. })
        ));
        assert!(cache.handle_decoded(NodeId(0), decoded).is_err());
        assert!(matches!(
            cache.poll_event(),
            Some(Event::Completed {
                op: 2,
                result: Err(_)
            })
        ));
    }
}
