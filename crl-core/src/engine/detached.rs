//! Decoding and encoding big images away from the engine.
//!
//! Installing a region image received from a peer decodes it into the region's Rust type,
//! and a home answering a request encodes its copy: each takes about a millisecond per
//! mebibyte. Done in [`Engine::handle_message`], that time is spent holding the engine, so the
//! node's driver handles nothing else meanwhile: a 256 MiB region stalls every other region
//! of the node for a quarter of a second, at each end.
//!
//! The driver may instead ask [`Engine::image_work`] for the [`ImageWork`] of a message,
//! run it on another thread ([`ImageWork::run`]: it needs only the region's cell, not the
//! engine), go on with other messages meanwhile, and hand the result to
//! [`Engine::handle_prepared`], which handles the message exactly as `handle_message` would,
//! with the work done already:
//! - a message carrying a big image ([`Message::Data`], [`Message::RecallAck`],
//!   [`Message::Flush`]) for a region this node holds: the image is decoded, and the
//!   install takes the value;
//! - a request ([`Message::GetShared`], [`Message::GetExclusive`]) for a region homed here
//!   whose image was big when last encoded: the home's copy is encoded under a read access
//!   (taken as a local hit: no write can start meanwhile, and where a hit would miss there
//!   is no work), and the answer takes the bytes if the copy's version is still the one
//!   encoded when the request is served; otherwise the home encodes again. A region homed
//!   here without a Rust type yet (restored from the log, or placed by another node) keeps
//!   its archived bytes: they are copied, with their version, under the cell's own lock.
//!
//! The driver must keep the peer's order around the work: a message from the same peer that
//! arrives meanwhile may be handled first only if it may pass the image
//! ([`crate::wire::Lane::may_pass_image_of`]), just as the session lets it pass an image's
//! pieces on the link; everything else from that peer waits until the prepared message has
//! been handled. Nothing changes if the state moves while the work runs: the engine checks
//! the message when it is handled, as always, and a result that does not fit (another
//! region, version or type) is dropped and the work done again inline.
//!
//! A home knows a region is big once it has encoded or installed a big image of it, or was
//! told its length ([`Engine::note_encoded_len`], as crl-net's create does): until then a
//! request for it is encoded inline ([`Engine::big_images`]).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use tracing::debug;

use super::access::{Access, DetachedValue, ErasedCell, RawCell};
use super::home::DirState;
use super::{Engine, ProtocolViolation};
use crate::region::{CodecError, NodeId, RegionId};
use crate::wire::{Message, RegionImage};

/// The shortest image worth decoding or encoding away from the engine
/// ([`Engine::image_work`]; the default of
/// [`EngineConfig::image_work_min_bytes`](super::EngineConfig::image_work_min_bytes)): below
/// it, handing the work to another thread costs more than it saves.
pub const IMAGE_WORK_MIN_BYTES: usize = 256 << 10;

/// Work on one message's big image, to run on any thread ([`Engine::image_work`]).
pub struct ImageWork {
    region: RegionId,
    kind: WorkKind,
}

enum WorkKind {
    /// Decode the message's image as this cell's type.
    Decode(Arc<dyn ErasedCell>),
    /// Encode the home's copy, read under this access, at this version.
    Encode { read: Access, version: u64 },
    /// Copy the bytes of a home's copy that has no Rust type here ([`RawCell`]: a restored
    /// or placed region), with their version, under the cell's own lock.
    CopyRaw(Arc<dyn ErasedCell>),
}

impl std::fmt::Debug for ImageWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageWork")
            .field("region", &self.region)
            .field(
                "kind",
                &match self.kind {
                    WorkKind::Decode(_) => "decode",
                    WorkKind::Encode { .. } => "encode",
                    WorkKind::CopyRaw(_) => "copy raw",
                },
            )
            .finish()
    }
}

/// A message with its image work done ([`ImageWork::run`]), for
/// [`Engine::handle_prepared`].
pub struct PreparedMessage {
    msg: Message,
    decoded: Option<DecodedImage>,
    encoded: Option<EncodedImage>,
}

impl std::fmt::Debug for PreparedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedMessage")
            .field("msg", &self.msg.kind_name())
            .field("region", &self.msg.region())
            .field("decoded", &self.decoded.is_some())
            .field("encoded", &self.encoded.is_some())
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

