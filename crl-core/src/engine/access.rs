//! The hit path: a region's local copy and the atomic word that admits accesses to it.
//!
//! Every mapped region has one [`RegionCell`] per node, shared (through an `Arc`) by the
//! engine and by the program's handles. The cell holds the local copy of the value and an
//! [`AccessWord`]: a reader count, a writer bit, and two permission bits that the engine sets
//! according to the protocol state (`READ_OK` on a valid copy, `WRITE_OK` on a Modified copy or
//! an unshared home copy). A read or write *hit* is one compare-and-swap on that word and sends
//! nothing; anything else goes to the engine's slow path.
//!
//! When the engine must take a copy away (a recall, a flush, a request it serves at the home)
//! it clears the permission bits and sets `NOTIFY` in one atomic step, and reads the counts in
//! that same step. If accesses are still in progress the action is deferred: the access that
//! ends last sees `NOTIFY` and reports the region on the node's drain list, and the engine
//! finishes the action in [`Engine::process_drained`](super::Engine::process_drained). This is
//! what makes every operation indivisible.

use std::any::Any;
use std::cell::UnsafeCell;
use std::fmt;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::region::{CodecError, NodeId, Region, RegionId};

const READERS: u64 = (1 << 32) - 1;
const WRITER: u64 = 1 << 32;
const READ_OK: u64 = 1 << 33;
const WRITE_OK: u64 = 1 << 34;
const NOTIFY: u64 = 1 << 35;
/// The cell holds a value (its `MaybeUninit` is initialized). Kept in the admission word, not
/// in an `Option` beside it: a discriminant would cost 8 bytes per region (16 with the
/// allocator's rounding, issue 10), and only the engine changes it, while no access is in
/// progress and the permissions are revoked.
const HAS_VALUE: u64 = 1 << 36;

/// The atomic admission word of a [`RegionCell`]: reader count, writer bit, permissions.
#[derive(Default)]
pub struct AccessWord(AtomicU64);

/// In-progress accesses observed when the engine revoked a cell's permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InProgress {
    /// Reads in progress.
    pub readers: u32,
    /// Whether a write is in progress.
    pub writer: bool,
}

impl InProgress {
    /// No access is in progress.
    pub fn is_idle(self) -> bool {
        self.readers == 0 && !self.writer
    }
}

impl AccessWord {
    #[inline]
    fn try_read(&self) -> bool {
        let mut w = self.0.load(Ordering::Relaxed);
        loop {
            if w & (READ_OK | WRITER) != READ_OK || w & READERS == READERS {
                return false;
            }
            match self
                .0
                .compare_exchange_weak(w, w + 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => w = now,
            }
        }
    }

    #[inline]
    fn try_write(&self) -> bool {
        self.0
            .compare_exchange(
                HAS_VALUE | READ_OK | WRITE_OK,
                HAS_VALUE | READ_OK | WRITE_OK | WRITER,
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Ends a read; returns true if the engine asked to hear when accesses drain.
    #[inline]
    fn end_read(&self) -> bool {
        let prev = self.0.fetch_sub(1, Ordering::Release);
        debug_assert!(prev & READERS != 0, "end_read without a read in progress");
        prev & NOTIFY != 0 && prev & READERS == 1
    }

    /// Ends a write; returns true if the engine asked to hear when accesses drain.
    #[inline]
    fn end_write(&self) -> bool {
        let prev = self.0.fetch_and(!WRITER, Ordering::Release);
        debug_assert!(prev & WRITER != 0, "end_write without a write in progress");
        prev & NOTIFY != 0
    }

    /// Engine: revoke both permissions, ask for a drain notice, and report what is in progress.
    pub(crate) fn revoke(&self) -> InProgress {
        let prev = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                Some((w & !(READ_OK | WRITE_OK)) | NOTIFY)
            });
        let w = prev.unwrap_or_else(|w| w);
        InProgress {
            readers: (w & READERS) as u32,
            writer: w & WRITER != 0,
        }
    }

