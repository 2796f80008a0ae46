//! Tests of the linearizability checker: hand-written histories, random histories from a
//! simulated register, a brute-force oracle on small histories, and speed.

use super::*;
use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

type Op = Operation<RegisterInput<u8>, RegisterOutput<u8>>;
type KeyedOp = Operation<(u8, RegisterInput<u8>), RegisterOutput<u8>>;

fn w(client: u64, v: u8, call: u64, ret: u64) -> Op {
    Operation::completed(
        client,
        RegisterInput::Write(v),
        call,
        RegisterOutput::Written,
        ret,
    )
}

fn r(client: u64, v: u8, call: u64, ret: u64) -> Op {
    Operation::completed(
        client,
        RegisterInput::Read,
        call,
        RegisterOutput::Value(v),
        ret,
    )
}

fn w_pending(client: u64, v: u8, call: u64) -> Op {
    Operation::pending(client, RegisterInput::Write(v), call)
}

fn r_pending(client: u64, call: u64) -> Op {
    Operation::pending(client, RegisterInput::Read, call)
}

fn keyed(key: u8, op: Op) -> KeyedOp {
    Operation {
        client: op.client,
        input: (key, op.input),
        call: op.call,
        ret: op.ret,
    }
}

fn reg() -> Register<u8> {
    Register::new(0)
}

fn verdict(history: &[Op]) -> Outcome<u8> {
    check(&reg(), history).unwrap()
}

