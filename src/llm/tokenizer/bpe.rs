//! Byte-pair merging of one pre-tokenized piece, in token-id space.
//!
//! Lowest merge rank first, leftmost on ties (what llama.cpp and Hugging Face both do), with a heap
//! so long pieces (runs of spaces, long words) stay O(n log n).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Merge table: (left id, right id) -> (rank, merged id).
pub(crate) type Merges = HashMap<(u32, u32), (u32, u32)>;

#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: usize,
    next: usize,
    alive: bool,
}

const NONE: usize = usize::MAX;

/// Merge `ids` (one per byte) into the piece's final tokens, appending them to `out`.
pub(crate) fn merge(ids: &[u32], merges: &Merges, out: &mut Vec<u32>) {
    if ids.len() <= 1 {
        out.extend_from_slice(ids);
        return;
    }
    let mut syms: Vec<Symbol> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| Symbol {
            id,
            prev: if i == 0 { NONE } else { i - 1 },
            next: if i + 1 == ids.len() { NONE } else { i + 1 },
            alive: true,
        })
        .collect();
    // (rank, left position, left id, right id)
    let mut heap: BinaryHeap<Reverse<(u32, usize, u32, u32)>> = BinaryHeap::new();
    let push = |heap: &mut BinaryHeap<_>, syms: &[Symbol], left: usize| {
        let right = syms[left].next;
        if right == NONE {
            return;
        }
        if let Some(&(rank, _)) = merges.get(&(syms[left].id, syms[right].id)) {
            heap.push(Reverse((rank, left, syms[left].id, syms[right].id)));
        }
    };
    for i in 0..syms.len() - 1 {
        push(&mut heap, &syms, i);
    }
    while let Some(Reverse((_, left, lid, rid))) = heap.pop() {
        let right = syms[left].next;
        if !syms[left].alive || right == NONE || syms[left].id != lid || syms[right].id != rid {
            continue; // stale entry
        }
        let Some(&(_, merged)) = merges.get(&(lid, rid)) else {
            continue;
        };
        syms[left].id = merged;
        syms[right].alive = false;
        let after = syms[right].next;
        syms[left].next = after;
        if after != NONE {
            syms[after].prev = left;
        }
        if syms[left].prev != NONE {
            push(&mut heap, &syms, syms[left].prev);
        }
        push(&mut heap, &syms, left);
    }
    let mut i = 0;
    while i != NONE {
        out.push(syms[i].id);
        i = syms[i].next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_rank_first_then_leftmost() {
        // ids: a=0 b=1 c=2 ab=3 bc=4 abc=5
        let mut m = Merges::new();
        m.insert((1, 2), (0, 4)); // b c  (rank 0)
        m.insert((0, 1), (1, 3)); // a b  (rank 1)
        m.insert((0, 4), (2, 5)); // a bc (rank 2)
        let mut out = vec![];
        merge(&[0, 1, 2], &m, &mut out);
        assert_eq!(out, [5]);
        out.clear();
        merge(&[0, 1, 0, 1], &m, &mut out);
        assert_eq!(out, [3, 3]);
        out.clear();
        merge(&[2, 2], &m, &mut out);
        assert_eq!(out, [2, 2]);
    }
}
