//! The planner: a pure function from what the kernel has ([`Snapshot`]) and what is
//! declared ([`ChainSpec`]) to the smallest set of deletes and inserts that makes the
//! chain right ([`Plan`]). No I/O; everything clever lives here.
//!
//! Model. A rule is *ours* when it is a bare jump (comment, at most a counter, a jump or
//! goto) carrying an owned comment. Ours with the declared target are *candidates*; ours
//! with another target or a goto are *stale*. Everything else is *foreign* and fixed: its
//! order never changes and it is never touched. Each declared `after = [X]` / `before =
//! [Y]` is an edge between target names: every rule jumping to X precedes every rule
//! jumping to the jump's target, which precedes every rule jumping to Y. Names no rule
//! jumps to constrain nothing.
//!
//! Minimality. Deletes = owned rules not kept; inserts = jumps not kept. So the plan keeps
//! as many candidates as possible (at most one per jump) such that the kept ones plus the
//! foreign rules admit a place for every remaining jump. Keeping is searched exactly
//! (branch and bound over the candidates, which are few in practice); the places of the
//! inserted jumps come from interval bounds between the fixed rules.
//!
//! Conflicts. When the foreign rules alone leave no valid place for a jump, the
//! constraints that push it down (what it must follow) are dropped — its `before`
//! constraints win — and each dropped one is reported with the rules that block it. The
//! relaxation depends on the foreign rules only, so re-planning after an apply is stable.
//!
//! Reasons. [`reasons`] reads a finished plan and says why each declared jump stands
//! where the plan leaves it — the constraint that puts it there, or the conflict and the
//! rule blocking it — without touching the planner's decisions.

use crate::snapshot::{Rule, Snapshot, Verdict};
use crate::spec::{ChainSpec, JumpSpec};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::{BuildHasherDefault, Hasher};

/// The planner's maps: keyed by chain names and comments, small, rebuilt for every plan,
/// so hashed with a multiply-rotate hash (the Fx hash of rustc) rather than SipHash —
/// most of the cost of a plan of a short chain was hashing. A plan's time does not
/// depend on secrets, and whoever can fill the chain with colliding names can write any
/// rule anyway.
type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<Fx>>;

/// The Fx hash (rustc's): a word at a time, `(h.rotl(5) ^ w) * K`.
#[derive(Default, Clone, Copy)]
struct Fx(u64);

impl Fx {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, b: u8) {
        self.add(u64::from(b));
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Upper bound on complete assignments examined by the keep search; beyond it the best
/// plan found so far is used (still valid, possibly not minimal). Only reachable with
/// dozens of duplicates of many jumps at once.
const SEARCH_BUDGET: usize = 100_000;

/// What a rule of the chain is to jumpset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "jump")]
pub enum Role {
    /// One of ours, kept where it is.
    Owned(usize),
    /// One of ours, but another copy is kept: deleted.
    Duplicate(usize),
    /// One of ours in a place the constraints forbid: deleted and re-inserted.
    Misplaced(usize),
    /// Carries one of our comments but jumps elsewhere (or is a goto): replaced.
    Stale(usize),
    /// Not ours: never deleted, moved or rewritten.
    Foreign,
}

impl Role {
    /// The declared jump this rule is a copy of, if any.
    pub fn jump(self) -> Option<usize> {
        match self {
            Role::Owned(j) | Role::Duplicate(j) | Role::Misplaced(j) | Role::Stale(j) => Some(j),
            Role::Foreign => None,
        }
    }
}

/// Why a rule is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeleteReason {
    /// Another copy of the same jump is kept.
    Duplicate,
    /// It stands where the constraints forbid; it is re-inserted elsewhere.
    Misplaced,
    /// It jumps to the wrong target (or is a goto).
    Stale,
    /// `cleanup`: the owned jumps are being removed.
    Cleanup,
}

impl DeleteReason {
    /// The JSON spelling.
    pub fn name(self) -> &'static str {
        match self {
            DeleteReason::Duplicate => "duplicate",
            DeleteReason::Misplaced => "misplaced",
            DeleteReason::Stale => "stale",
            DeleteReason::Cleanup => "cleanup",
        }
    }
}

/// One change to the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// Delete the rule with this kernel handle.
    Delete {
        /// Kernel handle.
        handle: u64,
        /// Index of the rule in the snapshot.
        index: usize,
        /// The declared jump it is a copy of.
        jump: usize,
        /// Why.
        reason: DeleteReason,
    },
    /// Insert a declared jump.
    Insert {
        /// Index of the jump in the chain spec.
        jump: usize,
        /// 1-based position once every delete and the inserts listed before it are done.
        position: usize,
        /// Handle of the nearest existing rule above it (`None`: nothing above).
        after_handle: Option<u64>,
        /// Handle of the nearest existing rule below it (`None`: append).
        before_handle: Option<u64>,
    },
}

