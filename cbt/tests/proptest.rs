//! Property tests: every `ExtentMap` operation against a per-byte reference
//! model over a small domain.

use ferry_cbt::{Extent, ExtentKind, ExtentMap};
use proptest::prelude::*;

/// Size of the model's domain; all generated extents end at or before it.
const DOMAIN: usize = 2048;

type Model = Vec<Option<ExtentKind>>;

fn kind() -> impl Strategy<Value = ExtentKind> {
    prop_oneof![
        Just(ExtentKind::Hole),
        Just(ExtentKind::Zero),
        Just(ExtentKind::Data)
    ]
}

/// A random map inside `[0, DOMAIN)`: a walk of segments, each a gap or an
/// extent of a random kind, with a bias towards short segments and few extents.
fn extent_map() -> impl Strategy<Value = ExtentMap> {
    let segment = (prop::option::weighted(0.7, kind()), 1u64..200);
    (0u64..300, prop::collection::vec(segment, 0..24)).prop_map(|(start, segments)| {
        let mut m = ExtentMap::new();
        let mut pos = start;
        for (k, len) in segments {
            let len = len.min(DOMAIN as u64 - pos.min(DOMAIN as u64));
            if let Some(k) = k {
                m.push(Extent::new(pos, len, k))
                    .expect("generated in order");
            }
            pos += len;
        }
        m
    })
}

fn model(m: &ExtentMap) -> Model {
    let mut v = vec![None; DOMAIN];
    for e in m {
        for b in &mut v[e.offset as usize..e.end() as usize] {
            assert!(b.is_none(), "overlap in {m:?}");
            *b = Some(e.kind);
        }
    }
    v
}

/// The canonical map of a model: runs of equal kind become one extent.
fn from_model(v: &Model) -> ExtentMap {
    let mut m = ExtentMap::new();
    for (i, k) in v.iter().enumerate() {
        if let Some(k) = *k {
            m.push(Extent::new(i as u64, 1, k)).expect("in order");
        }
    }
    m
}

fn check_invariants(m: &ExtentMap) -> Result<(), TestCaseError> {
    for e in m {
        prop_assert!(e.length > 0, "zero-length extent in {:?}", m);
        prop_assert!(e.checked_end().is_some(), "overflowing extent in {:?}", m);
    }
    for w in m.as_slice().windows(2) {
        prop_assert!(
            w[0].end() <= w[1].offset,
            "unsorted or overlapping: {:?}",
            m
        );
        prop_assert!(
            !(w[0].end() == w[1].offset && w[0].kind == w[1].kind),
            "touching same-kind extents not merged: {:?}",
            m
        );
    }
    Ok(())
}

/// Checks `result` is canonical and equals the map of `expected`, byte by byte.
fn check_against(result: &ExtentMap, expected: &Model) -> Result<(), TestCaseError> {
    check_invariants(result)?;
    prop_assert_eq!(&model(result), expected);
    // Canonical form is unique, so the maps must be identical too.
    prop_assert_eq!(result, &from_model(expected));
    Ok(())
}

fn zip_model(
    a: &ExtentMap,
    b: &ExtentMap,
    f: impl Fn(Option<ExtentKind>, Option<ExtentKind>) -> Option<ExtentKind>,
) -> Model {
    model(a)
        .into_iter()
        .zip(model(b))
        .map(|(x, y)| f(x, y))
        .collect()
}

