//! A linearizability checker for recorded histories: the Wing–Gong search with Lowe's
//! memoization, as in porcupine and Knossos.
//!
//! Tests on real clusters (DESIGN.md §8) let clients record every operation they issue: its
//! input, when it was called, and, if it returned, when and with what output. The history is
//! **linearizable** if each operation can be given a point between its call and its return such
//! that performing the operations one by one in that order on a sequential [`Model`] produces
//! exactly the recorded outputs. That is what "no stale read, nothing lost" means for a register
//! under faults; an `assert` on a final state cannot see a read that went back in time.
//!
//! # Algorithm
//!
//! The calls and returns are laid out in time order in a doubly linked list. A depth-first
//! search repeatedly takes the first call in the list whose operation the model accepts in the
//! current state, removes that call and its return from the list ("linearizes" it), and starts
//! again from the head. Reaching a *return* whose operation is not linearized yet means no
//! order works from here: the search backtracks, undoing the last linearization and trying the
//! next candidate. Lowe's cache of (set of linearized operations, model state) pairs prunes
//! every branch that reaches a configuration seen before, which makes the search fast on the
//! histories tests produce.
//!
//! # What the checker assumes
//!
//! - Timestamps come from one clock (e.g. nanoseconds since the test started, from one
//!   `Instant`). Operation `a` precedes `b` if `a` returned strictly before `b` was called;
//!   equal timestamps count as concurrent (the lenient choice).
//! - An operation that never returned (timed out, its client died) **may or may not** have
//!   taken effect: its return is at infinity and its output is unconstrained, and the search may
//!   also leave it out entirely. A read-only operation that never returned constrains nothing
//!   and is dropped before the search ([`Model::is_read_only`]).
//! - Models are deterministic: the next state depends only on the state and the input.
//! - P-compositionality: a model can split the history into independent partitions (e.g. one
//!   per key, [`Keyed`]); each is checked alone, which is exponentially cheaper than checking
//!   them together and equivalent for linearizability.
//! - The search is bounded: after [`DEFAULT_STEP_BUDGET`] model steps in one partition (or the
//!   budget given to [`check_with_budget`]) it gives up with [`Outcome::Unknown`] rather than
//!   run for hours on a pathological history.
//!
//! A violation comes with an explanation ([`Violation`]): the longest linearizable prefix the
//! search found, the model state after it, and the operation that could not be placed next.

use std::collections::{BTreeMap, HashSet};
use std::fmt::{self, Debug, Write as _};
use std::hash::Hash;

/// How many model steps the search may take in one partition before it answers
/// [`Outcome::Unknown`]. A linearizable history of a few thousand operations with a handful of
/// clients takes a few thousand steps; exhausting the budget on a pathological history (thirty
/// mutually concurrent writes, then an impossible read) took 0.8 s and 17 MB of memory in a
/// release build.
pub const DEFAULT_STEP_BUDGET: u64 = 1_000_000;

/// A sequential specification: the object whose concurrent history is checked.
pub trait Model {
    /// The object's state. The cache hashes it, so keep it small.
    type State: Clone + Eq + Hash + Debug;
    /// What an operation asks (e.g. read, or write 5).
    type Input: Debug;
    /// What an operation answered (e.g. the value read).
    type Output: Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Performs `input` on `state`. `output` is what the operation answered, or `None` if it
    /// never returned (then any output is acceptable). Returns the next state, or `None` if
    /// the operation cannot have answered `output` in `state`.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    /// Whether an operation with this input never changes the state (a read). Such an
    /// operation that never returned is dropped before the search. The default, `false`, is
    /// always correct, only slower.
    fn is_read_only(&self, input: &Self::Input) -> bool {
        let _ = input;
        false
    }

    /// Splits a history into independent partitions, as lists of indices into `history`; each
    /// is checked alone from [`Model::init`]. Every index must appear in exactly one partition.
    /// The default is one partition holding everything.
    fn partition(&self, history: &[Operation<Self::Input, Self::Output>]) -> Vec<Vec<usize>> {
        vec![(0..history.len()).collect()]
    }
}