/// A constraint the foreign rules make impossible to meet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Conflict {
    /// Index of the jump in the chain spec.
    pub jump: usize,
    /// Its comment.
    pub comment: String,
    /// Its target.
    pub target: String,
    /// The unmet constraint, e.g. `after cali-PREROUTING`.
    pub unmet: String,
    /// The rules in the way: (kernel handle, 1-based position, target chain).
    pub blocking: Vec<Blocking>,
}

/// A rule that blocks a constraint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Blocking {
    /// Kernel handle.
    pub handle: u64,
    /// 1-based position in the chain as read.
    pub position: usize,
    /// The chain it jumps to, if any.
    pub target: Option<String>,
}

/// A rule of the chain after the plan is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// An existing rule (index into the snapshot).
    Existing(usize),
    /// A newly inserted jump (index into the spec).
    New(usize),
}

/// The outcome of planning one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Plan {
    /// Deletes (in chain order) then inserts (in final order).
    pub ops: Vec<Op>,
    /// Constraints that cannot be met without moving foreign rules.
    pub conflicts: Vec<Conflict>,
    /// What each rule of the snapshot is, by index.
    pub roles: Vec<Role>,
    /// The chain as it will be.
    pub result: Vec<Slot>,
}

impl Plan {
    /// True when the chain needs no change.
    pub fn is_noop(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Which edge of a jump's declaration an ordering constraint comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    After,
    Before,
}

/// `from` rules precede `to` rules; declared by jump `owner`. `from_jump` / `to_jump`: the
/// jump whose target the name is, if any.
#[derive(Debug, Clone)]
struct Edge<'a> {
    from: &'a str,
    to: &'a str,
    owner: usize,
    kind: Kind,
    from_jump: Option<usize>,
    to_jump: Option<usize>,
}

/// The declared jumps by comment (the first jump declaring a comment owns it), for
/// classifying every rule of a long chain with one lookup each.
struct Comments<'a> {
    jumps: &'a [JumpSpec],
    /// `None` for a few jumps: a scan is cheaper than hashing.
    map: Option<HashMap<&'a [u8], usize>>,
}

/// Up to this many jumps, a comment is looked up by scanning them.
const SCAN_JUMPS: usize = 8;

impl<'a> Comments<'a> {
    fn new(jumps: &'a [JumpSpec]) -> Self {
        Self::build(jumps, jumps.len() > SCAN_JUMPS)
    }

    fn build(jumps: &'a [JumpSpec], hashed: bool) -> Self {
        let map = hashed.then(|| {
            let mut m = HashMap::with_capacity_and_hasher(jumps.len(), Default::default());
            for (i, j) in jumps.iter().enumerate() {
                m.entry(j.comment.as_bytes()).or_insert(i);
            }
            m
        });
        Comments { jumps, map }
    }

    /// [`owned_jump`], in O(1).
    fn owned(&self, rule: &Rule) -> Option<usize> {
        if !rule.is_bare_jump() {
            return None;
        }
        let bytes = rule.comment.as_ref()?.bytes.as_slice();
        match &self.map {
            Some(m) => m.get(bytes).copied(),
            None => self
                .jumps
                .iter()
                .position(|j| j.comment.as_bytes() == bytes),
        }
    }
}

struct Model<'a> {
    rules: &'a [Rule],
    jumps: &'a [JumpSpec],
    /// Snapshot indices of foreign rules.
    foreign: Vec<usize>,
    /// Jump indices in a topological order of the jump-to-jump edges, stable by spec order.
    topo: Vec<usize>,
    /// Each jump's place in `topo`.
    rank: Vec<usize>,
    /// Jump index by target name.
    by_target: HashMap<&'a str, usize>,
}

/// Where each name's rules stand in a sequence: (first, last) position.
type Spans<'a> = HashMap<&'a str, (usize, usize)>;

/// The result of laying out the inserted jumps around a fixed sequence.
struct Layout {
    /// The fixed sequence (snapshot indices, in order).
    fixed: Vec<usize>,
    /// For each jump: `None` if kept, else the gap it goes into (0 = before fixed[0]).
    gap: Vec<Option<usize>>,
}

/// For each jump, the edges that end at its target (`into`) and start at it (`out_of`).
struct Adjacency {
    into: Vec<Vec<usize>>,
    out_of: Vec<Vec<usize>>,
}