/// A home's copy encoded away from the engine: the bytes (or the encode's error) at
/// `version`, sent in place of encoding the copy again.
pub(crate) struct EncodedImage {
    pub(crate) region: RegionId,
    pub(crate) version: u64,
    pub(crate) bytes: Result<Vec<u8>, CodecError>,
}

impl ImageWork {
    /// The region whose image is worked on: messages of other regions may pass it.
    pub fn region(&self) -> RegionId {
        self.region
    }

    /// Whether the work holds a read of the home's copy until it has run (an encode).
    pub fn holds_read(&self) -> bool {
        matches!(self.kind, WorkKind::Encode { .. })
    }

    /// Does the work for `msg` (the message [`Engine::image_work`] was asked about) on the
    /// calling thread. An error (or a panic of the type's code) is not reported here:
    /// [`Engine::handle_prepared`] treats it as it treats the same error inline.
    pub fn run(self, msg: Message) -> PreparedMessage {
        let region = self.region;
        let mut prepared = PreparedMessage::unprepared(msg);
        match self.kind {
            WorkKind::Decode(cell) => {
                prepared.decoded = image_of(&prepared.msg).and_then(|image| {
                    let value = catch(&*cell, "decode", || cell.decode_detached(&image.bytes))?;
                    if let Err(e) = &value {
                        debug!(%region, "detached decode failed: {e}");
                    }
                    Some(DecodedImage {
                        region,
                        version: image.version,
                        value,
                    })
                });
            }
            WorkKind::Encode { read, version } => {
                let cell = read.erased_cell();
                let bytes = catch(cell, "encode", || Some(cell.encode())).expect("an encode");
                drop(read);
                prepared.encoded = Some(EncodedImage {
                    region,
                    version,
                    bytes,
                });
            }
            WorkKind::CopyRaw(cell) => {
                // A raw cell's encode is a copy of its bytes: it cannot fail.
                if let Ok((bytes, version)) = cell.encode_versioned() {
                    prepared.encoded = Some(EncodedImage {
                        region,
                        version,
                        bytes: Ok(bytes),
                    });
                }
            }
        }
        prepared
    }
}

/// Runs the type's `work` on `cell`, a panic becoming a codec error: nothing was changed
/// (a decode only reads bytes, an encode only reads the value).
fn catch<T>(
    cell: &dyn ErasedCell,
    what: &str,
    work: impl FnOnce() -> Option<Result<T, CodecError>>,
) -> Option<Result<T, CodecError>> {
    std::panic::catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|_| {
        Some(Err(CodecError::Invalid {
            type_name: cell.type_name(),
            reason: format!("the {what} panicked"),
        }))
    })
}