    /// Engine: set the permissions for the protocol state and drop any drain request.
    pub(crate) fn permit(&self, read: bool, write: bool) {
        let bits = if read { READ_OK } else { 0 } | if write { WRITE_OK | READ_OK } else { 0 };
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                Some((w & (READERS | WRITER | HAS_VALUE)) | bits)
            });
    }

    /// Engine: admit one read on behalf of a queued operation (permissions are revoked).
    pub(crate) fn grant_read(&self) {
        let prev = self.0.fetch_add(1, Ordering::Acquire);
        debug_assert!(prev & WRITER == 0, "granted a read beside a write");
    }

    /// Engine: admit the write on behalf of a queued operation (permissions are revoked).
    pub(crate) fn grant_write(&self) {
        let prev = self.0.fetch_or(WRITER, Ordering::Acquire);
        debug_assert!(
            prev & (WRITER | READERS) == 0,
            "granted a write beside another access"
        );
    }

    /// What is in progress now.
    pub fn in_progress(&self) -> InProgress {
        let w = self.0.load(Ordering::Acquire);
        InProgress {
            readers: (w & READERS) as u32,
            writer: w & WRITER != 0,
        }
    }

    /// Whether the cell holds a value.
    #[inline]
    fn has_value(&self) -> bool {
        self.0.load(Ordering::Acquire) & HAS_VALUE != 0
    }

    /// The current permissions (read hit allowed, write hit allowed).
    pub fn permissions(&self) -> (bool, bool) {
        let w = self.0.load(Ordering::Acquire);
        (w & READ_OK != 0, w & WRITE_OK != 0)
    }
}

impl fmt::Debug for AccessWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self.0.load(Ordering::Relaxed);
        f.debug_struct("AccessWord")
            .field("readers", &(w & READERS))
            .field("writer", &(w & WRITER != 0))
            .field("read_ok", &(w & READ_OK != 0))
            .field("write_ok", &(w & WRITE_OK != 0))
            .field("notify", &(w & NOTIFY != 0))
            .field("has_value", &(w & HAS_VALUE != 0))
            .finish()
    }
}

impl<T> fmt::Debug for RegionCell<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegionCell")
            .field("id", &RegionId::new(self.home, self.seq))
            .field("version", &self.version.load(Ordering::Relaxed))
            .field("word", &self.word)
            .finish_non_exhaustive()
    }
}

/// Where ended accesses report regions the engine is waiting to see drained.
pub struct DrainList {
    drained: Mutex<Vec<RegionId>>,
    wake: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl DrainList {
    pub(crate) fn new(wake: Option<Arc<dyn Fn() + Send + Sync>>) -> Self {
        DrainList {
            drained: Mutex::new(Vec::new()),
            wake,
        }
    }

    #[cold]
    fn push(&self, id: RegionId) {
        self.drained.lock().push(id);
        if let Some(wake) = &self.wake {
            wake();
        }
    }

    pub(crate) fn take(&self) -> Vec<RegionId> {
        std::mem::take(&mut *self.drained.lock())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.drained.lock().is_empty()
    }
}

/// A node's local copy of one region, shared by the engine and the program's handles.
///
/// Reads and writes go through [`try_read`](Self::try_read) / [`try_write`](Self::try_write)
/// (the hit path) or through the engine (a miss), which hands back an [`Access`].
pub struct RegionCell<T> {
    word: AccessWord,
    version: AtomicU64,
    /// The region's id, in two fields so that the handle count fills what would be the
    /// id's padding (the cell stays 56 bytes for a 16-byte value: 72 with the `Arc`'s
    /// counts, an 80-byte block).
    seq: u64,
    home: NodeId,
    /// The program's handles on this cell (see [`add_handle`](Self::add_handle)).
    handles: AtomicU32,
    drains: Arc<DrainList>,
    /// Initialized exactly while the word's `HAS_VALUE` bit is set.
    value: UnsafeCell<MaybeUninit<T>>,
}

// SAFETY: the value is only reached through the access protocol: shared references while the
// word counts a read (never beside a write), a unique reference while the word holds the writer
// bit, and the engine replaces it only when no access is in progress and the permissions are
// revoked (so none can start). That is the same contract as `RwLock<T>`, which is `Sync` when
// `T: Send + Sync`; `Region` requires both.
unsafe impl<T: Send + Sync> Sync for RegionCell<T> {}

impl<T: Region> RegionCell<T> {
    pub(crate) fn new(id: RegionId, value: Option<T>, drains: Arc<DrainList>) -> Self {
        Self::with_version(id, value, 0, drains)
    }