impl Adjacency {
    fn new(jumps: usize, edges: &[Edge<'_>]) -> Self {
        let mut a = Adjacency {
            into: vec![Vec::new(); jumps],
            out_of: vec![Vec::new(); jumps],
        };
        for (i, e) in edges.iter().enumerate() {
            if let Some(j) = e.to_jump {
                a.into[j].push(i);
            }
            if let Some(j) = e.from_jump {
                a.out_of[j].push(i);
            }
        }
        a
    }
}

impl<'a> Model<'a> {
    fn new(rules: &'a [Rule], jumps: &'a [JumpSpec], roles: &[Role]) -> Self {
        let foreign = (0..rules.len())
            .filter(|&i| roles[i] == Role::Foreign)
            .collect();
        let by_target: HashMap<&str, usize> = jumps
            .iter()
            .enumerate()
            .map(|(i, j)| (j.target.as_str(), i))
            .collect();
        // Kahn's algorithm, always taking the lowest-numbered ready jump.
        let mut indeg = vec![0usize; jumps.len()];
        let mut succ: Vec<Vec<usize>> = vec![Vec::new(); jumps.len()];
        for e in all_edges(jumps, &by_target) {
            if let (Some(a), Some(b)) = (e.from_jump, e.to_jump) {
                succ[a].push(b);
            }
        }
        for s in &mut succ {
            s.sort_unstable();
            s.dedup();
            for &b in s.iter() {
                indeg[b] += 1;
            }
        }
        let mut topo = Vec::with_capacity(jumps.len());
        let mut ready: BinaryHeap<Reverse<usize>> = (0..jumps.len())
            .filter(|&j| indeg[j] == 0)
            .map(Reverse)
            .collect();
        while let Some(Reverse(j)) = ready.pop() {
            topo.push(j);
            for &s in &succ[j] {
                indeg[s] -= 1;
                if indeg[s] == 0 {
                    ready.push(Reverse(s));
                }
            }
        }
        // The spec is validated acyclic; should it not be, keep every jump anyway.
        if topo.len() < jumps.len() {
            let mut placed = vec![false; jumps.len()];
            for &j in &topo {
                placed[j] = true;
            }
            topo.extend((0..jumps.len()).filter(|&j| !placed[j]));
        }
        let mut rank = vec![0; jumps.len()];
        for (r, &j) in topo.iter().enumerate() {
            rank[j] = r;
        }
        Model {
            rules,
            jumps,
            foreign,
            topo,
            rank,
            by_target,
        }
    }

    fn spans(&self, fixed: &[usize]) -> Spans<'a> {
        let mut spans: Spans<'a> = HashMap::default();
        for (pos, &i) in fixed.iter().enumerate() {
            if let Some(t) = self.rules[i].target() {
                spans
                    .entry(t)
                    .and_modify(|s| s.1 = pos)
                    .or_insert((pos, pos));
            }
        }
        spans
    }