/// How an operation ended, if it did.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Return<O> {
    /// When the client received the answer (same clock as [`Operation::call`]).
    pub time: u64,
    /// The answer.
    pub output: O,
}

/// One operation of a recorded history.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Operation<I, O> {
    /// Who issued it; only used in explanations.
    pub client: u64,
    /// What was asked.
    pub input: I,
    /// When the client issued it.
    pub call: u64,
    /// When and how it returned, or `None` if it never did (timed out, client crashed): it may
    /// or may not have taken effect.
    pub ret: Option<Return<O>>,
}

impl<I, O> Operation<I, O> {
    /// An operation called at `call` that returned `output` at `ret`.
    pub fn completed(client: u64, input: I, call: u64, output: O, ret: u64) -> Self {
        Self {
            client,
            input,
            call,
            ret: Some(Return { time: ret, output }),
        }
    }

    /// An operation called at `call` that never returned.
    pub fn pending(client: u64, input: I, call: u64) -> Self {
        Self {
            client,
            input,
            call,
            ret: None,
        }
    }
}

impl<I: Debug, O: Debug> fmt::Display for Operation<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ret {
            Some(r) => write!(
                f,
                "client {}: {:?} -> {:?} [{}, {}]",
                self.client, self.input, r.output, self.call, r.time
            ),
            None => write!(
                f,
                "client {}: {:?} -> (no return) [{}, never]",
                self.client, self.input, self.call
            ),
        }
    }
}

/// A history the checker refuses to judge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// An operation returned before it was called.
    #[error("operation {index} returns at {ret}, before its call at {call}")]
    ReturnBeforeCall {
        /// Index of the operation in the history.
        index: usize,
        /// Its call time.
        call: u64,
        /// Its return time.
        ret: u64,
    },
    /// The model's partitions name an operation the history does not have.
    #[error("a partition names operation {index}, but the history has {len}")]
    UnknownOperation {
        /// The index named.
        index: usize,
        /// The history's length.
        len: usize,
    },
    /// The model's partitions do not cover every operation exactly once.
    #[error("operation {index} is in {count} partitions, expected exactly one")]
    BadPartition {
        /// Index of the operation in the history.
        index: usize,
        /// How many partitions hold it.
        count: usize,
    },
}

/// Why a history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation<S> {
    /// Which partition (in the order [`Model::partition`] returned them) failed.
    pub partition: usize,
    /// The longest linearizable prefix the search found, as indices into the history in
    /// linearization order. Operations that never returned may appear in it.
    pub prefix: Vec<usize>,
    /// The model state after `prefix`.
    pub state: S,
    /// The operation that could not be linearized after `prefix`: of the completed operations
    /// not in it, the first to return. Every order of the others that fits before its return
    /// leads to a wrong output or to a configuration already refuted.
    pub stuck: usize,
}

impl<S: Debug> Violation<S> {
    /// A human-readable account: the prefix, the state, and the operation that could not be
    /// placed, rendered from `history` (the history that was checked).
    pub fn explain<I: Debug, O: Debug>(&self, history: &[Operation<I, O>]) -> String {
        let mut s = format!(
            "not linearizable (partition {}): after this linearizable prefix of {} operation(s)\n",
            self.partition,
            self.prefix.len()
        );
        for &i in &self.prefix {
            let _ = writeln!(s, "  #{i} {}", history[i]);
        }
        let _ = writeln!(s, "the state is {:?}, and operation", self.state);
        let _ = writeln!(s, "  #{} {}", self.stuck, history[self.stuck]);
        s.push_str(
            "cannot be linearized next, nor after any other order of the operations before it",
        );
        s
    }
}

/// The checker's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<S> {
    /// Every partition has a linearization.
    Linearizable,
    /// Some partition has none.
    Violation(Violation<S>),
    /// The search of some partition ran out of steps; no partition had a violation.
    Unknown {
        /// The first partition that ran out.
        partition: usize,
        /// The steps it took before giving up.
        steps: u64,
    },
}

impl<S> Outcome<S> {
    /// Whether the history was proven linearizable.
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Outcome::Linearizable)
    }

    /// Whether the history was proven not linearizable.
    pub fn is_violation(&self) -> bool {
        matches!(self, Outcome::Violation(_))
    }
}