proptest! {
    #[test]
    fn generated_maps_are_canonical(m in extent_map()) {
        check_invariants(&m)?;
        prop_assert_eq!(&m, &from_model(&model(&m)));
    }

    #[test]
    fn from_extents_any_order_equals_canonical(
        m in extent_map(),
        seed in any::<u64>(),
        split_at in 1u64..64,
    ) {
        // Cut every extent in two (so merging is needed) and shuffle.
        let mut raw: Vec<Extent> = Vec::new();
        for e in &m {
            let cut = split_at.min(e.length);
            raw.push(Extent::new(e.offset, cut, e.kind));
            raw.push(Extent::new(e.offset + cut, e.length - cut, e.kind));
        }
        let mut state = seed | 1;
        for i in (1..raw.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            raw.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let built = ExtentMap::from_extents(raw).unwrap();
        check_invariants(&built)?;
        prop_assert_eq!(built, m);
    }

    #[test]
    fn counters_match_model(m in extent_map()) {
        let v = model(&m);
        let count = |k: ExtentKind| v.iter().filter(|&&x| x == Some(k)).count() as u64;
        prop_assert_eq!(m.bytes(ExtentKind::Data), count(ExtentKind::Data));
        prop_assert_eq!(m.bytes(ExtentKind::Zero), count(ExtentKind::Zero));
        prop_assert_eq!(m.bytes(ExtentKind::Hole), count(ExtentKind::Hole));
        prop_assert_eq!(m.covered_bytes(), v.iter().filter(|x| x.is_some()).count() as u64);
        prop_assert_eq!(m.start(), v.iter().position(Option::is_some).map(|i| i as u64));
        prop_assert_eq!(m.end(), v.iter().rposition(Option::is_some).map(|i| i as u64 + 1));
        for (i, k) in v.iter().enumerate() {
            prop_assert_eq!(m.kind_at(i as u64), *k);
        }
    }

    #[test]
    fn union_matches_model(a in extent_map(), b in extent_map()) {
        let expected = zip_model(&a, &b, |x, y| x.max(y));
        check_against(&a.union(&b), &expected)?;
        prop_assert_eq!(a.union(&b), b.union(&a));
    }

    #[test]
    fn intersection_matches_model(a in extent_map(), b in extent_map()) {
        let expected = zip_model(&a, &b, |x, y| match (x, y) {
            (Some(x), Some(y)) => Some(x.max(y)),
            _ => None,
        });
        check_against(&a.intersection(&b), &expected)?;
        prop_assert_eq!(a.intersection(&b), b.intersection(&a));
    }

    #[test]
    fn difference_matches_model(a in extent_map(), b in extent_map()) {
        let expected = zip_model(&a, &b, |x, y| if y.is_some() { None } else { x });
        check_against(&a.difference(&b), &expected)?;
    }

    #[test]
    fn clip_matches_model(m in extent_map(), s in 0u64..2100, t in 0u64..2100) {
        let mut expected = model(&m);
        for (i, b) in expected.iter_mut().enumerate() {
            if !(s..t).contains(&(i as u64)) {
                *b = None;
            }
        }
        check_against(&m.clip(s, t), &expected)?;
    }

    #[test]
    fn fill_gaps_matches_model(
        m in extent_map(),
        s in 0u64..2048,
        t in 0u64..2049,
        k in kind(),
    ) {
        let mut expected = model(&m);
        for (i, b) in expected.iter_mut().enumerate() {
            *b = if (s..t).contains(&(i as u64)) { Some(b.unwrap_or(k)) } else { None };
        }
        check_against(&m.fill_gaps(s, t, k), &expected)?;
    }

    #[test]
    fn align_data_matches_model(m in extent_map(), shift in 0u32..10, limit in 0u64..2100) {
        let block = 1u64 << shift;
        let v = model(&m);
        // A block holding any Data byte becomes Data, but only below `limit`.
        let mut expected = v.clone();
        for (i, b) in expected.iter_mut().enumerate() {
            let first = i - i % block as usize;
            let last = (first + block as usize).min(DOMAIN);
            if (i as u64) < limit && v[first..last].contains(&Some(ExtentKind::Data)) {
                *b = Some(ExtentKind::Data);
            }
        }
        let a = m.align_data(block, limit);
        check_against(&a, &expected)?;
        for e in a.iter().filter(|e| e.kind == ExtentKind::Data) {
            prop_assert!(e.offset % block == 0 || e.offset >= limit, "start of {:?}", e);
            prop_assert!(e.end() % block == 0 || e.end() >= limit, "end of {:?}", e);
        }
        for (i, k) in v.iter().enumerate() {
            if *k == Some(ExtentKind::Data) {
                prop_assert_eq!(a.kind_at(i as u64), Some(ExtentKind::Data));
            }
        }
    }

    #[test]
    fn align_data_with_invalid_block_is_identity(m in extent_map(), block in 0u64..2048) {
        prop_assume!(!block.is_power_of_two());
        prop_assert_eq!(m.align_data(block, 4096), m);
    }

    #[test]
    fn split_pieces_rebuild_the_map(
        m in extent_map(),
        max_data in prop_oneof![Just(0u64), 1u64..300],
        max_other in prop_oneof![Just(0u64), 1u64..300],
    ) {
        let pieces: Vec<Extent> = m.split(max_data, max_other).collect();
        for w in pieces.windows(2) {
            prop_assert!(w[0].end() <= w[1].offset, "pieces out of order: {:?}", w);
        }
        for p in &pieces {
            prop_assert!(p.length > 0);
            let max = if p.kind == ExtentKind::Data { max_data } else { max_other };
            if max > 0 {
                prop_assert!(p.length <= max, "{:?} longer than {}", p, max);
                if max.is_power_of_two() {
                    prop_assert_eq!(p.offset / max, (p.end() - 1) / max, "{:?} crosses a multiple of {}", p, max);
                }
            }
        }
        prop_assert_eq!(ExtentMap::from_extents(pieces).unwrap(), m);
    }
}