    /// Lay out the jumps not in `kept` around the foreign rules plus the kept ones.
    /// `Err(jumps)` lists the inserted jumps that have no valid place (empty when a
    /// constraint is already broken among the fixed rules).
    fn layout(&self, kept: &[Option<usize>], edges: &[Edge<'a>]) -> Result<Layout, Vec<usize>> {
        let mut fixed: Vec<usize> = self.foreign.clone();
        fixed.extend(kept.iter().flatten());
        fixed.sort_unstable();
        let spans = self.spans(&fixed);
        for e in edges {
            if let (Some(a), Some(b)) = (spans.get(e.from), spans.get(e.to)) {
                if a.1 >= b.0 {
                    return Err(Vec::new());
                }
            }
        }
        let n = fixed.len();
        let inserted = |j: usize| kept[j].is_none();
        let jump_of = |j: Option<usize>| j.filter(|&j| inserted(j));
        let mut lo = vec![0usize; self.jumps.len()];
        let mut hi = vec![n; self.jumps.len()];
        for e in edges {
            if let Some(j) = jump_of(e.to_jump) {
                if let Some(a) = spans.get(e.from) {
                    lo[j] = lo[j].max(a.1 + 1);
                }
            }
            if let Some(j) = jump_of(e.from_jump) {
                if let Some(b) = spans.get(e.to) {
                    hi[j] = hi[j].min(b.0);
                }
            }
        }
        // Propagate along edges between inserted jumps.
        let adj = Adjacency::new(self.jumps.len(), edges);
        for &j in &self.topo {
            if !inserted(j) {
                continue;
            }
            for &e in &adj.into[j] {
                if let Some(a) = jump_of(edges[e].from_jump) {
                    lo[j] = lo[j].max(lo[a]);
                }
            }
        }
        for &j in self.topo.iter().rev() {
            if !inserted(j) {
                continue;
            }
            for &e in &adj.out_of[j] {
                if let Some(b) = jump_of(edges[e].to_jump) {
                    hi[j] = hi[j].min(hi[b]);
                }
            }
        }
        let bad: Vec<usize> = (0..self.jumps.len())
            .filter(|&j| inserted(j) && lo[j] > hi[j])
            .collect();
        if !bad.is_empty() {
            return Err(bad);
        }
        // Place: as close after what it must follow as allowed, else just before what it
        // must precede, else at the end (hi is n when nothing bounds it).
        let mut gap: Vec<Option<usize>> = vec![None; self.jumps.len()];
        for &j in &self.topo {
            if !inserted(j) {
                continue;
            }
            let mut follows = false;
            let mut p = lo[j];
            for &e in &adj.into[j] {
                let e = &edges[e];
                if let Some(a) = jump_of(e.from_jump) {
                    follows = true;
                    p = p.max(gap[a].unwrap_or(0));
                } else if spans.contains_key(e.from) {
                    follows = true;
                }
            }
            gap[j] = Some(if follows { p } else { hi[j] });
        }
        Ok(Layout { fixed, gap })
    }
}

/// What the keep search checks a candidate against, in O(its constraints): the foreign
/// rules as bounds on its index, the other jumps as the kept candidates to compare with.
struct Bounds {
    /// For each jump: its kept rule must stand after this snapshot index (the last
    /// foreign rule it must follow).
    after: Vec<Option<usize>>,
    /// ... and before this one (the first foreign rule it must precede).
    before: Vec<Option<usize>>,
    /// The jumps it must follow / precede.
    preds: Vec<Vec<usize>>,
    succs: Vec<Vec<usize>>,
}

impl Bounds {
    fn new(model: &Model<'_>, edges: &[Edge<'_>]) -> Self {
        let rules = model.rules;
        let mut first_last: HashMap<&str, (usize, usize)> = HashMap::default();
        for &i in &model.foreign {
            if let Some(t) = rules[i].target() {
                first_last
                    .entry(t)
                    .and_modify(|s| s.1 = i)
                    .or_insert((i, i));
            }
        }
        let n = model.jumps.len();
        let mut b = Bounds {
            after: vec![None; n],
            before: vec![None; n],
            preds: vec![Vec::new(); n],
            succs: vec![Vec::new(); n],
        };
        for e in edges {
            if let Some(j) = e.to_jump {
                if let Some(&(_, last)) = first_last.get(e.from) {
                    b.after[j] = Some(b.after[j].map_or(last, |x| x.max(last)));
                }
            }
            if let Some(j) = e.from_jump {
                if let Some(&(first, _)) = first_last.get(e.to) {
                    b.before[j] = Some(b.before[j].map_or(first, |x| x.min(first)));
                }
            }
            if let (Some(a), Some(c)) = (e.from_jump, e.to_jump) {
                b.succs[a].push(c);
                b.preds[c].push(a);
            }
        }
        b
    }

    /// Can candidate rule `i` of jump `j` be kept next to the foreign rules and the
    /// candidates kept so far? (A necessary condition, to prune the search.)
    fn compatible(&self, i: usize, j: usize, kept: &[Option<usize>]) -> bool {
        self.after[j].is_none_or(|a| a < i)
            && self.before[j].is_none_or(|b| i < b)
            && self.preds[j].iter().all(|&k| kept[k].is_none_or(|o| o < i))
            && self.succs[j].iter().all(|&k| kept[k].is_none_or(|o| o > i))
    }
}

fn all_edges<'a>(jumps: &'a [JumpSpec], by_target: &HashMap<&'a str, usize>) -> Vec<Edge<'a>> {
    let mut out = Vec::new();
    let jump = |name: &str| by_target.get(name).copied();
    for (j, spec) in jumps.iter().enumerate() {
        for a in &spec.after {
            out.push(Edge {
                from: a,
                to: &spec.target,
                owner: j,
                kind: Kind::After,
                from_jump: jump(a),
                to_jump: Some(j),
            });
        }
        for b in &spec.before {
            out.push(Edge {
                from: &spec.target,
                to: b,
                owner: j,
                kind: Kind::Before,
                from_jump: Some(j),
                to_jump: jump(b),
            });
        }
    }
    out
}

/// Classify the rules of a chain against the declared jumps: roles before placement
/// (candidates are provisionally `Owned`), and the candidates of each jump.
fn classify(rules: &[Rule], jumps: &[JumpSpec]) -> (Vec<Role>, Vec<Vec<usize>>) {
    let comments = Comments::new(jumps);
    let mut roles = vec![Role::Foreign; rules.len()];
    let mut candidates = vec![Vec::new(); jumps.len()];
    for (i, r) in rules.iter().enumerate() {
        if let Some(j) = comments.owned(r) {
            if matches!(&r.verdict, Verdict::Jump(t) if *t == jumps[j].target) {
                roles[i] = Role::Owned(j);
                candidates[j].push(i);
            } else {
                roles[i] = Role::Stale(j);
            }
        }
    }
    (roles, candidates)
}