    pub(crate) fn with_version(
        id: RegionId,
        value: Option<T>,
        version: u64,
        drains: Arc<DrainList>,
    ) -> Self {
        let (word, value) = match value {
            Some(v) => (AccessWord(AtomicU64::new(HAS_VALUE)), MaybeUninit::new(v)),
            None => (AccessWord::default(), MaybeUninit::uninit()),
        };
        RegionCell {
            word,
            version: AtomicU64::new(version),
            seq: id.seq,
            home: id.home,
            handles: AtomicU32::new(0),
            drains,
            value: UnsafeCell::new(value),
        }
    }

    /// The region this cell caches.
    #[inline]
    pub fn id(&self) -> RegionId {
        RegionId::new(self.home, self.seq)
    }

    /// Counts one more handle of the program on this cell; true if it is the only one (the
    /// count was 0). A node maps a region once for all the handles on its cell that live at
    /// the same time: the handle that finds the count at 0 keeps the mapping it was made
    /// with, any other gives its own back at once, and the one that takes the count back to
    /// 0 ([`drop_handle`](Self::drop_handle)) unmaps. Each change of the count from 0 to 1
    /// and back thus pairs one map with one unmap, in whatever order threads get there.
    ///
    /// Aborts the process if the count would pass `u32::MAX` (as `Arc` does past
    /// `isize::MAX`): four billion live handles on one region are a leak.
    #[inline]
    pub fn add_handle(&self) -> bool {
        let prev = self.handles.fetch_add(1, Ordering::Relaxed);
        if prev == u32::MAX {
            std::process::abort();
        }
        prev == 0
    }

    /// Counts one handle fewer; true if it was the last (its owner then unmaps the region).
    #[inline]
    pub fn drop_handle(&self) -> bool {
        if self.handles.fetch_sub(1, Ordering::Release) == 1 {
            std::sync::atomic::fence(Ordering::Acquire);
            true
        } else {
            false
        }
    }

    /// The version of the local copy (bumped by each completed write).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The admission word (for inspection and tests).
    pub fn word(&self) -> &AccessWord {
        &self.word
    }

    /// Starts a read if the local copy is valid and no local write or pending protocol action
    /// stands in the way: a hit, no message. `None` means: ask the engine.
    #[inline]
    pub fn try_read(&self) -> Option<ReadGuard<'_, T>> {
        if self.word.try_read() {
            Some(ReadGuard { cell: self })
        } else {
            None
        }
    }

    /// Starts a write if this node holds the only copy and nothing else is in progress: a
    /// hit, no message. `None` means: ask the engine.
    #[inline]
    pub fn try_write(&self) -> Option<WriteGuard<'_, T>> {
        if self.word.try_write() {
            Some(WriteGuard { cell: self })
        } else {
            None
        }
    }

    #[inline]
    fn end_read(&self) {
        if self.word.end_read() {
            self.drains.push(self.id());
        }
    }

    #[inline]
    fn end_write(&self) {
        // Only the writer touches the version while it holds the writer bit.
        let v = self.version.load(Ordering::Relaxed);
        self.version.store(v + 1, Ordering::Release);
        if self.word.end_write() {
            self.drains.push(self.id());
        }
    }

    #[inline]
    fn value(&self) -> &T {
        assert!(
            self.word.has_value(),
            "crl: access granted on a cell without a value"
        );
        // SAFETY: the value is initialized (checked just above; only the engine clears it, and
        // not while an access is in progress). Called only while this thread holds a read or
        // the write on the word, so no unique reference exists and the engine does not
        // replace the value (see `Sync`).
        unsafe { (*self.value.get()).assume_init_ref() }
    }

    #[inline]
    #[allow(clippy::mut_from_ref)]
    fn value_mut(&self) -> &mut T {
        assert!(
            self.word.has_value(),
            "crl: access granted on a cell without a value"
        );
        // SAFETY: initialized, as in `value`. Called only while this thread holds the writer
        // bit: no read, no other write and no engine replacement can run (see `Sync`), so this
        // reference is unique.
        unsafe { (*self.value.get()).assume_init_mut() }
    }

    /// Replaces the value (dropping the old one) and sets the version. The caller guarantees
    /// that no access is in progress and none can start (the engine revoked the permissions).
    fn replace_value(&self, value: T, version: u64) {
        // Checked in every build: the engine only installs into an idle cell whose permissions
        // are revoked; if a protocol bug ever broke that, refuse rather than race a reader.
        assert!(
            self.word.in_progress().is_idle(),
            "crl: region {} replaced while an access is in progress",
            self.id()
        );
        self.drop_value();
        // SAFETY: the caller guarantees no access is in progress and none can start, so no
        // reference to the value exists; the old value was dropped just above.
        unsafe { (*self.value.get()).write(value) };
        self.word.0.fetch_or(HAS_VALUE, Ordering::AcqRel);
        self.version.store(version, Ordering::Release);
    }

    /// Drops the value if there is one and marks the cell empty. The caller guarantees that
    /// no access is in progress and none can start (the engine revoked the permissions).
    fn drop_value(&self) {
        let prev = self.word.0.fetch_and(!HAS_VALUE, Ordering::AcqRel);
        if prev & HAS_VALUE != 0 {
            // SAFETY: the bit said the value was initialized, and clearing it (above) makes
            // this the only drop; no reference to the value exists (the caller's guarantee).
            unsafe { (*self.value.get()).assume_init_drop() };
        }
    }
}