/// Checks `history` against `model` with [`DEFAULT_STEP_BUDGET`] per partition.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
) -> Result<Outcome<M::State>, HistoryError> {
    check_with_budget(model, history, DEFAULT_STEP_BUDGET)
}

/// Checks `history` against `model`, allowing at most `budget` model steps per partition.
/// Partitions are checked in order; the first violation is returned at once.
pub fn check_with_budget<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: u64,
) -> Result<Outcome<M::State>, HistoryError> {
    for (index, op) in history.iter().enumerate() {
        if let Some(r) = &op.ret
            && r.time < op.call
        {
            return Err(HistoryError::ReturnBeforeCall {
                index,
                call: op.call,
                ret: r.time,
            });
        }
    }
    let partitions = model.partition(history);
    let mut seen = vec![0usize; history.len()];
    for &i in partitions.iter().flatten() {
        match seen.get_mut(i) {
            Some(c) => *c += 1,
            None => {
                return Err(HistoryError::UnknownOperation {
                    index: i,
                    len: history.len(),
                });
            }
        }
    }
    if let Some((index, &count)) = seen.iter().enumerate().find(|&(_, &c)| c != 1) {
        return Err(HistoryError::BadPartition { index, count });
    }
    let mut unknown = None;
    for (p, indices) in partitions.iter().enumerate() {
        match search(model, history, indices, budget) {
            Searched::Linearizable => {}
            Searched::Stuck {
                prefix,
                state,
                stuck,
            } => {
                return Ok(Outcome::Violation(Violation {
                    partition: p,
                    prefix,
                    state,
                    stuck,
                }));
            }
            Searched::OutOfSteps(steps) => {
                unknown.get_or_insert((p, steps));
            }
        }
    }
    Ok(match unknown {
        None => Outcome::Linearizable,
        Some((partition, steps)) => Outcome::Unknown { partition, steps },
    })
}

/// The result of searching one partition.
enum Searched<S> {
    Linearizable,
    Stuck {
        prefix: Vec<usize>,
        state: S,
        stuck: usize,
    },
    OutOfSteps(u64),
}

/// A fixed-size set of small integers (the linearized operations of a partition).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Box<[u64]>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)].into_boxed_slice())
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// The entry list: node 0 is the head, node `len - 1` the tail; others are calls and returns.
struct List {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The operation (local index) of each node.
    op: Vec<usize>,
    /// Whether each node is a call.
    is_call: Vec<bool>,
    /// The return node of each operation, if it returned.
    ret_node: Vec<Option<usize>>,
}

impl List {
    const HEAD: usize = 0;

    fn unlink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    /// Undoes `unlink(x)`; must be done in the reverse order of the unlinks.
    fn relink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = x;
        self.prev[n] = x;
    }

    /// Removes a call node and its return node.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        if let Some(r) = self.ret_node[self.op[call]] {
            self.unlink(r);
        }
    }

    /// Undoes `lift(call)`.
    fn unlift(&mut self, call: usize) {
        if let Some(r) = self.ret_node[self.op[call]] {
            self.relink(r);
        }
        self.relink(call);
    }
}