/// The declared jump whose identity this rule carries, if it is a bare jump with an
/// owned comment (`docs/contracts.md#identity`); the comment's encoding does not matter.
pub fn owned_jump(rule: &Rule, jumps: &[JumpSpec]) -> Option<usize> {
    if !rule.is_bare_jump() {
        return None;
    }
    let bytes = &rule.comment.as_ref()?.bytes;
    jumps
        .iter()
        .position(|j| j.comment.as_bytes() == bytes.as_slice())
}

/// Plan the reconcile of one chain.
pub fn plan(snap: &Snapshot, spec: &ChainSpec) -> Plan {
    let (rules, jumps) = (&snap.rules, &spec.jumps);
    match standing(rules, jumps) {
        // The no-op every reconcile of a healthy chain takes: no search, no layout; with
        // a few jumps not even a map (only the returned plan's `roles` and `result`).
        Standing::Converged => converged_plan(rules, jumps, 0),
        // The repair most reconciles make (another agent deleted or flushed our jump):
        // one insert, placed by scans, without the search and its maps.
        Standing::Missing(j) => {
            insert_one(rules, jumps, j).unwrap_or_else(|| plan_full(snap, spec))
        }
        Standing::Other => plan_full(snap, spec),
    }
}

/// How a chain stands against the declared jumps ([`standing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Each declared jump exactly once, every constraint met ([`is_converged`]).
    Converged,
    /// Converged but for this jump, which has no copy at all: every other jump is there
    /// exactly once as a bare jump to its target, no stale copy, every constraint met by
    /// the rules there are.
    Missing(usize),
    /// Anything else: the full planner decides.
    Other,
}

/// The [`Standing`] of `rules`; `Missing` is only told with up to [`SCAN_JUMPS`] jumps.
fn standing(rules: &[Rule], jumps: &[JumpSpec]) -> Standing {
    if jumps.len() <= SCAN_JUMPS {
        standing_few(rules, jumps)
    } else if is_converged_many(rules, jumps) {
        Standing::Converged
    } else {
        Standing::Other
    }
}

/// Whether the chain needs nothing and meets every constraint: each declared jump exactly
/// once as a bare jump to its target, no stale copy, and for every declared edge the
/// rules jumping to its `from` all stand above those jumping to its `to`. Then the full
/// planner keeps every copy, inserts nothing and reports no conflict (the property tests
/// check that the two agree). O(rules + constraints); with up to [`SCAN_JUMPS`] jumps it
/// allocates nothing.
#[cfg(test)]
fn is_converged(rules: &[Rule], jumps: &[JumpSpec]) -> bool {
    standing(rules, jumps) == Standing::Converged
}

/// [`is_converged`] without allocating: O(jumps² × rules), for a few jumps.
#[cfg(test)]
fn is_converged_few(rules: &[Rule], jumps: &[JumpSpec]) -> bool {
    standing_few(rules, jumps) == Standing::Converged
}

/// Where the rules jumping to `name` stand: (first, last) index, by scanning.
fn first_last(rules: &[Rule], name: &str) -> Option<(usize, usize)> {
    let first = rules.iter().position(|r| r.target() == Some(name))?;
    let last = rules.iter().rposition(|r| r.target() == Some(name))?;
    Some((first, last))
}

/// The [`Standing`] of `rules`, without allocating: O(jumps² × rules), for a few jumps.
fn standing_few(rules: &[Rule], jumps: &[JumpSpec]) -> Standing {
    let mut missing = None;
    for (j, js) in jumps.iter().enumerate() {
        let mut copies = 0;
        for r in rules {
            if owned_jump(r, jumps) == Some(j) {
                if !matches!(&r.verdict, Verdict::Jump(t) if *t == js.target) {
                    return Standing::Other; // a stale copy
                }
                copies += 1;
            }
        }
        match copies {
            1 => {}
            0 if missing.is_none() => missing = Some(j),
            _ => return Standing::Other,
        }
    }
    let before = |from: &str, to: &str| match (first_last(rules, from), first_last(rules, to)) {
        (Some(a), Some(b)) => a.1 < b.0,
        _ => true,
    };
    let met = jumps.iter().all(|js| {
        js.after.iter().all(|a| before(a, &js.target))
            && js.before.iter().all(|b| before(&js.target, b))
    });
    match missing {
        _ if !met => Standing::Other,
        None => Standing::Converged,
        Some(j) => Standing::Missing(j),
    }
}