impl<T> Drop for RegionCell<T> {
    fn drop(&mut self) {
        if *self.word.0.get_mut() & HAS_VALUE != 0 {
            // SAFETY: the bit says the value is initialized; `&mut self` means no access and
            // no other reference exists.
            unsafe { self.value.get_mut().assume_init_drop() };
        }
    }
}

/// A read in progress on a region's local copy; ends on [`end`](Self::end) or drop.
pub struct ReadGuard<'a, T: Region> {
    cell: &'a RegionCell<T>,
}

impl<T: Region> ReadGuard<'_, T> {
    /// Ends the read (the same as dropping the guard).
    pub fn end(self) {}
}

impl<T: Region> Deref for ReadGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        self.cell.value()
    }
}

impl<T: Region> Drop for ReadGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.cell.end_read();
    }
}

/// A write in progress on a region's only valid copy; ends on [`end`](Self::end) or drop,
/// which bumps the region's version.
pub struct WriteGuard<'a, T: Region> {
    cell: &'a RegionCell<T>,
}

impl<T: Region> WriteGuard<'_, T> {
    /// Ends the write (the same as dropping the guard).
    pub fn end(self) {}
}

impl<T: Region> Deref for WriteGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        self.cell.value()
    }
}

impl<T: Region> DerefMut for WriteGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        self.cell.value_mut()
    }
}

impl<T: Region> Drop for WriteGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.cell.end_write();
    }
}

impl<T: Region> fmt::Debug for ReadGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadGuard")
            .field("region", &self.cell.id())
            .finish()
    }
}

impl<T: Region> fmt::Debug for WriteGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteGuard")
            .field("region", &self.cell.id())
            .finish()
    }
}

/// The kind of an [`Access`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessMode {
    /// A read.
    Read,
    /// A write.
    Write,
}

/// An access the engine granted to a queued operation (after a miss). It owns its cell and
/// ends the access when dropped; [`read`](Self::read) / [`write`](Self::write) turn it into a
/// typed guard.
pub struct Access {
    cell: Arc<dyn ErasedCell>,
    mode: AccessMode,
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Access")
            .field("region", &self.cell.id())
            .field("mode", &self.mode)
            .finish()
    }
}

impl Access {
    pub(crate) fn new(cell: Arc<dyn ErasedCell>, mode: AccessMode) -> Self {
        Access { cell, mode }
    }

    /// A read of `cell` started as a hit (without the engine), for work done beside it
    /// ([`super::ImageWork`]); `None` where a hit would miss.
    pub(crate) fn try_read_erased(cell: Arc<dyn ErasedCell>) -> Option<Access> {
        cell.word()
            .try_read()
            .then(|| Access::new(cell, AccessMode::Read))
    }

    /// The cell accessed.
    pub(crate) fn erased_cell(&self) -> &dyn ErasedCell {
        &*self.cell
    }

    /// The region accessed.
    pub fn region(&self) -> RegionId {
        self.cell.id()
    }

    /// Read or write.
    pub fn mode(&self) -> AccessMode {
        self.mode
    }