/// The Wing–Gong/Lowe search over the operations `indices` of `history`.
fn search<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    indices: &[usize],
    budget: u64,
) -> Searched<M::State> {
    // Operations that never returned and cannot change the state constrain nothing.
    let ops: Vec<usize> = indices
        .iter()
        .copied()
        .filter(|&i| history[i].ret.is_some() || !model.is_read_only(&history[i].input))
        .collect();
    let n = ops.len();
    let mut remaining = ops.iter().filter(|&&i| history[i].ret.is_some()).count();
    if remaining == 0 {
        // Leaving out every pending operation is a valid linearization.
        return Searched::Linearizable;
    }

    // Time-ordered events; at equal times calls come first, so touching operations overlap.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (j, &i) in ops.iter().enumerate() {
        events.push((history[i].call, false, j));
        if let Some(r) = &history[i].ret {
            events.push((r.time, true, j));
        }
    }
    events.sort_unstable();
    let len = events.len() + 2;
    let mut list = List {
        next: (1..=len).collect(),
        prev: (0..len).map(|x| x.wrapping_sub(1)).collect(),
        op: vec![usize::MAX; len],
        is_call: vec![false; len],
        ret_node: vec![None; n],
    };
    let tail = len - 1;
    for (k, &(_, is_ret, j)) in events.iter().enumerate() {
        let node = k + 1;
        list.op[node] = j;
        list.is_call[node] = !is_ret;
        if is_ret {
            list.ret_node[j] = Some(node);
        }
    }

    let mut state = model.init();
    let mut linearized = Bits::new(n);
    let mut cache: HashSet<(Bits, M::State)> = HashSet::new();
    // The linearized call nodes, with the state before each.
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut steps = 0u64;
    // The longest prefix: its length, and a snapshot taken when the search first backs off it.
    let mut best_len = 0;
    let mut best_dirty = false;
    let mut best: Vec<usize> = Vec::new();
    let mut best_state = state.clone();

    let mut node = list.next[List::HEAD];
    while remaining > 0 {
        if node != tail && list.is_call[node] {
            let j = list.op[node];
            let op = &history[ops[j]];
            if steps >= budget {
                return Searched::OutOfSteps(steps);
            }
            steps += 1;
            if let Some(next) = model.step(&state, &op.input, op.ret.as_ref().map(|r| &r.output)) {
                linearized.set(j);
                if cache.insert((linearized.clone(), next.clone())) {
                    let before = std::mem::replace(&mut state, next);
                    stack.push((node, before));
                    list.lift(node);
                    if op.ret.is_some() {
                        remaining -= 1;
                    }
                    if stack.len() > best_len {
                        best_len = stack.len();
                        best_dirty = true;
                    }
                    node = list.next[List::HEAD];
                    continue;
                }
                linearized.clear(j);
            }
            node = list.next[node];
        } else {
            // A return whose operation is not linearized (or the end of the list): dead end.
            if best_dirty && stack.len() == best_len {
                best = stack.iter().map(|&(c, _)| ops[list.op[c]]).collect();
                best_state = state.clone();
                best_dirty = false;
            }
            let Some((call, before)) = stack.pop() else {
                let in_best: HashSet<usize> = best.iter().copied().collect();
                let stuck = ops
                    .iter()
                    .copied()
                    .filter(|i| !in_best.contains(i))
                    .filter_map(|i| history[i].ret.as_ref().map(|r| (r.time, i)))
                    .min()
                    .map(|(_, i)| i)
                    .expect("a dead end leaves a completed operation unlinearized");
                return Searched::Stuck {
                    prefix: best,
                    state: best_state,
                    stuck,
                };
            };
            let j = list.op[call];
            linearized.clear(j);
            state = before;
            list.unlift(call);
            if history[ops[j]].ret.is_some() {
                remaining += 1;
            }
            node = list.next[call];
        }
    }
    Searched::Linearizable
}

/// What a register operation asks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegisterInput<V> {
    /// Read the value.
    Read,
    /// Replace the value.
    Write(V),
}

/// What a register operation answered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RegisterOutput<V> {
    /// A read's value.
    Value(V),
    /// A write's acknowledgement.
    Written,
}

/// A read/write register holding a `V`, initially [`Register::initial`]. A read returns the
/// value; a write sets it. A read that never returned is unconstrained; a write that never
/// returned may or may not have happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Register<V> {
    /// The value before any write. Use `Option<V>` with `None` for "never written".
    pub initial: V,
}

impl<V> Register<V> {
    /// A register initially holding `initial`.
    pub fn new(initial: V) -> Self {
        Self { initial }
    }
}

impl<V: Clone + Eq + Hash + Debug> Model for Register<V> {
    type State = V;
    type Input = RegisterInput<V>;
    type Output = RegisterOutput<V>;

    fn init(&self) -> V {
        self.initial.clone()
    }