/// The plan of a chain whose [`Standing`] is `Missing(j)`: what the full planner returns
/// for it — every copy kept, no conflict, `j` inserted where [`Model::layout`] puts it
/// (right below the last rule it must follow, else right above the first rule it must
/// precede, else at the end) — or `None` when it needs the full planner: `j` has no valid
/// place (a conflict to relax), or its target is another jump's too or one of its own
/// constraints (the full planner's edges then tie it to itself or to the other jump).
///
/// Why the full planner keeps every copy and reports no conflict then: the chain with
/// `j` inserted here meets every constraint, so relaxing finds no constraint broken among
/// the foreign rules and a place for every jump between them, and keeping every copy
/// (one per jump) is compatible and leaves `j` this place — no plan has fewer changes
/// than this one insert. (The property tests hold the two to the same plans.)
fn insert_one(rules: &[Rule], jumps: &[JumpSpec], j: usize) -> Option<Plan> {
    let js = &jumps[j];
    let t = js.target.as_str();
    let shared = jumps
        .iter()
        .enumerate()
        .any(|(k, o)| k != j && o.target == t);
    if shared || js.after.iter().chain(&js.before).any(|n| n == t) {
        return None;
    }
    // Names whose rules `j` must follow / precede: its own `after` / `before`, and the
    // targets of the jumps declaring `before = [t]` / `after = [t]`.
    let others = jumps.iter().enumerate().filter(|&(k, _)| k != j);
    let follows = js.after.iter().map(String::as_str).chain(
        others
            .clone()
            .filter(|(_, o)| o.before.iter().any(|b| b == t))
            .map(|(_, o)| o.target.as_str()),
    );
    let precedes = js.before.iter().map(String::as_str).chain(
        others
            .filter(|(_, o)| o.after.iter().any(|a| a == t))
            .map(|(_, o)| o.target.as_str()),
    );
    let lo = follows
        .filter_map(|n| first_last(rules, n).map(|s| s.1 + 1))
        .max();
    let hi = precedes
        .filter_map(|n| first_last(rules, n).map(|s| s.0))
        .min()
        .unwrap_or(rules.len());
    let at = match lo {
        Some(lo) if lo > hi => return None,
        Some(lo) => lo,
        None => hi,
    };
    let mut p = converged_plan(rules, jumps, 1);
    p.result.insert(at, Slot::New(j));
    p.ops.push(Op::Insert {
        jump: j,
        position: at + 1,
        after_handle: at.checked_sub(1).map(|i| rules[i].handle),
        before_handle: rules.get(at).map(|r| r.handle),
    });
    Some(p)
}

/// [`is_converged`] with one pass over the rules and one over the constraints.
fn is_converged_many(rules: &[Rule], jumps: &[JumpSpec]) -> bool {
    let comments = Comments::new(jumps);
    let mut copies = vec![0u32; jumps.len()];
    for r in rules {
        if let Some(j) = comments.owned(r) {
            if !matches!(&r.verdict, Verdict::Jump(t) if *t == jumps[j].target) {
                return false; // a stale copy
            }
            copies[j] += 1;
        }
    }
    if copies.iter().any(|&c| c != 1) {
        return false;
    }
    // Where the rules jumping to each name the constraints mention stand.
    let mut spans: HashMap<&str, (usize, usize)> = HashMap::default();
    for js in jumps {
        for name in js.after.iter().chain(&js.before).chain([&js.target]) {
            spans.insert(name.as_str(), (usize::MAX, 0));
        }
    }
    for (pos, r) in rules.iter().enumerate() {
        if let Some(s) = r.target().and_then(|t| spans.get_mut(t)) {
            if s.0 == usize::MAX {
                s.0 = pos;
            }
            s.1 = pos;
        }
    }
    let before = |from: &str, to: &str| match (spans.get(from), spans.get(to)) {
        (Some(&(f0, last)), Some(&(first, _))) if f0 != usize::MAX && first != usize::MAX => {
            last < first
        }
        _ => true,
    };
    jumps.iter().all(|js| {
        js.after.iter().all(|a| before(a, &js.target))
            && js.before.iter().all(|b| before(&js.target, b))
    })
}

/// The plan of a chain [`is_converged`] accepted: what the full planner returns for it,
/// with room in `result` for `inserts` more slots (no reallocation when one is added).
fn converged_plan(rules: &[Rule], jumps: &[JumpSpec], inserts: usize) -> Plan {
    let comments = Comments::new(jumps);
    let mut result = Vec::with_capacity(rules.len() + inserts);
    result.extend((0..rules.len()).map(Slot::Existing));
    Plan {
        ops: Vec::with_capacity(inserts),
        conflicts: Vec::new(),
        roles: rules
            .iter()
            .map(|r| comments.owned(r).map_or(Role::Foreign, Role::Owned))
            .collect(),
        result,
    }
}