    /// Turns a granted read into a guard on `cell` (which must be this access's cell).
    ///
    /// # Panics
    /// If `cell` is another cell or this is a write.
    pub fn read<T: Region>(self, cell: &RegionCell<T>) -> ReadGuard<'_, T> {
        self.check(cell, AccessMode::Read);
        std::mem::forget(self);
        ReadGuard { cell }
    }

    /// Turns a granted write into a guard on `cell` (which must be this access's cell).
    ///
    /// # Panics
    /// If `cell` is another cell or this is a read.
    pub fn write<T: Region>(self, cell: &RegionCell<T>) -> WriteGuard<'_, T> {
        self.check(cell, AccessMode::Write);
        std::mem::forget(self);
        WriteGuard { cell }
    }

    /// Wraps a hit (a guard from the fast path) as an owned access on `cell`'s `Arc`.
    pub fn from_read<T: Region>(guard: ReadGuard<'_, T>, cell: &Arc<RegionCell<T>>) -> Access {
        assert!(std::ptr::eq(guard.cell, &**cell), "guard of another cell");
        std::mem::forget(guard);
        Access::new(cell.clone(), AccessMode::Read)
    }

    /// Wraps a write hit as an owned access on `cell`'s `Arc`.
    pub fn from_write<T: Region>(guard: WriteGuard<'_, T>, cell: &Arc<RegionCell<T>>) -> Access {
        assert!(std::ptr::eq(guard.cell, &**cell), "guard of another cell");
        std::mem::forget(guard);
        Access::new(cell.clone(), AccessMode::Write)
    }

    /// The value under this access (read or write), for as long as the access is held.
    ///
    /// # Panics
    /// If `T` is not the region's type.
    pub fn value<T: Region>(&self) -> &T {
        self.typed::<T>().value()
    }

    /// The value under this write access, mutably.
    ///
    /// # Panics
    /// If this is a read, or `T` is not the region's type.
    pub fn value_mut<T: Region>(&mut self) -> &mut T {
        assert_eq!(self.mode, AccessMode::Write, "mutable access under a read");
        self.typed::<T>().value_mut()
    }

    /// Runs `f` on the value under this access (read or write).
    pub fn with_value<T: Region, R>(&self, f: impl FnOnce(&T) -> R) -> R {
        let cell = self.typed::<T>();
        f(cell.value())
    }

    /// Runs `f` on the value under this write access.
    ///
    /// # Panics
    /// If this is a read.
    pub fn with_value_mut<T: Region, R>(&mut self, f: impl FnOnce(&mut T) -> R) -> R {
        assert_eq!(self.mode, AccessMode::Write, "mutable access under a read");
        let cell = self.typed::<T>();
        f(cell.value_mut())
    }

    fn typed<T: Region>(&self) -> &RegionCell<T> {
        self.cell
            .as_any()
            .downcast_ref::<RegionCell<T>>()
            .expect("access of another region type")
    }

    fn check<T: Region>(&self, cell: &RegionCell<T>, mode: AccessMode) {
        let same = std::ptr::addr_eq(Arc::as_ptr(&self.cell), cell as *const RegionCell<T>);
        assert!(same, "access granted on another cell");
        assert_eq!(self.mode, mode, "access of another mode");
    }
}

impl Drop for Access {
    fn drop(&mut self) {
        match self.mode {
            AccessMode::Read => self.cell.end_read_erased(),
            AccessMode::Write => self.cell.end_write_erased(),
        }
    }
}

/// A region's value decoded away from the engine ([`ErasedCell::decode_detached`]), of the
/// cell's Rust type behind `dyn Any`.
pub(crate) struct DetachedValue(pub(crate) Box<dyn Any + Send>);