impl PreparedMessage {
    /// A message to handle as it is (no work done).
    pub fn unprepared(msg: Message) -> Self {
        PreparedMessage {
            msg,
            decoded: None,
            encoded: None,
        }
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
    /// Offers work on `msg`'s big image to do away from the engine (see the module docs):
    /// `Some` for a message carrying an image of at least
    /// [`image_work_min_bytes`](super::EngineConfig::image_work_min_bytes) for a
    /// region this node holds with a Rust type, and for a request from `from` for a region
    /// homed here whose image was that big when last encoded, whose copy is valid here and
    /// that `from` does not share already. An offered encode holds a read of the home's copy
    /// until it has run. `msg` is then handed to [`ImageWork::run`] and the result to
    /// [`handle_prepared`](Self::handle_prepared).
    pub fn image_work(&self, from: NodeId, msg: &Message) -> Option<ImageWork> {
        let region = msg.region()?;
        let home = region.home == self.node;
        if let Message::GetShared { .. } | Message::GetExclusive { .. } = msg {
            if !home || !self.big_images.contains(&region.seq) {
                return None;
            }
            let entry = self.homes.get(&region.seq)?;
            if matches!(&entry.dir, DirState::Shared(s) if s.contains(&from)) {
                return None; // an upgrade, or a repeated read: no image
            }
            if entry.cell.as_any().is::<RawCell>() {
                // Its bytes are copied under its own lock (no access is granted on it), unless
                // an owner holds newer ones.
                if matches!(entry.dir, DirState::Exclusive(_)) {
                    return None;
                }
                return Some(ImageWork {
                    region,
                    kind: WorkKind::CopyRaw(entry.cell.clone()),
                });
            }
            let read = Access::try_read_erased(entry.cell.clone())?;
            let version = entry.cell.version();
            return Some(ImageWork {
                region,
                kind: WorkKind::Encode { read, version },
            });
        }
        let image = image_of(msg)?;
        if image.bytes.len() < self.config.image_work_min_bytes {
            return None;
        }
        let cell = if home {
            self.homes.get(&region.seq)?.cell.clone()
        } else {
            self.cache.get(&region)?.cell.clone()
        };
        if cell.as_any().is::<RawCell>() {
            return None; // it keeps bytes: nothing to decode
        }
        Some(ImageWork {
            region,
            kind: WorkKind::Decode(cell),
        })
    }

    /// Handles a message whose work [`ImageWork::run`] did: exactly as
    /// [`handle_message`](Self::handle_message), except that installing its image installs
    /// the decoded value, and answering the request sends the bytes encoded (if the home's
    /// copy is still at the version encoded).
    pub fn handle_prepared(
        &mut self,
        from: NodeId,
        prepared: PreparedMessage,
    ) -> Result<(), ProtocolViolation> {
        self.decoded = prepared.decoded;
        self.encoded = prepared.encoded;
        let result = self.handle_message(from, prepared.msg);
        // Not used (the message was refused, carried no image, or its request waits): dropped.
        self.decoded = None;
        self.encoded = None;
        result
    }

    /// Regions homed here whose image was at least
    /// [`image_work_min_bytes`](super::EngineConfig::image_work_min_bytes) when last
    /// encoded or installed here: requests for them are encoded away from the engine.
    pub fn big_images(&self) -> usize {
        self.big_images.len()
    }

    /// Tells the engine how long the image of region `id`, homed here, is (measured by the
    /// caller, as a node's create does): a request for a big one is then encoded beside the
    /// engine from the first ([`image_work`](Self::image_work)). Ignored for a region not
    /// homed here.
    pub fn note_encoded_len(&mut self, id: RegionId, len: usize) {
        if id.home == self.node && self.homes.contains_key(&id.seq) {
            self.note_image_len(id, len);
        }
    }

    /// An image of `id` (homed here) returned by its owner was just installed: its length is
    /// noted, and its bytes are what the home sends if a request waiting for it is served
    /// while this message is handled (they decoded as the region's type here; encoding the
    /// value again would give the same value, at about a millisecond per MiB in the engine).
    pub(crate) fn keep_returned_image(&mut self, id: RegionId, image: RegionImage) {
        self.note_image_len(id, image.bytes.len());
        self.encoded = Some(EncodedImage {
            region: id,
            version: image.version,
            bytes: Ok(image.bytes),
        });
    }

    /// Notes the length of an image of `id` (homed here) just encoded or installed.
    pub(crate) fn note_image_len(&mut self, id: RegionId, len: usize) {
        if len >= self.config.image_work_min_bytes {
            self.big_images.insert(id.seq);
        } else {
            self.big_images.remove(&id.seq);
        }
    }

    /// The image of `cell` (homed here) to send: the bytes encoded away from the engine if
    /// they are of this region at its current version, else encoded now.
    pub(crate) fn home_image(
        encoded: Option<EncodedImage>,
        cell: &dyn ErasedCell,
    ) -> Result<RegionImage, CodecError> {
        let version = cell.version();
        match encoded.filter(|e| e.region == cell.id() && e.version == version) {
            Some(e) => Ok(RegionImage {
                version,
                bytes: e.bytes?,
            }),
            None => super::home::encode_image(cell),
        }
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
    use crate::engine::{EngineConfig, Event, Progress, RegionCell, Start};
    use crate::region::Region;

    /// Bytes whose decodes and encodes are counted (per test: by the first byte of the value,
    /// a tag no other test counting them uses).
    #[derive(Debug, Clone, PartialEq)]
    struct Blob(Vec<u8>);

    static DECODES: [AtomicUsize; 8] = [const { AtomicUsize::new(0) }; 8];
    static ENCODES: [AtomicUsize; 8] = [const { AtomicUsize::new(0) }; 8];

    fn encodes(tag: u8) -> usize {
        ENCODES[tag as usize].load(Ordering::SeqCst)
    }

    /// The first byte of an image whose decode panics.
    const PANICS: u8 = 0xfe;

    fn decodes(tag: u8) -> usize {
        DECODES[tag as usize].load(Ordering::SeqCst)
    }

    impl Region for Blob {
        const TYPE_NAME: &'static str = "Blob";
        const FINGERPRINT: u64 = 0xb10b;
        fn encode_region(&self) -> Result<Vec<u8>, CodecError> {
            if let Some(n) = self.0.first().and_then(|&t| ENCODES.get(usize::from(t))) {
                n.fetch_add(1, Ordering::SeqCst);
            }
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
        let cell = map_at(&mut cache, &mut home, id);
        (home, cache, cell)
    }

    /// Maps `id` as a blob at `node` (op 1), asking `home` if need be.
    fn map_at(node: &mut Engine, home: &mut Engine, id: RegionId) -> Arc<RegionCell<Blob>> {
        let (cell, progress) = node.map::<Blob>(id, 1).expect("map");
        if progress == Progress::Pending {
            deliver_all(node, home);
            deliver_all(home, node);
            while node.poll_event().is_some() {}
        }
        cell
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

    /// The driver hands the work to another thread and takes the result back.
    #[test]
    fn work_crosses_threads() {
        fn send<T: Send>() {}
        send::<ImageWork>();
        send::<PreparedMessage>();
    }

    #[test]
    fn a_big_read_miss_installs_the_value_decoded_away_from_the_engine() {
        let len = IMAGE_WORK_MIN_BYTES;
        let (mut home, mut cache, cell) = pair(1, len);
        assert!(matches!(cache.start_read(cell.id(), 2), Ok(Start::Queued)));
        deliver_all(&mut cache, &mut home);
        let data = only_transmit(&mut home);
        assert!(matches!(data, Message::Data { .. }));
        let decode = cache.image_work(NodeId(0), &data).expect("offered");
        assert_eq!(decode.region(), cell.id());
        let before = decodes(1);
        // Run here: the driver runs it on another thread (`ImageWork` is `Send`, checked by
        // `work_crosses_threads`); what matters is that the engine is not needed.
        let decoded = decode.run(data);
        assert_eq!(decodes(1), before + 1, "decoded without the engine");
        cache
            .handle_prepared(NodeId(0), decoded)
            .expect("no violation");
        assert_eq!(decodes(1), before + 1, "not decoded again");
        let access = granted(&mut cache, 2);
        assert_eq!(*access.read(&cell), blob(1, len));
    }

    #[test]
    fn a_small_image_is_decoded_by_the_engine() {
        let (mut home, mut cache, cell) = pair(0, IMAGE_WORK_MIN_BYTES - 1);
        assert!(matches!(cache.start_read(cell.id(), 2), Ok(Start::Queued)));
        deliver_all(&mut cache, &mut home);
        let data = only_transmit(&mut home);
        assert!(cache.image_work(NodeId(0), &data).is_none());
        // Nor a message without an image, nor one for a region this node does not hold.
        let get = Message::GetShared {
            region: cell.id(),
            fingerprint: Blob::FINGERPRINT,
            priority: crate::wire::PRIORITY_NONE,
        };
        assert!(home.image_work(NodeId(1), &get).is_none());
        let Message::Data { grant, image, .. } = data else {
            unreachable!()
        };
        let mut image = image.expect("an image");
        image.bytes.resize(IMAGE_WORK_MIN_BYTES, 0);
        let unknown = Message::Data {
            region: RegionId::new(NodeId(0), 99),
            grant,
            image: Some(image),
        };
        assert!(cache.image_work(NodeId(0), &unknown).is_none());
    }

    #[test]
    fn a_value_decoded_for_another_image_is_not_installed() {
        let len = IMAGE_WORK_MIN_BYTES;
        let (mut home, mut cache, cell) = pair(2, len);
        assert!(matches!(cache.start_read(cell.id(), 2), Ok(Start::Queued)));
        deliver_all(&mut cache, &mut home);
        let data = only_transmit(&mut home);
        let decode = cache.image_work(NodeId(0), &data).expect("offered");
        let mut decoded = decode.run(data);
        // As if it were decoded for another version of the region: the bytes are decoded again.
        decoded.decoded.as_mut().expect("decoded").version += 1;
        let before = decodes(2);
        cache
            .handle_prepared(NodeId(0), decoded)
            .expect("no violation");
        assert_eq!(decodes(2), before + 1, "decoded again from the bytes");
        assert_eq!(*granted(&mut cache, 2).read(&cell), blob(2, len));
    }

    #[test]
    fn a_big_image_returned_to_its_home_is_decoded_away_from_the_engine() {
        let len = IMAGE_WORK_MIN_BYTES + 1;
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
        let decode = home
            .image_work(NodeId(1), &ack)
            .expect("offered at the home");
        let before = decodes(3);
        let decoded = decode.run(ack);
        home.handle_prepared(NodeId(1), decoded)
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
        let len = IMAGE_WORK_MIN_BYTES;
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
        let decoded = cache.image_work(NodeId(0), &bad).expect("offered").run(bad);
        assert!(matches!(
            decoded.decoded,
            Some(DecodedImage { value: Err(_), .. })
        ));
        assert!(cache.handle_prepared(NodeId(0), decoded).is_err());
        assert!(matches!(
            cache.poll_event(),
            Some(Event::Completed {
                op: 2,
                result: Err(_)
            })
        ));
    }

    /// A home of a big blob that served one read miss (learning it is big), and a second
    /// node that mapped the blob and whose read miss's request is returned, not yet sent.
    fn second_reader(
        tag: u8,
        len: usize,
    ) -> (
        Engine,
        Engine,
        Arc<RegionCell<Blob>>,
        Arc<RegionCell<Blob>>,
        Message,
    ) {
        let (mut home, mut first, cell) = pair(tag, len);
        let id = cell.id();
        let home_cell = home.map::<Blob>(id, 9).expect("home map").0;
        assert!(matches!(first.start_read(id, 2), Ok(Start::Queued)));
        let get = only_transmit(&mut first);
        assert!(
            home.image_work(NodeId(1), &get).is_none(),
            "not known to be big before its first encode"
        );
        home.handle_message(NodeId(1), get).expect("no violation");
        assert_eq!(home.big_images(), 1, "learnt by encoding");
        deliver_all(&mut home, &mut first);
        drop(granted(&mut first, 2));
        // A node that shares the copy already asks for no image: nothing to encode.
        let upgrade = Message::GetExclusive {
            region: id,
            fingerprint: Blob::FINGERPRINT,
            priority: crate::wire::PRIORITY_NONE,
        };
        assert!(home.image_work(NodeId(1), &upgrade).is_none());
        let mut second = Engine::new(NodeId(2), EngineConfig::default());
        let far = map_at(&mut second, &mut home, id);
        assert!(matches!(second.start_read(id, 2), Ok(Start::Queued)));
        let get = only_transmit(&mut second);
        (home, second, far, home_cell, get)
    }

    #[test]
    fn a_request_for_a_big_region_is_encoded_away_from_the_engine_after_the_first() {
        let len = IMAGE_WORK_MIN_BYTES;
        let (mut home, mut second, far, home_cell, get) = second_reader(5, len);
        let work = home.image_work(NodeId(2), &get).expect("offered");
        assert!(work.holds_read());
        let shown = format!("{work:?}");
        assert!(
            shown.contains("encode") && shown.contains(&format!("{:?}", far.id())),
            "{shown}"
        );
        assert!(
            home_cell.try_write().is_none(),
            "no write at the home while its copy is encoded"
        );
        let before = encodes(5);
        let prepared = work.run(get);
        let shown = format!("{prepared:?}");
        assert!(shown.contains("encoded: true"), "{shown}");
        assert_eq!(encodes(5), before + 1, "encoded without the engine");
        assert!(home_cell.word().in_progress().is_idle(), "the read ended");
        home.handle_prepared(NodeId(2), prepared)
            .expect("no violation");
        assert_eq!(encodes(5), before + 1, "not encoded again");
        deliver_all(&mut home, &mut second);
        assert_eq!(*granted(&mut second, 2).read(&far), blob(5, len));
    }

    #[test]
    fn bytes_encoded_at_another_version_are_not_sent() {
        let len = IMAGE_WORK_MIN_BYTES + 3;
        let (mut home, mut second, far, _, get) = second_reader(6, len);
        let mut prepared = home.image_work(NodeId(2), &get).expect("offered").run(get);
        // As if the copy had been written since: the home encodes it again.
        let encoded = prepared.encoded.as_mut().expect("encoded");
        encoded.version += 1;
        encoded.bytes = Ok(vec![6, 0, 0]);
        let before = encodes(6);
        home.handle_prepared(NodeId(2), prepared)
            .expect("no violation");
        assert_eq!(encodes(6), before + 1, "encoded again");
        deliver_all(&mut home, &mut second);
        assert_eq!(*granted(&mut second, 2).read(&far), blob(6, len));
    }

    #[test]
    fn a_home_told_the_length_encodes_even_the_first_request_beside_the_engine() {
        let len = IMAGE_WORK_MIN_BYTES;
        let (mut home, mut cache, cell) = pair(0, len);
        let id = cell.id();
        home.note_encoded_len(RegionId::new(NodeId(0), 999), len); // not homed here: ignored
        assert_eq!(home.big_images(), 0);
        assert!(matches!(cache.start_read(id, 2), Ok(Start::Queued)));
        let get = only_transmit(&mut cache);
        home.note_encoded_len(id, len);
        assert_eq!(home.big_images(), 1);
        assert!(
            home.image_work(NodeId(1), &get).is_some(),
            "offered from the first"
        );
        // Shrunk below the threshold: encoded inline again.
        home.note_encoded_len(id, 1);
        assert_eq!(home.big_images(), 0);
        assert!(home.image_work(NodeId(1), &get).is_none());
    }

    #[test]
    fn a_home_sends_the_image_its_owner_returned_without_encoding_it_again() {
        let len = IMAGE_WORK_MIN_BYTES;
        let (mut home, mut writer, cell) = pair(7, len);
        let id = cell.id();
        assert!(matches!(writer.start_write(id, 2), Ok(Start::Queued)));
        deliver_all(&mut writer, &mut home);
        deliver_all(&mut home, &mut writer);
        granted(&mut writer, 2).write(&cell).0[1] = 42;
        let mut reader = Engine::new(NodeId(2), EngineConfig::default());
        let far = map_at(&mut reader, &mut home, id);
        assert!(matches!(reader.start_read(id, 2), Ok(Start::Queued)));
        deliver_all(&mut reader, &mut home); // the home recalls the writer's copy
        deliver_all(&mut home, &mut writer);
        let before = encodes(7);
        deliver_all(&mut writer, &mut home); // its image comes back and goes on to the reader
        assert_eq!(encodes(7), before, "the returned image is sent as it came");
        deliver_all(&mut home, &mut reader);
        assert_eq!(granted(&mut reader, 2).read(&far).0[1], 42);
    }

    #[test]
    fn a_placed_regions_bytes_are_copied_beside_the_engine() {
        let len = IMAGE_WORK_MIN_BYTES;
        let mut home = Engine::new(NodeId(0), EngineConfig::default());
        let bytes = blob(0, len).encode_region().expect("encode");
        let id = home
            .create_placed(Blob::FINGERPRINT, "Blob".into(), bytes)
            .expect("placed");
        assert_eq!(home.big_images(), 1, "known big from its bytes");
        let mut reader = Engine::new(NodeId(1), EngineConfig::default());
        let far = map_at(&mut reader, &mut home, id);
        assert!(matches!(reader.start_write(id, 2), Ok(Start::Queued)));
        let get = only_transmit(&mut reader);
        let work = home.image_work(NodeId(1), &get).expect("offered");
        assert!(!work.holds_read(), "a raw copy needs no access");
        let prepared = work.run(get);
        assert!(prepared.encoded.is_some());
        home.handle_prepared(NodeId(1), prepared)
            .expect("no violation");
        deliver_all(&mut home, &mut reader);
        granted(&mut reader, 2).write(&far).0[1] = 9;
        // Node 1 owns it now: the home's bytes are stale, nothing to copy for node 2.
        let mut other = Engine::new(NodeId(2), EngineConfig::default());
        let _ = map_at(&mut other, &mut home, id);
        assert!(matches!(other.start_read(id, 2), Ok(Start::Queued)));
        let get = only_transmit(&mut other);
        assert!(home.image_work(NodeId(2), &get).is_none());
    }
}