/// The full planner: classification, relaxation of impossible constraints, the keep
/// search and the layout of the inserted jumps.
fn plan_full(snap: &Snapshot, spec: &ChainSpec) -> Plan {
    let rules = &snap.rules;
    let jumps = &spec.jumps;
    let (mut roles, candidates) = classify(rules, jumps);
    let model = Model::new(rules, jumps, &roles);
    let (edges, conflicts) = relax(&model, all_edges(jumps, &model.by_target));

    // Keep as many candidates as possible (branch and bound; every branch is checked by
    // the full layout at its leaf).
    let none = vec![None; jumps.len()];
    let mut possible = vec![0usize; jumps.len() + 1];
    for j in (0..jumps.len()).rev() {
        possible[j] = possible[j + 1] + usize::from(!candidates[j].is_empty());
    }
    let mut search = Search {
        model: &model,
        edges: &edges,
        bounds: Bounds::new(&model, &edges),
        candidates: &candidates,
        possible,
        best: none.clone(),
        best_layout: None,
        best_count: 0,
        leaves: 0,
    };
    let mut kept = none;
    search.dfs(0, &mut kept, 0);
    let kept = search.best;
    let layout = match search.best_layout {
        Some(l) => l,
        None => model
            .layout(&kept, &edges)
            .or_else(|_| model.layout(&vec![None; jumps.len()], &edges))
            .expect("after relaxation, inserting every jump is always possible"),
    };

    // Roles of the copies not kept.
    for (i, role) in roles.iter_mut().enumerate() {
        if let Role::Owned(j) = *role {
            if kept[j] != Some(i) {
                *role = if kept[j].is_some() {
                    Role::Duplicate(j)
                } else {
                    Role::Misplaced(j)
                };
            }
        }
    }

    // The resulting chain: fixed rules with inserted jumps in their gaps, in topo order.
    let mut new: Vec<(usize, usize, usize)> = (0..jumps.len())
        .filter_map(|j| layout.gap[j].map(|g| (g, model.rank[j], j)))
        .collect();
    new.sort_unstable();
    let mut result = Vec::with_capacity(layout.fixed.len() + new.len());
    let mut new = new.into_iter().peekable();
    for g in 0..=layout.fixed.len() {
        while let Some((_, _, j)) = new.next_if(|n| n.0 == g) {
            result.push(Slot::New(j));
        }
        if let Some(&i) = layout.fixed.get(g) {
            result.push(Slot::Existing(i));
        }
    }

    let mut ops = Vec::new();
    for (i, role) in roles.iter().enumerate() {
        let reason = match role {
            Role::Duplicate(_) => DeleteReason::Duplicate,
            Role::Misplaced(_) => DeleteReason::Misplaced,
            Role::Stale(_) => DeleteReason::Stale,
            Role::Owned(_) | Role::Foreign => continue,
        };
        ops.push(Op::Delete {
            handle: rules[i].handle,
            index: i,
            jump: role.jump().unwrap_or_default(),
            reason,
        });
    }
    ops.extend(inserts(rules, &result));
    Plan {
        ops,
        conflicts,
        roles,
        result,
    }
}

/// The insert ops that turn the kept rules into `result`.
fn inserts(rules: &[Rule], result: &[Slot]) -> Vec<Op> {
    let handle = |s: &Slot| match s {
        Slot::Existing(i) => Some(rules[*i].handle),
        Slot::New(_) => None,
    };
    // The nearest existing rule below each slot, from the end.
    let mut below = vec![None; result.len()];
    let mut next = None;
    for (pos, slot) in result.iter().enumerate().rev() {
        below[pos] = next;
        next = handle(slot).or(next);
    }
    let mut ops = Vec::new();
    let mut above = None;
    for (pos, slot) in result.iter().enumerate() {
        if let Slot::New(j) = *slot {
            ops.push(Op::Insert {
                jump: j,
                position: pos + 1,
                after_handle: above,
                before_handle: below[pos],
            });
        }
        above = handle(slot).or(above);
    }
    ops
}

/// Plan removing every owned jump (and every stale copy) from the chain.
pub fn cleanup(snap: &Snapshot, spec: &ChainSpec) -> Plan {
    let (roles, _) = classify(&snap.rules, &spec.jumps);
    let ops = roles
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.jump().map(|j| Op::Delete {
                handle: snap.rules[i].handle,
                index: i,
                jump: j,
                reason: DeleteReason::Cleanup,
            })
        })
        .collect();
    let result = (0..snap.rules.len())
        .filter(|&i| roles[i] == Role::Foreign)
        .map(Slot::Existing)
        .collect();
    Plan {
        ops,
        conflicts: Vec::new(),
        roles,
        result,
    }
}