/// The engine's untyped view of a [`RegionCell`].
pub(crate) trait ErasedCell: Send + Sync + 'static {
    fn id(&self) -> RegionId;
    fn word(&self) -> &AccessWord;
    fn version(&self) -> u64;
    fn fingerprint(&self) -> u64;
    fn type_name(&self) -> &'static str;
    /// Archives the local copy. Caller: no write in progress, and none can start.
    fn encode(&self) -> Result<Vec<u8>, CodecError>;
    /// [`encode`](Self::encode) with the version of what was archived (one snapshot for a
    /// [`RawCell`], which may be replaced meanwhile under its own lock).
    fn encode_versioned(&self) -> Result<(Vec<u8>, u64), CodecError> {
        Ok((self.encode()?, self.version()))
    }
    /// Replaces the local copy. Caller: no access in progress, and none can start.
    fn install(&self, bytes: &[u8], version: u64) -> Result<(), CodecError>;
    /// Decodes `bytes` as this cell's type without touching the cell, on any thread and
    /// without the engine (see [`super::ImageWork`]); `None` for a cell with no Rust type
    /// ([`RawCell`]: it keeps bytes, and installing them is a copy).
    fn decode_detached(&self, _bytes: &[u8]) -> Option<Result<DetachedValue, CodecError>> {
        None
    }
    /// Replaces the local copy with a value [`decode_detached`](Self::decode_detached) made,
    /// as [`install`](Self::install) does; gives the value back if it is not of this cell's
    /// type. Caller: as for `install`.
    fn install_decoded(&self, value: DetachedValue, _version: u64) -> Result<(), DetachedValue> {
        Err(value)
    }
    /// Drops the local copy (it is invalid). Caller: as for `install`.
    fn clear(&self);
    fn as_any(&self) -> &(dyn Any + Send + Sync);
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
    fn end_read_erased(&self);
    fn end_write_erased(&self);
    /// The bytes of a restored region not yet typed ([`RawCell`]); `None` for a typed cell.
    fn raw_bytes(&self) -> Option<Vec<u8>> {
        None
    }
}

/// A home's copy of a region restored from storage before any local code named its Rust type
/// ([`Engine::restore_raw`](super::Engine::restore_raw)): archived bytes and a fingerprint. It
/// serves remote requests from the bytes and takes returned images as bytes; the first local
/// `map::<T>` replaces it with a typed [`RegionCell`]. No local access is ever granted on it.
pub(crate) struct RawCell {
    id: RegionId,
    word: AccessWord,
    fingerprint: u64,
    type_name: String,
    state: Mutex<(Vec<u8>, u64)>,
}

impl RawCell {
    pub(crate) fn new(id: RegionId, fingerprint: u64, type_name: String, bytes: Vec<u8>) -> Self {
        RawCell {
            id,
            word: AccessWord::default(),
            fingerprint,
            type_name,
            state: Mutex::new((bytes, 0)),
        }
    }
}

impl ErasedCell for RawCell {
    fn id(&self) -> RegionId {
        self.id
    }
    fn word(&self) -> &AccessWord {
        &self.word
    }
    fn version(&self) -> u64 {
        self.state.lock().1
    }
    fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
    fn type_name(&self) -> &'static str {
        // Only a cache's typed cells are asked for their type name; a raw cell lives at its home.
        "a restored region of unknown Rust type"
    }
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        Ok(self.state.lock().0.clone())
    }
    fn encode_versioned(&self) -> Result<(Vec<u8>, u64), CodecError> {
        let state = self.state.lock();
        Ok((state.0.clone(), state.1))
    }
    fn install(&self, bytes: &[u8], version: u64) -> Result<(), CodecError> {
        *self.state.lock() = (bytes.to_vec(), version);
        Ok(())
    }
    fn clear(&self) {
        self.state.lock().0 = Vec::new();
    }
    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
    fn end_read_erased(&self) {
        debug_assert!(false, "access ended on raw region {}", self.id);
    }
    fn end_write_erased(&self) {
        debug_assert!(false, "access ended on raw region {}", self.id);
    }
    fn raw_bytes(&self) -> Option<Vec<u8>> {
        Some(self.state.lock().0.clone())
    }
}