fn violation(history: &[Op]) -> Violation<u8> {
    match verdict(history) {
        Outcome::Violation(v) => v,
        other => panic!("expected a violation, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-written histories.

#[test]
fn lincheck_accepts_empty_and_sequential() {
    assert!(verdict(&[]).is_linearizable());
    assert!(verdict(&[r(0, 0, 0, 1)]).is_linearizable());
    assert!(
        verdict(&[w(0, 1, 0, 1), r(1, 1, 2, 3), w(0, 2, 4, 5), r(1, 2, 6, 7)]).is_linearizable()
    );
}

#[test]
fn lincheck_accepts_concurrent_overlaps() {
    // A read concurrent with a write may see either value.
    assert!(verdict(&[w(0, 1, 0, 10), r(1, 0, 1, 2), r(1, 1, 3, 4)]).is_linearizable());
    assert!(verdict(&[w(0, 1, 0, 10), r(1, 1, 1, 2), r(2, 0, 1, 3)]).is_linearizable());
    // Two concurrent writes, later reads agree on the order: either order is fine.
    assert!(
        verdict(&[
            w(0, 1, 0, 10),
            w(1, 2, 0, 10),
            r(2, 1, 11, 12),
            r(2, 1, 13, 14)
        ])
        .is_linearizable()
    );
    assert!(verdict(&[w(0, 1, 0, 10), w(1, 2, 0, 10), r(2, 2, 11, 12)]).is_linearizable());
    // The read linearizes before the write that overlaps it even though it returns later.
    assert!(verdict(&[r(1, 0, 0, 20), w(0, 1, 5, 6), r(2, 1, 7, 8)]).is_linearizable());
    // Touching intervals count as concurrent.
    assert!(verdict(&[w(0, 1, 0, 5), r(1, 0, 5, 6)]).is_linearizable());
}

#[test]
fn lincheck_rejects_stale_read_after_completed_write() {
    let history = [w(0, 1, 0, 1), r(1, 0, 2, 3)];
    let v = violation(&history);
    assert_eq!(v.partition, 0);
    assert_eq!(v.prefix, vec![0]);
    assert_eq!(v.state, 1);
    assert_eq!(v.stuck, 1);
    let text = v.explain(&history);
    assert!(text.contains("#0 client 0: Write(1)"), "{text}");
    assert!(text.contains("the state is 1"), "{text}");
    assert!(
        text.contains("#1 client 1: Read -> Value(0) [2, 3]"),
        "{text}"
    );
}

#[test]
fn lincheck_rejects_reads_in_contradicting_orders() {
    // Two concurrent writes; one client sees 1 then 2, another 2 then 1.
    let history = [
        w(0, 1, 0, 100),
        w(1, 2, 0, 100),
        r(2, 1, 10, 20),
        r(2, 2, 30, 40),
        r(3, 2, 10, 20),
        r(3, 1, 30, 40),
    ];
    let v = violation(&history);
    assert!(v.prefix.len() < history.len());
    // The same with one write still in flight: a new value, then the old one again.
    assert!(verdict(&[w(0, 1, 0, 10), r(1, 1, 1, 2), r(1, 0, 3, 4)]).is_violation());
}

#[test]
fn lincheck_rejects_read_of_value_never_written() {
    let v = violation(&[w(0, 1, 0, 10), r(1, 7, 2, 3)]);
    assert_eq!(v.stuck, 1);
    assert!(verdict(&[r(0, 3, 0, 1)]).is_violation());
    // Wrong kind of output.
    let odd = Operation::completed(0, RegisterInput::Read, 0, RegisterOutput::Written, 1);
    assert!(verdict(&[odd]).is_violation());
}

#[test]
fn lincheck_timed_out_write_may_or_may_not_take_effect() {
    // Took effect: seen by a later read.
    assert!(verdict(&[w_pending(0, 1, 0), r(1, 1, 5, 6)]).is_linearizable());
    // Did not take effect (yet, or ever).
    assert!(verdict(&[w_pending(0, 1, 0), r(1, 0, 5, 6), r(1, 0, 7, 8)]).is_linearizable());
    // Took effect late, after some reads missed it.
    assert!(verdict(&[w_pending(0, 1, 0), r(1, 0, 5, 6), r(1, 1, 7, 8)]).is_linearizable());
    // Once seen, it cannot be undone.
    let history = [w_pending(0, 1, 0), r(1, 1, 5, 6), r(1, 0, 7, 8)];
    let v = violation(&history);
    assert_eq!(v.stuck, 2);
    assert_eq!(v.prefix, vec![0, 1]);
    // It cannot take effect before it was called.
    assert!(verdict(&[r(1, 1, 0, 1), w_pending(0, 1, 2)]).is_violation());
    // Reads that never returned constrain nothing.
    assert!(verdict(&[r_pending(0, 0), w(1, 1, 1, 2), r_pending(2, 3)]).is_linearizable());
    // A history of pending operations only is linearizable.
    assert!(verdict(&[w_pending(0, 1, 0), w_pending(1, 2, 0)]).is_linearizable());
}

#[test]
fn lincheck_reports_bad_histories() {
    assert_eq!(
        check(&reg(), &[r(0, 0, 5, 4)]),
        Err(HistoryError::ReturnBeforeCall {
            index: 0,
            call: 5,
            ret: 4
        })
    );
    assert_eq!(
        HistoryError::ReturnBeforeCall {
            index: 0,
            call: 5,
            ret: 4
        }
        .to_string(),
        "operation 0 returns at 4, before its call at 5"
    );

    struct Lossy;
    impl Model for Lossy {
        type State = u8;
        type Input = RegisterInput<u8>;
        type Output = RegisterOutput<u8>;
        fn init(&self) -> u8 {
            0
        }
        fn step(&self, s: &u8, i: &Self::Input, o: Option<&Self::Output>) -> Option<u8> {
            reg().step(s, i, o)
        }
        fn partition(&self, _: &[Operation<Self::Input, Self::Output>]) -> Vec<Vec<usize>> {
            vec![vec![0], vec![0, 2]]
        }
    }
    assert_eq!(
        check(&Lossy, &[r(0, 0, 0, 1), r(0, 0, 2, 3), r(0, 0, 4, 5)]),
        Err(HistoryError::BadPartition { index: 0, count: 2 })
    );
    assert_eq!(
        check(&Lossy, &[r(0, 0, 0, 1)]),
        Err(HistoryError::UnknownOperation { index: 2, len: 1 })
    );
}

#[test]
fn lincheck_budget_gives_unknown() {
    let history = [w(0, 1, 0, 10), w(1, 2, 0, 10), r(2, 2, 11, 12)];
    assert_eq!(
        check_with_budget(&reg(), &history, 1).unwrap(),
        Outcome::Unknown {
            partition: 0,
            steps: 1
        }
    );
    assert!(
        check_with_budget(&reg(), &history, 100)
            .unwrap()
            .is_linearizable()
    );
    // Thirty mutually concurrent writes and an impossible read: refuting it means visiting
    // every subset of the writes. The search stops at the budget instead.
    let mut hard: Vec<Op> = (0..30).map(|i| w(i, i as u8 + 1, 0, 100)).collect();
    hard.push(r(99, 200, 200, 201));
    assert_eq!(
        check_with_budget(&reg(), &hard, 20_000).unwrap(),
        Outcome::Unknown {
            partition: 0,
            steps: 20_000
        }
    );
    // A violation in another partition still wins over an unknown one.
    let model = RegisterMap::<u8, u8>::new(Register::new(0));
    let mut both: Vec<KeyedOp> = hard.iter().cloned().map(|o| keyed(0, o)).collect();
    both.push(keyed(1, r(0, 5, 0, 1)));
    assert!(
        check_with_budget(&model, &both, 20_000)
            .unwrap()
            .is_violation()
    );
}

#[test]
fn lincheck_register_map_partitions_by_key() {
    let model = RegisterMap::<u8, u8>::new(Register::new(0));
    // Per key fine, though a single register could not explain it.
    let ok = [
        keyed(1, w(0, 1, 0, 1)),
        keyed(2, r(1, 0, 2, 3)),
        keyed(2, w(1, 5, 4, 5)),
        keyed(1, r(0, 1, 6, 7)),
    ];
    assert!(check(&model, &ok).unwrap().is_linearizable());
    let as_one: Vec<Op> = [w(0, 1, 0, 1), r(1, 0, 2, 3)].to_vec();
    assert!(verdict(&as_one).is_violation());

    // Key 2 has a stale read; key 1 is fine. The violation names key 2's partition (keys in
    // order) and history indices.
    let bad = [
        keyed(2, w(0, 9, 0, 1)),
        keyed(1, w(1, 1, 0, 1)),
        keyed(1, r(1, 1, 2, 3)),
        keyed(2, r(2, 0, 2, 3)),
    ];
    match check(&model, &bad).unwrap() {
        Outcome::Violation(v) => {
            assert_eq!(v.partition, 1);
            assert_eq!(v.prefix, vec![0]);
            assert_eq!(v.stuck, 3);
            assert!(v.explain(&bad).contains("(2, Read) -> Value(0)"));
        }
        other => panic!("expected a violation, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Random histories from a simulated register.

/// One operation of a generated run, in linearization order.
#[derive(Debug, Clone)]
struct Spec {
    client: u8,
    key: u8,
    /// `Some(v)`: write v; `None`: read.
    write: Option<u8>,
    /// How long before its linearization point the operation is called.
    before: u64,
    /// How long after its linearization point it returns.
    after: u64,
    /// Whether the operation never returns; its client then stops.
    pending: bool,
    /// For a pending write: whether it took effect.
    applied: bool,
    /// Time between the previous linearization point and this one.
    gap: u64,
}

fn spec(clients: u8, keys: u8, values: u8, slack: u64) -> impl Strategy<Value = Spec> {
    (
        0..clients,
        0..keys,
        proptest::option::of(0..values),
        0..=slack,
        0..=slack,
        proptest::bool::weighted(0.08),
        any::<bool>(),
        1..4u64,
    )
        .prop_map(
            |(client, key, write, before, after, pending, applied, gap)| Spec {
                client,
                key,
                write,
                before,
                after,
                pending,
                applied,
                gap,
            },
        )
}

/// Runs `specs` against a sequential map of registers (all 0 initially), giving each operation
/// an interval around its linearization point that does not overlap its client's previous
/// operation. Operations of a client after its pending operation are skipped.
fn simulate(specs: &[Spec]) -> Vec<KeyedOp> {
    let mut values: BTreeMap<u8, u8> = BTreeMap::new();
    let mut free_at: BTreeMap<u8, u64> = BTreeMap::new();
    let mut dead: HashSet<u8> = HashSet::new();
    let mut now = 0u64;
    let mut history = Vec::new();
    for s in specs {
        if dead.contains(&s.client) {
            continue;
        }
        let free = free_at.get(&s.client).copied().unwrap_or(0);
        now = (now + s.gap).max(free);
        let call = now.saturating_sub(s.before).max(free);
        let ret = now + s.after;
        let value = values.entry(s.key).or_insert(0);
        let client = u64::from(s.client);
        let op = match (s.write, s.pending) {
            (Some(v), false) => {
                *value = v;
                w(client, v, call, ret)
            }
            (Some(v), true) => {
                if s.applied {
                    *value = v;
                }
                w_pending(client, v, call)
            }
            (None, false) => r(client, *value, call, ret),
            (None, true) => r_pending(client, call),
        };
        if s.pending {
            dead.insert(s.client);
        }
        free_at.insert(s.client, ret + 1);
        history.push(keyed(s.key, op));
    }
    history
}

/// Drops the keys of a single-key history.
fn unkeyed(history: &[KeyedOp]) -> Vec<Op> {
    history
        .iter()
        .map(|o| Operation {
            client: o.client,
            input: o.input.1.clone(),
            call: o.call,
            ret: o.ret.clone(),
        })
        .collect()
}

/// The brute-force oracle: some subset of the pending operations plus every completed one, in
/// some order that respects real time, that the register accepts.
fn oracle(history: &[Op]) -> bool {
    let pending: Vec<usize> = (0..history.len())
        .filter(|&i| history[i].ret.is_none())
        .collect();
    let completed: Vec<usize> = (0..history.len())
        .filter(|&i| history[i].ret.is_some())
        .collect();
    (0u32..1 << pending.len()).any(|mask| {
        let mut chosen = completed.clone();
        chosen.extend(
            pending
                .iter()
                .enumerate()
                .filter(|&(b, _)| mask & (1 << b) != 0)
                .map(|(_, &i)| i),
        );
        permutations_any(&mut chosen, 0, &mut |order| sequential_ok(history, order))
    })
}

/// Whether `order` respects real time and the register accepts it.
fn sequential_ok(history: &[Op], order: &[usize]) -> bool {
    for (a, &i) in order.iter().enumerate() {
        for &j in &order[a + 1..] {
            // j comes after i: i must not have been called after j returned.
            if let Some(rj) = &history[j].ret
                && rj.time < history[i].call
            {
                return false;
            }
        }
    }
    let model = reg();
    let mut state = model.init();
    order.iter().all(|&i| {
        let op = &history[i];
        match model.step(&state, &op.input, op.ret.as_ref().map(|r| &r.output)) {
            Some(next) => {
                state = next;
                true
            }
            None => false,
        }
    })
}

fn permutations_any(items: &mut [usize], k: usize, f: &mut impl FnMut(&[usize]) -> bool) -> bool {
    if k == items.len() {
        return f(items);
    }
    for i in k..items.len() {
        items.swap(k, i);
        if permutations_any(items, k + 1, f) {
            items.swap(k, i);
            return true;
        }
        items.swap(k, i);
    }
    false
}

/// Checks that a violation's explanation is itself sound: the prefix is a linearizable
/// sequence of the history's operations and the stuck operation is a completed one outside it.
fn assert_explanation_sound(history: &[Op], v: &Violation<u8>) {
    assert!(sequential_ok(history, &v.prefix), "prefix not valid: {v:?}");
    assert!(!v.prefix.contains(&v.stuck));
    assert!(history[v.stuck].ret.is_some());
    let model = reg();
    let state = v.prefix.iter().fold(model.init(), |s, &i| {
        let op = &history[i];
        model
            .step(&s, &op.input, op.ret.as_ref().map(|r| &r.output))
            .unwrap()
    });
    assert_eq!(state, v.state);
}

/// A random arbitrary small single-key history (not necessarily linearizable).
fn arbitrary_small() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        (
            0..20u64,
            0..10u64,
            proptest::option::of(0..3u8),
            0..3u8,
            proptest::bool::weighted(0.15),
        ),
        0..=7,
    )
    .prop_map(|ops| {
        ops.into_iter()
            .enumerate()
            .map(|(i, (call, len, write, read, pending))| {
                let client = i as u64;
                match (write, pending) {
                    (Some(v), false) => w(client, v, call, call + len),
                    (Some(v), true) => w_pending(client, v, call),
                    (None, false) => r(client, read, call, call + len),
                    (None, true) => r_pending(client, call),
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Histories of a correct register map, with overlaps and timeouts, are accepted.
    #[test]
    fn lincheck_prop_accepts_simulated_register_map(
        specs in proptest::collection::vec(spec(6, 3, 4, 12), 0..150),
    ) {
        let history = simulate(&specs);
        let outcome = check(&RegisterMap::new(Register::new(0u8)), &history).unwrap();
        prop_assert!(outcome.is_linearizable(), "{:?}", outcome);
    }

    /// Small single-key histories with one read mutated: the checker agrees with the oracle.
    #[test]
    fn lincheck_prop_mutated_read_matches_oracle(
        specs in proptest::collection::vec(spec(4, 1, 3, 6), 1..=7),
        pick in any::<proptest::sample::Index>(),
        delta in 1..3u8,
    ) {
        let mut history = unkeyed(&simulate(&specs));
        prop_assert!(verdict(&history).is_linearizable());
        prop_assert!(oracle(&history));
        let reads: Vec<usize> = (0..history.len())
            .filter(|&i| matches!(history[i].ret, Some(Return { output: RegisterOutput::Value(_), .. })))
            .collect();
        prop_assume!(!reads.is_empty());
        let i = reads[pick.index(reads.len())];
        if let Some(Return { output: RegisterOutput::Value(v), .. }) = &mut history[i].ret {
            *v = (*v + delta) % 3;
        }
        let outcome = verdict(&history);
        prop_assert_eq!(outcome.is_linearizable(), oracle(&history), "{:?} {:?}", history, outcome);
        if let Outcome::Violation(v) = &outcome {
            assert_explanation_sound(&history, v);
        }
    }

    /// Arbitrary small histories: the checker agrees with the oracle exactly.
    #[test]
    fn lincheck_prop_arbitrary_matches_oracle(history in arbitrary_small()) {
        let outcome = verdict(&history);
        prop_assert!(!matches!(outcome, Outcome::Unknown { .. }), "{:?}", outcome);
        prop_assert_eq!(outcome.is_linearizable(), oracle(&history), "{:?} {:?}", history, outcome);
        if let Outcome::Violation(v) = &outcome {
            assert_explanation_sound(&history, v);
        }
    }

    /// Larger histories with one read of a value never written are always rejected, on the
    /// key that has it.
    #[test]
    fn lincheck_prop_rejects_phantom_read(
        specs in proptest::collection::vec(spec(6, 3, 4, 12), 1..150),
        pick in any::<proptest::sample::Index>(),
    ) {
        let mut history = simulate(&specs);
        let reads: Vec<usize> = (0..history.len())
            .filter(|&i| matches!(history[i].ret, Some(Return { output: RegisterOutput::Value(_), .. })))
            .collect();
        prop_assume!(!reads.is_empty());
        let i = reads[pick.index(reads.len())];
        history[i].ret.as_mut().unwrap().output = RegisterOutput::Value(99);
        match check(&RegisterMap::new(Register::new(0u8)), &history).unwrap() {
            Outcome::Violation(v) => {
                prop_assert_eq!(history[v.stuck].input.0, history[i].input.0);
            }
            other => prop_assert!(false, "phantom read accepted: {:?}", other),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Speed.

/// A seeded run of `n` operations over `keys` keys by `clients` clients, with overlaps up to
/// `slack` and a few timeouts.
fn big_history(seed: u64, n: usize, keys: u8, clients: u8, slack: u64) -> Vec<KeyedOp> {
    let mut rng = SmallRng::seed_from_u64(seed);
    // Clients that time out are replaced by fresh ones, so concurrency stays up.
    let mut alive: Vec<u8> = (0..clients).collect();
    let mut next_client = clients;
    let specs: Vec<Spec> = (0..n)
        .map(|_| {
            let slot = rng.random_range(0..alive.len());
            let pending = rng.random_bool(0.01);
            let s = Spec {
                client: alive[slot],
                key: rng.random_range(0..keys),
                write: rng.random_bool(0.5).then(|| rng.random_range(0..5)),
                before: rng.random_range(0..=slack),
                after: rng.random_range(0..=slack),
                pending,
                applied: rng.random_bool(0.5),
                gap: rng.random_range(1..4),
            };
            if pending {
                alive[slot] = next_client;
                next_client = next_client.wrapping_add(1);
            }
            s
        })
        .collect();
    simulate(&specs)
}

/// Large histories: the search must finish (within its step budget) with the right verdict.
/// How fast is measured where a clock belongs, outside crl-core: the nemesis example prints
/// the time it takes to check each run's history.
#[test]
fn lincheck_large_history_2000_ops_10_keys() {
    let model = RegisterMap::new(Register::new(0u8));
    for (seed, clients) in [(1, 4), (2, 8), (3, 8)] {
        let history = big_history(seed, 2_000, 10, clients, 20);
        assert!(history.len() > 1_900);
        let outcome = check(&model, &history).unwrap();
        assert!(outcome.is_linearizable(), "{outcome:?}");

        // The same with one stale read planted in the middle.
        let mut bad = history.clone();
        let i = (1_000..bad.len())
            .find(|&i| {
                matches!(bad[i].ret, Some(Return { output: RegisterOutput::Value(v), .. }) if v != 0)
            })
            .unwrap();
        bad[i].ret.as_mut().unwrap().output = RegisterOutput::Value(77);
        assert!(check(&model, &bad).unwrap().is_violation());
    }
}

#[test]
fn lincheck_large_history_single_key_heavy_overlap() {
    // One key, 8 clients, long intervals: still decided within the default step budget.
    let history = unkeyed(&big_history(4, 1_000, 1, 8, 60));
    assert!(verdict(&history).is_linearizable());
}

type RegOp = Operation<(u8, RegisterInput<u64>), RegisterOutput<u64>>;

fn kw(client: u64, key: u8, v: u64, call: u64, ret: u64) -> RegOp {
    Operation::completed(
        client,
        (key, RegisterInput::Write(v)),
        call,
        RegisterOutput::Written,
        ret,
    )
}

fn kr(client: u64, key: u8, v: u64, call: u64, ret: u64) -> RegOp {
    Operation::completed(
        client,
        (key, RegisterInput::Read),
        call,
        RegisterOutput::Value(v),
        ret,
    )
}

fn pending_w(client: u64, key: u8, v: u64, call: u64) -> RegOp {
    Operation::pending(client, (key, RegisterInput::Write(v)), call)
}

/// Hundreds of open writes nobody read (a paused process's) are dropped, and the verdict stays
/// what it is: linearizable histories pass within a small budget, a stale read is still caught.
#[test]
fn unobserved_pending_writes_are_dropped_without_changing_the_verdict() {
    let model = RegisterMap::new(Register::new(0u64));
    let core = |stale: bool| {
        let mut h = vec![
            kw(1, 0, 10, 0, 10),
            kr(2, 0, 10, 20, 30),
            kw(1, 0, 11, 40, 50),
            // An open write that *was* observed: must stay.
            pending_w(3, 0, 12, 45),
            kr(2, 0, 12, 60, 70),
            kr(2, 0, if stale { 11 } else { 12 }, 80, 90),
            kw(1, 1, 20, 0, 10),
        ];
        for i in 0..300 {
            h.push(pending_w(100 + i, 0, 1_000 + i, 5 + i % 50));
        }
        h
    };
    let mut ok = core(false);
    assert!(matches!(
        check_with_budget(&model, &ok, 20_000).unwrap(),
        Outcome::Unknown { .. }
    ));
    assert_eq!(drop_unobserved_pending_writes(&mut ok), 300);
    assert_eq!(
        ok.len(),
        7,
        "the observed open write and every completed op stay"
    );
    assert_eq!(
        check_with_budget(&model, &ok, 20_000).unwrap(),
        Outcome::Linearizable
    );
    let mut bad = core(true);
    drop_unobserved_pending_writes(&mut bad);
    assert!(matches!(
        check(&model, &bad).unwrap(),
        Outcome::Violation(_)
    ));
}