    fn step(
        &self,
        state: &V,
        input: &RegisterInput<V>,
        output: Option<&RegisterOutput<V>>,
    ) -> Option<V> {
        match (input, output) {
            (RegisterInput::Read, None) => Some(state.clone()),
            (RegisterInput::Read, Some(RegisterOutput::Value(v))) => {
                (v == state).then(|| state.clone())
            }
            (RegisterInput::Write(v), None | Some(RegisterOutput::Written)) => Some(v.clone()),
            // An output of the wrong kind can never be explained.
            (RegisterInput::Read, Some(RegisterOutput::Written))
            | (RegisterInput::Write(_), Some(RegisterOutput::Value(_))) => None,
        }
    }

    fn is_read_only(&self, input: &RegisterInput<V>) -> bool {
        matches!(input, RegisterInput::Read)
    }
}

/// Independent copies of model `M`, one per key: an operation's input is `(key, input of M)`.
/// The history is partitioned by key and each key checked alone (P-compositionality), so a map
/// of registers costs the sum of its keys, not their product.
#[derive(Debug, Clone)]
pub struct Keyed<K, M> {
    /// The model of each key, starting from its `init` state.
    pub model: M,
    _key: std::marker::PhantomData<fn() -> K>,
}

impl<K, M: Default> Default for Keyed<K, M> {
    fn default() -> Self {
        Self::new(M::default())
    }
}

impl<K, M> Keyed<K, M> {
    /// One copy of `model` per key.
    pub fn new(model: M) -> Self {
        Self {
            model,
            _key: std::marker::PhantomData,
        }
    }
}

impl<K: Ord + Clone + Debug, M: Model> Model for Keyed<K, M> {
    type State = M::State;
    type Input = (K, M::Input);
    type Output = M::Output;

    fn init(&self) -> M::State {
        self.model.init()
    }

    fn step(
        &self,
        state: &M::State,
        input: &(K, M::Input),
        output: Option<&M::Output>,
    ) -> Option<M::State> {
        // Within a partition every operation has the same key.
        self.model.step(state, &input.1, output)
    }

    fn is_read_only(&self, input: &(K, M::Input)) -> bool {
        self.model.is_read_only(&input.1)
    }

    fn partition(&self, history: &[Operation<Self::Input, Self::Output>]) -> Vec<Vec<usize>> {
        let mut by_key: BTreeMap<&K, Vec<usize>> = BTreeMap::new();
        for (i, op) in history.iter().enumerate() {
            by_key.entry(&op.input.0).or_default().push(i);
        }
        by_key.into_values().collect()
    }
}

/// A map of registers: [`Register`]s keyed by `K`, each checked on its own.
pub type RegisterMap<K, V> = Keyed<K, Register<V>>;

/// One operation on a [`RegisterMap`].
pub type RegisterMapOp<K, V> = Operation<(K, RegisterInput<V>), RegisterOutput<V>>;

/// Removes from a register-map history the writes that never returned and whose value no
/// returned read of the same key saw; returns how many. It changes no verdict: such a write
/// may be left out by the search anyway, and any linearization that places it stays one
/// without it (no read sees its value, so the next operation on its key that observes the
/// state is a write, which overwrites it). It keeps the search from trying every place for
/// writes that cannot matter, which after a process pause or kill (hundreds of writes left
/// open to the end of the history) can exhaust the step budget.
pub fn drop_unobserved_pending_writes<K, V>(history: &mut Vec<RegisterMapOp<K, V>>) -> usize
where
    K: Eq + Hash + Clone,
    V: Eq + Hash + Clone,
{
    let seen: HashSet<(K, V)> = history
        .iter()
        .filter_map(|op| match (&op.input, &op.ret) {
            (
                (k, RegisterInput::Read),
                Some(Return {
                    output: RegisterOutput::Value(v),
                    ..
                }),
            ) => Some((k.clone(), v.clone())),
            _ => None,
        })
        .collect();
    let before = history.len();
    history.retain(|op| match (&op.input, &op.ret) {
        ((k, RegisterInput::Write(v)), None) => seen.contains(&(k.clone(), v.clone())),
        _ => true,
    });
    before - history.len()
}

#[cfg(test)]
mod tests;