impl fmt::Debug for RawCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawCell")
            .field("id", &self.id)
            .field("type_name", &self.type_name)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl<T: Region> ErasedCell for RegionCell<T> {
    fn id(&self) -> RegionId {
        self.id()
    }
    fn word(&self) -> &AccessWord {
        &self.word
    }
    fn version(&self) -> u64 {
        RegionCell::version(self)
    }
    fn fingerprint(&self) -> u64 {
        T::FINGERPRINT
    }
    fn type_name(&self) -> &'static str {
        T::TYPE_NAME
    }
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        // Checked in every build (one load on the miss path): never read beside a writer.
        if self.word.in_progress().writer {
            return Err(CodecError::Encode {
                type_name: T::TYPE_NAME,
                reason: "a write is in progress".into(),
            });
        }
        assert!(
            self.word.has_value(),
            "crl: encoding a cell without a value"
        );
        // SAFETY: the value is initialized (checked above), no write is in progress (checked
        // above) and none can start: the engine revoked the write permission before calling,
        // so only shared references exist.
        unsafe { (*self.value.get()).assume_init_ref() }.encode_region()
    }
    fn install(&self, bytes: &[u8], version: u64) -> Result<(), CodecError> {
        let value = T::decode_region(bytes)?;
        self.replace_value(value, version);
        Ok(())
    }
    fn decode_detached(&self, bytes: &[u8]) -> Option<Result<DetachedValue, CodecError>> {
        Some(T::decode_region(bytes).map(|v| DetachedValue(Box::new(v))))
    }
    fn install_decoded(&self, value: DetachedValue, version: u64) -> Result<(), DetachedValue> {
        match value.0.downcast::<T>() {
            Ok(value) => {
                self.replace_value(*value, version);
                Ok(())
            }
            Err(other) => Err(DetachedValue(other)),
        }
    }
    fn clear(&self) {
        if !self.word.in_progress().is_idle() {
            return; // only frees memory; never race an access
        }
        // No access is in progress (checked just above), and none can start because the
        // engine revoked the permissions before calling.
        self.drop_value();
    }
    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
    fn end_read_erased(&self) {
        self.end_read();
    }
    fn end_write_erased(&self) {
        self.end_write();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::NodeId;
    use std::sync::atomic::AtomicUsize;

    /// Counts live values, so a value dropped twice or never shows.
    static LIVE: AtomicUsize = AtomicUsize::new(0);

    struct Counted(u64, u64);

    impl Counted {
        fn new(a: u64) -> Self {
            LIVE.fetch_add(1, Ordering::SeqCst);
            Counted(a, !a)
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            LIVE.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Region for Counted {
        const TYPE_NAME: &'static str = "Counted";
        const FINGERPRINT: u64 = 7;
        fn encode_region(&self) -> Result<Vec<u8>, CodecError> {
            Ok(self.0.to_le_bytes().to_vec())
        }
        fn decode_region(bytes: &[u8]) -> Result<Self, CodecError> {
            let a = u64::from_le_bytes(bytes.try_into().map_err(|_| CodecError::Invalid {
                type_name: "Counted",
                reason: "not 8 bytes".into(),
            })?);
            Ok(Counted::new(a))
        }
    }

    /// A cell of region 1.2 with its own drain list.
    fn cell<T: Region>(value: Option<T>) -> RegionCell<T> {
        RegionCell::new(
            RegionId::new(NodeId(1), 2),
            value,
            Arc::new(DrainList::new(None)),
        )
    }

    /// A value that is not counted (the counting test must see only its own values).
    struct Plain(u64);

    impl Region for Plain {
        const TYPE_NAME: &'static str = "Plain";
        const FINGERPRINT: u64 = 8;
        fn encode_region(&self) -> Result<Vec<u8>, CodecError> {
            Ok(self.0.to_le_bytes().to_vec())
        }
        fn decode_region(_: &[u8]) -> Result<Self, CodecError> {
            Ok(Plain(0))
        }
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_cell_of_a_16_byte_region_fits_an_80_byte_block() {
        // 16 bytes of `Arc` counts plus the cell: 72 bytes, which the system allocator keeps
        // in an 80-byte block (an `Option` beside the value made it 80 bytes, a 96-byte block).
        assert_eq!(std::mem::size_of::<RegionCell<Counted>>(), 56);
    }

    #[test]
    fn values_are_dropped_once_whatever_the_cell_goes_through() {
        // The test counts live values in a static: it runs alone in this module.
        let before = LIVE.load(Ordering::SeqCst);
        {
            let empty = cell::<Counted>(None);
            assert!(!empty.word.has_value());
            empty.clear(); // nothing to drop
            empty.install(&5u64.to_le_bytes(), 3).unwrap();
            assert_eq!(LIVE.load(Ordering::SeqCst), before + 1);
            empty.word.permit(true, false);
            assert_eq!(empty.try_read().map(|g| (g.0, g.1)), Some((5, !5)));
            empty.word.revoke();
            empty.install(&6u64.to_le_bytes(), 4).unwrap(); // replaces: the old one is dropped
            assert_eq!(LIVE.load(Ordering::SeqCst), before + 1);
            assert_eq!(empty.encode().unwrap(), 6u64.to_le_bytes());
            assert!(empty.install(b"bad", 5).is_err()); // a bad image leaves the value
            assert_eq!(empty.version(), 4);
            empty.word.permit(true, true);
            if let Some(mut g) = empty.try_write() {
                g.0 = 9;
            } else {
                panic!("a permitted write must hit");
            }
            assert_eq!(empty.version(), 5);
            empty.word.revoke();
            empty.clear();
            assert_eq!(LIVE.load(Ordering::SeqCst), before);
            empty.clear();
            assert!(empty.try_read().is_none());
            let full = cell(Some(Counted::new(1)));
            full.word.permit(true, true);
            assert!(
                full.try_write().is_some(),
                "a cell made with a value admits a write"
            );
            assert_eq!(LIVE.load(Ordering::SeqCst), before + 1);
        }
        // Dropping the cell with a value drops it; the empty one drops nothing.
        assert_eq!(LIVE.load(Ordering::SeqCst), before);
    }

    #[test]
    fn the_word_admits_hits_only_as_its_permissions_say() {
        let c = cell(Some(Plain(3)));
        let w = &c.word;
        // Made with a value, no permission: nothing hits.
        assert_eq!(w.permissions(), (false, false));
        assert!(c.try_read().is_none() && c.try_write().is_none());
        // Read permission: reads hit (many at once), writes do not.
        w.permit(true, false);
        assert_eq!(w.permissions(), (true, false));
        let (r1, r2) = (c.try_read().expect("hit"), c.try_read().expect("hit"));
        assert!(c.try_write().is_none());
        assert_eq!(
            w.in_progress(),
            InProgress {
                readers: 2,
                writer: false
            }
        );
        assert!(!w.in_progress().is_idle());
        drop((r1, r2));
        assert!(w.in_progress().is_idle());
        // Write permission: one write at a time, no read beside it.
        w.permit(true, true);
        assert_eq!(w.permissions(), (true, true));
        let g = c.try_write().expect("write hit");
        assert!(c.try_write().is_none() && c.try_read().is_none());
        assert_eq!(
            w.in_progress(),
            InProgress {
                readers: 0,
                writer: true
            }
        );
        drop(g);
        // A read in progress stops a write hit too.
        let r = c.try_read().expect("hit");
        assert!(c.try_write().is_none());
        drop(r);
        assert!(c.try_write().is_some());
    }

    #[test]
    fn a_revoke_reports_what_is_in_progress_and_the_last_end_reports_the_drain() {
        let drains = Arc::new(DrainList::new(None));
        let id = RegionId::new(NodeId(1), 9);
        let c = RegionCell::new(id, Some(Plain(1)), drains.clone());
        c.word.permit(true, false);
        let (r1, r2) = (c.try_read().unwrap(), c.try_read().unwrap());
        let busy = c.word.revoke();
        assert_eq!(
            busy,
            InProgress {
                readers: 2,
                writer: false
            }
        );
        assert_eq!(c.word.permissions(), (false, false));
        assert!(c.try_read().is_none(), "revoked: no new hit");
        drop(r1);
        assert!(drains.is_empty(), "a read still runs");
        drop(r2);
        assert_eq!(drains.take(), vec![id], "the last end reports the region");
        assert!(drains.is_empty());
        // The engine admits queued accesses itself while permissions are revoked.
        c.word.grant_read();
        assert_eq!(c.word.in_progress().readers, 1);
        drop(ReadGuard { cell: &c });
        assert_eq!(drains.take(), vec![id]);
        c.word.grant_write();
        assert!(c.word.in_progress().writer);
        drop(WriteGuard { cell: &c });
        assert_eq!(drains.take(), vec![id], "a write's end reports too");
        // Permitting again drops the drain request: ends report nothing.
        c.word.permit(true, true);
        drop(c.try_write().unwrap());
        assert!(drains.is_empty());
        // Permissions do not touch the value: it is still there.
        assert!(c.word.has_value());
    }

    #[test]
    fn handles_are_counted_first_and_last() {
        let c = cell::<Plain>(None);
        assert!(c.add_handle(), "the first handle");
        assert!(!c.add_handle());
        assert!(!c.add_handle());
        assert!(!c.drop_handle());
        assert!(!c.drop_handle());
        assert!(c.drop_handle(), "the last handle");
        assert!(c.add_handle(), "first again after the last was dropped");
        assert_eq!(c.id(), RegionId::new(NodeId(1), 2));
    }

    #[test]
    #[should_panic(expected = "encoding a cell without a value")]
    fn encoding_an_empty_cell_is_refused_loudly() {
        let _ = cell::<Counted>(None).encode();
    }
}