/// Drop the constraints the foreign rules make impossible, reporting each.
fn relax<'a>(model: &Model<'a>, mut edges: Vec<Edge<'a>>) -> (Vec<Edge<'a>>, Vec<Conflict>) {
    let rules = model.rules;
    let all_inserted = vec![None; model.jumps.len()];
    let spans = model.spans(&model.foreign);
    // The foreign rules jumping to `name`.
    let rules_to = |name: &str| -> Vec<Blocking> {
        model
            .foreign
            .iter()
            .filter(|&&i| rules[i].target() == Some(name))
            .map(|&i| blocking(rules, i))
            .collect()
    };
    let mut conflicts = Vec::new();
    // 1. Constraints broken among foreign rules alone (e.g. a foreign rule jumping to our
    //    target without our comment stands above what we must follow).
    edges.retain(|e| {
        let broken =
            matches!((spans.get(e.from), spans.get(e.to)), (Some(a), Some(b)) if a.1 >= b.0);
        if broken {
            let mut blocking = rules_to(e.to);
            blocking.extend(rules_to(e.from));
            conflicts.push(conflict(model, e, blocking));
        }
        !broken
    });
    // 2. Jumps that have no valid place between the foreign rules: drop what pushes them
    //    down, keep what bounds them from above.
    while let Err(bad) = model.layout(&all_inserted, &edges) {
        if bad.is_empty() {
            break; // cannot happen after step 1; keep whatever is left
        }
        for j in bad {
            let target = model.jumps[j].target.as_str();
            let uppers = upper_names(model, &edges, j);
            let (dropped, kept): (Vec<_>, Vec<_>) = edges.into_iter().partition(|e| e.to == target);
            edges = kept;
            for e in dropped {
                let below = spans.get(e.from).map(|s| s.1).unwrap_or(0);
                let mut blocking: Vec<Blocking> = model
                    .foreign
                    .iter()
                    .enumerate()
                    .filter(|&(pos, &i)| {
                        pos < below && rules[i].target().is_some_and(|t| uppers.contains(&t))
                    })
                    .map(|(_, &i)| blocking(rules, i))
                    .collect();
                if blocking.is_empty() {
                    blocking = rules_to(e.from);
                }
                conflicts.push(conflict(model, &e, blocking));
            }
        }
    }
    (edges, conflicts)
}

/// Names a jump must precede, directly or through other jumps it must precede.
fn upper_names<'a>(model: &Model<'a>, edges: &[Edge<'a>], j: usize) -> Vec<&'a str> {
    let mut names: Vec<&'a str> = Vec::new();
    let mut todo = vec![model.jumps[j].target.as_str()];
    while let Some(from) = todo.pop() {
        for e in edges.iter().filter(|e| e.from == from) {
            if !names.contains(&e.to) {
                names.push(e.to);
                if model.by_target.contains_key(e.to) {
                    todo.push(e.to);
                }
            }
        }
    }
    names
}

fn blocking(rules: &[Rule], i: usize) -> Blocking {
    Blocking {
        handle: rules[i].handle,
        position: i + 1,
        target: rules[i].target().map(str::to_string),
    }
}

fn conflict(model: &Model<'_>, e: &Edge<'_>, blocking: Vec<Blocking>) -> Conflict {
    let j = model.jumps[e.owner].clone();
    let unmet = match e.kind {
        Kind::After => format!("after {}", e.from),
        Kind::Before => format!("before {}", e.to),
    };
    Conflict {
        jump: e.owner,
        comment: j.comment,
        target: j.target,
        unmet,
        blocking,
    }
}

struct Search<'m, 'a> {
    model: &'m Model<'a>,
    edges: &'m [Edge<'a>],
    bounds: Bounds,
    candidates: &'m [Vec<usize>],
    /// `possible[j]`: jumps from `j` on that have a candidate.
    possible: Vec<usize>,
    best: Vec<Option<usize>>,
    /// The layout of `best`, once a leaf was laid out.
    best_layout: Option<Layout>,
    best_count: usize,
    leaves: usize,
}

impl Search<'_, '_> {
    fn dfs(&mut self, j: usize, kept: &mut Vec<Option<usize>>, count: usize) {
        if count + self.possible[j] <= self.best_count || self.leaves >= SEARCH_BUDGET {
            return;
        }
        if j == kept.len() {
            self.leaves += 1;
            if let Ok(layout) = self.model.layout(kept, self.edges) {
                self.best = kept.clone();
                self.best_layout = Some(layout);
                self.best_count = count;
            }
            return;
        }
        for &i in &self.candidates[j] {
            if self.bounds.compatible(i, j, kept) {
                kept[j] = Some(i);
                self.dfs(j + 1, kept, count + 1);
                kept[j] = None;
            }
        }
        self.dfs(j + 1, kept, count);
    }
}

#[path = "plan_reasons.rs"]
mod reasons;
pub use reasons::{reasons, Blocker, Bound, Placed, Reason, Unmet};

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
